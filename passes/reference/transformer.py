"""NumPy references of the integer transformer kernels (DESIGN.md section 2, I-ViT).

Every function works in int64 and states its bounds; the compiled kernels must equal these
bit for bit. Scales are compile-time floats; they only choose integer constants here.

Two generations: I-ViT's `shift_exp`, `shiftmax` and `shift_gelu` (uint8 probabilities,
x * sigmoid(1.702 x)), kept as the measured baseline; and the kernels the compiler uses,
measured on DINOv2 (benchmarks/op_errors.py): `exp2_neg` (power of two by a shift, the
fraction by a cubic, 7.5e-5 relative error instead of ShiftExp's 6%), `softmax_exp2`
(logits at any scale, 62-bit row reciprocal, 15-bit probabilities: uint8 probabilities
cost DINOv2's 257-token attention most of its accuracy) and `gelu_tanh` (the tanh form of
GELU, 1e-3 relative error, where x * sigmoid(1.702 x) is off by 2-5% on real FFN inputs).
GELU itself is now a table over the 16-bit input grid (`lowering/transformer.py`): exact up
to its 15-bit rounding, and one gather per element instead of `gelu_tanh`'s 64-bit division.
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


def layernorm_core(x, mean_m: int, mean_s: int, axis: int = -1, center: bool = True,
                   precise: bool = False, eps: int = 0) -> np.ndarray:
    """I-LayerNorm without the affine part: y = x - round(sum(x) / C) (dyadic 1/C),
    std = isqrt(sum(y^2) + eps), out = (y * floor((2^31 - 1) / std)) >> 1, i.e. y / std at scale
    2^-30 (= normalised value * sqrt(C) / 2^30). int64 throughout. center=False: y = x (RMSNorm).
    eps: the norm's epsilon in the integers' units, round(C * epsilon / S^2) (`layernorm_eps`), where
    a row's variance may be as small as epsilon; sum(y^2) + eps < 2^62.
    precise: (y * floor((2^62 - 1) / std)) >> 32 (|y| <= std, so the product fits int64), for rows
    whose std is large (an int32 residual stream), where 2^31 / std has few bits."""
    x = np.asarray(x, np.int64)
    y = x
    if center:
        total = x.sum(axis=axis, keepdims=True)
        y = x - ((total * mean_m + (1 << (mean_s - 1))) >> mean_s)
    std = np.maximum(isqrt((y * y).sum(axis=axis, keepdims=True) + np.int64(eps)), 1)
    if precise:
        return (y * ((2**62 - 1) // std)) >> 32
    return (y * ((2**31 - 1) // std)) >> 1


def layernorm_eps(epsilon: float, channels: int, scale: float, squares_bound: int) -> int:
    """A norm's epsilon in the units of its integers' sum of squares: var + eps = (sum(y^2) + C eps / S^2) S^2 / C,
    so round(C * eps / S^2), capped where sum(y^2) (at most `squares_bound`) plus it would reach isqrt's 2^62
    (beyond that cap float's y / sqrt(eps) lies below the integers' resolution anyway). 0 where it rounds away:
    the integers unchanged wherever the variance dwarfs eps."""
    cap = max(2**62 - 1 - int(squares_bound), 0)
    return int(min(round(channels * float(epsilon) / float(scale) ** 2), cap))


PRECISE_EPS = 2**32  # an eps this large makes std >= 2^16: the 31-bit reciprocal of std keeps < 15 bits


def stream_shift(channels: int, bits: int = 32) -> int:
    """Right shift that keeps a row sum of squares of `channels` centred `bits`-bit integers
    (|y| < 2^bits: x - mean of an int32 x) within int64."""
    k = 0
    while channels * 4.0 ** (bits - k) >= 2.0**62:
        k += 1
    return k


EXP2_IN_BITS = 16  # exp2_neg input: a at scale 2^-16 (log2 units)
EXP2_OUT_BITS = 30  # exp2_neg output scale 2^-30
_EXP2_CUBIC = (0.99992496, -0.69101933, 0.23006863, -0.03901177)  # 2^-u on [0, 1), minimax relative error
EXP2_COEFFS = tuple(int(round(c * 2**EXP2_OUT_BITS)) for c in _EXP2_CUBIC)
INT32_MIN = -(2**31)


def exp2_neg(a) -> np.ndarray:
    """2^(-a / 2^16) at scale 2^-30 for integer a >= 0 (int64).

    q = a >> 16, f = a & 0xFFFF: 2^-(q + f / 2^16) = 2^-q * p(f), p a cubic (Horner, floor
    shifts, constants at 2^-30; max relative error 7.5e-5), then >> q. a is first clamped to
    31 * 2^16 (result 0: p < 2^30). Intermediates stay below 2^47.
    """
    a = np.minimum(np.asarray(a, np.int64), 31 << EXP2_IN_BITS)
    q, f = a >> EXP2_IN_BITS, a & ((1 << EXP2_IN_BITS) - 1)
    c0, c1, c2, c3 = EXP2_COEFFS
    y = ((c3 * f) >> EXP2_IN_BITS) + c2
    y = ((y * f) >> EXP2_IN_BITS) + c1
    y = ((y * f) >> EXP2_IN_BITS) + c0
    return y >> q


def softmax_exp2(x, m: int, s: int, out_bits: int = 15, mask=None, axis: int = -1, empty_rows=None) -> np.ndarray:
    """Integer softmax along `axis` of logits x at scale S: probabilities at 2^-out_bits.

    (m, s) = dyadic(S * log2(e) * 2^16) with 1 <= s <= 62. d = min(max(x) - x, 2^31 - 1);
    a = (d * m + 2^(s-1)) >> s (log2 units at 2^-16, d * m < 2^62); e = exp2_neg(a) (<= 2^30);
    factor = floor((2^62 - 1) / sum(e)) (one division per row); out = clamp((e * factor +
    2^(k-1)) >> k, 0, 2^out_bits - 1), k = 62 - out_bits. e * factor <= 2^62 - 1, so every row
    sums to at most 2^out_bits + length / 2 (the bound a consumer matmul may use). Needs
    length * 2^30 < 2^62. `mask` (0/1, broadcast) zeroes masked keys exactly. A row whose keys are all
    masked comes out zero; with `empty_rows` "uniform" every key of it gets the same share (float's
    softmax of a row filled with one value), with "logits" the row's logits go unmasked (float's
    x - 10000: a shift).
    """
    x = np.asarray(x, np.int64)
    if mask is not None and empty_rows is not None:
        mask = np.asarray(mask) != 0
        k_axis = mask.ndim + (axis % x.ndim) - x.ndim
        if k_axis >= 0:
            empty = ~mask.any(axis=k_axis, keepdims=True)
            if empty_rows == "uniform":
                x = np.where(empty, 0, x)
            mask = mask | empty
    if mask is not None:
        x = np.where(mask != 0, x, INT32_MIN)
    d = np.minimum(x.max(axis=axis, keepdims=True) - x, 2**31 - 1)
    e = exp2_neg((d * m + (1 << (s - 1))) >> s)
    if mask is not None:
        e = e * (mask != 0)
    factor = (2**62 - 1) // np.maximum(e.sum(axis=axis, keepdims=True), 1)
    k = 62 - out_bits
    return np.clip((e * factor + (1 << (k - 1))) >> k, 0, 2**out_bits - 1)


GELU_CUBIC = int(round(0.044715 * 2**20))  # tanh-form GELU: z = sqrt(2/pi) (x + 0.044715 x^3)
GELU_Z_LOG2 = int(round(2 * math.sqrt(2 / math.pi) * math.log2(math.e) * 2**20))  # 2 z log2(e) per unit
GELU_CLAMP = 8 << 16  # |x| > 8: sigmoid(2z) is 0 or 1 at 2^-30 already


def gelu_tanh(x, m: int, s: int, out_bits: int = 15) -> np.ndarray:
    """GELU(x) ~ x * sigmoid(2 z), z = sqrt(2/pi) (x + 0.044715 x^3) (= 0.5 x (1 + tanh z)),
    for integer x (|x| <= 2^15) at scale S; result at scale S * 2^-out_bits (|result| <= 2^30).

    (m, s) = dyadic(S * 2^16), 1 <= s <= 62: xs = x * S at 2^-16, clamped to +-8;
    w = 2^16 + (xs^2 * round(0.044715 * 2^20) + 2^35) >> 36 (1 + 0.044715 x^2 at 2^-16);
    a = (|xs| * w * round(2 sqrt(2/pi) log2(e) 2^20) + 2^35) >> 36 (2|z| log2(e) at 2^-16);
    e = exp2_neg(a) (exp(-2|z|) at 2^-30); pos = floor((2^(30+b) + den / 2) / den), den = 2^30 + e
    (sigmoid(2|z|) at 2^-b, one division per element); sig = pos for x >= 0 else 2^b - pos;
    out = x * sig. Intermediates stay below 2^59.
    """
    x = np.asarray(x, np.int64)
    xs = np.clip((x * m + (1 << (s - 1))) >> s, -GELU_CLAMP, GELU_CLAMP)
    w = (1 << 16) + ((xs * xs * GELU_CUBIC + (1 << 35)) >> 36)
    a = (np.abs(xs) * w * GELU_Z_LOG2 + (1 << 35)) >> 36
    den = (1 << EXP2_OUT_BITS) + exp2_neg(a)
    pos = ((1 << (EXP2_OUT_BITS + out_bits)) + (den >> 1)) // den
    return x * np.where(x >= 0, pos, (1 << out_bits) - pos)
