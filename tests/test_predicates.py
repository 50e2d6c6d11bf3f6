"""isnan/isinf/isfinite of quantized tensors (passes/lowering/predicates.py): constant masks, so
a Clip whose bound is computed from the data (a log-mel front end's top-dB clamp) compiles
integer-only."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.reference.binary import float_predicate


def test_reference_masks():
    assert not float_predicate("isnan", (2, 3)).any() and not float_predicate("isinf", ()).any()
    assert float_predicate("isfinite", (4,)).all() and float_predicate("isfinite", (4,)).shape == (4,)
    with pytest.raises(ValueError):
        float_predicate("isneg", (1,))


def _top_db_model(path, top: float = 3.0):
    """y = Clip(x, min=max(x) - top): TVM's importer guards the tensor bound with isnan/where."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
             helper.make_node("Sub", ["m", "top"], ["lo"]),
             helper.make_node("Clip", ["x", "lo"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
                              [numpy_helper.from_array(np.array(top, np.float32), "top")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_isnan_guard_is_lowered(tmp_path):
    from frontends import load_onnx
    from passes.lowering import LOWERINGS

    path = _top_db_model(tmp_path / "clip.onnx")
    assert "R.isnan" in str(load_onnx(path).mod["main"])  # TVM's importer on a tensor-valued Clip bound
    assert {"relax.isnan", "relax.isinf", "relax.isfinite"} <= set(LOWERINGS)


def test_data_dependent_clip_compiles_integer_only(tmp_path):
    import runtime
    from runtime.compiler import compile_model

    path = _top_db_model(tmp_path / "clip.onnx")
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((10, 1, 8, 16)) * 2).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data[:8])
    art = runtime.load(compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in data[8:]:
        ref, got = session.run(None, {"x": x})[0], art.run({"x": x})["y"]
        lsb = np.abs(data).max() / 127
        assert np.abs(got - ref).max() <= 2.5 * lsb, np.abs(got - ref).max() / lsb
        assert got.min() >= ref.min() - 2.5 * lsb  # the clamp took effect


def test_sdpa_isnan_guard_keeps_softmax_output_for_the_matmul():
    # torch SDPA's where(isnan(softmax), 0, softmax) before attention x V: the condition is all false at
    # compile time, so the where disappears and the matmul reads Shiftmax's unsigned output as it is
    # (it was requantized to a symmetric int8 grid: 4-7% grid error on a dynamo-exported MiniLM)
    import re

    from tvm import relax

    from passes import QuantConfig, QuantizeToInteger, verify_integer_only

    def build(guard):
        bb = relax.BlockBuilder()
        s = relax.Var("s", relax.TensorType((1, 2, 8, 8), "float32"))
        v = relax.Var("v", relax.TensorType((1, 2, 8, 4), "float32"))
        with bb.function("main", [s, v]):
            with bb.dataflow():
                p = bb.emit(relax.op.nn.softmax(s, axis=-1))
                if guard:
                    p = bb.emit(relax.op.where(bb.emit(relax.op.isnan(p)), relax.const(0.0, "float32"), p))
                out = bb.emit_output(bb.emit(relax.op.matmul(p, v)))
            bb.emit_func_output(out)
        return bb.get()

    names = ("s", "v", "lv", "lv1", "lv2", "lv3", "gv")
    ranges = {n: (-4.0, 4.0) for n in names}
    lowered = [QuantizeToInteger(ranges, QuantConfig())(build(g)) for g in (False, True)]
    assert all(verify_integer_only(m).integer_only for m in lowered)
    texts = [m["main"].script() for m in lowered]
    assert "R.where" not in texts[1] and "isnan" not in texts[1]
    ops = [sorted(re.findall(r"R\.[\w.]+\(", t)) for t in texts]
    assert ops[0] == ops[1]  # the same kernels as without the guard
