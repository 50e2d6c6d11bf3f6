"""Float16 and float64 graph inputs and outputs (`frontends/onnx_float_io.py`): a model converted to float16 with
its inputs and outputs (onnxconverter-common's keep_io_types=False) compiles integer-only, takes the float16 array
onnxruntime takes and returns its output in float16."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_float_io import widen_float_inputs

rng = np.random.default_rng(7)
TYPES = {np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}


SHAPES = {np.float16: (1, 3, 12, 12), np.float64: (1, 6, 12)}


def _cnn(dtype) -> onnx.ModelProto:
    """float16: conv -> relu -> global pool -> gemm; float64 (onnxruntime has no double Conv): matmul -> relu ->
    matmul; every tensor in `dtype`, inputs and outputs too."""
    c = lambda name, shape, s=0.3: numpy_helper.from_array((s * rng.standard_normal(shape)).astype(dtype), name)  # noqa: E731
    if dtype == np.float16:
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
                 helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
        inits, out = [c("w", (8, 3, 3, 3)), c("b", (8,)), c("g", (5, 8)), c("gb", (5,))], [1, 5]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                 helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "g"], ["y"])]
        inits, out = [c("w", (12, 8)), c("b", (8,)), c("g", (8, 5))], [1, 6, 5]
    t = TYPES[dtype]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", t, list(SHAPES[dtype]))],
                              [helper.make_tensor_value_info("y", t, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_float16_input_becomes_a_float32_one_cast_inside():
    model = _cnn(np.float16)
    assert widen_float_inputs(model) == ["x"]
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.node[0].op_type == "Cast" and model.graph.node[1].input[0] == model.graph.node[0].output[0]
    onnx.checker.check_model(model)
    assert widen_float_inputs(model) == []  # float32 inputs are left as they are


@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
def test_a_model_in_float16_or_float64_end_to_end_compiles_integer_only(tmp_path, dtype):
    """Refused in both modes before ("input 'x' has dtype float16; supported: float32 ...")."""
    import runtime

    onnx.save(_cnn(dtype), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, *SHAPES[dtype])).astype(dtype))
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    x = rng.standard_normal(SHAPES[dtype]).astype(dtype)
    got = art.run({"x": x})["y"]
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.dtype == dtype
    a, b = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


S = 16


def _masked_attention(dtype) -> onnx.ModelProto:
    """One attention head over a [1, S] key mask (Where(mask, logits, the type's minimum)), in `dtype`."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype), name)  # noqa: E731
    t = TYPES.get(dtype, TensorProto.FLOAT)
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["q", "kt"], ["s0"]),
             helper.make_node("Mul", ["s0", "scale"], ["s"]), helper.make_node("Cast", ["mask"], ["mb"], to=TensorProto.BOOL),
             helper.make_node("Unsqueeze", ["mb", "axis"], ["mu"]), helper.make_node("Where", ["mu", "s", "neg"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", t, [1, S, 32]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, [1, S])],
                              [helper.make_tensor_value_info("y", t, [1, S, 32])],
                              [c("wq", 0.3 * rng.standard_normal((32, 32))), c("wk", 0.3 * rng.standard_normal((32, 32))),
                               c("scale", 32 ** -0.5), c("neg", np.finfo(dtype).min),
                               numpy_helper.from_array(np.array([1], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_float16_graph_becomes_its_float32_twin():
    from frontends.onnx_float16 import float16_as_float32

    model = _masked_attention(np.float16)
    model.graph.node.append(helper.make_node("Cast", ["y"], ["y32"], to=TensorProto.FLOAT16))
    assert float16_as_float32(model) == {"y": "float16"}
    assert {i.data_type for i in model.graph.initializer} <= {TensorProto.FLOAT, TensorProto.INT64}
    assert next(n for n in model.graph.node if n.output[0] == "y32").attribute[0].i == TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_float16_masked_attention_keeps_float32_accuracy(tmp_path):
    """Its masked softmax in float16 lowered worse than in float32 (cosine 0.92 against 0.9999 here; optimize_model +
    float16 MiniLM 0.19 against 0.98): the graph is computed as its float32 twin; its output stays float16."""
    import runtime
    from runtime import check

    onnx.save(_masked_attention(np.float16), tmp_path / "m.onnx")
    mask = lambda n: (np.arange(S) < n).astype(np.int64)[None]  # noqa: E731
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, S, 32)).astype(np.float16),
             mask=np.stack([mask(n) for n in (16, 12, 9, 16, 5, 14, 16, 10)]))
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    feed = {"x": rng.standard_normal((1, S, 32)).astype(np.float16), "mask": mask(11)}
    assert art.run(feed)["y"].dtype == np.float16
    (row,) = check.float_agreement(tmp_path / "m.onnx", art, feed)
    assert row.cosine > 0.99, row
