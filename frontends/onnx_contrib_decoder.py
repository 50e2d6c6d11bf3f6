"""What onnxruntime's decoder attention ops share, written as standard ops: heads, the key/value cache,
rotary embeddings and the causal / window / padding structure of the logits.

Used by the rewrites of com.microsoft `Attention` with a cache (onnx_contrib_attention.py), `MultiHeadAttention`
(onnx_contrib_mha.py), `GroupQueryAttention` (onnx_contrib_gqa.py) and `RotaryEmbedding` (onnx_contrib_rotary.py):

    K, V = Concat(past, K / V) along the sequence        (the presents: these)
    K, V heads repeated in turn (h0 h0 h1 h1 ...) where there are fewer than the query's
    Y = Softmax(Q K^T * scale  (softcap: c tanh(./c))  + Where(allowed, 0, MASKED) (+ attention_bias)) V

`allowed` is built from shapes (Shape / Range, folded once intq fixes the input shapes), so a rewrite does not
need them: query i sits at position i + T - S (T keys, S queries), causal keeps keys j <= that position, a
window of w keys j > position - w; padding masks and run-time lengths are ANDed in as bool tensors. One Where
for all of them: MASKED twice would overflow to -inf, which has no integer value.
"""

from __future__ import annotations

import numpy as np

from .onnx_attention import MASKED

HEADS_FIRST = [0, 2, 1, 3]  # [B, S, N, h] <-> [B, N, S, h]


def unsqueeze(w, x: str, axes: list[int]) -> str:
    """Unsqueeze with its axes an input (opset 13+) or an attribute."""
    if w.opset >= 13:
        return w.op("Unsqueeze", [x, w.const(axes, np.int64)])
    return w.op("Unsqueeze", [x], axes=axes)


def squeeze(w, x: str, axes: list[int]) -> str:
    if w.opset >= 13:
        return w.op("Squeeze", [x, w.const(axes, np.int64)])
    return w.op("Squeeze", [x], axes=axes)


def dim(w, x: str, axis: int) -> str:
    """x's size along `axis` as an int64 scalar (a constant once shapes are fixed)."""
    return w.op("Gather", [w.op("Shape", [x]), w.const(axis, np.int64)], axis=0)


def arange(w, n: str) -> str:
    return w.op("Range", [w.const(0, np.int64), n, w.const(1, np.int64)])


def last_slice(w, x: str, start: int, end: int, axis: int) -> str:
    return w.op("Slice", [x, w.const([start], np.int64), w.const([end], np.int64), w.const([axis], np.int64)])


def heads_first(w, x: str, heads: int) -> str:
    """[B, S, N * h] -> [B, N, S, h]."""
    return w.op("Transpose", [w.op("Reshape", [x, w.const([0, 0, heads, -1], np.int64)])], perm=HEADS_FIRST)


def rotate(w, x: str, cos: str, sin: str, rotary: int, head: int, interleaved: bool, axis: int) -> str:
    """RoPE on the first `rotary` channels of x's last axis `axis` (of size `head`); cos / sin hold rotary / 2
    values per position, shaped to broadcast against x[..., :rotary / 2]. Halves: (x1, x2) -> (x1 c - x2 s,
    x2 c + x1 s); interleaved: the same on the pairs (x[2i], x[2i + 1])."""
    half = rotary // 2
    part = last_slice(w, x, 0, rotary, axis) if rotary < head else x
    if interleaved:  # [..., r] -> [..., r/2, 2]: the pairs' two members are the halves
        pairs = w.op("Reshape", [part, w.const([0] * axis + [half, 2], np.int64)])
        x1, x2 = last_slice(w, pairs, 0, 1, axis + 1), last_slice(w, pairs, 1, 2, axis + 1)
        cos, sin = unsqueeze(w, cos, [-1]), unsqueeze(w, sin, [-1])
    else:
        x1, x2 = last_slice(w, part, 0, half, axis), last_slice(w, part, half, rotary, axis)
    y1 = w.op("Sub", [w.op("Mul", [x1, cos]), w.op("Mul", [x2, sin])])
    y2 = w.op("Add", [w.op("Mul", [x2, cos]), w.op("Mul", [x1, sin])])
    y = w.op("Concat", [y1, y2], axis=axis + 1 if interleaved else axis)
    if interleaved:
        y = w.op("Reshape", [y, w.const([0] * axis + [rotary], np.int64)])
    if rotary < head:
        y = w.op("Concat", [y, last_slice(w, x, rotary, head, axis)], axis=axis)
    return y


def cos_sin(w, cos_cache: str, sin_cache: str, positions: str) -> tuple[str, str]:
    """The cache rows at `positions` (int64 of any shape): [*positions.shape, rotary / 2]."""
    return w.op("Gather", [cos_cache, positions], axis=0), w.op("Gather", [sin_cache, positions], axis=0)


