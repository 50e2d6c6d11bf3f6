"""A constant subtracted from the sums before the requantization's window moves the window instead.

The u8 x s8 dot-product kernels take an int8 activation shifted into uint8 and subtract a
correction per output channel (`vnni_rewrite.py`); the unsigned requantization after them
(`requant.py`) then clamps and rebases the corrected sum:

    u = uint32(clamp(acc - k, lo, hi)) - base

which is, exactly,

    u = uint32(clamp(acc, lo + k, hi + k)) - (base + k)            (uint32 arithmetic modulo 2^32)

one vector subtraction less per output vector (the bounds and the base are per-channel scalars of
the vector loop, computed once per row; where they are vectors, lanes over output channels, their
adds would run in the loop: left alone). A bound that leaves int32 on its own side saturates: acc - k
never reaches past it (hi + k > INT32_MAX: acc <= INT32_MAX binds nowhere, as hi did not). A window
wholly out of reach on the other side (hi + k < INT32_MIN: every acc - k is above hi) gives one
value, hi: both bounds saturate to INT32_MIN and the base moves by the difference.
The correction of the conv is computed before the epilogue is fused, so Relax cannot see it; this
runs on lowered, vectorized TIR (`tir_pipeline.py`), before `even_odd_multiply`. Zen 4, 1 thread,
kernel alone, with `even_odd_multiply` either way: EfficientNet-Lite0's 112x112 16 -> 96 conv
0.263 -> 0.257 ms, 56x56 24 -> 144 0.113 -> 0.110.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx


I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def _type(e) -> str:
    return str(e.ty.dtype)


def _fold(sub):
    """uint32xL(max(min(acc - k, hi), lo)) - base with k folded into the window (see module doc), or `sub`."""
    cast = sub.a
    lanes = tvm.DataType(_type(sub)).lanes
    if (lanes < 2 or not _type(sub).startswith("uint32") or not isinstance(cast, tirx.Cast)
            or not _type(cast.value).startswith("int32")):
        return sub
    outer = cast.value
    if not isinstance(outer, tirx.Max) or not isinstance(outer.a, tirx.Min) or not isinstance(outer.a.a, tirx.Sub):
        return sub
    (acc, k), hi, lo, base = (outer.a.a.a, outer.a.a.b), outer.a.b, outer.b, sub.b
    if not all(isinstance(e, tirx.Broadcast) for e in (k, hi, lo, base)):  # per-channel scalars only: vectors
        return sub  # of them would cost their adds in the vector loop (lanes over outputs)
    k, hi, lo, base = (tirx.Cast("int64", e.value) for e in (k, hi, lo, base))
    big, small = tirx.const(I32_MAX, "int64"), tirx.const(I32_MIN, "int64")
    sat = lambda v: tirx.Cast("int32", tirx.max(tirx.min(v, big), small))  # noqa: E731
    # a window out of int32's reach on the far side gives one value: its base keeps it
    moved = k + tirx.max(small - (hi + k), tirx.const(0, "int64")) + tirx.min(big - (lo + k), tirx.const(0, "int64"))
    window = tirx.max(tirx.min(acc, tirx.Broadcast(sat(hi + k), lanes)), tirx.Broadcast(sat(lo + k), lanes))
    return tirx.Cast(_type(cast), window) - tirx.Broadcast(tirx.Cast("uint32", base + moved), lanes)


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="FoldWindowOffset")
def fold_window_offset(func, _mod, _ctx):
    """Fold every constant subtracted before a vectorized unsigned requantization window (see
    module doc)."""
    return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.Sub, _fold)]))
