"""BERT-style additive attention masks `(1.0 - float(mask)) * -10000` added to the logits: the
arithmetic on the mask stays exact integers and masked keys get probability exactly 0."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _model(path) -> str:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    big = numpy_helper.from_array(np.array(-10000.0, np.float32), "big")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["inv"]), helper.make_node("Mul", ["inv", "big"], ["pen"]),
             helper.make_node("Add", ["logits", "pen"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8]),
                                              helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], [w, one, big])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_additive_mask_is_exact(tmp_path):
    from runtime import compile_model, load

    path = _model(tmp_path / "mask.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 1, 4, 8)).astype(np.float32)
    mask = np.ones((16, 1, 1, 8), np.int64)
    for i in range(16):
        mask[i, ..., 8 - i % 5:] = 0
    np.savez(tmp_path / "calib.npz", x=x, mask=mask)
    model = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for i in range(5):
        out = model.run({"x": x[i], "mask": mask[i]})["y"]
        ref = session.run(None, {"x": x[i], "mask": mask[i]})[0]
        assert np.all(out[..., mask[i, 0, 0] == 0] == 0)  # masked keys: exactly zero
        np.testing.assert_allclose(out, ref, atol=0.02)  # uint8 probabilities at 2^-8, Shiftmax error
