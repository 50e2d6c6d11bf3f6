"""Float fallback (only with `allow_float`): an op without an integer lowering, or whose
lowering refused this node, runs in float.

    op(x_i)  ->  op(deq(x_i))      with deq(q) = float(q) * S

Inputs are converted by what the original op took: quantized values are dequantized (to the
op's own float dtype), float values of earlier fallbacks pass as they are, integer arguments
(ids, masks, shapes) too. A float result stays float (`FloatTensor`, with its calibrated
range), so that a run of float ops loses nothing between them; it is quantized,
`q(y) = clip(round(y / S_y))` over that range, only where an integer lowering consumes it
(`quantize_float`). An integer or bool result stays exact (`IntTensor`); a tuple becomes a list
of those, and its float fields get their range at the `TupleGetItem` binding that reads them.
The module is then not integer-only; the verifier says so and the manifest records it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax

from ..chain_calls import chain_as_ops, chain_parts
from ..reference.kernels import INT_RANGE
from .context import activation_scale
from .values import Accumulator, ChannelQuantized, IntTensor, MaskedLogits, MaskPenalty, Quantized

R = relax.op
MASK_FLOAT = -1e9  # an additive attention mask in float: large enough for softmax, finite in float16 sums too


@dataclass(frozen=True, eq=False)
class FloatTensor:
    """A float tensor left in float by the fallback; `range` is its calibrated (lo, hi), if known;
    `finite` False where it held infinities or NaN on the calibration data."""

    expr: relax.Expr
    range: tuple[float, float] | None = None
    finite: bool = True


def _is_float(ty) -> bool:
    return isinstance(ty, relax.TensorType) and str(ty.dtype).startswith("float")


def to_float(ctx, value, like: relax.Expr | None = None) -> relax.Expr:
    """The float (or exact integer) Relax expression for a lowered value; `like` is the original argument."""
    dtype = str(like.ty.dtype) if like is not None and _is_float(getattr(like, "ty", None)) else "float32"
    if isinstance(value, np.ndarray):
        return relax.const(value)
    if isinstance(value, list):
        fields = like.fields if isinstance(like, relax.Tuple) else [None] * len(value)
        return relax.Tuple([to_float(ctx, v, f) for v, f in zip(value, fields)])
    if isinstance(value, IntTensor) and _is_float(getattr(like, "ty", None)):
        return R.astype(value.expr, dtype)  # exact integers standing for a float tensor (a cast mask)
    if isinstance(value, (IntTensor, FloatTensor)):
        return value.expr
    if isinstance(value, MaskPenalty):
        kept = relax.const(0.0, dtype) if value.bias is None else relax.const(value.bias.astype(dtype))
        return R.where(value.keep, kept, relax.const(MASK_FLOAT, dtype))
    if isinstance(value, MaskedLogits):
        return R.where(value.keep, to_float(ctx, value.logits, like), relax.const(MASK_FLOAT, dtype))
    if isinstance(value, relax.Expr):
        return value  # shapes and prim values
    if isinstance(value, Accumulator):  # int32 at full precision: no 8-bit requantization on the way to float
        rank = len(value.expr.ty.shape)
        scale = np.asarray(value.scale, np.float64)
        if value.axis is not None and scale.size > 1:
            scale = scale.reshape([-1 if a == value.axis % rank else 1 for a in range(rank)])
        y = R.multiply(R.astype(value.expr, dtype), relax.const(scale.astype(dtype)))
        lo, hi = value.clamp  # the ReLU/Clip folded into the deferred requantization
        y = y if lo == -math.inf else R.maximum(y, relax.const(lo, dtype))
        return y if hi == math.inf else R.minimum(y, relax.const(hi, dtype))
    if isinstance(value, ChannelQuantized):  # q * scale[c] - offset along the last axis
        y = R.multiply(R.astype(value.expr, dtype), relax.const(np.asarray(value.scale).astype(dtype)))
        return R.subtract(y, relax.const(value.offset, dtype)) if value.offset else y
    q = ctx.materialize(value)
    return R.multiply(R.astype(q.expr, dtype), relax.const(q.scale, dtype))


def quantize_float(ctx, value: FloatTensor) -> Quantized:
    """`value` as int8 over its calibrated range (uint8 when that range is >= 0), for an integer consumer."""
    if value.range is None:
        ctx.fail("its input is a float tensor without a calibrated range")
    if not value.finite:  # -inf as a mask: saturated to the grid's end it masked nothing (cosine 0.85)
        ctx.fail("its input is a float tensor that holds infinities or NaN (a mask): it stays in float")
    dtype = "uint8" if value.range[0] >= 0 and ctx.config.unsigned_activations else "int8"
    scale = activation_scale(*value.range, dtype)
    q = R.clip(R.round(R.divide(value.expr, relax.const(scale, str(value.expr.ty.dtype)))), *INT_RANGE[dtype])
    return Quantized(ctx.emit(R.astype(q, dtype)), scale, dtype)


def float_fallback(ctx, call, args):
    """`call` in float on dequantized `args`; see the module docstring for the result."""
    like = list(call.args)
    floats = [to_float(ctx, a, o) for a, o in zip(args, like)]
    if chain_parts(call) is not None:  # a fused chain (intq.unary/binary): its float ops, as the artifact
        floats = [ctx.emit(f) if isinstance(f, relax.Call) else f for f in floats]  # has no NumPy twin
    y = relax.Call(call.op, floats, call.attrs, call.ty_args)
    expanded = chain_as_ops(y, lambda name, e: ctx.emit(e))
    y = ctx.emit(y if expanded is None else expanded)
    ty = y.ty
    if isinstance(ty, relax.TupleType):
        return [FloatTensor(ctx.emit(relax.TupleGetItem(y, i))) if _is_float(f)
                else IntTensor(ctx.emit(relax.TupleGetItem(y, i))) for i, f in enumerate(ty.fields)]
    if not _is_float(ty):
        return IntTensor(y)
    known = ctx.var is not None and ctx.var.name in ctx.ranges
    finite = ctx.var is None or ctx.var.name not in getattr(ctx.ranges, "nonfinite", ())
    return FloatTensor(y, tuple(ctx.out_range()) if known else None, finite)
