"""Relax emitters of the integer transformer kernels; each mirrors
`passes.reference.transformer` (same names, same integer steps, int64 throughout; exp2_neg's
cubic as a table of its values)."""

from __future__ import annotations

import functools

import numpy as np
from tvm import relax

from ..reference import transformer as ref
from .emit import const

R = relax.op


def _i64(v: int):
    return const(v, "int64")


def shift_exp(x: relax.Expr, x0: int, n: int) -> relax.Expr:
    """exp(x * S) for int64 x <= 0 at scale 2^-n; see the reference for the steps."""
    p = R.subtract(R.add(x, R.right_shift(x, _i64(1))), R.right_shift(x, _i64(4)))
    p = R.maximum(p, _i64(n * x0))
    q = R.floor_divide(p, _i64(x0))
    r = R.subtract(p, R.multiply(q, _i64(x0)))
    e = R.subtract(R.right_shift(r, _i64(1)), _i64(x0))
    return R.left_shift(e, R.subtract(_i64(n), q))


def shiftmax(x: relax.Expr, x0: int, n: int, out_bits: int = 8, mask: relax.Expr | None = None,
             axis: int = -1) -> relax.Expr:
    """Integer softmax along `axis` -> uint8 at scale 2^-out_bits (mask: 0/1, broadcast)."""
    x = R.astype(x, "int64")
    if mask is not None:
        keep = mask if str(mask.ty.dtype) == "bool" else R.not_equal(mask, const(0, str(mask.ty.dtype)))
        x = R.where(keep, x, _i64(-(2**31)))
    e = shift_exp(R.subtract(x, R.max(x, axis=[axis], keepdims=True)), x0, n)
    if mask is not None:
        e = R.multiply(e, R.astype(keep, "int64"))
    total = R.maximum(R.sum(e, axis=[axis], keepdims=True), _i64(1))
    factor = R.floor_divide(_i64(2**31 - 1), total)
    s = 31 - out_bits
    out = R.right_shift(R.add(R.multiply(e, factor), _i64(1 << (s - 1))), _i64(s))
    return R.astype(R.clip(out, 0, 2**out_bits - 1), "uint8" if out_bits <= 8 else "int32")


def shift_gelu(x: relax.Expr, x0: int, n: int) -> relax.Expr:
    """x * sigmoid(1.702 x) at scale S * 2^-7 (int64), stable per-element form."""
    x = R.astype(x, "int64")
    m = R.maximum(x, _i64(0))
    e1 = shift_exp(R.subtract(x, m), x0, n)
    e2 = shift_exp(R.negative(m), x0, n)
    sig = R.right_shift(R.multiply(R.floor_divide(_i64(2**31 - 1), R.maximum(R.add(e1, e2), _i64(1))), e1),
                        _i64(24))
    return R.multiply(x, sig)


def isqrt(v: relax.Expr) -> relax.Expr:
    """Exact floor(sqrt(v)) for int64 0 <= v < 2^62: 31 fixed bit-by-bit steps."""
    res = R.multiply(v, _i64(0))
    for k in range(30, -1, -1):
        t = R.add(res, _i64(1 << k))
        res = R.where(R.less_equal(R.multiply(t, t), v), t, res)
    return res


def layernorm_core(x: relax.Expr, mean_m: int, mean_s: int, axis: int = -1, center: bool = True,
                   precise: bool = False, eps: int = 0) -> relax.Expr:
    """(x - round(mean)) / isqrt(sum((x - mean)^2) + eps) at scale 2^-30 (int64); center=False: no mean;
    precise: the reciprocal of std with 62 bits (`reference.transformer.layernorm_core`)."""
    y = x = R.astype(x, "int64")
    if center:
        total = R.sum(x, axis=[axis], keepdims=True)
        mean = R.right_shift(R.add(R.multiply(total, _i64(mean_m)), _i64(1 << (mean_s - 1))), _i64(mean_s))
        y = R.subtract(x, mean)
    squares = R.sum(R.multiply(y, y), axis=[axis], keepdims=True)
    if eps:
        squares = R.add(squares, _i64(eps))
    std = R.maximum(isqrt(squares), _i64(1))
    if precise:
        return R.right_shift(R.multiply(y, R.floor_divide(_i64(2**62 - 1), std)), _i64(32))
    return R.right_shift(R.multiply(y, R.floor_divide(_i64(2**31 - 1), std)), _i64(1))


@functools.lru_cache(maxsize=1)
def exp2_fraction_table() -> np.ndarray:
    """The reference's cubic p(f) for every fraction f < 2^16 (int32, <= 2^30)."""
    return ref.exp2_neg(np.arange(1 << ref.EXP2_IN_BITS)).astype(np.int32)


