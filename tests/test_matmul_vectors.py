"""MatMul with a vector operand (ONNX follows numpy: a 1-D operand is a row on the left or a column on the
right, and the product drops that axis): attention-pooling scores `h @ w[K]`, learned weightings `u[T] @ h`,
a pooled vector through a dense layer, two vectors' dot product. Each compiles integer-only (a constant
vector was refused: 'matmul by a 1-D constant is not supported') and agrees with onnxruntime, under a free
batch too."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OUTPUTS = ("scores", "weighted", "dense", "dot")


def _model(path, batch, outputs) -> str:
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["h"]),
             n("MatMul", ["h", "w"], ["scores"]),  # [B, 8, 16] @ [16] -> [B, 8]
             n("MatMul", ["u", "h"], ["weighted"]),  # [8] @ [B, 8, 16] -> [B, 16]
             n("ReduceMean", ["x"], ["m"], axes=[0, 1], keepdims=0),  # [16]
             n("MatMul", ["m", "W"], ["dense"]),  # [16] @ [16, 5] -> [5]
             n("MatMul", ["m", "m"], ["dot"])]  # [16] @ [16] -> []
    inits = [numpy_helper.from_array(rng.normal(0, 1, 16).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), "u"),
             numpy_helper.from_array(rng.normal(0, 1, (16, 5)).astype(np.float32), "W")]
    nodes = [node for node in nodes if set(node.output) & {"h", "m", *outputs}]
    graph = helper.make_graph(nodes, "vectors", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 16])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("shape", ["2x8x16", "1..4x8x16"])
def test_matmul_with_vector_operands_compiles_integer_only(tmp_path, shape):
    import onnxruntime as ort

    from runtime import compile_model, load
    from frontends.onnx_import import parse_input_shape

    rng = np.random.default_rng(1)
    free = ".." in shape  # a free batch: the products per sample (the pooled vector mixes the batch)
    outputs = OUTPUTS[:2] if free else OUTPUTS
    path = _model(tmp_path / "v.onnx", "n" if free else 2, outputs)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (8, 1 if free else 2, 8, 16)).astype(np.float32))
    model = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                               input_shapes=dict([parse_input_shape(f"x:{shape}")])))
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(path)
    for batch in (2, 3) if free else (2,):
        x = rng.normal(0, 0.8, (batch, 8, 16)).astype(np.float32)
        got, want = model.run({"x": x}), dict(zip(outputs, session.run(None, {"x": x})))
        for name in outputs:
            assert got[name].shape == want[name].shape, name
            scale = np.abs(want[name]).max()
            np.testing.assert_allclose(got[name], want[name], atol=0.03 * scale, err_msg=name)
