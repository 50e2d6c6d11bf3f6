"""DeformConv (DCNv1/v2) as GridSample taps and a grouped 1x1 conv (frontends/onnx_deform_conv.py): the
rewrite computes what onnxruntime's DeformConv does, in float, and the layer compiles integer-only (it
was refused: TVM's importer has no DeformConv)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_decompose import decompose_ops

VARIANTS = [dict(), dict(stride=2), dict(groups=2, offset_groups=2), dict(mask=False, dilation=2, pad=2),
            dict(offset_groups=4, k=1, pad=0)]


def _dcn(rng, c=8, o=16, k=3, stride=1, pad=1, dilation=1, groups=1, offset_groups=1, mask=True, h=12, w=10):
    """Offsets (and a DCNv2 mask through a Sigmoid) from 3x3 convs of the image, then the DeformConv."""
    oh = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    inits = {"wo": rng.standard_normal((2 * offset_groups * k * k, c, 3, 3)) * 0.3,
             "wm": rng.standard_normal((offset_groups * k * k, c, 3, 3)) * 0.3,
             "w": rng.standard_normal((o, c // groups, k, k)) * 0.2, "b": rng.standard_normal(o) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "wo"], ["offset"], pads=[1] * 4, strides=[stride] * 2),
             helper.make_node("Conv", ["x", "wm"], ["logit"], pads=[1] * 4, strides=[stride] * 2),
             helper.make_node("Sigmoid", ["logit"], ["mask"]),
             helper.make_node("DeformConv", ["x", "w", "offset", "b"] + (["mask"] if mask else []), ["d"],
                              kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, dilations=[dilation] * 2,
                              group=groups, offset_group=offset_groups),
             helper.make_node("Relu", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "dcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, o, oh, ow])],
                              [numpy_helper.from_array(v.astype(np.float32), name) for name, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model)


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items()) or "plain")
def test_rewrite_computes_onnxruntimes_deform_conv(variant):
    """Offsets of several pixels move taps off the image (zeros there), fractional ones between pixels."""
    rng = np.random.default_rng(0)
    model = _dcn(rng, **variant)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert decompose_ops(rewritten) == 1
    assert "DeformConv" not in {n.op_type for n in rewritten.graph.node}
    x = rng.standard_normal((1, 8, 12, 10)).astype(np.float32) * 2
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS[:3], ids=["plain", "stride2", "groups2"])
def test_deform_conv_compiles_integer_only(tmp_path, variant):
    import runtime

    rng = np.random.default_rng(1)
    onnx.save(_dcn(rng, **variant), tmp_path / "m.onnx")
    x = rng.standard_normal((36, 1, 8, 12, 10)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:32])
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for v in x[32:]:
        ours, want = art.run({"x": v})["y"].ravel(), session.run(None, {"x": v})[0].ravel()
        assert ours @ want / np.linalg.norm(ours) / np.linalg.norm(want) > 0.995
