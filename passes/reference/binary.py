"""NumPy references of the broadcast-binary, reduction and log-softmax kernels (no TVM).

Binary ops of two activations at scales S_a, S_b (numpy broadcasting):
- add/subtract/maximum/minimum/where: each operand requantized (dyadic, round half up) to the
  output scale in int32, the op in int64, clamped to the output dtype (`common_scale`); an 8-bit
  sum or difference meets at S_out / 2^SUM_EXTRA_BITS and rounds once (`extra_bits`), not once per
  operand;
- less/greater/equal/...: both operands requantized to a common scale finer than either, then
  compared (`common_scale` without clamp, bool result);
- multiply: the int32 product at scale S_a * S_b (`multiply_acc`);
- isnan/isinf/isfinite of an activation: a constant mask, integers being finite (`float_predicate`);
- divide: the quotient at 2^-P, rounded half away from zero, then one dyadic requantization
  to the output scale; a zero divisor saturates to the output range (0 / 0 gives 0) (`divide`).
Reductions: an integer sum (int32, or int64 then a rounding right shift), max/min and
arg-max/min on the integers. Log-softmax reuses
`softmax_exp2`'s exponentials and takes their row sum's log2 by bit position + a quartic.
Everything is int64 inside; operands are given as (int array, m, s) or as an int64 constant
already at the common scale (m = s = None).
"""

from __future__ import annotations

import numpy as np

from .kernels import INT_RANGE, requantize
from .transformer import EXP2_IN_BITS, EXP2_OUT_BITS, exp2_neg

VALUE_OPS = {"add": np.add, "subtract": np.subtract, "maximum": np.maximum, "minimum": np.minimum}
COMPARE_OPS = {"less": np.less, "greater": np.greater, "less_equal": np.less_equal,
               "greater_equal": np.greater_equal, "equal": np.equal, "not_equal": np.not_equal}
COMPARE_EXTRA_BITS = 8  # compares run at min(S_a, S_b) / 2^8: rescaling rarely creates a false tie
DIV_FRAC_BITS = {"int8": 23, "uint8": 23, "int16": 15}  # quotient precision: |a| << P < 2^31
LOG2_BITS = 16  # log2_fixed output scale 2^-16
LOGSM_EXTRA_BITS = 8  # log_softmax's two terms meet at S_out / 2^8, then round once
SUM_EXTRA_BITS = 8  # an 8-bit add/subtract's operands meet at S_out / 2^8, then round once (|y| < 2^31 / 2^8)
_LOG2_QUARTIC = (0.00020415891364422567, 1.4360980844701086, -0.6695152104236386, 0.31221426617218767,
                 -0.07915036575313873)  # log2(1 + u) on [0, 1), max error 2.0e-4 (Chebyshev fit)
LOG2_COEFFS = tuple(int(round(c * 2**30)) for c in _LOG2_QUARTIC)


def at_scale(q, m, s) -> np.ndarray:
    """An operand at the common scale (int64): requantized to int32, or a constant as it is."""
    if m is None:
        return np.asarray(q, np.int64)
    return requantize(q, m, s, *INT_RANGE["int32"], "int64")


def common_scale(op: str, a, b, ma, sa, mb, sb, lo=None, hi=None, out_dtype=None, cond=None,
                 extra_bits: int = 0) -> np.ndarray:
    """`op` of two operands rescaled to one scale; value ops clamp to [lo, hi] as `out_dtype`,
    compares return bool; op "where" selects with the bool `cond`. `extra_bits` > 0: the operands
    are given at 2^extra_bits times the output's resolution (their m, s say so) and the result
    of the op is rounded (half up) once to the output scale: (y + 2^(e-1)) >> e."""
    ya, yb = at_scale(a, ma, sa), at_scale(b, mb, sb)
    if op in COMPARE_OPS:
        return COMPARE_OPS[op](ya, yb)
    y = np.where(cond, ya, yb) if op == "where" else VALUE_OPS[op](ya, yb)
    if extra_bits:
        y = np.right_shift(y + (np.int64(1) << np.int64(extra_bits - 1)), np.int64(extra_bits))
    return np.clip(y, lo, hi).astype(out_dtype)


def float_predicate(name: str, shape) -> np.ndarray:
    """isnan / isinf / isfinite of an integer-represented tensor: it stands for finite reals, so
    all false (isnan, isinf) or all true (isfinite)."""
    if name not in ("isnan", "isinf", "isfinite"):
        raise ValueError(f"not a float predicate: {name}")
    return np.full(tuple(shape), name == "isfinite", bool)


def multiply_acc(a, b) -> np.ndarray:
    """Elementwise int32 product of two 8/16-bit tensors (|a b| <= 2^30)."""
    return (np.asarray(a, np.int64) * np.asarray(b, np.int64)).astype(np.int32)


