"""Pooling.

mean(q, axes)       -> see reduce.py (integer sum, scale S_q / N: Relax's int mean truncates)
max_pool2d(q)       -> max_pool2d(q) on integers, same scale (symmetric: max commutes with q;
                       pads and ceil_mode windows see the dtype minimum, which never wins)
avg_pool2d(q)       -> window sums in int32 (zero padding, separable strided slices, any layout),
                       then one dyadic multiply by S_q / (count * S_out): count per output
                       position (count_include_pad either way, ceil_mode windows clipped); all
                       counts equal -> Accumulator(sum, S_q / count), requantized by its consumer
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tvm import relax

from ..reference import spatial
from ..reference.kernels import INT_RANGE, dyadic
from . import emit
from .context import activation_scale, calibrated_qmax
from .registry import lowers
from .values import Accumulator, Quantized

R = relax.op


@lowers("relax.nn.max_pool2d")
def lower_max_pool2d(ctx, call, args):
    x = ctx.materialize(args[0])
    return replace(x, expr=ctx.emit(relax.Call(call.op, [x.expr], call.attrs)))


def _window_sums(x: relax.Expr, axes, kernel, strides, padding, dilation, out_sizes) -> relax.Expr:
    """int32 sums of the pooling windows: zero pad (more after for ceil_mode), then add the
    kernel's strided slices along H, then along W (exact in any order, = spatial.window_sums)."""
    rank = len(x.ty.shape)
    pad_width = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        need = (out_sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilation[i] + 1
        pad_width[2 * axis] = padding[i]
        pad_width[2 * axis + 1] = max(padding[2 + i], need - int(x.ty.shape[axis]) - padding[i])
    y = R.astype(x, "int32")
    if any(pad_width):
        y = R.nn.pad(y, pad_width)
    for i, axis in enumerate(axes):
        taps = [R.strided_slice(y, [axis], [k * dilation[i]], [k * dilation[i] + strides[i] * (out_sizes[i] - 1) + 1],
                                [strides[i]]) for k in range(kernel[i])]
        y = taps[0]
        for tap in taps[1:]:
            y = R.add(y, tap)
    return y


def _accumulator_summand(ctx, value, area: int) -> Quantized | None:
    """An int32 accumulator (unclamped: a conv's output and bias; or a square's) as the pool's summands,
    shifted right just enough that `area` of them fit int32 (as `reduce.lower_reduce` sums): a pool over
    TVM's LRN squares, or DISK's 2x2 pool after a conv, summed them after an 8-bit requantization. dtype
    "uint32" marks a square's (>= 0 as they are; the integers stay int32), whose window sums are again
    such a sum. None for anything else."""
    from .reduce import _summand

    if not isinstance(value, Accumulator) or value.offset:
        return None
    energy = value.product and value.clamp == (0.0, math.inf)
    if value.clamp != (-math.inf, math.inf) and not energy:
        return None
    expr, scale, bound, _ = _summand(ctx, value)
    shift = max(0, math.ceil(math.log2(area * bound / (2**31 - 1)))) if area * bound >= 2**31 else 0
    if shift > 16:
        return None
    if shift:
        expr = ctx.emit(emit.rounding_shift(expr, np.asarray(shift)))
    return Quantized(expr, scale * 2.0**shift, "uint32" if energy else "int32")


@lowers("relax.nn.avg_pool2d")
def lower_avg_pool2d(ctx, call, args):
    a = call.attrs
    layout = str(a.layout)
    axes = [layout.index("H"), layout.index("W")]
    kernel, strides, dilation = ([int(v) for v in vals] for vals in (a.pool_size, a.strides, a.dilation))
    padding = [int(v) for v in a.padding]
    in_sizes = [int(call.args[0].ty.shape[i]) for i in axes]
    out_sizes = [int(call.ty.shape[i]) for i in axes]
    counts = spatial.window_counts(in_sizes, kernel, strides, padding, dilation, out_sizes,
                                   bool(a.count_include_pad))
    uniform = bool((counts == counts.flat[0]).all())
    # an accumulator's own int32 where one scale divides every window (else 8 bits, requantized per window)
    x = (_accumulator_summand(ctx, args[0], kernel[0] * kernel[1]) if uniform else None) or ctx.materialize(args[0])
    if x.dtype not in ("int32", "uint32") and kernel[0] * kernel[1] * 2**15 >= 2**31:
        ctx.fail(f"average pool over {kernel} windows could overflow the int32 sum")
    sums = ctx.emit(_window_sums(x.expr, axes, kernel, strides, padding, dilation, out_sizes))
    clamp = (0.0, math.inf) if x.dtype in ("uint8", "uint32") else (-math.inf, math.inf)
    if uniform:
        return Accumulator(sums, np.asarray(x.scale / counts.flat[0]), None, ctx.out_range(), clamp,
                           product=x.dtype == "uint32")
    dtype = x.dtype  # an average stays within its input's range (and sign)
    scale = activation_scale(*ctx.out_range(), dtype)
    m, s = dyadic(x.scale / (np.maximum(counts, 1) * scale))
    shape = [1] * len(call.ty.shape)
    shape[axes[0]], shape[axes[1]] = out_sizes
    expr = emit.requantize(sums, m.reshape(shape), s.reshape(shape), *INT_RANGE[dtype], dtype)
    return Quantized(ctx.emit(expr), scale, dtype, qmax=calibrated_qmax(dtype))
