"""onnxruntime's decoder ops (com.microsoft Attention with a cache, MultiHeadAttention, GroupQueryAttention,
RotaryEmbedding) as standard ops: each rewrite computes what onnxruntime computes for the node, attribute
variants included, and a decoder block of them compiles integer-only."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_contrib import contrib_to_standard

rng = np.random.default_rng(21)
B, S, P, N, HD = 1, 3, 6, 4, 16  # batch, new tokens, past length, heads, head size
H = N * HD
FLOAT, INT32, INT64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


def _ms(op, inputs, outputs, **attrs):
    return helper.make_node(op, list(inputs), list(outputs), domain="com.microsoft", **attrs)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _rope_cache(rotary: int, length: int = 64):
    angle = np.arange(length)[:, None] * 10000.0 ** (-np.arange(0, rotary, 2) / rotary)
    return [_const("cos", np.cos(angle).astype(np.float32)), _const("sin", np.sin(angle).astype(np.float32))]


def _model(nodes, inputs, outputs, inits=(), opset=17):
    vi = lambda name, t, shape: helper.make_tensor_value_info(name, t, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [vi(*i) for i in inputs], [vi(*o) for o in outputs], list(inits))
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _feed(model) -> dict:
    """Inputs by name: floats normal, seqlens_k the full length less one, position ids after the past."""
    feed, seq = {}, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        kind = i.type.tensor_type.elem_type
        if i.name == "seqlens_k":
            feed[i.name] = np.full(shape, _past(model) + seq - 1, np.int32)
        elif i.name == "total":
            feed[i.name] = np.array(_past(model) + seq, np.int32)
        elif i.name == "positions":
            feed[i.name] = (np.arange(S) + _past(model))[None].repeat(shape[0], 0).astype(np.int64) if len(shape) == 2 \
                else np.array([_past(model)], np.int64)
        elif i.name == "past_length":
            feed[i.name] = np.array([P], np.int32)
        elif i.name == "lengths":
            feed[i.name] = np.array([_past(model) + S - 2], np.int32)
        elif kind in (INT32, INT64):
            mask = np.ones(shape, np.int32)
            mask[..., 1] = 0  # one masked key
            feed[i.name] = mask.astype(helper.tensor_dtype_to_np_dtype(kind))
        else:
            feed[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _past(model) -> int:
    past = [i for i in model.graph.input if i.name.startswith("past")]
    return past[0].type.tensor_type.shape.dim[-2].dim_value if past else 0


def _agrees(model, feed=None, atol=1e-4):
    rewritten = copy.deepcopy(model)
    assert contrib_to_standard(rewritten) >= 1
    left = [n.op_type for n in rewritten.graph.node if n.domain == "com.microsoft"]
    assert not left, left
    onnx.checker.check_model(rewritten)
    feed = feed or _feed(model)
    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)

    for got, want in zip(run(rewritten), run(model)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


# ------------------------------------------------------------------ GPT-2's Attention: [2, B, N, P, h] cache
def _gpt2_attention(past=True, present=True, mask=True, heads=N, head=HD, **attrs):
    hidden = heads * head
    inits = [_const("w", (0.2 * rng.standard_normal((hidden, 3 * hidden))).astype(np.float32)),
             _const("b", (0.1 * rng.standard_normal(3 * hidden)).astype(np.float32))]
    inputs = [("x", FLOAT, [B, S, hidden])]
    total = S + (P if past else 0)
    if mask:
        inputs.append(("mask", INT32, [B, total]))
    if past:
        inputs.append(("past", FLOAT, [2, B, heads, P, head]))
    outputs = [("y", FLOAT, [B, S, hidden])] + ([("present", FLOAT, [2, B, heads, total, head])] if present else [])
    node = _ms("Attention", ["x", "w", "b", "mask" if mask else "", "past" if past else ""],
               ["y"] + (["present"] if present else []), num_heads=heads, **attrs)
    return _model([node], inputs, outputs, inits, opset=13)


ATTENTION = {
    "past and present, unidirectional, [B, T] mask": dict(unidirectional=1),
    "first step: present without past": dict(past=False, unidirectional=1),
    "causal only": dict(past=False, present=False, mask=False, unidirectional=1),
    "past, bidirectional, its own scale": dict(scale=0.2),
}


@pytest.mark.parametrize("name", list(ATTENTION))
def test_gpt2_attention_computes_what_onnxruntime_computes(name):
    _agrees(_gpt2_attention(**ATTENTION[name]))


@pytest.mark.parametrize("attrs", [dict(past_present_share_buffer=1), dict(do_rotary=1)], ids=["shared buffer", "rotary"])
def test_attention_forms_without_a_reference_are_left(attrs):
    """A shared cache buffer and do_rotary: onnxruntime's CPU kernel refuses both (no reference to check a
    rewrite against); they stay, for the op check to name."""
    model = _gpt2_attention(unidirectional=1, **attrs)
    assert contrib_to_standard(model) == 0


# ------------------------------------------------------------------ MultiHeadAttention
def _mha(form="3d", past=True, bias=True, mask=None, attention_bias=False, unidirectional=1, **attrs):
    inputs, inits, ins = [], [], ["q", "k", "v", "", "", "", "", ""]
    total = S + (P if past else 0)
    if form == "packed qkv":
        inputs.append(("q", FLOAT, [B, S, N, 3, HD]))
        ins[1] = ins[2] = ""
    elif form == "cross, heads-first keys":
        inputs += [("q", FLOAT, [B, S, H]), ("k", FLOAT, [B, N, 10, HD]), ("v", FLOAT, [B, N, 10, HD])]
        total = 10
    else:
        inputs += [("q", FLOAT, [B, S, H]), ("k", FLOAT, [B, S, H]), ("v", FLOAT, [B, S, H])]
    if bias:
        inits.append(_const("bias", (0.1 * rng.standard_normal(3 * H)).astype(np.float32)))
        ins[3] = "bias"
    if mask == "[B, T]":
        inputs.append(("mask", INT32, [B, total]))
        ins[4] = "mask"
    elif mask == "[B] lengths":
        inputs.append(("lengths", INT32, [B]))
        ins[4] = "lengths"
    if attention_bias:
        inputs.append(("ab", FLOAT, [1, N, S, total]))
        ins[5] = "ab"
    outs = ["y"]
    outputs = [("y", FLOAT, [B, S, H])]
    if past:
        inputs += [("past_key", FLOAT, [B, N, P, HD]), ("past_value", FLOAT, [B, N, P, HD])]
        ins[6:8] = ["past_key", "past_value"]
        outs += ["present_key", "present_value"]
        outputs += [("present_key", FLOAT, [B, N, total, HD]), ("present_value", FLOAT, [B, N, total, HD])]
    node = _ms("MultiHeadAttention", ins, outs, num_heads=N, unidirectional=unidirectional, **attrs)
    return _model([node], inputs, outputs, inits)


MHA = {
    "q, k, v + bias, past and presents, causal": dict(),
    "no past, bidirectional, its own scale": dict(past=False, unidirectional=0, scale=0.3),
    "[B, T] key padding mask and attention_bias": dict(mask="[B, T]", attention_bias=True),
    "[B] key lengths": dict(past=False, unidirectional=0, mask="[B] lengths"),
    "cross attention over heads-first keys": dict(form="cross, heads-first keys", past=False, bias=False, unidirectional=0),
}


@pytest.mark.parametrize("name", list(MHA))
def test_multi_head_attention_computes_what_onnxruntime_computes(name):
    _agrees(_mha(**MHA[name]))


@pytest.mark.parametrize("unidirectional", [1, 0], ids=["causal", "bidirectional"])
def test_multi_head_attention_shared_buffer_computes_what_onnxruntime_computes(unidirectional):
    """past_sequence_length P with past and present one buffer of M rows: the new rows written at P, the rows
    after them kept, keys from P + S on not attended (onnxruntime's CPU kernel)."""
    m = 12
    node = _ms("MultiHeadAttention", ["q", "k", "v", "bias", "", "", "past_key", "past_value", "past_length"],
               ["y", "present_key", "present_value"], num_heads=N, unidirectional=unidirectional)
    model = _model([node], [("q", FLOAT, [B, S, H]), ("k", FLOAT, [B, S, H]), ("v", FLOAT, [B, S, H]),
                            ("past_key", FLOAT, [B, N, m, HD]), ("past_value", FLOAT, [B, N, m, HD]),
                            ("past_length", INT32, [1])],
                   [("y", FLOAT, [B, S, H]), ("present_key", FLOAT, [B, N, m, HD]), ("present_value", FLOAT, [B, N, m, HD])],
                   [_const("bias", (0.1 * rng.standard_normal(3 * H)).astype(np.float32))])
    feed = _feed(model)
    for length in (5, 0, m - S):
        feed["past_length"] = np.array([length], np.int32)
        _agrees(model, feed)


def test_packed_multi_head_attention_is_left():
    """Packed [B, L, N, 3, h] q, k, v: onnxruntime's CPU kernel does not implement it (no reference)."""
    assert contrib_to_standard(_mha(form="packed qkv", past=False, bias=False)) == 0


# ------------------------------------------------------------------ RotaryEmbedding
def _rotary(rank=3, positions="[B, S]", rotary=0, **attrs):
    shape = [B, S, H] if rank == 3 else [B, N, S, HD]
    inputs = [("x", FLOAT, shape), ("positions", INT64, [B, S] if positions == "[B, S]" else [1])]
    attrs = dict(attrs, num_heads=N) if rank == 3 else attrs
    if rotary:
        attrs["rotary_embedding_dim"] = rotary
    node = _ms("RotaryEmbedding", ["x", "positions", "cos", "sin"], ["y"], **attrs)
    past = [("past_key", FLOAT, [B, N, P, HD])]  # only to place the positions after a past (_feed)
    model = _model([node], inputs, [("y", FLOAT, shape)], _rope_cache(rotary or HD))
    feed = _feed(_model([], inputs + past, []))
    return model, {k: v for k, v in feed.items() if k != "past_key"}


ROTARY = {
    "3-D, halves": dict(),
    "3-D, interleaved": dict(interleaved=1),
    "4-D heads-first, interleaved": dict(rank=4, interleaved=1),
    "a [1] position offset": dict(positions="[1]"),
    "partial rotary (8 of 16 channels)": dict(rotary=8),
}


@pytest.mark.parametrize("name", list(ROTARY))
def test_rotary_embedding_computes_what_onnxruntime_computes(name):
    _agrees(*_rotary(**ROTARY[name]))


# ------------------------------------------------------------------ GroupQueryAttention
KV = 2


def _gqa(packed=False, past=True, rotary=False, batch=B, seq=S, sink=False, qk_norm=False, **attrs):
    total = seq + (P if past else 0)
    ins = ["q", "k", "v", "", "", "seqlens_k", "total", "", ""]
    inputs = [("q", FLOAT, [batch, seq, (N + 2 * KV) * HD if packed else H])]
    if packed:
        ins[1] = ins[2] = ""
    else:
        inputs += [("k", FLOAT, [batch, seq, KV * HD]), ("v", FLOAT, [batch, seq, KV * HD])]
    outs, outputs = ["y"], [("y", FLOAT, [batch, seq, H])]
    if past:
        inputs += [("past_key", FLOAT, [batch, KV, P, HD]), ("past_value", FLOAT, [batch, KV, P, HD])]
        ins[3:5] = ["past_key", "past_value"]
    outs += ["present_key", "present_value"]
    outputs += [("present_key", FLOAT, [batch, KV, total, HD]), ("present_value", FLOAT, [batch, KV, total, HD])]
    inputs += [("seqlens_k", INT32, [batch]), ("total", INT32, [])]
    inits = []
    if rotary:
        inits = _rope_cache(HD)
        ins[7:9] = ["cos", "sin"]
        attrs["do_rotary"] = 1
    if sink or qk_norm:
        ins += [""] * (16 - len(ins))
    if sink:
        inits.append(_const("sink", rng.standard_normal(N).astype(np.float32)))
        ins[11] = "sink"
    if qk_norm:
        inits += [_const(n, (1 + 0.3 * rng.standard_normal(HD)).astype(np.float32)) for n in ("q_norm", "k_norm")]
        ins[14:16] = ["q_norm", "k_norm"]
    node = _ms("GroupQueryAttention", ins, outs, num_heads=N, kv_num_heads=KV, **attrs)
    return _model([node], inputs, outputs, inits)


GQA = {
    "q, k, v with a cache": dict(),
    "rotary, halves": dict(rotary=True),
    "rotary, interleaved, packed q, k, v": dict(rotary=True, packed=True, rotary_interleaved=1),
    "first prompt (no cache), rotary": dict(past=False, rotary=True),
    "local window of 4 keys": dict(local_window_size=4),
    "softcap and its own scale": dict(softcap=2.0, scale=0.5),
    "head_sink": dict(sink=True),
    "smooth_softmax": dict(smooth_softmax=1),
    "smooth_softmax -1 (unset: onnxruntime's saved files write it)": dict(smooth_softmax=-1, rotary=True),
}


@pytest.mark.parametrize("name", list(GQA))
def test_group_query_attention_computes_what_onnxruntime_computes(name):
    _agrees(_gqa(**GQA[name]))


def test_group_query_attention_first_prompt_of_rows_of_their_own_length():
    """A first prompt (no cache) whose second row is right-padded: its padded keys are not attended; its
    presents are all its keys and values, as onnxruntime writes them."""
    model = _gqa(past=False, rotary=True, batch=2)
    feed = _feed(model)
    feed["seqlens_k"] = np.array([S - 1, S - 2], np.int32)
    _agrees(model, feed)


def test_group_query_attention_with_q_k_norms_is_left():
    """Qwen3's per-head q / k norm weights: onnxruntime's CPU kernel refuses them (no reference)."""
    assert contrib_to_standard(_gqa(qk_norm=True, rotary=True)) == 0


def test_group_query_attention_rows_of_their_own_length():
    """seqlens_k arrives at run time: a row whose cache holds fewer tokens attends to those (its queries at
    its own positions), as onnxruntime computes it (one new token: onnxruntime's batches of several rows)."""
    model = _gqa(rotary=True, batch=2, seq=1)
    feed = _feed(model)
    feed["seqlens_k"] = np.array([P, P - 2], np.int32)
    _agrees(model, feed)


# ------------------------------------------------------------------ a decoder block, integer-only
def _decoder_block(kind: str, free: bool) -> onnx.ModelProto:
    """RMSNorm -> q, k, v projections -> the attention op with a cache -> output projection + residual, as
    onnxruntime's LLaMA / GPT-2 fusions leave a layer; `free`: batch, sequence and past dims named."""
    w = lambda shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    b, s, p, t = ("batch", "seq", "past", "total") if free else (B, S, P, P + S)
    kv = KV if kind.startswith("gqa") else N
    inits = [_const("gamma", (1 + 0.2 * rng.standard_normal(H)).astype(np.float32)), _const("wq", w((H, H))),
             _const("wk", w((H, kv * HD))), _const("wv", w((H, kv * HD))), _const("wo", w((H, H))), *_rope_cache(HD)]
    nodes = [helper.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["n"], axis=-1, epsilon=1e-6),
             *(helper.make_node("MatMul", ["n", f"w{c}"], [c]) for c in "qkv")]
    inputs = [("x", FLOAT, [b, s, H]), ("mask", INT64, [b, t]), ("position_ids", INT64, [b, s])]
    presents = ["y_attn", "present_key", "present_value"]
    if kind.startswith("gqa"):  # seqlens_k and the total length from the mask, as onnxruntime's convert_generation does
        inits += [_const("axis1", np.array([1], np.int64)), _const("one", np.array(1, np.int64))]
        nodes += [helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),  # [B, 1], as it writes it
                  helper.make_node("Sub", ["count", "one"], ["last"]),
                  helper.make_node("Cast", ["last"], ["seqlens_k"], to=INT32),
                  helper.make_node("Shape", ["mask"], ["mask_shape"], start=1, end=2),
                  helper.make_node("Squeeze", ["mask_shape"], ["total64"]),
                  helper.make_node("Cast", ["total64"], ["total"], to=INT32),
                  _ms("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total", "cos", "sin",
                                              "", "", "sink" if kind == "gqa, head_sink" else ""],
                      presents, num_heads=N, kv_num_heads=KV, do_rotary=1)]
        inits.append(_const("sink", rng.standard_normal(N).astype(np.float32)))
        inputs = inputs[:2]
    else:
        nodes += [helper.make_node("Cast", ["mask"], ["mask32"], to=INT32),
                  _ms("RotaryEmbedding", ["q", "position_ids", "cos", "sin"], ["q_rot"], num_heads=N),
                  _ms("RotaryEmbedding", ["k", "position_ids", "cos", "sin"], ["k_rot"], num_heads=N),
                  _ms("MultiHeadAttention", ["q_rot", "k_rot", "v", "", "mask32", "", "past_key", "past_value"], presents,
                      num_heads=N, unidirectional=1)]
    nodes += [helper.make_node("MatMul", ["y_attn", "wo"], ["o"]), helper.make_node("Add", ["o", "x"], ["y"])]
    inputs += [("past_key", FLOAT, [b, kv, p, HD]), ("past_value", FLOAT, [b, kv, p, HD])]
    outputs = [("y", FLOAT, [b, s, H]), ("present_key", FLOAT, [b, kv, t, HD]), ("present_value", FLOAT, [b, kv, t, HD])]
    return _model(nodes, inputs, outputs, inits)


