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
