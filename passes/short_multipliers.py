"""Requantization multipliers cut to the bits a 32-bit product holds over what the accumulator reaches.

The numerics contract's dyadic multiplier m has 31 bits (`reference.kernels.dyadic`), so the
product acc * m needs 64 bits: on x86, two `vpmuludq` per 16 lanes (even and odd lanes), their
adds and shifts in 64 bits and a permutation joining them; a 1x1 conv over 16 channels spends
more on that than on its dot products. But the result only moves across the window of accumulators
that map into [lo, hi] (`requant_windows.window`), narrowed to what the accumulator can reach at
all (`accumulator_bounds`): per channel, u = acc - a_lo spans at most 2^15-2^20 there, so a
multiplier of 32 - log2(span) bits makes u * m' + c a 32-bit product (`vpmulld`).

For each requantization chain clip(((int64(acc) * m + rnd) >> s), lo, hi) whose accumulator
has known bounds, each element's multiplier is rounded to m' = round(m / 2^t), s' = s - t,
rnd' = 2^(s'-1), with the smallest t for which `requant_windows.short_form` holds, and only
where that moves no result by more than MAX_ERROR of an output step wherever, within the bounds,
either result is unsaturated (|acc (m' 2^t - m)| / 2^s over both windows; never m' = 0): the same
dyadic approximation of the same ratio, with fewer bits.
The chain keeps its form, so every target and the NumPy reference compute the same integers;
`targets/requant.py` then finds the 32-bit form provable. Where some element cannot be cut so,
the chain is left as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .accumulator_bounds import accumulator_bounds
from .requant_windows import I32, U32, offset_of, requant_chain, window_of

R = relax.op
MAX_ERROR = 1 / 32  # of an output step: the largest change the cut multiplier may make to a result


def cut(m: int, rnd: int, s: int, lo: int, hi: int, r_lo: int, r_hi: int) -> tuple[int, int] | None:
    """(m', s') of one element: the fewest bits cut from m for which the short form holds over the
    window within [r_lo, r_hi] (no cut: (m, s)), or None where no cut keeps MAX_ERROR wherever
    either result is not saturated (both windows within the bounds)."""
    if not m:
        return m, s
    a_lo, a_hi = window_of(m, rnd, s, lo, hi)
    o_lo, o_hi = min(max(r_lo, a_lo), a_hi), min(max(r_hi, a_lo), a_hi)
    first = max(0, ((o_hi - o_lo) * m + 2**s).bit_length() - 32)
    for t in range(first, first + 3):
        mt, st = (m + (1 << (t - 1))) >> t if t else m, s - t
        if st < 1 or not 0 < mt < 2**31:
            return None
        rt = 1 << (st - 1)
        a_lo, a_hi = window_of(mt, rt, st, lo, hi)
        n_lo, n_hi = min(max(r_lo, a_lo), a_hi), min(max(r_hi, a_lo), a_hi)
        form = offset_of(mt, rt, st, n_lo, n_hi)
        if form is None or (n_hi - n_lo) * mt + form[0] >= U32:
            continue
        reach = max(abs(n_lo), abs(n_hi), abs(o_lo), abs(o_hi))
        return (mt, st) if reach * abs((mt << t) - m) <= MAX_ERROR * 2**s else None
    return None


def _cut_all(m, s, lo: int, hi: int, r_lo, r_hi) -> tuple[np.ndarray, np.ndarray] | None:
    """`cut` of every element, or None where some element has none or none is cut."""
    new_m, new_s = np.empty(m.shape, np.int64), np.empty(m.shape, np.int64)
    for i in np.ndindex(m.shape):
        done = cut(int(m[i]), 1 << (int(s[i]) - 1), int(s[i]), lo, hi, int(r_lo[i]), int(r_hi[i]))
        if done is None:
            return None
        new_m[i], new_s[i] = done
    return None if np.array_equal(new_m, m) and np.array_equal(new_s, s) else (new_m, new_s)


@mutator
class _Cutter(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.memo = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        chain = requant_chain(call, self.lookup_binding)
        if chain is None:
            return call
        acc, m, rnd, s, lo, hi = chain
        bounds = accumulator_bounds(acc, self.lookup_binding)
        if bounds is None or np.any(rnd != 1 << (s - 1)):
            return call
        try:
            full = np.broadcast_shapes(m.shape, rnd.shape, s.shape, np.shape(bounds[0]), np.shape(bounds[1]))
        except ValueError:
            return call
        if len(full) > len(acc.ty.shape) or max(lo, hi) > I32[1] or min(lo, hi) < I32[0]:
            return call
        m, s, r_lo, r_hi = (np.ascontiguousarray(np.broadcast_to(v, full), np.int64) for v in (m, s, *bounds))
        key = (full, lo, hi, *(v.tobytes() for v in (m, s, r_lo, r_hi)))
        if key not in self.memo:  # an unrolled recurrence repeats its steps' requantizations thousands of times
            self.memo[key] = _cut_all(m, s, lo, hi, r_lo, r_hi)
        if self.memo[key] is None:
            return call
        new_m, new_s = self.memo[key]
        new_rnd = np.left_shift(np.int64(1), new_s - 1)
        const = lambda v: relax.const(np.ascontiguousarray(v), "int64")
        y = R.right_shift(R.add(R.multiply(R.astype(acc, "int64"), const(new_m)), const(new_rnd)), const(new_s))
        return R.clip(y, call.args[1], call.args[2])


def short_multipliers(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with every requantization's multipliers cut where the module doc allows (the chains
    it no longer reads are left to dead-code elimination)."""
    cutter = _Cutter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            cutter.builder_.update_func(gv, cutter.visit_expr(func))
    return cutter.builder_.get()
