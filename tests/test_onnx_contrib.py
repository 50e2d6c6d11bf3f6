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



def _integer_only_cosine(path, feed: dict) -> float:
    """Compile `path` with the calibration data beside it (c.npz), assert it is integer-only, and
    return its cosine to float onnxruntime on `feed`."""
    import runtime
    from runtime import check

    art = runtime.load(runtime.compile_model(path, "x86", path.parent / "a", calib=path.parent / "c.npz", progress=False))
    assert art.manifest["integer_only"] is True
    (row,) = check.float_agreement(path, art, feed)
    return row.cosine

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
    "LayerNormalization at opset 14 (onnxruntime's)": ([helper.make_node("LayerNormalization", ["x", "gamma", "beta"],
                                                                        ["y"], axis=-1, epsilon=1e-5)], SKIP),
    "Gelu": ([_ms("Gelu", ["x"])], []),
    "BiasGelu": ([_ms("BiasGelu", ["x", "bias"])], SKIP),
    "FastGelu": ([_ms("FastGelu", ["x", "bias"])], SKIP),
    "FastGelu without bias": ([_ms("FastGelu", ["x"])], []),
    "QuickGelu": ([_ms("QuickGelu", ["x"], alpha=1.5)], []),
    "QuickGelu with alpha 1 (SiLU, as ORT_ENABLE_EXTENDED fuses a LLaMA's)": ([_ms("QuickGelu", ["x"], alpha=1.0)], []),
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


def test_onnxruntime_layernorm_in_an_old_opset_file_imports(tmp_path):
    """onnxruntime's optimizer writes LayerNormalization into an opset-14 ViT (ORT_ENABLE_EXTENDED, optimize_model
    model_type='vit'); the ONNX checker refused the file before anything rewrote it ('No Op registered for
    LayerNormalization with domain_version of 14'), in both modes."""
    from frontends.onnx_import import load_onnx

    nodes, inits = CASES["LayerNormalization at opset 14 (onnxruntime's)"]
    onnx.save(_model(nodes, inits), tmp_path / "m.onnx")
    assert load_onnx(tmp_path / "m.onnx").outputs[0].shape == (1, 8, D)


def test_statistics_outputs_read_leave_the_node():
    nodes = [_ms("SkipLayerNormalization", ["x", "skip", "gamma"], ["n", "mean"]), helper.make_node("Add", ["n", "mean"], ["y"])]
    model = _model(nodes, SKIP)
    assert contrib_to_standard(model) == 0


