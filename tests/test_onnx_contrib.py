"""onnxruntime's contrib ops (com.microsoft) as standard ops (`frontends/onnx_contrib.py`): each rewrite
computes what onnxruntime computes for the contrib node, and an ORT-optimized transformer block
compiles integer-only."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_contrib import contrib_to_standard

D = 32
rng = np.random.default_rng(4)


def _c(name, shape, scale=0.1, offset=0.0):
    return numpy_helper.from_array((offset + scale * rng.standard_normal(shape)).astype(np.float32), name)


def _model(nodes, inits, opset=14, out_shape=(1, 8, D)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _ms(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), domain="com.microsoft", **attrs)


SKIP = [_c("skip", (1, 8, D), 1.0), _c("gamma", (D,), 0.1, 1.0), _c("beta", (D,)), _c("bias", (D,))]
CASES = {
    "SkipLayerNormalization": ([_ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], epsilon=1e-5)], SKIP),
    "SkipLayerNormalization without beta, its sum read": (
        [_ms("SkipLayerNormalization", ["x", "skip", "gamma", "", "bias"], ["n", "", "", "s"], epsilon=1e-12),
         helper.make_node("Add", ["n", "s"], ["y"])], SKIP),
    "SkipSimplifiedLayerNormalization": ([_ms("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], epsilon=1e-6)], SKIP),
    "SimplifiedLayerNormalization": ([helper.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["y"], axis=-1,
                                                      epsilon=1e-6)], SKIP),
    "Gelu": ([_ms("Gelu", ["x"])], []),
    "BiasGelu": ([_ms("BiasGelu", ["x", "bias"])], SKIP),
    "FastGelu": ([_ms("FastGelu", ["x", "bias"])], SKIP),
    "FastGelu without bias": ([_ms("FastGelu", ["x"])], []),
    "QuickGelu": ([_ms("QuickGelu", ["x"], alpha=1.5)], []),
    "FusedMatMul": ([_ms("FusedMatMul", ["x", "w"], alpha=0.5, transB=1)], [_c("w", (D, D))]),
    "FusedMatMul transA": ([_ms("FusedMatMul", ["x", "w"], transA=1)], [_c("w", (8, D))]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rewrite_computes_what_onnxruntime_computes(name):
    nodes, inits = CASES[name]
    model = _model(nodes, inits, out_shape=(1, D, D) if name == "FusedMatMul transA" else (1, 8, D))
    rewritten = copy.deepcopy(model)
    assert contrib_to_standard(rewritten) == 1
    assert not any(n.domain == "com.microsoft" for n in rewritten.graph.node)
    assert all(o.domain != "com.microsoft" for o in rewritten.opset_import)
    onnx.checker.check_model(rewritten)
    x = rng.standard_normal((1, 8, D)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(rewritten), run(model), rtol=1e-4, atol=1e-5)


def test_statistics_outputs_read_leave_the_node():
    nodes = [_ms("SkipLayerNormalization", ["x", "skip", "gamma"], ["n", "mean"]), helper.make_node("Add", ["n", "mean"], ["y"])]
    model = _model(nodes, SKIP)
    assert contrib_to_standard(model) == 0


def test_ort_optimized_transformer_block_compiles_integer_only(tmp_path):
    """MatMul + SkipLayerNormalization (no beta) + Gelu + FastGelu + FusedMatMul, as onnxruntime's
    transformer optimizer writes a BERT layer: refused in both modes before."""
    import runtime
    from runtime import check

    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             _ms("SkipLayerNormalization", ["m", "x", "gamma", "", "bias"], ["s"], epsilon=1e-12),
             _ms("Gelu", ["s"], ["g"]), _ms("FastGelu", ["s", "bias"], ["f"]),
             _ms("FusedMatMul", ["g", "w2"], ["fm"], alpha=0.5, transB=1), helper.make_node("Add", ["fm", "f"], ["y"])]
    model = _model(nodes, [_c("w", (D, D)), _c("w2", (D, D)), *SKIP[1:]])
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 8, D)).astype(np.float32))
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    (row,) = check.float_agreement(tmp_path / "m.onnx", art, {"x": rng.standard_normal((1, 8, D)).astype(np.float32)})
    assert row.cosine > 0.99, row
