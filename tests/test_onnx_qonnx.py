"""QONNX files (brevitas' export_qonnx) read as standard ONNX (`frontends/onnx_qonnx.py`): Quant nodes on
constants folded as qonnx computes them, on activations as QuantizeLinear -> Clip -> DequantizeLinear; the
result equals the same network written with standard float ops, and compiles integer-only."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_qonnx import read_qonnx

QONNX = "qonnx.custom_op.general"
RNG = np.random.default_rng(0)
W1 = RNG.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
W2 = RNG.normal(0, 0.3, (5, 8)).astype(np.float32)
B2 = RNG.normal(0, 0.1, 5).astype(np.float32)
S1 = (np.abs(W1).reshape(8, -1).max(1) / 9).astype(np.float32).reshape(8, 1, 1, 1)  # 4-bit narrow, clipped


def _grid(x, scale, zero, lo, hi):
    """A Quant in float32 with round half to even, written independently of the reader."""
    return ((np.round(np.clip(x / scale + zero, lo, hi)) - zero) * scale).astype(np.float32)


def _qonnx_model(path):
    """input Quant (int8) -> conv (weights: 4-bit narrow per-channel Quant of a Transpose of a constant, as torch
    exports slice or transpose theirs) -> relu -> Quant (unsigned 4 bits, zero point 2) -> mean -> gemm (weights:
    BipolarQuant; bias: a 24-bit Quant rounding half up)."""
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("w1_t", W1.transpose(1, 0, 2, 3).copy()), ("s1", S1), ("w2", W2), ("s2", np.float32(0.05)), ("b2", B2),
        ("sx", np.float32(3 / 127)), ("sr", np.float32(0.2)), ("sb", np.float32(1e-4)), ("zero", np.float32(0)),
        ("zr", np.float32(2)), ("b8", np.float32(8)), ("b4", np.float32(4)), ("b24", np.float32(24)))]
    q = lambda x, s, z, b, y, **kw: helper.make_node("Quant", [x, s, z, b], [y], domain=QONNX, name=f"quant_{y}",  # noqa: E731
                                                    **{"signed": 1, "narrow": 0, "rounding_mode": "ROUND", **kw})
    nodes = [q("x", "sx", "zero", "b8", "xq"),
             helper.make_node("Transpose", ["w1_t"], ["w1"], perm=[1, 0, 2, 3]),
             q("w1", "s1", "zero", "b4", "w1q", narrow=1),
             helper.make_node("Conv", ["xq", "w1q"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             q("r", "sr", "zr", "b4", "rq", signed=0),
             helper.make_node("ReduceMean", ["rq"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("BipolarQuant", ["w2", "s2"], ["w2q"], domain=QONNX),
             q("b2", "sb", "zero", "b24", "b2q", rounding_mode="HALF_UP"),
             helper.make_node("Gemm", ["m", "w2q", "b2q"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "qonnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _reference(x: np.ndarray) -> np.ndarray:
    """The same network in standard float ops (the weights fake-quantized here, activations by Round)."""
    w1 = _grid(W1, S1, 0, -7, 7)
    w2 = np.where(W2 >= 0, 0.05, -0.05).astype(np.float32)
    v = B2 / np.float32(1e-4)
    b2 = (np.sign(v) * np.floor(np.abs(v) + 0.5) * np.float32(1e-4)).astype(np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("w1", w1), ("w2", w2), ("b2", b2), ("sx", np.float32(3 / 127)), ("sr", np.float32(0.2)),
        ("zr", np.float32(2)), ("lo_x", np.float32(-128)), ("hi_x", np.float32(127)), ("lo_r", np.float32(0)),
        ("hi_r", np.float32(15)))]

    def grid(x, s, lo, hi, y, z=None):
        shifted = [helper.make_node("Add", [f"{y}_d", z], [f"{y}_a"])] if z else []
        a = f"{y}_a" if z else f"{y}_d"
        back = [helper.make_node("Sub", [f"{y}_r", z], [f"{y}_u"])] if z else []
        u = f"{y}_u" if z else f"{y}_r"
        return [helper.make_node("Div", [x, s], [f"{y}_d"]), *shifted,
                helper.make_node("Clip", [a, lo, hi], [f"{y}_c"]), helper.make_node("Round", [f"{y}_c"], [f"{y}_r"]),
                *back, helper.make_node("Mul", [u, s], [y])]

    nodes = [*grid("x", "sx", "lo_x", "hi_x", "xq"), helper.make_node("Conv", ["xq", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), *grid("r", "sr", "lo_r", "hi_r", "rq", "zr"),
             helper.make_node("ReduceMean", ["rq"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return _session(model.SerializeToString()).run(None, {"x": x})[0]


def _session(model: bytes):
    options = ort.SessionOptions()  # no fusions: onnxruntime's QDQ kernels round differently
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def test_quant_nodes_read_as_qonnx_computes_them(tmp_path):
    model = onnx.load(_qonnx_model(tmp_path / "q.onnx"))
    assert read_qonnx(model) == 5
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("Clip") == 2 and "Transpose" not in ops  # folded
    assert not any(n.domain == QONNX for n in model.graph.node)
    assert [o.domain for o in model.opset_import] == [""]
    clips = {n.output[0]: n for n in model.graph.node if n.op_type == "Clip"}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert sorted((int(inits[c.input[1]]), int(inits[c.input[2]])) for c in clips.values()) == [(-128, 127), (0, 15)]
    session = _session(model.SerializeToString())
    for seed in range(4):
        x = np.random.default_rng(seed).normal(0, 1.2, (1, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], _reference(x), rtol=0, atol=1e-5)


def test_qonnx_file_compiles_integer_only(tmp_path):
    """The raw export_qonnx file compiles (it was refused: onnxruntime cannot load Quant nodes), integer-only,
    close to the network it states; the compile's check runs the standard form of the file."""
    import runtime

    path = _qonnx_model(tmp_path / "q.onnx")
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1.2, (16, 1, 3, 8, 8)).astype(np.float32))
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    for seed in range(10, 14):
        x = np.random.default_rng(seed).normal(0, 1.2, (1, 3, 8, 8)).astype(np.float32)
        got, want = art.run({"x": x})["y"].ravel(), _reference(x).ravel()
        assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) > 0.99


def test_check_compares_against_the_standard_form(tmp_path):
    from runtime.check import references

    path = _qonnx_model(tmp_path / "q.onnx")
    labels = [label for label, model in references(path)]
    assert labels[0].startswith("the float graph") and "QONNX file as QuantizeLinear" in labels[1]
    assert all(isinstance(model, bytes) for _, model in references(path))  # both run without the Quant nodes
