"""NumPy references of the integer transformer kernels (DESIGN.md section 2, I-ViT).

Every function works in int64 and states its bounds; the compiled kernels must equal these
bit for bit. Scales are compile-time floats; they only choose integer constants here.
"""

from __future__ import annotations

import math

import numpy as np

INT64_MAX = 2**63 - 1


def exp_params(scale: float) -> int:
    """x0 = floor(-1 / S): the (negative) integer that stands for -1.0 at scale S."""
    x0 = math.floor(-1.0 / scale)
    if x0 >= 0 or x0 < -(2**20):
        raise ValueError(f"ShiftExp input scale {scale} out of range (x0 = {x0})")
    return x0


def shift_exp(x, x0: int, n: int) -> np.ndarray:
    """exp(x * S) for integer x <= 0, as an integer at scale 2^-n (x0 = floor(-1/S)).

    p = x + x/2 - x/16 (x * log2 e, floor shifts); p = max(p, n * x0); q = floor(p / x0);
    r = p - x0 * q; e = r/2 - x0 (2^(r S) ~ 1 + r S / 2, floor shift); exp = e << (n - q).
    The result is at most -x0 << n; <= 0 when q = n (underflow).
    """
    x = np.asarray(x, np.int64)
    p = x + (x >> 1) - (x >> 4)
    p = np.maximum(p, n * x0)
    q = np.floor_divide(p, x0)
    r = p - x0 * q
    e = (r >> 1) - x0
    return np.left_shift(e, n - q)


def shiftmax(x, x0: int, n: int = 15, out_bits: int = 8, mask=None, axis: int = -1) -> np.ndarray:
    """Integer softmax along `axis`: uint8 probabilities at scale 2^-out_bits (round half up).

    max-subtract, ShiftExp, row sum (int64), factor = floor((2^31 - 1) / sum) (one division
    per row), out = clamp((exp * factor + 2^(s-1)) >> s, 0, 2^out_bits - 1), s = 31 - out_bits.
    `mask` (0/1, broadcast) zeroes masked keys exactly. Needs row length * (-x0) * 2^n < 2^31.
    """
    x = np.asarray(x, np.int64)
    if mask is not None:
        x = np.where(mask != 0, x, np.iinfo(np.int32).min)
    e = shift_exp(x - x.max(axis=axis, keepdims=True), x0, n)
    if mask is not None:
        e = e * (mask != 0)
    total = np.maximum(e.sum(axis=axis, keepdims=True), 1)
    factor = (2**31 - 1) // total
    s = 31 - out_bits
    return np.clip((e * factor + (1 << (s - 1))) >> s, 0, 2**out_bits - 1).astype(np.int64)


def gelu_n(x0: int) -> int:
    """ShiftGELU's exponent precision: n = 21 - ceil(log2(-x0)), so that the sigmoid
    division keeps 7 bits (DESIGN.md: n = 11 for 16-bit inputs)."""
    return 21 - math.ceil(math.log2(-x0))


def shift_gelu(x, x0: int, n: int) -> np.ndarray:
    """x * sigmoid(1.702 x) as x * sig with sig at scale 2^-7; x0 = floor(-1 / (1.702 S)).

    Stable per-element form: m = max(x, 0); e1 = ShiftExp(x - m); e2 = ShiftExp(-m);
    sig = (floor((2^31 - 1) / (e1 + e2)) * e1) >> 24. Result at scale S * 2^-7 (int64).
    """
    x = np.asarray(x, np.int64)
    m = np.maximum(x, 0)
    e1, e2 = shift_exp(x - m, x0, n), shift_exp(-m, x0, n)
    sig = (((2**31 - 1) // np.maximum(e1 + e2, 1)) * e1) >> 24
    return x * sig


def isqrt(v) -> np.ndarray:
    """Exact floor(sqrt(v)) for 0 <= v < 2^62, bit by bit (31 fixed steps)."""
    v = np.asarray(v, np.int64)
    if v.size and (v.min() < 0 or v.max() >= 2**62):
        raise ValueError("isqrt input out of [0, 2^62)")
    res = np.zeros_like(v)
    for k in range(30, -1, -1):
        t = res + (1 << k)
        res = np.where(t * t <= v, t, res)
    return res


def layernorm_core(x, mean_m: int, mean_s: int, axis: int = -1) -> np.ndarray:
    """I-LayerNorm without the affine part: y = x - round(sum(x) / C) (dyadic 1/C),
    std = isqrt(sum(y^2)), out = (y * floor((2^31 - 1) / std)) >> 1, i.e. y / std at scale
    2^-30 (= normalised value * sqrt(C) / 2^30). int64 throughout."""
    x = np.asarray(x, np.int64)
    total = x.sum(axis=axis, keepdims=True)
    mean = (total * mean_m + (1 << (mean_s - 1))) >> mean_s
    y = x - mean
    std = np.maximum(isqrt((y * y).sum(axis=axis, keepdims=True)), 1)
    return (y * ((2**31 - 1) // std)) >> 1
