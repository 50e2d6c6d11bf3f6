"""NumPy twins of the spatial integer kernels: resize, average-pool sums, transposed conv.

No TVM import. Coordinates are computed with exact rationals (`fractions.Fraction`) at
compile time, so that index tables and interpolation weights do not depend on float
rounding; everything applied to tensors is integer arithmetic (int64, checked to fit int32).

Resize follows TVM's `topi.image.resize2d` (the float op the importer emits, same scale
`in / out` per axis) for every coordinate transformation mode except tf_crop_and_resize.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .kernels import _checked_int32

LINEAR_BITS = 10  # interpolation weights are multiples of 2^-10 (fewer for 16-bit inputs, see linear_bits)


def source_coordinate(x: int, size_in: int, size_out: int, mode: str) -> Fraction:
    """The input coordinate that output coordinate `x` samples, exactly."""
    scale = Fraction(size_in, size_out)
    if mode == "half_pixel":
        return (x + Fraction(1, 2)) * scale - Fraction(1, 2)
    if mode == "pytorch_half_pixel":
        return (x + Fraction(1, 2)) * scale - Fraction(1, 2) if size_out > 1 else Fraction(0)
    if mode == "align_corners":
        return Fraction((size_in - 1) * x, size_out - 1) if size_out > 1 else Fraction(0)
    if mode == "asymmetric":
        return x * scale
    if mode == "tf_half_pixel_for_nn":
        return (x + Fraction(1, 2)) * scale
    raise ValueError(f"coordinate transformation mode {mode!r} is not supported")


def _nearest(v: Fraction, rounding: str) -> int:
    if rounding == "round_prefer_floor":
        return math.ceil(v - Fraction(1, 2))
    if rounding == "round_prefer_ceil":
        return math.floor(v + Fraction(1, 2))
    if rounding == "floor":
        return math.floor(v)
    if rounding == "ceil":
        return math.ceil(v)
    if rounding == "round":  # half away from zero
        return int(math.copysign(math.floor(abs(v) + Fraction(1, 2)), v))
    raise ValueError(f"nearest rounding {rounding!r} is not supported")


def nearest_indices(size_in: int, size_out: int, mode: str, rounding: str) -> np.ndarray:
    """Source index of every output position along one axis (clamped to the input)."""
    if rounding == "":  # TVM's default
        rounding = "round" if mode == "align_corners" else "floor"
    idx = [_nearest(source_coordinate(x, size_in, size_out, mode), rounding) for x in range(size_out)]
    return np.clip(np.asarray(idx, np.int64), 0, size_in - 1)


def linear_bits(in_dtype: str) -> int:
    """Weight bits so that |x| * 2^(2 bits) < 2^31 after both axes (10 for 8-bit, 7 for 16-bit)."""
    value_bits = 16 if in_dtype == "int16" else 8
    return min(LINEAR_BITS, (30 - value_bits) // 2)


def linear_weights(size_in: int, size_out: int, mode: str, bits: int):
    """(i0, i1, w0, w1) along one axis: out[x] = w0 * in[i0] + w1 * in[i1], w0 + w1 = 2^bits.

    w1 = floor(frac * 2^bits + 1/2) (round half up, exact), w0 = 2^bits - w1: a constant input
    stays exactly constant. Indices are clamped to the input, as TVM's resize does.
    """
    i0, w1 = [], []
    for x in range(size_out):
        v = source_coordinate(x, size_in, size_out, mode)
        base = math.floor(v)
        i0.append(base)
        w1.append(math.floor((v - base) * 2**bits + Fraction(1, 2)))
    i0 = np.asarray(i0, np.int64)
    w1 = np.asarray(w1, np.int64)
    return np.clip(i0, 0, size_in - 1), np.clip(i0 + 1, 0, size_in - 1), 2**bits - w1, w1


def _along(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = -1
    return values.reshape(shape)


def resize_nearest(x, axes, sizes, mode: str, rounding: str) -> np.ndarray:
    """Nearest resize of the integer tensor `x` along `axes` to `sizes`: a gather, same dtype."""
    x = np.asarray(x)
    for axis, size in zip(axes, sizes):
        x = np.take(x, nearest_indices(x.shape[axis], size, mode, rounding), axis=axis)
    return x


def resize_linear(x, axes, sizes, mode: str, bits: int) -> np.ndarray:
    """(Bi)linear resize as integer weights: the int32 sum of w * x, at scale 2^-bits per resized
    axis (an axis whose weights are the identity is skipped)."""
    y = np.asarray(x, np.int64)
    for axis, size in zip(axes, sizes):
        i0, i1, w0, w1 = linear_weights(y.shape[axis], size, mode, bits)
        if size == y.shape[axis] and np.array_equal(i0, np.arange(size)) and not w1.any():
            continue
        y = np.take(y, i0, axis=axis) * _along(w0, axis, y.ndim) + np.take(y, i1, axis=axis) * _along(w1, axis, y.ndim)
    return _checked_int32(y)


def grid_reach(size: int, bits: int, padding: str) -> int:
    """How far (b-bit fixed point) a GridSample coordinate is kept from the input's centre: 2 size + 4
    pixels, where every tap is outside the input either way (zeros, border), or, where taps are reflected
    back into it, as far as int32 arithmetic on the taps allows (2^(30 - b) pixels)."""
    return (1 << 30) if padding == "reflection" else (2 * size + 4) << bits


def grid_coordinates(q, m, s, size: int, align_corners: bool, bits: int, padding: str = "zeros") -> np.ndarray:
    """GridSample's source coordinate along one axis of `size` pixels, as b-bit fixed point (int32):
    round_half_up(g * a * 2^b) + b0 * 2^b with g = q * scale (`m`, `s`: dyadic of scale * a * 2^b),
    a = size / 2 (align_corners: (size - 1) / 2), b0 = (size - 1) / 2: ONNX's unnormalization
    ((g + 1) * size - 1) / 2, or (g + 1) / 2 * (size - 1). Clamped to `grid_reach`."""
    from .kernels import requantize

    reach = grid_reach(size, bits, padding)
    return requantize(q, m, s, -reach, reach, "int32").astype(np.int64) + ((size - 1) << (bits - 1))


CUBIC_ALPHA = -0.75  # Keys' cubic convolution, as onnxruntime's and ONNX's GridSample (and torch's bicubic)


def cubic_weights(bits: int) -> np.ndarray:
    """[2^bits, 4] int32: the four taps' weights (at x0 - 1 .. x0 + 2) of Keys' cubic at each b-bit fraction f,
    round_half_up(c_k(f / 2^b) * 2^b); at f = 0 they are (0, 2^b, 0, 0)."""
    a, t = CUBIC_ALPHA, np.arange(1 << bits, dtype=np.float64) / (1 << bits)

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    c = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    return np.floor(c * (1 << bits) + 0.5).astype(np.int32)


def reflected_index(i, size: int, align_corners: bool):
    """Tap indices reflected into [0, size) as onnxruntime's GridSample does: at the borders -1/2 and
    size - 1/2, or 0 and size - 1 with align_corners (a triangle wave of period 2 size or 2 (size - 1))."""
    i = np.asarray(i, np.int64)
    if align_corners:
        if size == 1:
            return np.zeros_like(i)
        u = np.mod(i, 2 * (size - 1))
        return np.where(u > size - 1, 2 * (size - 1) - u, u)
    u = np.mod(i, 2 * size)
    return np.where(u >= size, 2 * size - 1 - u, u)


def grid_sample(x, ix, iy, bits: int, method: str, padding: str, align_corners: bool = False) -> np.ndarray:
    """GridSample of the integer tensor x [N, C, H, W] at fixed-point coordinates ix, iy [N, Ho, Wo]
    (`grid_coordinates`). bilinear / bicubic: the int32 sum of the 4 / 16 taps times their weights per axis
    ((2^b - f) or f; `cubic_weights`), at scale 2^-2b; nearest: the tap at the coordinate rounded half to even,
    same dtype. As onnxruntime, the padding applies to each tap's index, never to the coordinate: a tap
    outside the input reads 0 ("zeros"), the nearest pixel ("border") or its mirror image
    ("reflection", `reflected_index`)."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    ix, iy = np.asarray(ix, np.int64), np.asarray(iy, np.int64)
    flat = x.reshape(n, c, h * w)

    def index(i, size):
        if padding == "zeros":
            return np.clip(i, 0, size - 1), (i >= 0) & (i < size)
        if padding == "border":
            return np.clip(i, 0, size - 1), True
        return reflected_index(i, size, align_corners), True

    def tap(xi, yi):
        (xc, vx), (yc, vy) = index(xi, w), index(yi, h)
        idx = (yc * w + xc).reshape(n, 1, -1)
        return (np.take_along_axis(flat, np.broadcast_to(idx, (n, c, idx.shape[-1])), axis=2),
                np.broadcast_to(np.asarray(vx & vy), xi.shape).reshape(n, 1, -1))

    if method == "nearest":  # round half to even (ONNX's reference, onnxruntime: nearbyint)
        def nearest(v):
            q, f, half = v >> bits, v & ((1 << bits) - 1), 1 << (bits - 1)
            return q + ((f > half) | ((f == half) & ((q & 1) == 1)))

        v, valid = tap(nearest(ix), nearest(iy))
        return np.where(valid, v, 0).astype(x.dtype).reshape(n, c, *ix.shape[1:])
    x0, y0 = ix >> bits, iy >> bits
    fx, fy = ix & ((1 << bits) - 1), iy & ((1 << bits) - 1)
    if method == "bicubic":
        table = cubic_weights(bits).astype(np.int64)
        wxs, wys, first = [table[fx, k] for k in range(4)], [table[fy, k] for k in range(4)], -1
    else:
        one = 1 << bits
        wxs, wys, first = [one - fx, fx], [one - fy, fy], 0
    out = 0
    for dy, wy in enumerate(wys, first):
        for dx, wx in enumerate(wxs, first):
            v, valid = tap(x0 + dx, y0 + dy)
            out = out + v.astype(np.int64) * np.where(valid, (wx * wy).reshape(n, 1, -1), 0)
    return _checked_int32(out.reshape(n, c, *ix.shape[1:]))