def round_div(n, d) -> np.ndarray:
    """n / d rounded half away from zero (int64, d != 0)."""
    n, d = np.asarray(n, np.int64), np.asarray(d, np.int64)
    q = (np.abs(n) + np.abs(d) // 2) // np.abs(d)
    return np.where((n < 0) != (d < 0), -q, q)


def divide(a, b, frac_bits: int, m, s, lo: int, hi: int, out_dtype: str) -> np.ndarray:
    """a / b for integer tensors: requantize(round_div(a << P, b), m, s) with (m, s) =
    dyadic(S_a / (S_b S_out) / 2^P) (a / b at 2^-P, then at S_out); b == 0 gives hi for a > 0,
    lo for a < 0, 0 for a = 0 (float's +-inf and NaN, clamped)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    y = requantize(round_div(a << frac_bits, np.where(b == 0, 1, b)), m, s, lo, hi, "int64")
    zero = np.where(a > 0, hi, np.where(a < 0, lo, np.clip(0, lo, hi)))
    return np.where(b == 0, zero, y).astype(out_dtype)


RECIPROCAL_BITS = 43  # 2^43 / b: |a| * r < 2^59 for 16-bit a; the quotient off by <= 2^-14 of its unit


def divide_by_reciprocal(a, b, frac_bits: int, m, s, lo: int, hi: int, out_dtype: str) -> np.ndarray:
    """`divide` for a divisor broadcast over many elements (an instance norm's per-channel std):
    r = round_div(2^K, b) once per element of b, then the quotient |a| * |r| >> (K - P), rounded half
    away from zero, signed, requantized: a multiply per element instead of a division (x86 has no
    vector integer division). It differs from round_div(a << P, b) only where that quotient lies within
    2^-14 of a rounding tie (by one unit of it, 2^-P of a / b); b == 0 as in `divide`."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    r = round_div(np.int64(1) << RECIPROCAL_BITS, np.where(b == 0, 1, b))
    a, r, b = np.broadcast_arrays(a, r, b)
    shift = RECIPROCAL_BITS - frac_bits
    q = (np.abs(a) * np.abs(r) + (np.int64(1) << (shift - 1))) >> shift
    y = requantize(q * np.sign(a) * np.sign(r), m, s, lo, hi, "int64")
    zero = np.where(a > 0, hi, np.where(a < 0, lo, np.clip(0, lo, hi)))
    return np.where(b == 0, zero, y).astype(out_dtype)


def reduce_sum(x, axes, keepdims: bool, shift: int = 0) -> np.ndarray:
    """int32 sum over `axes`: exact for shift 0, else (sum + 2^(k-1)) >> k in int64, saturated."""
    total = np.sum(np.asarray(x, np.int64), axis=tuple(axes), keepdims=keepdims)
    if shift:
        total = (total + (1 << (shift - 1))) >> shift
    return np.clip(total, *INT_RANGE["int32"]).astype(np.int32)


def cumsum(x, axis: int, exclusive: bool = False) -> np.ndarray:
    """int32 running sum along `axis` (exact: the lowering refuses lengths where it could overflow);
    `exclusive`: each position sums the elements before it."""
    total = np.cumsum(np.asarray(x, np.int64), axis=axis)
    if exclusive:
        total = total - np.asarray(x, np.int64)
    return total.astype(np.int32)


def log2_fixed(v) -> np.ndarray:
    """log2(v) at scale 2^-16 for int64 1 <= v < 2^62: bit position p by a 6-step binary search,
    mantissa t = v scaled to [2^16, 2^17), log2(t / 2^16) by a quartic (Horner, constants at 2^-30,
    floor shifts). Max error ~2.2e-4."""
    v = np.maximum(np.asarray(v, np.int64), 1)
    p = np.zeros_like(v)
    for b in (32, 16, 8, 4, 2, 1):
        p = np.where((v >> (p + b)) > 0, p + b, p)
    t = np.where(p >= LOG2_BITS, v >> np.maximum(p - LOG2_BITS, 0), v << np.maximum(LOG2_BITS - p, 0))
    f = t - (1 << LOG2_BITS)
    y = np.full_like(f, LOG2_COEFFS[-1])
    for c in LOG2_COEFFS[-2::-1]:
        y = ((y * f) >> LOG2_BITS) + c
    return (p << LOG2_BITS) + (y >> (30 - LOG2_BITS))


def log_softmax(x, m: int, s: int, m_out, s_out, m_log, s_log, lo: int, hi: int, out_dtype: str,
                axis: int = -1) -> np.ndarray:
    """log_softmax along `axis` of logits at scale S, at the output scale S_out.

    d = min(max(x) - x, 2^31 - 1); e = exp2_neg((d m + 2^(s-1)) >> s) (exp(-d S) at 2^-30, as in
    softmax_exp2); L = log2_fixed(sum e) - 30 * 2^16 (log2 of the row's exp-sum at 2^-16);
    out = clamp((rq(-d; 2^8 S / S_out) - rq(L; 2^8 ln2 2^-16 / S_out) + 2^7) >> 8): both terms at
    S_out / 2^8 (int32, saturating), one final rounding (<= 0.5 + 2^-8 LSB, not two half LSBs).
    The callers' (m_out, s_out), (m_log, s_log) include that 2^8. Needs length * 2^30 < 2^62.
    """
    x = np.asarray(x, np.int64)
    d = np.minimum(x.max(axis=axis, keepdims=True) - x, 2**31 - 1)
    e = exp2_neg((d * m + (1 << (s - 1))) >> s)
    big = log2_fixed(e.sum(axis=axis, keepdims=True)) - (EXP2_OUT_BITS << LOG2_BITS)
    y = (at_scale(-d, m_out, s_out) - at_scale(big, m_log, s_log) + (1 << (LOGSM_EXTRA_BITS - 1))) >> LOGSM_EXTRA_BITS
    return np.clip(y, lo, hi).astype(out_dtype)


__all__ = ["COMPARE_OPS", "VALUE_OPS", "EXP2_IN_BITS", "common_scale", "divide", "log2_fixed",
           "log_softmax", "multiply_acc", "reduce_sum", "round_div", "divide_by_reciprocal", "RECIPROCAL_BITS"]
