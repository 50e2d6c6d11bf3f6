"""onnxruntime's fused BERT attention and embedding ops (com.microsoft) as the standard ops they stand for.

`onnxruntime.transformers.optimizer.optimize_model(model_type="bert")` fuses a BERT's embeddings and each
self-attention block into these (a dynamic-axes all-MiniLM-L6-v2 export: 1 EmbedLayerNormalization, 6 Attention);
intq refused both in both modes. Rewritten by `onnx_contrib.contrib_to_standard`:

    EmbedLayerNormalization(ids, segment_ids?, word, position, segment?, gamma, beta, mask?, position_ids?)
        -> LayerNorm(word[ids] + position[position_ids or 0..S-1] (+ segment[segment_ids]))
           mask_index = ReduceSum(mask, axis 1) (int32 [B]), embedding_sum = the sum
    Attention(x, W, b?, mask_index?, past = "", attention_bias?)   (num_heads N, qkv_hidden_sizes, scale)
        -> q, k, v = slices of x @ W + b, each [B, S, N, h] -> heads first
           Softmax(q @ k^T * scale + mask bias (+ attention_bias)) @ v -> [B, S, N * h]

The mask bias is Where(allowed, 0, MASKED) per key, broadcast over heads and queries: a 1-D mask_index (as
EmbedLayerNormalization makes it: the count of valid tokens, keys at or past it masked), a 2-D [B, T] 0/1
mask, or a 3-D [B, S, T] one. onnxruntime adds mask_filter_value (-10000) there; the float32 minimum that
onnx_attention.py uses instead gives the same probabilities (e^-10000 is 0 in float32) and is what the
Shiftmax lowering takes as masked keys (a float16 model's own minimum there).

GPT-2's form (onnxruntime's gpt2 fusion): a past [2, B, N, P, h] (present: the same with this block's keys and
values), unidirectional (query i sees keys j <= P + i): through onnx_contrib_decoder.attend. Left as they are,
for the op check to name: a shared past / present buffer and do_rotary (onnxruntime's CPU kernel refuses both:
no reference; MultiHeadAttention + RotaryEmbedding is its CPU form), the [2B] and 4-D mask forms, and a 1-D
mask_index that no EmbedLayerNormalization made (its [B] and [2B] forms cannot be told apart).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from .onnx_attention import MASKED
from .onnx_contrib_decoder import attend, heads_first, last_slice, squeeze, unsqueeze


def _attr(node, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _axes(w, op: str, x: str, axes: list[int], out: str | None = None, **attrs) -> str:
    """Unsqueeze / ReduceSum with its axes an input (opset 13+) or an attribute (older opsets)."""
    if w.opset >= 13:
        return w.op(op, [x, w.const(axes, np.int64)], out, **attrs)
    return w.op(op, [x], out, axes=axes, **attrs)


def embed_layer_norm(node, w, read: set[str], lengths: set[str]) -> bool:
    """EmbedLayerNormalization (module doc); its mask_index's name goes into `lengths`."""
    ins = list(node.input) + [""] * 9
    outs = list(node.output) + [""] * 3
    ids, segments, word, position, segment, gamma, beta, mask, positions = ins[:9]
    if outs[1] in read and not mask:
        return False  # onnxruntime's mask_index without a mask: nothing real reads it
    total = [w.op("Gather", [word, ids])]
    if not positions:  # 0..S-1, S from the ids' shape (folded once shapes are fixed)
        length = w.op("Gather", [w.op("Shape", [ids]), w.const(1, np.int64)], axis=0)
        positions = w.op("Range", [w.const(0, np.int64), length, w.const(1, np.int64)])
    total.append(w.op("Gather", [position, positions]))
    if segments and segment:
        total.append(w.op("Gather", [segment, segments]))
    summed = w.sum(total, outs[2] or None)
    w.norm(summed, gamma, beta, float(_attr(node, "epsilon", 1e-12)), outs[0], simplified=False)
    if outs[1]:
        counted = w.op("Cast", [mask], to=6)  # int32, as onnxruntime's mask_index
        _axes(w, "ReduceSum", counted, [1], outs[1], keepdims=0)
        lengths.add(outs[1])
    return True


def _allowed(w, mask: str, rank: int, lengths: set[str], x: str) -> str | None:
    """The mask as a bool tensor broadcasting over [B, N, S, T] (true: the key is attended); None: a form
    this module leaves."""
    if rank == 1 and mask in lengths:  # keys j < count[b]
        keys = w.op("Gather", [w.op("Shape", [x]), w.const(1, np.int64)], axis=0)
        index = w.op("Range", [w.const(0, np.int64), keys, w.const(1, np.int64)])
        count = _axes(w, "Unsqueeze", w.op("Cast", [mask], to=7), [1])
        return _axes(w, "Unsqueeze", w.op("Less", [index, count]), [1, 2])
    if rank in (2, 3):  # [B, T] or [B, S, T]: nonzero = attend
        return _axes(w, "Unsqueeze", w.op("Cast", [mask], to=9), [1, 2] if rank == 2 else [1])
    return None