def _block_sample(model, seed: int) -> dict:
    r = np.random.default_rng(seed)
    kv = KV if any(n.op_type == "GroupQueryAttention" for n in model.graph.node) else N
    sample = {"x": r.standard_normal((B, S, H)).astype(np.float32), "mask": np.ones((B, P + S), np.int64),
              "position_ids": np.arange(P, P + S, dtype=np.int64)[None],
              "past_key": r.standard_normal((B, kv, P, HD)).astype(np.float32),
              "past_value": r.standard_normal((B, kv, P, HD)).astype(np.float32)}
    return {i.name: sample[i.name] for i in model.graph.input}


@pytest.mark.parametrize("kind,free", [("gqa", True), ("mha", False), ("gqa, head_sink", False)],
                         ids=["GroupQueryAttention, free dims", "RotaryEmbedding + MultiHeadAttention", "with head_sink"])
def test_decoder_block_compiles_integer_only(tmp_path, kind, free):
    """A LLaMA layer as onnxruntime's fusions leave it: refused integer-only before (every op named);
    now integer-only, its output and presents at cosine > 0.99 to onnxruntime running the fused file."""
    import runtime
    from runtime import check

    model = _decoder_block(kind, free)
    onnx.save(model, tmp_path / "m.onnx")
    samples = [_block_sample(model, seed) for seed in range(8)]
    np.savez(tmp_path / "c.npz", **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    shapes = {i.name: samples[0][i.name].shape for i in model.graph.input} if free else None
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             input_shapes=shapes, progress=False))
    assert art.manifest["integer_only"] is True
    rows = check.float_agreement(tmp_path / "m.onnx", art, [_block_sample(model, 100)])
    assert min(r.cosine for r in rows) > 0.99, rows


