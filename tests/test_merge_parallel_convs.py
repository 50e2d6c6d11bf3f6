"""Convs of one input summed together (RepVGG / MobileOne / FastViT blocks in their training form, a
positional depthwise conv added to its input) become one conv (passes/merge_parallel_convs.py):
the float graph after `bind_weights` keeps one conv per block and computes what onnxruntime does,
and the model compiles integer-only and agrees with it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

C = 8


def _model(path, stride: int = 1) -> str:
    """Three blocks: (1) identity BatchNorm + BN-folded 1x1 + two BN-folded 3x3 convs (MobileOne), summed,
    ReLU; (2) a 3x3 and a 1x1 conv of stride `stride` with biases, summed (RepVGG's downsampling block);
    (3) x + depthwise 3x3 dilated conv (a positional conv), whose result is also used twice."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def init(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    def bn(x, out):
        p = out
        nodes.append(helper.make_node("BatchNormalization", [
            x, init(p + "g", rng.uniform(0.5, 1.5, C)), init(p + "b", rng.standard_normal(C) * 0.3),
            init(p + "m", rng.standard_normal(C) * 0.3), init(p + "v", rng.uniform(0.5, 1.5, C))], [out]))
        return out

    def conv(x, out, k, pad, stride=1, group=1, dilation=1, bias=False, norm=True):
        inputs = [x, init(out + "w", rng.standard_normal((C, C // group, k, k)) * 0.3)]
        if bias:
            inputs.append(init(out + "bias", rng.standard_normal(C) * 0.3))
        nodes.append(helper.make_node("Conv", inputs, [out + "c" if norm else out], pads=[pad] * 4,
                                      strides=[stride] * 2, group=group, dilations=[dilation] * 2))
        return bn(out + "c", out) if norm else out

    terms = [bn("x", "id"), conv("x", "s", 1, 0), conv("x", "b0", 3, 1), conv("x", "b1", 3, 1)]
    nodes += [helper.make_node("Add", terms[:2], ["a0"]), helper.make_node("Add", ["a0", terms[2]], ["a1"]),
              helper.make_node("Add", ["a1", terms[3]], ["a2"]), helper.make_node("Relu", ["a2"], ["r0"])]
    d3, d1 = conv("r0", "d3", 3, 1, stride, bias=True, norm=False), conv("r0", "d1", 1, 0, stride, bias=True, norm=False)
    nodes += [helper.make_node("Add", [d3, d1], ["a3"]), helper.make_node("Relu", ["a3"], ["r1"])]
    pos = conv("r1", "pos", 3, 2, group=C, dilation=2, bias=True, norm=False)
    nodes += [helper.make_node("Add", ["r1", pos], ["a4"]), helper.make_node("Mul", ["a4", "a4"], ["sq"]),
              helper.make_node("Add", ["sq", "a4"], ["y"])]
    side = 12 // stride
    graph = helper.make_graph(nodes, "rep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, side, side])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _run_float(mod, x):
    import tvm
    from tvm import relax

    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("stride", [1, 2])
def test_summed_branches_become_one_conv(tmp_path, stride):
    from frontends import load_onnx
    from passes import bind_weights

    path = _model(tmp_path / "rep.onnx", stride)
    mod = bind_weights(load_onnx(path).mod, load_onnx(path).params)
    script = mod["main"].script(show_meta=False)
    assert script.count("R.nn.conv2d(") == 3, script  # 4 + 2 + 1 convs before
    assert "R.multiply(x" not in script  # the identity BatchNorm is the merged conv's diagonal
    x = np.random.default_rng(1).standard_normal((1, C, 12, 12)).astype(np.float32)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(_run_float(mod, x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_merged_model_compiles_integer_only(tmp_path):
    from runtime import compile_model, load

    path = _model(tmp_path / "rep.onnx")
    x = np.random.default_rng(2).standard_normal((8, 1, C, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:6])
    model = load(compile_model(path, "x86", tmp_path / "rep.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for sample in x[6:]:
        ref, out = session.run(None, {"x": sample})[0].ravel(), model.run({"x": sample})["y"].ravel()
        assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) > 0.995


def test_branch_used_elsewhere_is_kept(tmp_path):
    """A conv whose output is also read by another op stays (merging it would compute it twice)."""
    from frontends import load_onnx
    from passes import bind_weights

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((C, C, k, k)).astype(np.float32), f"w{k}") for k in (1, 3)]
    nodes = [helper.make_node("Conv", ["x", "w3"], ["c3"], pads=[1] * 4), helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("Add", ["c3", "c1"], ["s"]), helper.make_node("Mul", ["s", "c1"], ["y"])]
    graph = helper.make_graph(nodes, "used", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "used.onnx"))
    imported = load_onnx(tmp_path / "used.onnx")
    mod = bind_weights(imported.mod, imported.params)
    assert mod["main"].script(show_meta=False).count("R.nn.conv2d(") == 2
