"""3-D pools and transposed convs (3-D U-Nets over volumes): rewritten into 2-D ones at import
(`passes/pool3d_as_pool2d.py`, `passes/conv3d_transpose_as_conv2d.py`) that equal onnxruntime in
float, and a volume U-Net compiles integer-only."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


def _model(path, nodes, inits, x_shape, y_shape):
    graph = helper.make_graph(nodes, "vol", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if y_shape is None:  # the output's shape from onnxruntime
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": np.zeros(x_shape, np.float32)})[0]
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y.shape)))
    onnx.save(model, str(path))
    return str(path)


CASES = {  # node, weight shape (transposed convs), x shape
    "tconv_k3s2_brain": (dict(op="ConvTranspose", strides=[2, 2, 2], pads=[0, 0, 0, 1, 1, 1]), (4, 3, 3, 3, 3)),
    "tconv_k2s2": (dict(op="ConvTranspose", strides=[2, 2, 2]), (4, 3, 2, 2, 2)),
    "tconv_groups_dilation_outpad": (dict(op="ConvTranspose", strides=[2, 1, 2], pads=[1, 1, 0, 0, 1, 1],
                                          dilations=[2, 1, 1], group=2, output_padding=[1, 0, 1]), (4, 2, 3, 3, 2)),
    "tconv_stride1_pads": (dict(op="ConvTranspose", pads=[1, 1, 1, 1, 1, 1]), (4, 3, 3, 3, 3)),
    "maxpool_k2s2": (dict(op="MaxPool", kernel_shape=[2, 2, 2], strides=[2, 2, 2]), None),
    "maxpool_pads_ceil_dilation": (dict(op="MaxPool", kernel_shape=[3, 2, 3], strides=[2, 1, 2], pads=[1, 0, 1, 1, 1, 1],
                                        ceil_mode=1, dilations=[1, 2, 1]), None),
    "avgpool_pads_exclude": (dict(op="AveragePool", kernel_shape=[3, 3, 2], strides=[2, 2, 1], pads=[1, 1, 0, 1, 1, 1]), None),
    "avgpool_pads_include": (dict(op="AveragePool", kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[0, 1, 1, 1, 1, 1],
                                  count_include_pad=1), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rewritten_3d_ops_equal_onnxruntime_in_float(tmp_path, case):
    import tvm
    from tvm import relax

    from frontends import load_onnx
    from passes import bind_weights

    attrs, wshape = CASES[case]
    attrs = dict(attrs)
    op = attrs.pop("op")
    inits = {}
    inputs = ["x"]
    if wshape is not None:
        inits["w"] = np.random.default_rng(0).standard_normal(wshape).astype(np.float32)
        inputs.append("w")
    path = _model(tmp_path / "m.onnx", [helper.make_node(op, inputs, ["y"], **attrs)], inits, [1, 4, 5, 6, 7], None)
    mod = bind_weights(*(lambda i: (i.mod, i.params))(load_onnx(path)))
    ops = {str(b.value.op.name) for block in mod["main"].body.blocks for b in block.bindings
           if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)}
    assert not ops & {"relax.nn.max_pool3d", "relax.nn.avg_pool3d", "relax.nn.conv3d_transpose"}, ops
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 4, 5, 6, 7)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_volume_unet_compiles_integer_only(tmp_path):
    """deepbrain's 3-D U-Net in small: Conv3d, MaxPool 2x2x2, Conv3d, ConvTranspose 3x3x3 / 2, concat,
    1x1x1 conv, sigmoid."""
    from runtime import compile_model, load

    rng = np.random.default_rng(2)
    n = helper.make_node
    inits = {"w1": (rng.standard_normal((6, 1, 3, 3, 3)) * 0.3).astype(np.float32),
             "w2": (rng.standard_normal((8, 6, 3, 3, 3)) * 0.2).astype(np.float32),
             "wt": (rng.standard_normal((8, 6, 3, 3, 3)) * 0.2).astype(np.float32),
             "w3": (rng.standard_normal((1, 12, 1, 1, 1)) * 0.3).astype(np.float32)}
    nodes = [n("Conv", ["x", "w1"], ["c1"], pads=[1] * 6), n("Relu", ["c1"], ["r1"]),
             n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
             n("Conv", ["p1", "w2"], ["c2"], pads=[1] * 6), n("Relu", ["c2"], ["r2"]),
             n("ConvTranspose", ["r2", "wt"], ["u"], strides=[2, 2, 2], pads=[0, 0, 0, 1, 1, 1]),
             n("Concat", ["u", "r1"], ["cat"], axis=1), n("Conv", ["cat", "w3"], ["c3"]), n("Sigmoid", ["c3"], ["y"])]
    path = _model(tmp_path / "unet3d.onnx", nodes, inits, [1, 1, 8, 8, 8], [1, 1, 8, 8, 8])
    x = rng.random((12, 1, 1, 8, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:8])
    art = load(compile_model(path, "x86", tmp_path / "u.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for s in x[8:]:
        got, want = art.run({"x": s})["y"].ravel(), session.run(None, {"x": s})[0].ravel()
        assert np.abs(got - want).max() < 0.05, np.abs(got - want).max()
