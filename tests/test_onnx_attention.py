"""The ONNX Attention op (opset 23+, what torch's dynamo exporter writes for scaled_dot_product_attention)
decomposed into MatMul/Softmax (`frontends/onnx_attention.py`), causal, windowed, soft-capped, grouped-query
and with a key/value cache: equal to onnxruntime's op in float, left alone where the decomposition would
not be the whole op, and integer-only once decomposed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from frontends.onnx_attention import decompose_attention

B, H, S, D = 1, 2, 6, 8


def _model(rank=4, mask=None, outputs=1, **attrs) -> onnx.ModelProto:
    """Attention on graph inputs q, k, v ([B, H, S, D], or [B, S, H*D] with `rank` 3) and a mask input
    (`mask`: "bool", "float" or None)."""
    shape = [B, H, S, D] if rank == 4 else [B, S, H * D]
    if rank == 3:
        attrs.update(q_num_heads=H, kv_num_heads=H)
    names = ["q", "k", "v"] + (["mask"] if mask else [])
    outs = ["y", "present_k", "present_v"][:outputs]
    node = helper.make_node("Attention", names, outs, name="att", **attrs)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names[:3]]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL if mask == "bool" else TensorProto.FLOAT,
                                                    [B, 1, S, S]))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(outs[0], TensorProto.FLOAT, shape)]
                              + [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs[1:]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.input:
        shape = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if v.type.tensor_type.elem_type == TensorProto.BOOL:
            keep = np.ones(shape, bool)
            keep[..., S - 2:] = False  # the last two keys padded
            feeds[v.name] = keep
        elif v.name == "mask":
            feeds[v.name] = np.where(rng.random(shape) < 0.3, -1e4, 0.0).astype(np.float32)
        else:
            feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]


@pytest.mark.parametrize("rank,mask,attrs", [(4, None, {}), (4, "bool", {}), (4, "float", {}), (3, None, {}),
                                             (3, "bool", {"scale": 0.2})])
def test_decomposition_equals_onnxruntime(rank, mask, attrs):
    model = _model(rank, mask, **attrs)
    feeds = _feeds(model)
    expected = _run(model, feeds)
    assert decompose_attention(model) == 1
    assert "Attention" not in {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(_run(model, feeds), expected, rtol=1e-5, atol=1e-6)


def _general(q_heads=4, kv_heads=2, q_len=4, past=0, opset=23, mask=None, **attrs):
    """Attention on [B, S, H*D] inputs with `q_heads` query and `kv_heads` key/value heads, `past`
    cached keys/values (given as inputs, present_key/value as outputs) and an optional mask."""
    names, f = ["q", "k", "v"], TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("q", f, [B, q_len, q_heads * D]),
              *(helper.make_tensor_value_info(n, f, [B, q_len, kv_heads * D]) for n in ("k", "v"))]
    outputs = [helper.make_tensor_value_info("y", f, [B, q_len, q_heads * D])]
    if mask:
        names.append("mask")
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [B, 1, q_len, past + q_len]))
    if past:
        names += [""] * (4 - len(names)) + ["past_k", "past_v"]
        inputs += [helper.make_tensor_value_info(n, f, [B, kv_heads, past, D]) for n in ("past_k", "past_v")]
        outputs += [helper.make_tensor_value_info(n, f, [B, kv_heads, past + q_len, D]) for n in ("present_k", "present_v")]
    node = helper.make_node("Attention", names, [o.name for o in outputs], name="att", q_num_heads=q_heads,
                            kv_num_heads=kv_heads, **attrs)
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


GENERAL = [dict(is_causal=1), dict(softcap=3.0), dict(kv_heads=4), dict(kv_heads=1, is_causal=1),
           dict(past=3, is_causal=1), dict(past=2, mask="bool", softcap=2.0),
           dict(opset=25, is_causal=1, left_window_size=2), dict(opset=25, left_window_size=1, right_window_size=2),
           dict(opset=25, past=3, is_causal=1, left_window_size=1)]


@pytest.mark.parametrize("kw", GENERAL, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_causal_windowed_capped_grouped_and_cached_equal_onnxruntime(kw):
    model = _general(**kw)
    feeds = _feeds(model)
    outs = [o.name for o in model.graph.output]
    session = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
    expected = session(model).run(outs, feeds)
    assert decompose_attention(model) == 1
    assert "Attention" not in {n.op_type for n in model.graph.node}
    for got, want in zip(session(model).run(outs, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_left_alone_where_not_the_whole_op():
    model = _model(4, None, 1)
    att = model.graph.node[0]
    att.output.extend(["", "", "qk"])  # the qk_matmul_output
    assert decompose_attention(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Attention"]


def test_decomposed_attention_compiles_integer_only(tmp_path):
    from runtime import compile_model, load

    model = _model(3, "bool")
    onnx.save(model, tmp_path / "att.onnx")
    samples = [_feeds(model, seed) for seed in range(8)]
    np.savez(tmp_path / "calib.npz", **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    art = load(compile_model(tmp_path / "att.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["integer_only"] is True
    feeds = _feeds(model, 99)
    ours, ref = art.run(feeds)["y"], _run(model, feeds)
    cos = float((ours * ref).sum() / (np.linalg.norm(ours) * np.linalg.norm(ref)))
    assert cos >= 0.99, cos


def _compile_and_compare(tmp_path, model, feeds_fn, output="y"):
    from runtime import compile_model, load

    onnx.save(model, tmp_path / "m.onnx")
    samples = [feeds_fn(model, seed) for seed in range(8)]
    np.savez(tmp_path / "calib.npz", **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    art = load(compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    feeds = feeds_fn(model, 99)
    ours = art.run(feeds)[output]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run([output], feeds)[0]
    return art, float((ours * ref).sum() / (np.linalg.norm(ours) * np.linalg.norm(ref)))


@pytest.mark.parametrize("attrs", [{"is_causal": 1}, {"softcap": 3.0}, {"is_causal": 1, "q_num_heads": 4,
                                                                         "kv_num_heads": 2}])
def test_other_attention_forms_expand_to_integers(tmp_path, attrs):
    """Causal, soft-capped and grouped-query Attention decompose too: the causal mask becomes a constant
    bias of -huge above the diagonal, which the softmax takes as masked logits, the capping a Tanh table,
    the shared key/value heads a Tile; integer-only, close to onnxruntime."""
    if "q_num_heads" in attrs:  # grouped-query: 4 query heads share 2 key/value heads ([B, S, H*D] inputs)
        names = ["q", "k", "v"]
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, S, h * D]) for n, h in zip(names, (4, 2, 2))]
        graph = helper.make_graph([helper.make_node("Attention", names, ["y"], name="att", **attrs)], "g", inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, 4 * D])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
        model.ir_version = 10
    else:
        model = _model(4, None, **attrs)
    art, cos = _compile_and_compare(tmp_path, model, _feeds)
    assert art.manifest["integer_only"] is True
    assert cos >= 0.99, cos


@pytest.mark.parametrize("op,attrs,opset", [("Celu", {"alpha": 0.7}, 13), ("Swish", {"alpha": 1.5}, 24)])
def test_function_ops_tvm_lacks_are_expanded(tmp_path, op, attrs, opset):
    """Ops TVM's importer has no converter for but ONNX defines as a function compile integer-only."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])]
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10

    def feeds(_, seed):
        return {"x": np.random.default_rng(seed).uniform(-4, 4, (1, 64)).astype(np.float32)}

    art, cos = _compile_and_compare(tmp_path, model, feeds)
    assert art.manifest["integer_only"] is True
    assert cos >= 0.999, cos


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_over_the_whole_head(tmp_path, interleaved):
    """RotaryEmbedding (opset 23) over the whole head: its expansion splits off an empty pass-through part
    (zero-size tensors, dropped before they reach a kernel); integer-only, close to onnxruntime."""
    heads, seq, dim, cache = 2, 5, 8, 16
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, heads, seq, dim]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, [1, seq])]
    angles = np.arange(cache)[:, None] / 10000 ** (np.arange(dim // 2)[None] / (dim // 2))
    inits = [onnx.numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
             onnx.numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin")]
    node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "ids"], ["y"], interleaved=interleaved)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                  [1, heads, seq, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10

    def feeds(_, seed):
        rng = np.random.default_rng(seed)
        return {"x": rng.standard_normal((1, heads, seq, dim)).astype(np.float32),
                "ids": np.sort(rng.integers(0, cache, (1, seq))).astype(np.int64)}

    art, cos = _compile_and_compare(tmp_path, model, feeds)
    assert art.manifest["integer_only"] is True
    assert cos >= 0.999, cos


def test_attribute_tvm_ignores_expands_the_op(tmp_path):
    """SpaceToDepth in CRD mode (newest opsets): TVM's converter ignores `mode` (DCR order, wrong channels), so the
    node is expanded into its ONNX definition; integer-only, equal to onnxruntime."""
    node = helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode="CRD")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx.defs.onnx_opset_version())])

    def feeds(_, seed):
        return {"x": np.random.default_rng(seed).standard_normal((1, 2, 4, 6)).astype(np.float32)}

    art, cos = _compile_and_compare(tmp_path, model, feeds)
    assert art.manifest["integer_only"] is True
    assert cos > 0.999, cos


def test_layer_norm_statistics_outputs_are_computed(tmp_path):
    """LayerNormalization's Mean and InvStdDev outputs (TVM's converter makes only Y; the others came out as
    constants and were refused) come from the op's ONNX definition; integer-only, close to onnxruntime."""
    rng = np.random.default_rng(6)
    inits = [onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "g"),
             onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b")]
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv_std"], axis=-1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16]),
                               helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 4, 1]),
                               helper.make_tensor_value_info("inv_std", TensorProto.FLOAT, [1, 4, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    def feeds(_, seed):
        r = np.random.default_rng(seed)
        return {"x": (r.standard_normal((1, 4, 16)) * r.uniform(0.5, 2, (1, 4, 1)) + 1).astype(np.float32)}

    for output in ("y", "mean", "inv_std"):
        (tmp_path / output).mkdir()
        art, cos = _compile_and_compare(tmp_path / output, model, feeds, output)
        assert art.manifest["integer_only"] is True
        assert cos > 0.99, (output, cos)