def attention(node, w, read: set[str], ranks: dict[str, int], dims: dict[str, list[int]], lengths: set[str]) -> bool:
    """Attention (module doc); False where the node uses what this module leaves."""
    ins = list(node.input) + [""] * 7
    x, weights, bias, mask, past, extra_bias = ins[:6]
    if len(dims.get(weights, ())) != 2 or dims[weights][1] <= 0:
        return False
    heads = int(_attr(node, "num_heads", 0))
    sizes = list(_attr(node, "qkv_hidden_sizes", [])) or [dims[weights][1] // 3] * 3
    if heads <= 0 or any(s % heads for s in sizes):
        return False
    allowed = None
    if mask:
        allowed = _allowed(w, mask, 1 if mask in lengths else ranks.get(mask, 0), lengths, x)
        if allowed is None:
            return False
    if past or _attr(node, "unidirectional", 0) or _attr(node, "do_rotary", 0) or len(node.output) > 1:
        return _cached(node, w, x, weights, bias, sizes, heads, allowed, past, extra_bias, ins[6])
    qkv = w.op("MatMul", [x, weights])
    if bias:
        qkv = w.op("Add", [qkv, bias])
    q, k, v = (w.op("Slice", [qkv, w.const([start], np.int64), w.const([start + size], np.int64),
                                  w.const([2], np.int64)])
               for start, size in zip(np.cumsum([0, *sizes[:2]]).tolist(), sizes))
    split = lambda t, size: w.op("Reshape", [t, w.const([0, 0, heads, size // heads], np.int64)])  # noqa: E731
    q = w.op("Transpose", [split(q, sizes[0])], perm=[0, 2, 1, 3])
    k = w.op("Transpose", [split(k, sizes[1])], perm=[0, 2, 3, 1])
    v = w.op("Transpose", [split(v, sizes[2])], perm=[0, 2, 1, 3])
    scale = float(_attr(node, "scale", 0.0)) or 1.0 / np.sqrt(sizes[0] // heads)
    logits = w.op("Mul", [w.op("MatMul", [q, k]), w.const(scale)])
    if allowed is not None:
        logits = w.op("Add", [logits, w.op("Where", [allowed, w.const(0.0), w.const(max(MASKED, np.finfo(w.floats).min))])])
    if extra_bias:
        logits = w.op("Add", [logits, extra_bias])
    y = w.op("Transpose", [w.op("MatMul", [w.op("Softmax", [logits], axis=-1), v])], perm=[0, 2, 1, 3])
    w.op("Reshape", [y, w.const([0, 0, sizes[2]], np.int64)], node.output[0])
    return True


def _cached(node, w, x, weights, bias, sizes, heads, allowed, past, extra_bias, past_length) -> bool:
    """GPT-2's Attention: a [2, B, N, P, h] cache (present: the same with this block's keys and values),
    unidirectional -> onnx_contrib_decoder.attend."""
    outs = list(node.output) + [""] * 2
    if past_length or _attr(node, "past_present_share_buffer", 0) or _attr(node, "do_rotary", 0) or len(set(sizes)) != 1:
        return False  # a shared buffer or rotary: onnxruntime's CPU kernel refuses both (no reference to check a
        # rewrite against); a cache needs equal q, k, v sizes
    head = sizes[0] // heads
    qkv = w.op("MatMul", [x, weights])
    if bias:
        qkv = w.op("Add", [qkv, bias])
    q, k, v = (heads_first(w, last_slice(w, qkv, i * sizes[0], (i + 1) * sizes[0], 2), heads) for i in range(3))
    past_k = past_v = ""
    if past:
        past_k, past_v = (squeeze(w, last_slice(w, past, i, i + 1, 0), [0]) for i in range(2))
    allowed_fn = (lambda _p, _i: allowed) if allowed is not None else None
    presents = (f"{w.prefix}/present_key", f"{w.prefix}/present_value") if outs[1] and past else (k, v)
    scale = float(_attr(node, "scale", 0.0)) or 1.0 / np.sqrt(head)
    attend(w, q, k, v, outs[0], heads, heads, head, scale, past=(past_k, past_v),
           presents=presents if past else ("", ""), causal=bool(_attr(node, "unidirectional", 0)), allowed=allowed_fn,
           bias=extra_bias)
    if outs[1]:
        w.op("Concat", [unsqueeze(w, presents[0], [0]), unsqueeze(w, presents[1], [0])], outs[1], axis=0)
    return True