def test_ort_optimized_transformer_block_compiles_integer_only(tmp_path):
    """MatMul + SkipLayerNormalization (no beta) + Gelu + FastGelu + FusedMatMul, as onnxruntime's
    transformer optimizer writes a BERT layer: refused in both modes before."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             _ms("SkipLayerNormalization", ["m", "x", "gamma", "", "bias"], ["s"], epsilon=1e-12),
             _ms("Gelu", ["s"], ["g"]), _ms("FastGelu", ["s", "bias"], ["f"]),
             _ms("FusedMatMul", ["g", "w2"], ["fm"], alpha=0.5, transB=1), helper.make_node("Add", ["fm", "f"], ["y"])]
    model = _model(nodes, [_c("w", (D, D)), _c("w2", (D, D)), *SKIP[1:]])
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 8, D)).astype(np.float32))
    cosine = _integer_only_cosine(tmp_path / "m.onnx", {"x": rng.standard_normal((1, 8, D)).astype(np.float32)})
    assert cosine > 0.99, cosine


def _conv_model(nodes, inits, out_channels=8):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 10, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


CONV = [_c("cw", (8, 4, 3, 3), 0.3), _c("cb", (8,)), _c("z", (1, 8, 10, 10))]
FUSED = {  # what onnxruntime's ORT_ENABLE_EXTENDED writes for a conv or a Gemm and the activation after it
    "FusedConv Relu": ([_ms("FusedConv", ["x", "cw", "cb"], pads=[1] * 4, activation="Relu")], CONV),
    "FusedConv Clip (ReLU6)": ([_ms("FusedConv", ["x", "cw", "cb"], pads=[1] * 4, activation="Clip",
                                    activation_params=[0.0, 6.0])], CONV),
    "FusedConv LeakyRelu": ([_ms("FusedConv", ["x", "cw"], pads=[1] * 4, activation="LeakyRelu",
                                 activation_params=[0.2])], CONV),
    "FusedConv HardSigmoid": ([_ms("FusedConv", ["x", "cw", "cb"], pads=[1] * 4, activation="HardSigmoid",
                                   activation_params=[0.3, 0.4])], CONV),
    "FusedConv Sigmoid, its sum": ([_ms("FusedConv", ["x", "cw", "cb", "z"], pads=[1] * 4, activation="Sigmoid")], CONV),
    "FusedConv Tanh, a sum without bias": ([_ms("FusedConv", ["x", "cw", "", "z"], pads=[1] * 4, activation="Tanh")], CONV),
    "FusedConv grouped, no activation": ([_ms("FusedConv", ["x", "gw", "cb"], pads=[1] * 4, group=4)],
                                         [_c("gw", (8, 1, 3, 3), 0.3), _c("cb", (8,))]),
}


@pytest.mark.parametrize("name", list(FUSED))
def test_fused_conv_computes_what_onnxruntime_computes(name):
    nodes, inits = FUSED[name]
    model = _conv_model(nodes, inits)
    rewritten = copy.deepcopy(model)
    assert contrib_to_standard(rewritten) == 1
    assert not any(n.domain == "com.microsoft" for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten)
    x = rng.standard_normal((1, 4, 10, 10)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(rewritten), run(model), rtol=1e-4, atol=1e-5)


def test_fused_gemm_computes_what_onnxruntime_computes():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["x2"]),
             _ms("FusedGemm", ["x2", "gw", "gb"], ["g"], transB=1, alpha=0.5, activation="LeakyRelu",
                 activation_alpha=0.1),
             helper.make_node("Reshape", ["g", "back"], ["y"])]
    inits = [_c("gw", (D, D)), _c("gb", (D,)), numpy_helper.from_array(np.array([8, D], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 8, D], np.int64), "back")]
    model = _model(nodes, inits)
    rewritten = copy.deepcopy(model)
    assert contrib_to_standard(rewritten) == 1
    x = rng.standard_normal((1, 8, D)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(rewritten), run(model), rtol=1e-4, atol=1e-5)


def test_ort_extended_cnn_compiles_integer_only(tmp_path):
    """A conv -> ReLU6 -> conv -> ReLU -> residual CNN saved by onnxruntime at ORT_ENABLE_EXTENDED (its own
    FusedConv nodes, as a user's EfficientNet-Lite0 was): refused in both modes before, the first conv reading the
    input ('nothing before them is left to compile')."""
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c1"], pads=[1] * 4),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "cb"], ["c2"], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("Add", ["r2", "r1"], ["y"])]
    inits = [*CONV[:2], _c("w2", (8, 8, 3, 3), 0.2), numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(6), "hi")]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "m.onnx")
    ort.InferenceSession(_conv_model(nodes, inits).SerializeToString(), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(tmp_path / "m.onnx")
    assert sum(n.op_type == "FusedConv" for n in saved.graph.node) == 2
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 4, 10, 10)).astype(np.float32))
    cosine = _integer_only_cosine(tmp_path / "m.onnx", {"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)})
    assert cosine > 0.99, cosine


H, HEADS, SEQ, VOCAB = 32, 4, 8, 50


def _bert_block(mask_rank: int, opset: int = 17, embed: bool = True, **attention_attrs) -> onnx.ModelProto:
    """EmbedLayerNormalization (its mask_index: the count of valid tokens) -> Attention, as onnxruntime's BERT
    optimizer writes a layer; or (embed False) an Attention reading the graph's [B, T] / [B, S, T] mask."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT32, [1, SEQ])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT32, [1, SEQ] if mask_rank < 3 else [1, SEQ, SEQ])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, H])
    inits = [_c("word", (VOCAB, H), 1.0), _c("pos", (16, H), 0.5), _c("seg", (2, H), 0.5), _c("gamma", (H,), 0.1, 1.0),
             _c("beta", (H,)), _c("qkv", (H, 3 * H), 0.3), _c("qkv_b", (3 * H,))]
    if embed:
        nodes = [helper.make_node("ConstantOfShape", [helper.make_node("Shape", ["ids"], ["s"]).output[0]], ["z"],
                                  value=numpy_helper.from_array(np.zeros(1, np.int32))),
                 _ms("EmbedLayerNormalization", ["ids", "z", "word", "pos", "seg", "gamma", "beta", "mask"],
                     ["e", "count"], epsilon=1e-12),
                 _ms("Attention", ["e", "qkv", "qkv_b", "count"], ["y"], num_heads=HEADS, **attention_attrs)]
        nodes.insert(0, helper.make_node("Shape", ["ids"], ["s"]))
        inputs = [ids, mask]
    else:
        nodes = [_ms("Attention", ["x", "qkv", "qkv_b", "mask"], ["y"], num_heads=HEADS, **attention_attrs)]
        inputs = [x, mask]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, H])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _bert_inputs(mask_rank: int, valid: int = 5) -> dict:
    keys = (np.arange(SEQ) < valid).astype(np.int32)
    mask = keys[None] if mask_rank < 3 else np.broadcast_to(np.tril(np.ones((SEQ, SEQ), np.int32)) * keys, (1, SEQ, SEQ))
    return {"ids": rng.integers(0, VOCAB, (1, SEQ)).astype(np.int32), "mask": np.ascontiguousarray(mask),
            "x": rng.standard_normal((1, SEQ, H)).astype(np.float32)}


