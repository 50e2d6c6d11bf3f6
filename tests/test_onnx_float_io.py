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