@functools.lru_cache(maxsize=1)
def _exp2_fractions() -> relax.Expr:
    """`exp2_fraction_table` as one constant that every softmax and GELU of a module shares."""
    return const(exp2_fraction_table(), "int32")


def exp2_cubic(f: relax.Expr) -> relax.Expr:
    """The reference's cubic p(f) for int64 fractions 0 <= f < 2^16, by its Horner steps (int64,
    below 2^47): the values of `_exp2_fractions`, computed."""
    c0, c1, c2, c3 = ref.EXP2_COEFFS
    y = _i64(c3)
    for c in (c2, c1, c0):
        y = R.add(R.right_shift(R.multiply(y, f), _i64(ref.EXP2_IN_BITS)), _i64(c))
    return y


def exp2_neg(a: relax.Expr) -> relax.Expr:
    """2^(-a / 2^16) at scale 2^-30 for int64 a >= 0: p(fraction) >> integer part, p the reference's
    cubic, read from a table of its 2^16 values (the same integers; the Horner steps took three
    64-bit multiplies and shifts per value, a tenth of MiniLM's time on AVX2)."""
    f_bits = ref.EXP2_IN_BITS
    a = R.minimum(a, _i64(31 << f_bits))
    q, f = R.right_shift(a, _i64(f_bits)), R.bitwise_and(a, _i64((1 << f_bits) - 1))
    p = R.take(_exp2_fractions(), R.astype(f, "int32"), axis=0, mode="clip")
    return R.right_shift(R.astype(p, "int64"), q)


def softmax_exp2(x: relax.Expr, m: int, s: int, out_bits: int = 15, mask: relax.Expr | None = None,
                 axis: int = -1, empty_rows: str | None = None) -> relax.Expr:
    """Integer softmax of logits at scale S ((m, s) = dyadic(S log2(e) 2^16)) -> probabilities at
    2^-out_bits, uint8 for out_bits <= 8, else int16. Rows with every key masked: zeros, or with
    `empty_rows` "uniform" / "logits" as the reference (`reference.transformer.softmax_exp2`)."""
    x = R.astype(x, "int64")
    if mask is not None:
        keep = mask if str(mask.ty.dtype) == "bool" else R.not_equal(mask, const(0, str(mask.ty.dtype)))
        if empty_rows is not None:  # along the softmax axis as the mask's own rank counts it
            k_axis = len(mask.ty.shape) + (axis if axis < 0 else axis - len(x.args[0].ty.shape))
            if k_axis >= 0:
                empty = R.equal(R.max(R.astype(keep, "int32"), axis=[k_axis], keepdims=True), const(0, "int32"))
                if empty_rows == "uniform":
                    x = R.where(empty, _i64(0), x)
                keep = R.logical_or(keep, empty)
        x = R.where(keep, x, _i64(ref.INT32_MIN))
    d = R.minimum(R.subtract(R.max(x, axis=[axis], keepdims=True), x), _i64(2**31 - 1))
    e = exp2_neg(R.right_shift(R.add(R.multiply(d, _i64(m)), _i64(1 << (s - 1))), _i64(s)))
    if mask is not None:
        e = R.multiply(e, R.astype(keep, "int64"))
    factor = R.floor_divide(_i64(2**62 - 1), R.maximum(R.sum(e, axis=[axis], keepdims=True), _i64(1)))
    k = 62 - out_bits
    out = R.right_shift(R.add(R.multiply(e, factor), _i64(1 << (k - 1))), _i64(k))
    return R.astype(R.clip(out, 0, 2**out_bits - 1), "uint8" if out_bits <= 8 else "int16")


def gelu_tanh(x: relax.Expr, m: int, s: int, out_bits: int = 15) -> relax.Expr:
    """x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) at scale S * 2^-out_bits (int64)."""
    x = R.astype(x, "int64")
    xs = R.clip(R.right_shift(R.add(R.multiply(x, _i64(m)), _i64(1 << (s - 1))), _i64(s)),
                -ref.GELU_CLAMP, ref.GELU_CLAMP)
    cubic = R.right_shift(R.add(R.multiply(R.multiply(xs, xs), _i64(ref.GELU_CUBIC)), _i64(1 << 35)), _i64(36))
    w = R.add(_i64(1 << 16), cubic)
    a = R.right_shift(R.add(R.multiply(R.multiply(R.abs(xs), w), _i64(ref.GELU_Z_LOG2)), _i64(1 << 35)), _i64(36))
    den = R.add(_i64(1 << ref.EXP2_OUT_BITS), exp2_neg(a))
    pos = R.floor_divide(R.add(_i64(1 << (ref.EXP2_OUT_BITS + out_bits)), R.right_shift(den, _i64(1))), den)
    sig = R.where(R.greater_equal(x, _i64(0)), pos, R.subtract(_i64(1 << out_bits), pos))
    return R.multiply(x, sig)