BERT = {"EmbedLayerNormalization -> Attention": dict(mask_rank=1),
        "the same at opset 12 (Unsqueeze and ReduceSum axes as attributes)": dict(mask_rank=1, opset=12),
        "Attention, a [B, T] mask, its own scale": dict(mask_rank=2, embed=False, scale=0.3),
        "Attention, a [B, S, T] mask": dict(mask_rank=3, embed=False)}


@pytest.mark.parametrize("name", list(BERT))
def test_bert_attention_computes_what_onnxruntime_computes(name):
    model = _bert_block(**BERT[name])
    rewritten = copy.deepcopy(model)
    assert contrib_to_standard(rewritten) >= 1
    assert not any(n.domain == "com.microsoft" for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten)
    for valid in (SEQ, 5, 1):
        feed = _bert_inputs(BERT[name]["mask_rank"], valid)
        run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
            None, {i.name: feed[i.name] for i in m.graph.input})[0]
        np.testing.assert_allclose(run(rewritten), run(model), rtol=1e-4, atol=1e-5)


def test_attention_with_a_shared_cache_buffer_is_left():
    """Causal and cached Attention are rewritten (test_onnx_contrib_decoder.py); a shared buffer is not."""
    model = _bert_block(mask_rank=2, embed=False, unidirectional=1, past_present_share_buffer=1)
    assert contrib_to_standard(model) == 0


def test_bert_optimizer_block_compiles_integer_only(tmp_path):
    """EmbedLayerNormalization -> Attention (onnxruntime's optimize_model(model_type='bert') on a dynamic-axes
    export): refused in both modes before; padded keys get exactly no weight."""
    onnx.save(_bert_block(mask_rank=1), tmp_path / "m.onnx")
    samples = [_bert_inputs(1, valid) for valid in (8, 6, 5, 3, 8, 7, 4, 8)]
    np.savez(tmp_path / "c.npz", ids=np.stack([s["ids"] for s in samples]), mask=np.stack([s["mask"] for s in samples]))
    feed = _bert_inputs(1, 5)
    cosine = _integer_only_cosine(tmp_path / "m.onnx", {"ids": feed["ids"], "mask": feed["mask"]})
    assert cosine > 0.99, cosine


