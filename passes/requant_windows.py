"""Windows of a requantization: the accumulators over which its result moves, and its 32-bit forms.

f(acc) = clip((acc * m + rnd) >> s, lo, hi) is a non-decreasing function of acc (m >= 0), so
clamping acc first to its window [a_lo, a_hi] changes nothing (`window`): below a_lo and at it
the result is lo, above a_hi and at it hi. With u = acc - a_lo >= 0 and f_lo = f(a_lo),

    f(acc) = ((u * m + c) >> s) + f_lo,   c = (a_lo * m + rnd) mod 2^s

(`offset_form`: an unsigned product). Where the accumulator cannot leave known bounds
(`passes/accumulator_bounds.py`), the window narrows to them, and where u * m + c then stays
below 2^32 on every element (`short_form`), the product is a 32-bit one: one `vpmulld` per 16
lanes instead of two `vpmuludq` on even and odd lanes, their adds and shifts in 64 bits and a
permutation joining them (`targets/requant.py`). `passes/short_multipliers.py` chooses the
multipliers so that it does. Exact: Python integers throughout.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

U32 = 2**32
I32 = (-(2**31), 2**31 - 1)


def window_of(m: int, rnd: int, s: int, lo: int, hi: int) -> tuple[int, int]:
    """(a_lo, a_hi) of one element, within int32: the largest acc with f(acc) <= lo and the smallest
    with f(acc) >= hi. m = 0 (a dead channel): f is constant, any window (0, 0)."""
    if not m:
        return 0, 0
    a_lo = ((lo + 1) * 2**s - rnd - 1) // m  # acc * m + rnd < (lo + 1) * 2^s
    a_hi = -((rnd - hi * 2**s) // m)  # ceil((hi * 2^s - rnd) / m)
    return min(max(a_lo, I32[0]), I32[1]), min(max(a_hi, I32[0]), I32[1])


def offset_of(m: int, rnd: int, s: int, a_lo: int, a_hi: int) -> tuple[int, int] | None:
    """(c, f_lo) of one element (see the module doc), or None where f(a_hi) - f(a_lo) reaches 2^31
    or f(a_lo) leaves int32."""
    base = a_lo * m + rnd
    f_hi = (a_hi * m + rnd) >> s
    if f_hi - (base >> s) >= 2**31 or not I32[0] <= base >> s <= I32[1]:
        return None
    return base % 2**s, base >> s


def window(m: np.ndarray, rnd: np.ndarray, s: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(a_lo, a_hi) per element of the broadcast (m, rnd, s) of f(acc) = (acc * m + rnd) >> s
    (`window_of`), exact (Python integers), within int32."""
    m, rnd, s = np.broadcast_arrays(*(np.asarray(v, np.int64) for v in (m, rnd, s)))
    a_lo, a_hi = np.zeros(m.shape, np.int32), np.zeros(m.shape, np.int32)
    for i in np.ndindex(m.shape):
        a_lo[i], a_hi[i] = window_of(int(m[i]), int(rnd[i]), int(s[i]), lo, hi)
    return a_lo, a_hi


def offset_form(m: np.ndarray, rnd: np.ndarray, s: np.ndarray, a_lo: np.ndarray, a_hi: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(c, f_lo) per element for the unsigned form (`offset_of`), or None where some element has none."""
    m, rnd, s, a_lo, a_hi = np.broadcast_arrays(*(np.asarray(v, np.int64) for v in (m, rnd, s, a_lo, a_hi)))
    c, f_lo = np.zeros(m.shape, np.uint64), np.zeros(m.shape, np.int32)
    for i in np.ndindex(m.shape):
        form = offset_of(int(m[i]), int(rnd[i]), int(s[i]), int(a_lo[i]), int(a_hi[i]))
        if form is None:
            return None
        c[i], f_lo[i] = form
    return c, f_lo


def narrowed(a_lo: np.ndarray, a_hi: np.ndarray, r_lo, r_hi) -> tuple[np.ndarray, np.ndarray]:
    """The window [a_lo, a_hi] clipped into the reachable bounds [r_lo, r_hi] (broadcast): clamping a
    reachable acc to it is clamping it to the window."""
    a_lo, a_hi, r_lo, r_hi = np.broadcast_arrays(*(np.asarray(v, np.int64) for v in (a_lo, a_hi, r_lo, r_hi)))
    return np.clip(r_lo, a_lo, a_hi).astype(np.int32), np.clip(r_hi, a_lo, a_hi).astype(np.int32)


def short_form(m: np.ndarray, rnd: np.ndarray, s: np.ndarray, a_lo: np.ndarray, a_hi: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """`offset_form` (c, f_lo) where (a_hi - a_lo) * m + c < 2^32 on every element (the product and
    its offset in 32 unsigned bits), else None."""
    form = offset_form(m, rnd, s, a_lo, a_hi)
    if form is None:
        return None
    c = form[0]
    m, a_lo, a_hi, c = np.broadcast_arrays(*(np.asarray(v, np.int64) if v is not c else v
                                              for v in (m, a_lo, a_hi, c)))
    for i in np.ndindex(m.shape):
        if (int(a_hi[i]) - int(a_lo[i])) * int(m[i]) + int(c[i]) >= U32:
            return None
    return form


def _is(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == f"relax.{name}"


def requant_chain(clip: relax.Expr, lookup) -> tuple | None:
    """(acc, m, rnd, s, lo, hi) of the requantization `emit.requantize` writes, ending in `clip`:
    clip(right_shift(add(multiply(int64(acc), m), rnd), s), lo, hi) with constant m in [0, 2^31) and
    s in [1, 62] (int64 arrays); else None. `lookup(var)` gives a variable's bound value (or None)."""
    bound = lambda e: lookup(e) if isinstance(e, relax.Var) else e  # noqa: E731
    if not _is(clip, "clip") or str(clip.ty.dtype) != "int64":
        return None
    shift = bound(clip.args[0])
    add = bound(shift.args[0]) if _is(shift, "right_shift") else None
    mul = bound(add.args[0]) if _is(add, "add") else None
    cast = bound(mul.args[0]) if _is(mul, "multiply") else None
    if not _is(cast, "astype"):
        return None
    consts = [e.args[1].value.numpy() if isinstance(e.args[1], tvm.ir.GenericConst) else None
              for e in (mul, add, shift)]
    if any(c is None for c in consts):
        return None
    m, rnd, s = (c.astype(np.int64) for c in consts)
    if np.any(m < 0) or np.any(m >= 2**31) or np.any(s < 1) or np.any(s > 62):
        return None
    return cast.args[0], m, rnd, s, int(clip.args[1].value), int(clip.args[2].value)
