"""NumPy twins of the integer kernels (DESIGN.md section 2, the numerics contract).

All integer arithmetic is done in int64 and checked to stay there; floats appear only in
compile-time parameter computation. (The boundary quantizer lives in `runtime.boundary`.)
"""

from __future__ import annotations

import numpy as np

INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
             "int32": (-(2**31), 2**31 - 1)}


def dyadic(ratio) -> tuple[np.ndarray, np.ndarray]:
    """Real ratio(s) r > 0 -> (m, s) int64 with r ~= m * 2^-s, m in [2^30, 2^31).

    frexp(r) = (f, e), m = round(f * 2^31) (m == 2^31 -> 2^30, e + 1), s = 31 - e.
    """
    r = np.asarray(ratio, np.float64)
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"dyadic ratio must be finite and > 0, got {r[~(np.isfinite(r) & (r > 0))][:4]}")
    f, e = np.frexp(r)
    m = np.round(f * 2.0**31).astype(np.int64)
    e = e.astype(np.int64)
    carry = m == 2**31
    m = np.where(carry, 2**30, m)
    e = np.where(carry, e + 1, e)
    return m, 31 - e


def requantize(acc, m, s, lo: int, hi: int, out_dtype: str) -> np.ndarray:
    """clamp((acc * m + 2^(s-1)) >> s, lo, hi), int64 intermediate, round half up.

    `m`, `s` broadcast against `acc` (per-channel arrays are pre-shaped by the caller).
    s <= 0 shifts left (ratio >= 2^30), saturating instead of overflowing; s > 62 gives 0.
    """
    acc = np.asarray(acc).astype(np.int64)
    m, s = np.asarray(m, np.int64), np.asarray(s, np.int64)
    m = np.where(s > 62, 0, m)
    s = np.where(s > 62, 1, s)
    s = np.maximum(s, -62)  # a ratio >= 2^92: every nonzero product saturates, as it does at 2^62
    left, right = np.maximum(-s, 0), np.maximum(s, 0)
    rnd = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    bound = np.left_shift(np.int64(1), 62 - left)  # saturate before a left shift overflows int64
    y = np.left_shift(np.clip(acc * m, -bound, bound), left)
    y = np.right_shift(y + rnd, right)
    return np.clip(y, lo, hi).astype(out_dtype)


def quantize_weights(w, bits: int, axis: int, min_scale=None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel weights along `axis`: (int8 values, float64 scales), each scale at
    least `min_scale` (per channel or scalar) where given."""
    w = np.asarray(w, np.float64)
    qmax = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.max(np.abs(w), axis=reduce) if reduce else np.abs(w)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    scale = np.where(np.isnan(exact := _exact_steps(w, reduce, amax, qmax)), scale, exact)
    if min_scale is not None:
        scale = np.maximum(scale, min_scale)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax - 1, qmax).astype(np.int8)
    return q, scale


EXACT_STEPS = range(16, -9, -1)  # 2^-16 .. 2^8: steps on which a channel's values may lie exactly


def _exact_steps(w: np.ndarray, reduce: tuple, amax: np.ndarray, qmax: int) -> np.ndarray:
    """Per channel, the finest power-of-two step 2^-j on which every value lies exactly and fits
    +-qmax (NaN where none): a constant operand of whole numbers or halves (a sampling
    grid [u, v, 0, 1], a selection matrix) is taken exactly, where amax / qmax made 1 of [2, 0, 0, 1]
    into 64/63.5 (a 0.8% error that a translation of 22 px turned into 0.17 px)."""
    def integral(j):
        v = w * 2.0**j
        ok = v == np.round(v)
        return np.all(ok, axis=reduce) if reduce else ok

    found = np.full(amax.shape, np.nan)
    candidates = integral(EXACT_STEPS[0]) & (amax > 0)  # learned weights fail here, in one pass
    if not np.any(candidates):
        return found
    for j in EXACT_STEPS:  # finest first: the finest step that fits (the bias, at S_in * S_w, keeps its resolution)
        candidates &= integral(j)
        found = np.where(np.isnan(found) & candidates & (amax * 2.0**j <= qmax), 2.0**-j, found)
    return found


def conv2d_acc(x, w, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1) -> np.ndarray:
    """NCHW x OIHW integer convolution, int32 accumulation; padding is (top, left, bottom, right)."""
    x = np.pad(np.asarray(x, np.int64), ((0, 0), (0, 0), (padding[0], padding[2]), (padding[1], padding[3])))
    w = np.asarray(w, np.int64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow), np.int64)
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg]
        wg = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dilation[0]:i * dilation[0] + strides[0] * oh:strides[0],
                           j * dilation[1]:j * dilation[1] + strides[1] * ow:strides[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return _checked_int32(out)


def matmul_acc(x, w) -> np.ndarray:
    """Integer matmul with int32 accumulation."""
    return _checked_int32(np.matmul(np.asarray(x, np.int64), np.asarray(w, np.int64)))


def add_requant(a, b, ma, sa, mb, sb, lo: int, hi: int, out_dtype: str) -> np.ndarray:
    """Residual add: each branch requantized to the output scale in int32, summed, clamped."""
    ya = requantize(a, ma, sa, *INT_RANGE["int32"], "int64")
    yb = requantize(b, mb, sb, *INT_RANGE["int32"], "int64")
    return np.clip(ya + yb, lo, hi).astype(out_dtype)


def sum_pool(x, axes, keepdims: bool = True) -> np.ndarray:
    """Integer sum over `axes`, the numerator of an average pool / mean."""
    return _checked_int32(np.sum(np.asarray(x, np.int64), axis=tuple(axes), keepdims=keepdims))


def max_pool2d(x, pool_size, strides, padding=(0, 0, 0, 0), dilation=(1, 1)) -> np.ndarray:
    """NCHW max pool on integers; padding never wins (pads with the dtype's minimum)."""
    x = np.asarray(x)
    lo = np.iinfo(x.dtype).min
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[2]), (padding[1], padding[3])), constant_values=lo)
    kh, kw = pool_size
    oh = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.full(x.shape[:2] + (oh, ow), lo, x.dtype)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, xp[:, :, i * dilation[0]:i * dilation[0] + strides[0] * oh:strides[0],
                                     j * dilation[1]:j * dilation[1] + strides[1] * ow:strides[1]])
    return out


def _checked_int32(acc: np.ndarray) -> np.ndarray:
    lo, hi = INT_RANGE["int32"]
    if acc.size and (acc.min() < lo or acc.max() > hi):
        raise OverflowError("int32 accumulator overflow in reference kernel")
    return acc.astype(np.int32)
