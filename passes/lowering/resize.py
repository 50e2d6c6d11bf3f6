"""Resize (ONNX Resize -> relax.image.resize2d) on integers, in any layout.

resize2d(q, nearest)  -> take(take(q, idx_h, axis=H), idx_w, axis=W)       same integers, same scale
resize2d(q, linear)   -> Accumulator(sum_a w_a * take(q, i_a) along H, then along W,
                                     scale = S_q / 2^(2b))                  int32, requantized later

Index tables and weights come from `passes.reference.spatial` (exact rationals at compile
time, TVM's coordinate formulas with scale in/out, every coordinate transformation mode
but tf_crop_and_resize, every nearest rounding). Linear weights are b-bit fixed point,
w1 = round_half_up(frac * 2^b), w0 = 2^b - w1 (b = 10 for 8-bit inputs, 7 for 16-bit), so a
flat input stays exactly flat and the only rounding is the consumer's dyadic requantization.
Overflow bound: |q| * 2^(2b) <= 2^15 * 2^14 < 2^31 (checked by construction in linear_bits).
Nearest resize of an accumulator moves it unchanged (its channel axis is not resized).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tvm import relax

from ..reference import spatial
from ..reference.kernels import dyadic
from . import emit
from .registry import lowers
from .values import Accumulator

R = relax.op


def _spatial_axes(ctx, call) -> tuple[list[int], list[int]]:
    layout = str(call.attrs.layout)
    if "H" not in layout or "W" not in layout or len(layout) != len(call.ty.shape):
        ctx.fail(f"resize2d layout {layout}: need one H and one W axis")
    axes = [layout.index("H"), layout.index("W")]
    return axes, [int(call.ty.shape[a]) for a in axes]


@lowers("relax.image.resize2d")
def lower_resize2d(ctx, call, args):
    attrs = call.attrs
    mode, method = str(attrs.coordinate_transformation_mode), str(attrs.method)
    if mode == "tf_crop_and_resize":
        ctx.fail("resize2d with tf_crop_and_resize: only the other coordinate transformation modes")
    axes, sizes = _spatial_axes(ctx, call)
    in_sizes = [int(call.args[0].ty.shape[a]) for a in axes]
    if method == "nearest_neighbor":
        x = args[0]
        if not (isinstance(x, Accumulator) and x.axis not in axes):
            x = ctx.materialize(x)
        expr = x.expr
        for axis, n_in, n_out in zip(axes, in_sizes, sizes):
            idx = spatial.nearest_indices(n_in, n_out, mode, str(attrs.rounding_method))
            if n_in != n_out or not np.array_equal(idx, np.arange(n_in)):
                expr = R.take(expr, emit.const(idx, "int32"), axis=axis, mode="clip")
        return replace(x, expr=ctx.emit(expr))
    if method != "linear":
        ctx.fail(f"resize2d method {method}: only nearest_neighbor and linear")
    x = ctx.materialize(args[0])
    bits = spatial.linear_bits(x.dtype)
    y, total_bits, rank = R.astype(x.expr, "int32"), 0, len(call.ty.shape)
    # the last axis first (the sums are exact, so the order changes no integer): its gathers then run
    # over the smaller input, and the other axis reads whole rows (targets/resize_taps.py)
    for axis, n_in, n_out in reversed(list(zip(axes, in_sizes, sizes))):
        i0, i1, w0, w1 = spatial.linear_weights(n_in, n_out, mode, bits)
        if n_in == n_out and np.array_equal(i0, np.arange(n_in)) and not w1.any():
            continue  # identity along this axis
        shape = [1] * rank
        shape[axis] = -1
        y = R.add(R.multiply(R.take(y, emit.const(i0, "int32"), axis=axis, mode="clip"), emit.const(w0.reshape(shape), "int32")),
                  R.multiply(R.take(y, emit.const(i1, "int32"), axis=axis, mode="clip"), emit.const(w1.reshape(shape), "int32")))
        total_bits += bits
    clamp = (0.0, math.inf) if x.dtype == "uint8" else (-math.inf, math.inf)
    return Accumulator(ctx.emit(y), np.asarray(x.scale / 2.0**total_bits), None, ctx.out_range(), clamp)


def _grid_axis(ctx, g, axis: int, size: int, align_corners: bool, bits: int, padding: str) -> relax.Expr:
    """One coordinate of the grid [N, 2, Ho, Wo] as b-bit fixed-point pixels, [N, 1, Ho * Wo] int32
    (`spatial.grid_coordinates`); a constant grid (a decoder's first layer samples at learned reference
    points) is unnormalized here, exactly: round_half_up((g * a + b0) * 2^b)."""
    value = g if isinstance(g, np.ndarray) else g.expr
    n, _, ho, wo = (int(d) for d in value.shape) if isinstance(g, np.ndarray) else (int(d) for d in g.expr.ty.shape)
    a = (size - 1) / 2 if align_corners else size / 2
    reach = spatial.grid_reach(size, bits, padding)
    if isinstance(g, np.ndarray):
        offset = (size - 1) << (bits - 1)
        fixed = np.clip(np.floor(g[:, axis].astype(np.float64) * a * 2.0**bits + 0.5), -reach, reach) + offset
        return emit.const(fixed.reshape(n, 1, ho * wo), "int32")
    if size == 1 and align_corners:  # every coordinate unnormalizes to pixel 0
        return emit.const(np.zeros((n, 1, ho * wo)), "int32")
    m, s = dyadic(g.scale * a * 2.0**bits)
    part = R.reshape(R.strided_slice(g.expr, axes=[1], begin=[axis], end=[axis + 1]), (n, 1, ho * wo))
    fixed = emit.requantize(part, m, s, -reach, reach, "int32")
    return ctx.emit(R.add(fixed, emit.const((size - 1) << (bits - 1), "int32")))


@lowers("relax.image.grid_sample")
def lower_grid_sample(ctx, call, args):
    """GridSample (ONNX GridSample: Deformable-DETR's and RT-DETR's multi-scale deformable attention,
    Mask2Former's pixel decoder, spatial transformers) of an activation at an activation's coordinates.

    The grid comes at 16 bits (its integers are sub-pixel positions); each coordinate becomes b-bit
    fixed-point pixels by one dyadic requantization plus a constant; the taps are a gather from the
    flattened image, each weighted by (2^b - f) or f per axis (bilinear) or by Keys' cubic weights
    rounded to b bits, read from a constant table at f (bicubic: 4 x 4 taps): an int32 accumulator at
    scale S / 2^(2b), the same b as Resize (`spatial.grid_sample`). Nearest: the tap at the coordinate
    rounded half to even, same scale. Padding: 0 outside the input (zeros), the coordinate and every
    tap clamped to it (border), or reflected at its borders (reflection), in onnxruntime's order.
    A constant grid gives constant coordinates (Deformable-DETR's first decoder layer)."""
    attrs = call.attrs
    method, padding, layout = str(attrs.method), str(attrs.padding_mode), str(attrs.layout)
    if layout != "NCHW" or len(call.ty.shape) != 4:
        ctx.fail(f"grid_sample in layout {layout}: only 4-D NCHW (the volumetric form has no integer lowering yet)")
    if method not in ("bilinear", "nearest", "bicubic") or padding not in ("zeros", "border", "reflection"):
        ctx.fail(f"grid_sample {method} with {padding} padding: bilinear, bicubic or nearest; zeros, border or "
                 f"reflection padding")
    if isinstance(args[1], np.ndarray) and not np.isfinite(args[1]).all():
        ctx.fail("grid_sample at a constant grid holding non-finite values")
    x = ctx.materialize(args[0])
    g = args[1] if isinstance(args[1], np.ndarray) else ctx.materialize(args[1], wide=True)
    n, c, h, w = (int(d) for d in call.args[0].ty.shape)
    _, _, ho, wo = (int(d) for d in call.ty.shape)
    bits = spatial.linear_bits(x.dtype)
    align = bool(attrs.align_corners)
    i32 = lambda v: emit.const(v, "int32")  # noqa: E731
    ix, iy = _grid_axis(ctx, g, 0, w, align, bits, padding), _grid_axis(ctx, g, 1, h, align, bits, padding)
    flat = ctx.emit(R.reshape(x.expr, (n, c, h * w)))

    def index(i, size):
        """(the tap's index inside the input, its validity or None): onnxruntime pads taps, not coordinates."""
        if padding == "zeros":
            return R.clip(i, 0, size - 1), R.logical_and(R.greater_equal(i, i32(0)), R.less(i, i32(size)))
        if padding == "border":
            return R.clip(i, 0, size - 1), None
        return _reflected_index(i, size, align), None

    def tap(xi, yi):
        (xc, vx), (yc, vy) = index(xi, w), index(yi, h)
        idx = R.add(R.multiply(yc, i32(w)), xc)
        # to [N, C, P] by adding zeros per channel, not broadcast_to a fixed shape: a free batch keeps its rows
        idx = ctx.emit(R.add(idx, emit.const(np.zeros((1, c, 1)), "int32")))
        valid = None if vx is None else ctx.emit(R.logical_and(vx, vy))
        return ctx.emit(R.gather_elements(flat, idx, axis=2)), valid

    if method == "nearest":  # round half to even, as ONNX's reference and onnxruntime (nearbyint): grid 0 of an even side

        def nearest(v):
            q, f = R.right_shift(v, i32(bits)), R.bitwise_and(v, i32((1 << bits) - 1))
            half = i32(1 << (bits - 1))
            up = R.logical_or(R.greater(f, half), R.logical_and(R.equal(f, half), R.equal(R.bitwise_and(q, i32(1)), i32(1))))
            return ctx.emit(R.add(q, R.astype(up, "int32")))

        v, valid = tap(nearest(ix), nearest(iy))
        out = v if valid is None else R.where(valid, v, R.astype(i32(0), x.dtype))
        return replace(x, expr=ctx.emit(R.reshape(out, (n, c, ho, wo))))
    one = 1 << bits
    x0, y0 = ctx.emit(R.right_shift(ix, i32(bits))), ctx.emit(R.right_shift(iy, i32(bits)))
    fx, fy = ctx.emit(R.bitwise_and(ix, i32(one - 1))), ctx.emit(R.bitwise_and(iy, i32(one - 1)))
    if method == "bicubic":
        table = spatial.cubic_weights(bits)
        weights = lambda f: [ctx.emit(R.take(i32(table[:, k]), f, axis=0)) for k in range(4)]  # noqa: E731
        wxs, wys, first = weights(fx), weights(fy), -1
    else:
        wxs, wys, first = [ctx.emit(R.subtract(i32(one), fx)), fx], [ctx.emit(R.subtract(i32(one), fy)), fy], 0
    acc = None
    for dy, wy in enumerate(wys, first):
        for dx, wx in enumerate(wxs, first):
            v, valid = tap(R.add(x0, i32(dx)), R.add(y0, i32(dy)))
            weight = R.multiply(wx, wy) if valid is None else R.where(valid, R.multiply(wx, wy), i32(0))
            term = R.multiply(R.astype(v, "int32"), weight)
            acc = term if acc is None else R.add(acc, term)
    clamp = (0.0, math.inf) if x.dtype == "uint8" and method == "bilinear" else (-math.inf, math.inf)
    return Accumulator(ctx.emit(R.reshape(acc, (n, c, ho, wo))), np.asarray(x.scale / 2.0**(2 * bits)), None,
                       ctx.out_range(), clamp)


def _reflected_index(i, size: int, align: bool) -> relax.Expr:
    """Tap indices reflected into [0, size) (`spatial.reflected_index`)."""
    i32 = lambda k: emit.const(k, "int32")  # noqa: E731
    if align and size == 1:
        return R.multiply(i, i32(0))
    period = 2 * (size - 1) if align else 2 * size
    u = R.floor_mod(i, i32(period))
    mirror = period if align else period - 1  # u past the last pixel maps to mirror - u
    return R.where(R.greater(u, i32(size - 1)), R.subtract(i32(mirror), u), u)