def test_float16_graph_gets_float16_constants():
    """A float16 model's SkipLayerNormalization and Gelu (onnxruntime's optimizer, then convert_float_to_float16):
    the rewrite's constants were float32, and onnxruntime refused the rewritten graph (Add bound to float16 and
    float)."""
    c16 = lambda name, shape, s=0.1, o=0.0: numpy_helper.from_array((o + s * rng.standard_normal(shape)).astype(np.float16), name)  # noqa: E731
    nodes = [_ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["s"], epsilon=1e-5), _ms("Gelu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, D])],
                              [c16("skip", (1, 8, D), 1.0), c16("gamma", (D,), 0.1, 1.0), c16("beta", (D,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    rewritten = copy.deepcopy(model)
    assert contrib_to_standard(rewritten) == 2
    x = rng.standard_normal((1, 8, D)).astype(np.float16)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(rewritten).astype(np.float32), run(model).astype(np.float32), rtol=0.02, atol=0.02)


def _ort_all(model: onnx.ModelProto, path) -> onnx.ModelProto:
    """`model` as onnxruntime saves it at ORT_ENABLE_ALL (SessionOptions' default level)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(path)
    if not any(n.domain == "com.microsoft.nchwc" for n in saved.graph.node):
        pytest.skip("this machine's onnxruntime writes no nchwc ops (no AVX2 / AVX-512 blocks)")
    return saved


def _mobile_block(pool: str = "MaxPool") -> onnx.ModelProto:
    """conv 3 -> 32 stride 2 + ReLU6, depthwise 3x3, pointwise 32 -> 32 + residual, max pool, 1x1 up to 48,
    nearest 2x upsample, plus its own `pool` (3x3, or global: broadcast): the ops onnxruntime's NCHWc
    transformer blocks."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1] * 4),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "dw", "b1"], ["c2"], group=32, pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "pw", "b1"], ["c3"]), helper.make_node("Add", ["c3", "r1"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w4", "b4"], ["c4"]),
             helper.make_node("Resize", ["c4", "", "scales"], ["u"], mode="nearest", nearest_mode="floor",
                              coordinate_transformation_mode="asymmetric"),
             helper.make_node(pool, ["u"], ["g"], **({"kernel_shape": [3, 3], "pads": [1] * 4} if pool == "MaxPool" else {})), helper.make_node("Add", ["u", "g"], ["y"])]
    inits = [_c("w1", (32, 3, 3, 3), 0.3), _c("b1", (32,)), _c("dw", (32, 1, 3, 3), 0.3), _c("pw", (32, 32, 1, 1), 0.2),
             _c("w4", (48, 32, 1, 1), 0.2), _c("b4", (48,)), numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(6), "hi"), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nchwc_graph_becomes_the_nchw_one(tmp_path):
    """Every nchwc op of an ORT_ENABLE_ALL file rewritten; the filters unpermuted: the same outputs as onnxruntime
    running the blocked file (and the original)."""
    model = _mobile_block()
    saved = _ort_all(model, tmp_path / "all.onnx")
    rewritten = copy.deepcopy(saved)
    assert {n.op_type for n in saved.graph.node if n.domain} >= {"Conv", "MaxPool", "Upsample", "ReorderOutput"}
    assert contrib_to_standard(rewritten) >= 8
    assert not any(n.domain.startswith("com.microsoft") for n in rewritten.graph.node)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(rewritten), run(saved), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run(rewritten), run(model), rtol=1e-4, atol=1e-5)


def test_blocked_layout_read_by_a_reshape_is_left(tmp_path):
    """onnxruntime broadcasts a global pool over the image by Reshapes of the blocks: NCHW would differ, so the
    nchwc ops stay and the op check names them (refused clearly, as before)."""
    saved = _ort_all(_mobile_block("GlobalAveragePool"), tmp_path / "all.onnx")
    assert any(n.op_type == "Reshape" for n in saved.graph.node)
    assert contrib_to_standard(saved) == 0


