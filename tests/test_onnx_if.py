"""A data-dependent If becomes both branches and a Where (frontends/onnx_if.py): same outputs as
onnxruntime on inputs taking either branch, and it compiles integer-only."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends import UnsupportedModelError, load_onnx
from frontends.onnx_if import select_ifs


def _model(path, else_shape=(1, 4), nested=False):
    """y = If(sum(x) > 0) {relu(x @ w) * 2} {x - x.mean()}: the then branch has its own initializer
    and reads the outer `w`; the else branch reads `x` (openWakeWord's verifier-MLP pattern)."""
    then = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t0"]), helper.make_node("Relu", ["t0"], ["t1"]),
         helper.make_node("Mul", ["t1", "two"], ["t_out"])], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    inner = [helper.make_node("ReduceMean", ["x"], ["e0"], axes=[-1]), helper.make_node("Sub", ["x", "e0"], ["e_out"])]
    if nested:
        inner = [helper.make_node("If", ["cond"], ["e_out"], then_branch=then, else_branch=then)]
    other = helper.make_graph(inner, "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT,
                                                                                  list(else_shape))],
                              [numpy_helper.from_array(np.array(else_shape, np.int64), "else_shape")])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
             helper.make_node("If", ["cond"], ["y"], name="verify", then_branch=then, else_branch=other)]
    rng = np.random.default_rng(0)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
                              [numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
                               numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_select_matches_onnxruntime_on_both_branches(tmp_path):
    path = _model(tmp_path / "if.onnx")
    model = onnx.load(path)
    assert select_ifs(model) == 1 and "If" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "select.onnx")
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (path, tmp_path / "select.onnx"))
    for x in ([[1, 2, -1, 0.5]], [[-1, -2, 1, 0.5]]):  # sum > 0: then; else: else
        x = np.array(x, np.float32)
        np.testing.assert_array_equal(a.run(None, {"x": x})[0], b.run(None, {"x": x})[0])


@pytest.mark.parametrize("case", ["other-shape", "nested"])
def test_if_that_cannot_be_a_select_is_refused(tmp_path, case):
    kw = {"other-shape": {"else_shape": (4, 1)}, "nested": {"nested": True}}
    path = _model(tmp_path / "if.onnx", **kw[case])
    assert select_ifs(onnx.load(path)) == 0
    with pytest.raises(UnsupportedModelError, match=r"If \(node verify\)"):
        load_onnx(path)
    tail = load_onnx(path, allow_unsupported=True).tail  # --allow-float: it runs in onnxruntime afterwards
    assert [n["node"] for n in tail.nodes] == ["verify"]


def test_selected_if_compiles_integer_only(tmp_path):
    import runtime
    from runtime.compiler import compile_model

    path = _model(tmp_path / "if.onnx")
    rng = np.random.default_rng(1)
    calib = np.concatenate([[[[1, 2, -1, 0.5]], [[-1, -2, 1, 0.5]]], rng.standard_normal((6, 1, 4))])
    np.savez(tmp_path / "calib.npz", x=calib.astype(np.float32))
    art = runtime.load(compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in ([[1, 2, -1, 0.5]], [[-1, -2, 1, 0.5]]):
        x = np.array(x, np.float32)
        ref, got = session.run(None, {"x": x})[0], art.run({"x": x})["y"]
        assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max(), (x, got, ref)