@pytest.mark.parametrize("kind", ["gqa", "mha", "gqa, head_sink"])
def test_float16_decoder_block_computes_what_onnxruntime_computes(kind):
    """onnxruntime's float16 conversion of a layer (keep_io_types): the rewrites' constants take float16, and
    the masked logits the float16 minimum."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from frontends.onnx_import import _sort_nodes

    model = convert_float_to_float16(_decoder_block(kind, free=False), keep_io_types=True)
    _sort_nodes(model.graph)  # the converter appends its input casts at the end (intq sorts on reading)
    _agrees(model, _block_sample(model, 3), atol=2e-2)


def test_calibration_data_onnxruntime_refuses_is_named(tmp_path, capsys):
    """--allow-float with a form left to onnxruntime (a window-sized GQA cache) and calibration data whose cache
    is shorter than the window, which onnxruntime itself refuses: the compile fails naming the data, exit 2,
    not a traceback blaming intq."""
    from runtime.compile import main as compile_main

    model = _gqa(past=True, local_window_size=8, sliding_window_cache=1)  # P = 6 rows: shorter than the window
    x = helper.make_node("MatMul", ["x", "wx"], ["q"])
    model.graph.node.insert(0, x)
    model.graph.initializer.append(_const("wx", (0.3 * rng.standard_normal((H, H))).astype(np.float32)))
    model.graph.input[0].name = "x"
    onnx.save(model, tmp_path / "m.onnx")
    feed = _feed(model)
    np.savez(tmp_path / "c.npz", **{k: np.stack([v] * 4) for k, v in feed.items()})
    code = compile_main([str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "a"),
                         "--allow-float", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "onnxruntime cannot run" in err and "does not fit the model" in err, err
    assert "Traceback" not in err and not (tmp_path / "a").exists()