def test_ort_all_cnn_compiles_integer_only(tmp_path):
    """Refused in both modes before (the nchwc conv reading the input: 'nothing before them is left to compile')."""
    _ort_all(_mobile_block(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32))
    cosine = _integer_only_cosine(tmp_path / "m.onnx", {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)})
    assert cosine > 0.99, cosine


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
def test_rewritten_skip_layernorm_is_one_layer_norm(tmp_path, dtype):
    """The rewrite's LayerNorm chain reaches the integer path as one nn.layer_norm (16-bit I-LayerNorm): it squared by
    Mul, which FuseLayerNorm did not match, and a float16 model's epsilon 1e-12 is 0, its Add folded away, which it
    did not match either; all-MiniLM-L6-v2 through optimize_model + float16 kept 8-bit LayerNorm chains (token
    cosine 0.19)."""
    from frontends import load_onnx
    from passes import bind_weights

    t = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    inits = [numpy_helper.from_array(numpy_helper.to_array(i).astype(dtype), i.name) for i in SKIP[:3]]
    graph = helper.make_graph([_ms("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], epsilon=1e-12)], "g",
                              [helper.make_tensor_value_info("x", t, [1, 8, D])],
                              [helper.make_tensor_value_info("y", t, [1, 8, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    imported = load_onnx(tmp_path / "m.onnx")
    assert "R.nn.layer_norm" in bind_weights(imported.mod, imported.params).script()


def test_nchwc_channels_padded_to_whole_blocks(tmp_path):
    """A depthwise conv over 28 channels (BlazeFace, converted by tflite2onnx): onnxruntime stores its filter for 32
    and zero-pads the input in ReorderInput; unpadded, TVM's importer refused the conv (28 channels, 32 groups)."""
    nodes = [helper.make_node("Conv", ["x", "dw", "b"], ["c"], group=28, pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 28, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 28, 8, 8])],
                              [_c("dw", (28, 1, 3, 3), 0.3), _c("b", (28,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    saved = _ort_all(model, tmp_path / "m.onnx")
    assert {n.op_type for n in saved.graph.node if n.domain} >= {"ReorderInput", "Conv"}
    rewritten = copy.deepcopy(saved)
    contrib_to_standard(rewritten)
    x = rng.standard_normal((1, 28, 8, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(rewritten), run(model), rtol=1e-4, atol=1e-5)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 28, 8, 8)).astype(np.float32))
    cosine = _integer_only_cosine(tmp_path / "m.onnx", {"x": x})
    assert cosine > 0.99, cosine


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "zero points"])
def test_matmul_nbits_dequantized_computes_what_onnxruntime_computes(tmp_path, symmetric):
    """onnxruntime's weight-only 4-bit quantizer (MatMulNBits, 32-value blocks, K = 80 not a multiple): refused in
    both modes before; now the MatMul of its dequantized weights, and integer-only."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 80])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 48])],
                              [_c("w", (80, 64), 0.2), _c("w2", (64, 48), 0.2)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=symmetric)
    quantizer.process()
    packed = quantizer.model.model
    assert sum(n.op_type == "MatMulNBits" for n in packed.graph.node) == 2
    rewritten = copy.deepcopy(packed)
    assert contrib_to_standard(rewritten) == 2
    x = rng.standard_normal((1, 8, 80)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(rewritten), run(packed), rtol=1e-4, atol=1e-4)
    onnx.save(packed, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 8, 80)).astype(np.float32))
    cosine = _integer_only_cosine(tmp_path / "m.onnx", {"x": x})
    assert cosine > 0.99, cosine


def test_quantize_dynamic_bert_block_compiles_integer_only(tmp_path):
    """optimize_model's EmbedLayerNormalization -> Attention, then quantize_dynamic (onnxruntime's BERT recipe):
    QEmbedLayerNormalization and QAttention, refused in both modes before; now their float ops with the weights
    dequantized, which agree with the quantized file up to its run-time activation rounding."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from frontends.onnx_qcontrib import quantized_contrib_to_float

    onnx.save(_bert_block(mask_rank=1), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    quantized = onnx.load(tmp_path / "q.onnx")
    assert {n.op_type for n in quantized.graph.node} >= {"QAttention", "QEmbedLayerNormalization"}
    rewritten = copy.deepcopy(quantized)
    assert quantized_contrib_to_float(rewritten) == 2
    assert contrib_to_standard(rewritten) == 2 and not any(n.domain for n in rewritten.graph.node)
    feed = _bert_inputs(1, 5)
    feed = {"ids": feed["ids"], "mask": feed["mask"]}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]  # noqa: E731
    a, b = run(rewritten).ravel(), run(quantized).ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
    samples = [_bert_inputs(1, valid) for valid in (8, 6, 5, 3, 8, 7, 4, 8)]
    np.savez(tmp_path / "c.npz", ids=np.stack([s["ids"] for s in samples]), mask=np.stack([s["mask"] for s in samples]))
    cosine = _integer_only_cosine(tmp_path / "q.onnx", feed)
    assert cosine > 0.98, cosine
