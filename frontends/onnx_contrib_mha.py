"""onnxruntime's MultiHeadAttention (com.microsoft) as the standard ops it stands for.

    MultiHeadAttention(query, key?, value?, bias?, key_padding_mask?, attention_bias?, past_key?, past_value?)
        query [B, S, N * h]; key / value [B, L, N * h] (bias added: q, k, v thirds), or already
        heads-first [B, N, L, h] (cross attention over a cached encoder's keys)
        -> onnx_contrib_decoder.attend: past concatenated (present_key / present_value), unidirectional
           causal, key_padding_mask [B, T] / [B, S, T] (0: masked) or [B] lengths, attention_bias added

onnxruntime's rotary fusion for LLaMA-style decoders writes it after RotaryEmbedding, and its encoder-decoder
fusions (BART, T5, Whisper) for self and cross attention. A shared buffer (past_sequence_length P given: past
and present as long) gets the new rows written at P and keys from P + S on unattended, as onnxruntime's CPU
kernel does. Left for the op check to name: beam search's cache_indirection, the read qk output, [3B + 2]
masks, and packed [B, L, N, 3, h] q, k, v or [B, L, N, 2, h] k, v (GPU-only in onnxruntime: no reference).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from .onnx_contrib_decoder import attend, dim, heads_first, last_slice, unsqueeze, within, write_cache


def _attr(node, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _padding(w, mask: str, rank: int):
    """key_padding_mask as `attend`'s allowed callable; None for a form left as it is."""
    if rank == 1:  # lengths: keys j < length[b]
        def allowed(_position, index):
            count = unsqueeze(w, w.op("Cast", [mask], to=7), [1, 2, 3])
            return w.op("Less", [index, count])
        return allowed
    if rank in (2, 3):  # [B, T] or [B, S, T], nonzero: attend
        return lambda _p, _i: unsqueeze(w, w.op("Cast", [mask], to=9), [1, 2] if rank == 2 else [1])
    return None


def multi_head_attention(node, w, read: set[str], ranks: dict[str, int], dims: dict[str, list[int]]) -> bool:
    """MultiHeadAttention (module doc); False where the node uses what this module leaves."""
    ins = list(node.input) + [""] * 10
    q, k, v, bias, mask, extra, past_k, past_v, past_len, indirection = ins[:10]
    outs = list(node.output) + [""] * 4
    heads = int(_attr(node, "num_heads", 0))
    if heads <= 0 or indirection or (outs[3] and outs[3] in read) or bool(past_k) != bool(past_v) \
            or (past_len and not past_k):
        return False
    rq, rk = ranks.get(q), ranks.get(k) if k else None
    allowed = _padding(w, mask, ranks.get(mask, 0)) if mask else None
    hidden = dims.get(q, [0])[-1]
    if (mask and allowed is None) or rq != 3 or rk not in (3, 4) or not v or hidden <= 0 or hidden % heads \
            or (bias and rk == 4):
        return False
    head = hidden // heads
    if bias:  # the q, k, v projections' biases, side by side
        sizes = [hidden, hidden, dims.get(v, [0])[-1]]
        if sizes[2] <= 0:
            return False
        starts = np.cumsum([0, *sizes]).tolist()
        b = [last_slice(w, bias, starts[i], starts[i + 1], 0) for i in range(3)]
        q, k, v = (w.op("Add", [t, part]) for t, part in zip((q, k, v), b))
    qh = heads_first(w, q, heads)
    kh, vh = (k, v) if rk == 4 else (heads_first(w, k, heads), heads_first(w, v, heads))
    scale = float(_attr(node, "scale", 0.0)) or 1.0 / np.sqrt(head)
    causal = bool(_attr(node, "unidirectional", 0))
    if past_len:  # a shared buffer: the new rows written at past_sequence_length, keys past them not attended
        if rk == 4:
            return False
        start = w.op("Reshape", [w.op("Cast", [past_len], to=7), w.const([-1], np.int64)])  # [1]
        kh, vh = (write_cache(w, p, t, start, out, zero_tail=False)
                  for p, t, out in ((past_k, kh, outs[1]), (past_v, vh, outs[2])))
        allowed = within(w, start, causal, allowed, dim(w, q, 1))
        past_k = past_v = outs[1] = outs[2] = ""  # the presents are written
        causal = False
    attend(w, qh, kh, vh, outs[0], heads, heads, head, scale, past=(past_k, past_v), presents=(outs[1], outs[2]),
           causal=causal, allowed=allowed, bias=extra)
    return True

