"""onnxruntime's GroupQueryAttention (com.microsoft) as the standard ops it stands for.

    GroupQueryAttention(query, key?, value?, past_key?, past_value?, seqlens_k, total_sequence_length,
                        cos_cache?, sin_cache?, position_ids?, attention_bias?)   (num_heads N, kv_num_heads)
        query [B, S, N * h] with key / value [B, S, kvN * h], or packed [B, S, (N + 2 kvN) * h]
        do_rotary: q and the new k rotated (onnx_contrib_decoder.rotate) at position_ids, else at each row's
                   own positions T_b - S + i (T_b = seqlens_k[b] + 1), or 0 .. S - 1 without a cache
        -> onnx_contrib_decoder.attend: past concatenated (present_key / present_value), kv heads repeated,
           key j attended where j <= the query's position (causal) / j < T_b (causal = 0), within
           local_window_size keys, softcap, attention_bias added

seqlens_k arrives at run time: the positions, the mask and the present cache are computed from it in the
graph (integer compares and a gather), so rows of different lengths come out as onnxruntime's: row b's
first T_b - S past rows, its S new ones, then zeros (a present as long as the past: no zeros added).
head_sink (or smooth_softmax: a sink of 0) joins each row's softmax as one more logit per head, dropped
after it. Lengths come from shapes (folded once intq fixes them). Left for the op check to name: quantized
caches (k_scale, v_scale), window-sized caches, query_seqlens, the read qk output, files below opset 13, and
Qwen3's per-head q / k norm weights (onnxruntime's CPU kernel refuses them: no reference to check against).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from .onnx_contrib_decoder import arange, attend, cos_sin, dim, heads_first, last_slice, rotate, unsqueeze, write_cache


def _attr(node, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


LEFT = {12, 13, 14, 15, 16}  # k_scale, v_scale (a quantized cache), q / k norm weights, query_seqlens
REFUSED_ATTRS = {"qk_output": 0, "kv_cache_bit_width": 0, "sliding_window_cache": 0}


def group_query_attention(node, w, read: set[str], ranks: dict[str, int], dims: dict[str, list[int]]) -> bool:
    """GroupQueryAttention (module doc); False where the node uses what this module leaves."""
    ins = list(node.input) + [""] * 17
    q, k, v, past_k, past_v, seqlens, _total, cos_cache, sin_cache, positions, extra, sink = ins[:12]
    outs = list(node.output) + [""] * 4
    heads, kv_heads = int(_attr(node, "num_heads", 0)), int(_attr(node, "kv_num_heads", 0))
    if w.opset < 13 or heads <= 0 or kv_heads <= 0 or heads % kv_heads or any(ins[i] for i in LEFT) \
            or (outs[3] and outs[3] in read) or bool(past_k) != bool(past_v) \
            or any(int(_attr(node, a, d)) != d for a, d in REFUSED_ATTRS.items()):
        return False
    if any(_attr(node, a, None) is not None for a in ("k_quant_type", "v_quant_type")) \
            and {_attr(node, a, b"NONE") for a in ("k_quant_type", "v_quant_type")} != {b"NONE"}:
        return False
    width = dims.get(q, [0])[-1]
    if ranks.get(q) != 3 or width <= 0 or not seqlens:
        return False
    head = width // (heads + 2 * kv_heads) if not k else width // heads
    if head <= 0 or (not k and width != head * (heads + 2 * kv_heads)) or (k and width != head * heads):
        return False
    past_len = dims.get(past_k, [0, 0, -1])[2] if past_k else 0
    declared = dims.get(outs[1], [0, 0, -1])[2] if outs[1] else -1
    if past_k and 0 < declared < past_len:
        return False  # a present shorter than the past
    if not k:  # packed: q, k, v side by side on the last axis
        k = last_slice(w, q, heads * head, (heads + kv_heads) * head, 2)
        v = last_slice(w, q, (heads + kv_heads) * head, width, 2)
        q = last_slice(w, q, 0, heads * head, 2)
    qh, kh, vh = heads_first(w, q, heads), heads_first(w, k, kv_heads), heads_first(w, v, kv_heads)
    # T_b - 1 per row, int64 [B] (onnxruntime's convert_generation writes it [B, 1]: ReduceSum with keepdims)
    length = w.op("Reshape", [w.op("Cast", [seqlens], to=7), w.const([-1], np.int64)])
    queries = dim(w, q, 1)
    if past_k:  # each row's queries sit at T_b - S + i
        own = w.op("Add", [unsqueeze(w, w.op("Sub", [w.op("Add", [length, w.const(1, np.int64)]), queries]), [1]),
                           arange(w, queries)])  # [B, S]
    else:
        own = arange(w, queries)  # a first prompt: 0 .. S - 1
    if int(_attr(node, "do_rotary", 0)):
        rotary_width = dims.get(cos_cache, [0, 0])[-1] if cos_cache else 0
        if rotary_width <= 0 or 2 * rotary_width > head:
            return False
        rows = w.op("Cast", [positions], to=7) if positions else own
        cos, sin = cos_sin(w, cos_cache, sin_cache, rows)  # [B, S, r/2] or [S, r/2]
        if (ranks.get(positions, 2) if positions else (2 if past_k else 1)) == 2:
            cos, sin = unsqueeze(w, cos, [1]), unsqueeze(w, sin, [1])  # heads-first: [B, 1, S, r/2]
        interleaved = bool(_attr(node, "rotary_interleaved", 0))
        qh = rotate(w, qh, cos, sin, 2 * rotary_width, head, interleaved, 3)
        kh = rotate(w, kh, cos, sin, 2 * rotary_width, head, interleaved, 3)
    causal = bool(_attr(node, "causal", 1))
    window = int(_attr(node, "local_window_size", -1))
    last = unsqueeze(w, length, [1, 2, 3])  # [B, 1, 1, 1]: the last valid key of each row
    at = unsqueeze(w, unsqueeze(w, own, [1]), [3]) if past_k else unsqueeze(w, own, [1])  # [B, 1, S, 1] or [S, 1]

    def allowed(_position, index):  # per row: within its length, up to its own position, in its window
        keep = w.op("Not", [w.op("Greater", [index, last])])
        if causal:
            keep = w.op("And", [keep, w.op("Not", [w.op("Greater", [index, at])])])
        if window >= 0:
            keep = w.op("And", [keep, w.op("Greater", [index, w.op("Sub", [at, w.const(window, np.int64)])])])
        return keep

    if not past_k:  # a first prompt's presents: its keys and values (padded rows too, as onnxruntime keeps them)
        for name, t in zip(outs[1:3], (kh, vh)):
            if name:
                w.op("Identity", [t], name)
    if past_k:
        start = unsqueeze(w, w.op("Sub", [w.op("Add", [length, w.const(1, np.int64)]), queries]), [1, 2, 3])
        grow = not (0 < declared == past_len)  # present = past + S rows, unless declared as long as the past
        kh, vh = (write_cache(w, p, t, start, out, grow=grow) for p, t, out in ((past_k, kh, outs[1]), (past_v, vh, outs[2])))
    scale = float(_attr(node, "scale", 0.0)) or 1.0 / np.sqrt(head)
    attend(w, qh, kh, vh, outs[0], heads, kv_heads, head, scale, allowed=allowed, bias=extra,
           softcap=float(_attr(node, "softcap", 0.0)), sink=sink or (w.const(np.zeros(heads)) if int(
               _attr(node, "smooth_softmax", 0)) == 1 else ""))
    return True

