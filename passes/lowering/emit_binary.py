"""Relax emitters of the broadcast-binary, reduction and log-softmax kernels; each mirrors
`passes.reference.binary` (same names, same integer steps, int64 inside)."""

from __future__ import annotations

from tvm import relax

from ..reference import binary as ref
from ..reference.kernels import INT_RANGE
from .emit import const, requantize
from .emit_transformer import exp2_neg

R = relax.op
VALUE_OPS = {"add": R.add, "subtract": R.subtract, "maximum": R.maximum, "minimum": R.minimum}
COMPARE_OPS = {"less": R.less, "greater": R.greater, "less_equal": R.less_equal,
               "greater_equal": R.greater_equal, "equal": R.equal, "not_equal": R.not_equal}


def _i64(v):
    return const(v, "int64")


def at_scale(q: relax.Expr, m, s) -> relax.Expr:
    """An operand at the common scale (int64); m None: `q` is such an operand already."""
    if m is None:
        return q
    return R.astype(requantize(q, m, s, *INT_RANGE["int32"], "int32"), "int64")


def common_scale(op: str, a, b, ma, sa, mb, sb, lo=None, hi=None, out_dtype=None, cond=None,
                 extra_bits: int = 0) -> relax.Expr:
    """`op` of two operands rescaled to one scale, rounded once by `extra_bits` (see the reference)."""
    ya, yb = at_scale(a, ma, sa), at_scale(b, mb, sb)
    if op in COMPARE_OPS:
        return COMPARE_OPS[op](ya, yb)
    y = R.where(cond, ya, yb) if op == "where" else VALUE_OPS[op](ya, yb)
    if extra_bits:
        y = R.right_shift(R.add(y, _i64(1 << (extra_bits - 1))), _i64(extra_bits))
    return R.astype(R.clip(y, lo, hi), out_dtype)


def multiply_acc(a: relax.Expr, b: relax.Expr) -> relax.Expr:
    return R.multiply(R.astype(a, "int32"), R.astype(b, "int32"))


def round_div(n: relax.Expr, d: relax.Expr) -> relax.Expr:
    """n / d rounded half away from zero (int64, d != 0)."""
    q = R.floor_divide(R.add(R.abs(n), R.floor_divide(R.abs(d), _i64(2))), R.abs(d))
    return R.multiply(q, R.multiply(R.sign(n), R.sign(d)))  # q >= 0; q = 0 where n = 0


def divide(a, b, frac_bits: int, m, s, lo: int, hi: int, out_dtype: str) -> relax.Expr:
    a, b = R.astype(a, "int64"), R.astype(b, "int64")
    zero = R.equal(b, _i64(0))
    y = requantize(round_div(R.left_shift(a, _i64(frac_bits)), R.where(zero, _i64(1), b)), m, s, lo, hi, "int64")
    inf = R.where(R.greater(a, _i64(0)), _i64(hi), R.where(R.less(a, _i64(0)), _i64(lo), _i64(min(max(0, lo), hi))))
    return R.astype(R.where(zero, inf, y), out_dtype)


def divide_by_reciprocal(a, b, frac_bits: int, m, s, lo: int, hi: int, out_dtype: str) -> relax.Expr:
    a, b = R.astype(a, "int64"), R.astype(b, "int64")
    zero = R.equal(b, _i64(0))
    r = round_div(_i64(1 << ref.RECIPROCAL_BITS), R.where(zero, _i64(1), b))
    shift = ref.RECIPROCAL_BITS - frac_bits
    q = R.right_shift(R.add(R.multiply(R.abs(a), R.abs(r)), _i64(1 << (shift - 1))), _i64(shift))
    q = R.multiply(q, R.multiply(R.sign(a), R.sign(r)))  # |r| >= 2^12; q = 0 where a = 0
    y = requantize(q, m, s, lo, hi, "int64")
    inf = R.where(R.greater(a, _i64(0)), _i64(hi), R.where(R.less(a, _i64(0)), _i64(lo), _i64(min(max(0, lo), hi))))
    return R.astype(R.where(zero, inf, y), out_dtype)


def reduce_sum(x: relax.Expr, axes, keepdims: bool, shift: int = 0) -> relax.Expr:
    if not shift:
        return R.sum(R.astype(x, "int32"), axis=list(axes), keepdims=keepdims)
    total = R.sum(R.astype(x, "int64"), axis=list(axes), keepdims=keepdims)
    total = R.right_shift(R.add(total, _i64(1 << (shift - 1))), _i64(shift))
    return R.astype(R.clip(total, *INT_RANGE["int32"]), "int32")


def cumsum(x: relax.Expr, axis: int, exclusive: bool = False) -> relax.Expr:
    return R.cumsum(R.astype(x, "int32"), axis=axis, dtype="int32", exclusive=exclusive)


def log2_fixed(v: relax.Expr) -> relax.Expr:
    bits = ref.LOG2_BITS
    v = R.maximum(v, _i64(1))
    p = R.multiply(v, _i64(0))
    for b in (32, 16, 8, 4, 2, 1):
        step = R.add(p, _i64(b))
        p = R.where(R.greater(R.right_shift(v, step), _i64(0)), step, p)
    down = R.right_shift(v, R.maximum(R.subtract(p, _i64(bits)), _i64(0)))
    up = R.left_shift(v, R.maximum(R.subtract(_i64(bits), p), _i64(0)))
    f = R.subtract(R.where(R.greater_equal(p, _i64(bits)), down, up), _i64(1 << bits))
    y = _i64(ref.LOG2_COEFFS[-1])
    for c in ref.LOG2_COEFFS[-2::-1]:
        y = R.add(R.right_shift(R.multiply(y, f), _i64(bits)), _i64(c))
    return R.add(R.left_shift(p, _i64(bits)), R.right_shift(y, _i64(30 - bits)))


def log_softmax(x, m: int, s: int, m_out, s_out, m_log, s_log, lo: int, hi: int, out_dtype: str,
                axis: int = -1) -> relax.Expr:
    x = R.astype(x, "int64")
    d = R.minimum(R.subtract(R.max(x, axis=[axis], keepdims=True), x), _i64(2**31 - 1))
    e = exp2_neg(R.right_shift(R.add(R.multiply(d, _i64(m)), _i64(1 << (s - 1))), _i64(s)))
    big = R.subtract(log2_fixed(R.sum(e, axis=[axis], keepdims=True)), _i64(ref.EXP2_OUT_BITS << ref.LOG2_BITS))
    y = R.subtract(at_scale(R.negative(d), m_out, s_out), at_scale(big, m_log, s_log))
    y = R.right_shift(R.add(y, _i64(1 << (ref.LOGSM_EXTRA_BITS - 1))), _i64(ref.LOGSM_EXTRA_BITS))
    return R.astype(R.clip(y, lo, hi), out_dtype)
