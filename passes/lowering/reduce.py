"""Reductions on any axes, keepdims either way: one lowering parameterised by the reduction.

sum(x, axes)        -> Accumulator(reduce_sum(x) in int32, S * 2^k)    k = 0 when N * |x|max < 2^31
mean(x, axes)       -> the same at scale S * 2^k / N: the consumer's dyadic requantization divides,
                       rounded half up (no integer mean: Relax's truncates and returns int64)
max/min(x, axes)    -> max/min on the 8/16-bit integers, same scale (symmetric: commutes with q); of an
                       int32 accumulator on its integers, requantized at the result's own range
argmax/argmin(x)    -> on the int32 accumulator, or the 16-bit integers where its scale varies
                       along the axis (widened to int32 first, off TVM's reducer's start value):
                       an exact int64 IntTensor. Ties (values equal after quantization, a whole
                       masked row) resolve to the first index, as ONNX does
`|x|max` is the dtype's limit for 8/16-bit inputs, and 4x the calibrated range for an int32
accumulator (e.g. a product a * b); where N * |x|max could reach 2^31 the sum runs in int64 and is
shifted right by k (rounding half up, saturating). ReduceL2 arrives as sqrt(sum(x * x)): the
square and the sqrt are unary tables (FuseUnaryChains), the sum is this lowering.
cumsum(x, axis)     -> Accumulator(cumsum(x) in int32, S): exact; refused where L * |x|max could
                       reach 2^31 (CumSum of integers, e.g. position ids, stays an integer op)
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE
from . import emit_binary
from .layout import _per_tensor
from .registry import lowers
from .values import Accumulator, IntTensor

REDUCTIONS = {"relax.sum": "sum", "relax.mean": "mean", "relax.max": "select", "relax.min": "select",
              "relax.argmax": "index", "relax.argmin": "index"}
ACC_HEADROOM = 4.0  # an int32 accumulator's bound: 4x its calibrated range (saturating beyond)


def _axes(call) -> list[int]:
    rank = len(call.args[0].ty.shape)
    axis = call.attrs.axis
    if axis is None:
        return list(range(rank))
    return sorted(int(a) % rank for a in (axis if hasattr(axis, "__len__") else [axis]))


def _summand(ctx, x) -> tuple[relax.Expr, float, float, bool]:
    """(int tensor, scale, bound on |element|, non-negative) of a sum's input."""
    if isinstance(x, IntTensor):  # exact integers cast to float (a mask's token count): scale 1
        lo, hi = ctx.range_of(ctx.var)  # the sum's calibrated range bounds every element's too
        expr = ctx.emit(relax.op.astype(x.expr, "int32"))
        return expr, 1.0, float(min(2**31 - 1, max(abs(lo), abs(hi), 1.0))), str(x.expr.ty.dtype) in ("bool", "uint8")
    energy = isinstance(x, Accumulator) and x.product and x.clamp == (0.0, math.inf) and not x.offset
    if isinstance(x, Accumulator) and (x.clamp == (-math.inf, math.inf) or energy):
        # (a square's integers are >= 0 as they are: its clamp changes nothing, and its sum wants them all:
        # requantized to 8 bits first, LRN's and ReduceL2's squares kept 2.8% of grid error)
        if x.axis is not None:
            x = _per_tensor(ctx, x)
        scale = float(np.asarray(x.scale))
        amax = max(abs(v) for v in x.out_range)
        return x.expr, scale, min(2.0**31, math.ceil(amax / scale * ACC_HEADROOM) + 1), x.out_range[0] >= 0 or energy
    q = ctx.materialize(x)
    return q.expr, q.scale, float(max(abs(v) for v in INT_RANGE[q.dtype])), q.dtype.startswith("u")


def ordered(ctx, x, axis) -> relax.Expr:
    """Integers in the order of `x`'s reals along `axis`, for an argmax or a top-k: an unclamped
    accumulator as it is where its scale does not vary along `axis`, else 16 bits. At 8 bits near
    ties of a decoder's logits round to one integer and the first index wins: the index disagreed
    with the model's own logits output on 36 of 2000 inputs."""
    rank = len(x.expr.ty.shape) if hasattr(x, "expr") else 0
    uniform = isinstance(x, Accumulator) and bool(np.all(np.asarray(x.scale) == np.asarray(x.scale).flat[0]))
    if (isinstance(x, Accumulator) and x.clamp == (-math.inf, math.inf) and axis is not None
            and (x.axis is None or x.axis != int(axis) % rank or uniform)):
        return x.expr
    return ctx.materialize(x, wide=True).expr


def _off_the_extremes(ctx, expr: relax.Expr) -> relax.Expr:
    """An argmax's / argmin's integers, none at its dtype's lowest or highest value: TVM's reducer starts
    from (index -1, that value) and keeps the smaller index of equal values, so a row whose integers all
    sat there (a fully masked row of where(mask, x, -inf), saturated to -32768; a uint8 softmax row of
    zeros) gave index -1 where ONNX gives 0 (natasha's syntax parser gathered its pad words' heads at
    -1). 8/16-bit integers are widened to int32; int32 ones are clipped one step in (a tie of the two
    lowest values, an accumulator's saturation, resolves to the first as equal values do)."""
    dtype = str(expr.ty.dtype)
    if dtype in ("int8", "uint8", "int16", "uint16"):
        return ctx.emit(relax.op.astype(expr, "int32"))
    lo, hi = INT_RANGE[dtype] if dtype in INT_RANGE else (-(2**63), 2**63 - 1)
    return ctx.emit(relax.op.clip(expr, lo + 1, hi - 1))