def window_sums(x, axes, kernel, strides, padding, dilation, out_sizes) -> np.ndarray:
    """Integer sum of every pooling window (zero padding), int32. `padding` is
    (before_0, before_1, after_0, after_1) along `axes`; `out_sizes` may need more padding
    after (ceil_mode): it is added, also zeros."""
    x = np.asarray(x, np.int64)
    pads = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        need = (out_sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilation[i] + 1
        pads[axis] = (padding[i], max(padding[2 + i], need - x.shape[axis] - padding[i]))
    xp = np.pad(x, pads)
    out = 0
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            index = [slice(None)] * x.ndim
            index[axes[0]] = slice(i * dilation[0], i * dilation[0] + strides[0] * (out_sizes[0] - 1) + 1, strides[0])
            index[axes[1]] = slice(j * dilation[1], j * dilation[1] + strides[1] * (out_sizes[1] - 1) + 1, strides[1])
            out = out + xp[tuple(index)]
    return _checked_int32(out)


def window_counts(in_sizes, kernel, strides, padding, dilation, out_sizes, count_include_pad: bool) -> np.ndarray:
    """Divisor of every average-pool window [out_h, out_w]: the taps inside the input, or with
    `count_include_pad` inside the padded input (taps past it, from ceil_mode, never count;
    ONNX Runtime and PyTorch agree)."""
    per_axis = []
    for i in range(2):
        lo, hi = (-padding[i], in_sizes[i] + padding[2 + i]) if count_include_pad else (0, in_sizes[i])
        taps = np.arange(out_sizes[i])[:, None] * strides[i] - padding[i] + np.arange(kernel[i])[None] * dilation[i]
        per_axis.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    return np.outer(per_axis[0], per_axis[1]).astype(np.int64)


def conv_transpose_acc(x, w, strides=(1, 1), padding=(0, 0, 0, 0), output_padding=(0, 0), dilation=(1, 1),
                       groups: int = 1) -> np.ndarray:
    """NCHW x IOHW integer transposed convolution (ONNX ConvTranspose), int32 accumulation;
    padding is (top, left, bottom, right)."""
    x, w = np.asarray(x, np.int64), np.asarray(w, np.int64)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // groups
    full_h = (h - 1) * strides[0] + dilation[0] * (kh - 1) + 1 + output_padding[0]
    full_w = (wd - 1) * strides[1] + dilation[1] * (kw - 1) + 1 + output_padding[1]
    full = np.zeros((n, og * groups, full_h, full_w), np.int64)
    for g in range(groups):
        xg, wg = x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xg, wg[:, :, i, j])
                full[:, g * og:(g + 1) * og, i * dilation[0]:i * dilation[0] + strides[0] * (h - 1) + 1:strides[0],
                     j * dilation[1]:j * dilation[1] + strides[1] * (wd - 1) + 1:strides[1]] += contrib
    out = full[:, :, padding[0]:full_h - padding[2], padding[1]:full_w - padding[3]]
    return _checked_int32(out)