def attend(w, q: str, k: str, v: str, out: str, heads: int, kv_heads: int, head: int, scale: float, *,
           past: tuple[str, str] = ("", ""), presents: tuple[str, str] = ("", ""), causal: bool = False,
           window: int = -1, allowed=None, bias: str = "", softcap: float = 0.0, sink: str = "") -> None:
    """Attention over heads-first q [B, N, S, h], k / v [B, kvN, L, h] into `out` [B, S, N * h].

    past: the cache ([B, kvN, P, h] each), concatenated before k / v into `presents` where named. allowed: a
    callable given (positions of the queries [S, 1], key indices [T]) returning a bool tensor broadcasting to
    [B, N, S, T], or None. bias: an additive [B|1, N|1, S, T] tensor (attention_bias). sink: one logit per head
    ([N]) that joins every row's softmax and is dropped after it (a smooth softmax's extra 1 in the sum)."""
    if past[0]:
        k = w.op("Concat", [past[0], k], presents[0] or None, axis=2)
        v = w.op("Concat", [past[1], v], presents[1] or None, axis=2)
    else:  # a first step's presents: its own keys and values
        for name, t in zip(presents, (k, v)):
            if name:
                w.op("Identity", [t], name)
    keys = dim(w, k, 2)
    masks = []
    if causal or window >= 0 or allowed is not None:
        queries = dim(w, q, 2)
        position = unsqueeze(w, w.op("Add", [arange(w, queries), w.op("Sub", [keys, queries])]), [1])  # [S, 1]
        index = arange(w, keys)
        if causal:
            masks.append(w.op("Not", [w.op("Greater", [index, position])]))
        if window >= 0:  # the last `window` keys up to the query's position
            masks.append(w.op("Greater", [index, w.op("Sub", [position, w.const(window, np.int64)])]))
        if allowed is not None:
            masks.append(allowed(position, index))
    if kv_heads != heads:  # each key/value head serves heads // kv_heads query heads in turn
        reps = w.const([1, 1, heads // kv_heads, 1, 1], np.int64)
        k, v = (w.op("Reshape", [w.op("Tile", [unsqueeze(w, t, [2]), reps]), w.const([0, heads, -1, head], np.int64)])
                for t in (k, v))
    logits = w.op("MatMul", [w.op("Mul", [q, w.const(scale)]), w.op("Transpose", [k], perm=[0, 1, 3, 2])])
    if softcap > 0:
        logits = w.op("Mul", [w.op("Tanh", [w.op("Div", [logits, w.const(softcap)])]), w.const(softcap)])
    if bias:
        logits = w.op("Add", [logits, bias])
    both = None
    for m in masks:
        both = m if both is None else w.op("And", [both, m])
    if sink:  # [N] -> a column [B, N, S, 1] beside the keys, never masked
        shape = w.op("Concat", [last_slice(w, w.op("Shape", [logits]), 0, 3, 0), w.const([1], np.int64)], axis=0)
        if both is not None:
            both = w.op("Concat", [w.op("Expand", [both, w.op("Shape", [logits])]),
                                   w.op("Expand", [w.const(True, np.bool_), shape])], axis=3)
        logits = w.op("Concat", [logits, w.op("Expand", [unsqueeze(w, sink, [1, 2]), shape])], axis=3)
    if both is not None:  # last before the softmax: the Shiftmax lowering takes masked logits from this Where
        logits = w.op("Add", [logits, w.op("Where", [both, w.const(0.0), w.const(max(MASKED, np.finfo(w.floats).min))])])
    probs = w.op("Softmax", [logits], axis=-1)
    if sink:  # the keys' columns; the sink's share is dropped
        probs = w.op("Slice", [probs, w.const([0], np.int64), unsqueeze(w, keys, [0]), w.const([3], np.int64)])
    y = w.op("Transpose", [w.op("MatMul", [probs, v])], perm=HEADS_FIRST)
    w.op("Reshape", [y, w.const([0, 0, -1], np.int64)], out)


def write_cache(w, past: str, new: str, start: str, out: str, grow: bool = False, zero_tail: bool = True) -> str:
    """The present cache as onnxruntime writes it: rows before start (per batch row [B, 1, 1, 1], or one
    [1]) from the past, then the S new rows, then zeros (zero_tail; else the past's rows, as a shared
    buffer keeps them). grow: the past zero-padded by S rows first (a present S rows longer than the past).
    Lengths from shapes: folded once intq fixes them."""
    queries = dim(w, new, 2)
    if grow:
        pads = w.op("Concat", [w.const([0] * 6, np.int64), unsqueeze(w, queries, [0]), w.const([0], np.int64)], axis=0)
        past = w.op("Pad", [past, pads])
    index = unsqueeze(w, arange(w, dim(w, past, 2)), [1])  # [L, 1]: against the starts
    offset = w.op("Sub", [index, start])  # row j's place among the new rows
    before = w.op("Less", [offset, w.const(0, np.int64)])
    is_new = w.op("And", [w.op("Not", [before]), w.op("Less", [offset, queries])])
    clipped = w.op("Min", [w.op("Max", [offset, w.const(0, np.int64)]), w.op("Sub", [queries, w.const(1, np.int64)])])
    taken = w.op("GatherElements", [new, w.op("Expand", [clipped, w.op("Shape", [past])])], axis=2)
    kept = w.op("Where", [before, past, w.op("Mul", [past, w.const(0.0)])]) if zero_tail else past
    return w.op("Where", [is_new, taken, kept], out or None)


def within(w, start: str, causal: bool, padding, queries: str):
    """A shared buffer's keys: j <= start + i (causal) or j < start + S, and the padding mask if any."""
    def allowed(position, index):
        last = w.op("Add", [start, w.op("Sub", [queries, w.const(1, np.int64)])])
        bound = unsqueeze(w, w.op("Add", [arange(w, queries), start]), [1]) if causal else last  # [S, 1] or [1]
        keep = w.op("Not", [w.op("Greater", [index, bound])])
        return w.op("And", [keep, padding(position, index)]) if padding else keep
    return allowed