def _trailing_sum(expr: relax.Expr, shape: list[int], axes: list[int], keepdims: bool, shift: int) -> relax.Expr:
    """reduce_sum; over several trailing axes (an instance norm's H and W) as one axis of their
    product, so that the sum is a row kernel's (parallel, vectorized): over [H, W] it ran TVM's
    plain loops, 1.7 ns per element."""
    first = len(shape) - len(axes)
    if len(axes) < 2 or axes != list(range(first, len(shape))) or first == 0:
        return emit_binary.reduce_sum(expr, axes, keepdims, shift)
    rows = relax.op.reshape(expr, [*shape[:first], int(np.prod(shape[first:]))])
    total = emit_binary.reduce_sum(rows, [first], keepdims, shift)
    return relax.op.reshape(total, [*shape[:first], *[1] * len(axes)]) if keepdims else total


def _select_accumulator(ctx, call, x: Accumulator) -> Accumulator:
    """max/min of an int32 accumulator (a conv's output) on its integers, requantized later at the
    result's own calibrated range (max and min commute with a positive scale and with the clamp): a
    max over points or time (PointNet's global feature, a text CNN's max over time) takes the few
    largest values of a tensor whose grid was set by all of them, 9% grid error at 8 bits."""
    rank = len(call.args[0].ty.shape)
    axes = _axes(call)
    if x.axis is not None and int(x.axis) % rank in axes:
        x = _per_tensor(ctx, x)
    axis = x.axis
    if axis is not None and not call.attrs.keepdims:
        axis = int(axis) % rank - sum(a < int(axis) % rank for a in axes)
    expr = ctx.emit(relax.Call(call.op, [x.expr], call.attrs))
    return Accumulator(expr, x.scale, axis, ctx.out_range(), x.clamp)


@lowers(*REDUCTIONS)
def lower_reduce(ctx, call, args):
    kind = REDUCTIONS[call.op.name]
    if isinstance(args[0], np.ndarray):
        ctx.fail("reduction of a constant should have been folded")
    if kind == "index":
        expr = ctx.emit(relax.Call(call.op, [_off_the_extremes(ctx, ordered(ctx, args[0], call.attrs.axis))],
                                   call.attrs))
        return IntTensor(expr)
    if kind == "select":
        x = args[0]
        if isinstance(x, Accumulator) and x.offset == 0.0:
            return _select_accumulator(ctx, call, x)
        q = ctx.materialize(x)
        return replace(q, expr=ctx.emit(relax.Call(call.op, [q.expr], call.attrs)))
    axes = _axes(call)
    shape = [int(d) for d in call.args[0].ty.shape]
    count = int(np.prod([shape[a] for a in axes]))
    expr, scale, bound, nonneg = _summand(ctx, args[0])
    shift = max(0, math.ceil(math.log2(count * bound / (2**31 - 1)))) if count * bound >= 2**31 else 0
    if shift > 32:
        ctx.fail(f"sum over {count} elements needs a {shift}-bit shift to fit int32")
    out = ctx.emit(_trailing_sum(expr, shape, axes, bool(call.attrs.keepdims), shift))
    scale *= 2.0**shift / (count if kind == "mean" else 1)
    clamp = (0.0, math.inf) if nonneg else (-math.inf, math.inf)
    return Accumulator(out, np.asarray(scale), None, ctx.out_range(), clamp)


@lowers("relax.cumsum")
def lower_cumsum(ctx, call, args):
    """A running sum of an activation along one axis: exact int32 at the input's scale."""
    if isinstance(args[0], np.ndarray):
        ctx.fail("cumsum of a constant should have been folded")
    shape = [int(d) for d in call.args[0].ty.shape]
    axis = int(call.attrs.axis) % len(shape) if call.attrs.axis is not None else None
    if axis is None and len(shape) != 1:
        ctx.fail("cumsum over a flattened tensor (no axis)")
    axis = 0 if axis is None else axis
    expr, scale, bound, nonneg = _summand(ctx, args[0])
    if shape[axis] * bound >= 2**31 and isinstance(args[0], Accumulator):  # sum its 8-bit requantization
        q = ctx.materialize(args[0])
        expr, scale, bound, nonneg = q.expr, q.scale, float(max(abs(v) for v in INT_RANGE[q.dtype])), \
            q.dtype.startswith("u")
    if shape[axis] * bound >= 2**31:
        ctx.fail(f"cumsum over {shape[axis]} elements of up to {bound:.0f} could overflow int32")
    out = ctx.emit(emit_binary.cumsum(expr, axis, bool(call.attrs.exclusive)))
    return Accumulator(out, np.asarray(scale), None, ctx.out_range(), (0.0, math.inf) if nonneg else
                       (-math.inf, math.inf))


__all__ = ["REDUCTIONS", "lower_cumsum", "lower_reduce"]
