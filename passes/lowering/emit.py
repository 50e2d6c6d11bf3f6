"""Relax emitters of the integer kernels; each mirrors a function of `passes.reference`.

They build expressions only (no float op): compile-time parameters come in as NumPy.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE

R = relax.op


def const(value, dtype: str) -> relax.Expr:
    return relax.const(np.asarray(value).astype(dtype), dtype)


def channel_shape(values: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """Reshape per-channel parameters to broadcast along `axis` of a rank-`rank` tensor."""
    values = np.asarray(values)
    if values.ndim == 0 or axis is None:
        return values.reshape(())
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


def requantize(acc: relax.Expr, m: np.ndarray, s: np.ndarray, lo: int, hi: int, out_dtype: str) -> relax.Expr:
    """clamp((acc * m + 2^(s-1)) >> s) in int64; `m`, `s` already broadcastable (see reference)."""
    m, s = np.asarray(m, np.int64), np.asarray(s, np.int64)
    m = np.where(s > 62, 0, m)
    s = np.where(s > 62, 1, s)
    s = np.maximum(s, -62)  # a ratio >= 2^92: every nonzero product saturates, as it does at 2^62 (no shift >= 64)
    left, right = np.maximum(-s, 0), np.maximum(s, 0)
    y = R.multiply(R.astype(acc, "int64"), const(m, "int64"))
    if np.any(left > 0):
        bound = np.left_shift(np.int64(1), 62 - left)  # saturate before a left shift overflows int64
        y = R.left_shift(R.minimum(R.maximum(y, const(-bound, "int64")), const(bound, "int64")),
                         const(left, "int64"))
    if np.any(right > 0):
        rnd = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
        y = R.right_shift(R.add(y, const(rnd, "int64")), const(right, "int64"))
    return R.astype(R.clip(y, lo, hi), out_dtype)


def rounding_shift(acc: relax.Expr, k: np.ndarray) -> relax.Expr:
    """round-half-up(acc / 2^k) for k >= 0 (broadcastable), in int32 without overflow:
    (acc >> k) + bit k-1 of acc (the carry of adding 2^(k-1)); k = 0 keeps acc. Equals
    `requantize(acc, 2^30, 30 + k)` with one int64 multiply per element saved."""
    k = np.asarray(k, np.int64)
    if not k.any():
        return acc
    carry = R.bitwise_and(R.right_shift(acc, const(np.maximum(k - 1, 0).astype(np.int32), "int32")),
                          const((k > 0).astype(np.int32), "int32"))
    return R.add(R.right_shift(acc, const(k.astype(np.int32), "int32")), carry)


def conv2d_acc(x: relax.Expr, w_q: np.ndarray, attrs) -> relax.Expr:
    """int8/uint8 x int8 conv2d with int32 accumulation, same geometry as the float conv."""
    return R.nn.conv2d(x, const(w_q, "int8"), attrs.strides, attrs.padding, attrs.dilation, attrs.groups,
                       attrs.data_layout, attrs.kernel_layout, attrs.out_layout, out_dtype="int32")


def matmul_acc(x: relax.Expr, w_q: np.ndarray) -> relax.Expr:
    """int8/uint8 x int8 matmul with int32 accumulation."""
    return R.matmul(x, const(w_q, "int8"), out_dtype="int32")


def add_requant(a, b, ma, sa, mb, sb, lo: int, hi: int, out_dtype: str) -> relax.Expr:
    """Residual add: each branch requantized to the output scale (int32), summed, clamped."""
    lo32, hi32 = INT_RANGE["int32"]
    ya = R.astype(requantize(a, ma, sa, lo32, hi32, "int32"), "int64")
    yb = R.astype(requantize(b, mb, sb, lo32, hi32, "int32"), "int64")
    return R.astype(R.clip(R.add(ya, yb), lo, hi), out_dtype)


def sum_pool(x: relax.Expr, axes, keepdims: bool = True) -> relax.Expr:
    """Integer sum over `axes` (int32), the numerator of a mean."""
    return R.sum(R.astype(x, "int32"), axis=list(axes), keepdims=keepdims)
