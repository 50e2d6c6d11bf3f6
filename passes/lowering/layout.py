"""Data-movement ops pass integers through unchanged (same scale, same dtype).

reshape / flatten / permute_dims / squeeze / expand_dims / strided_slice / split / pad(0)
             on q -> the same op on q
concat(q_i)  -> concat(rq(q_i -> S_out)) with one common scale
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE
from . import emit
from .context import activation_scale
from .registry import lowers
from .values import Accumulator, Quantized


@lowers("relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
        "relax.strided_slice")
def lower_layout(ctx, call, args):
    acc = _accumulator_through(ctx, call, args[0])
    if acc is not None:
        return acc
    x = ctx.materialize(args[0])
    return Quantized(ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs)), x.scale, x.dtype)


def _accumulator_through(ctx, call, x):
    """Reshapes that keep the channel (last) axis move an accumulator unchanged, so that
    its requantization stays deferred (e.g. a matmul + bias reshaped into a residual add)."""
    if not isinstance(x, Accumulator) or call.op.name not in ("relax.reshape", "relax.expand_dims", "relax.squeeze"):
        return None
    before, after = [int(d) for d in call.args[0].ty.shape], [int(d) for d in call.ty.shape]
    if x.axis is None:
        axis = None
    elif x.axis == len(before) - 1 and after and after[-1] == before[-1]:
        axis = len(after) - 1
    else:
        return None
    expr = ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs))
    return Accumulator(expr, x.scale, axis, ctx.out_range(), x.clamp)


@lowers("relax.nn.pad")
def lower_pad(ctx, call, args):
    if str(call.attrs.pad_mode) != "constant" or float(call.attrs.pad_value) != 0.0:
        ctx.fail(f"pad mode {call.attrs.pad_mode} value {call.attrs.pad_value}: only constant 0 padding")
    return lower_layout(ctx, call, args)


@lowers("relax.concat")
def lower_concat(ctx, call, args):
    """Inputs at one common scale; constant parts (e.g. a ViT class token) are quantized at it."""
    parts = [p if isinstance(p, np.ndarray) else ctx.materialize(p) for p in args[0]]
    values = [p for p in parts if not isinstance(p, np.ndarray)]
    first = values[0]
    if len(values) == len(parts) and all(p.scale == first.scale and p.dtype == first.dtype for p in parts):
        exprs, scale, dtype = [p.expr for p in parts], first.scale, first.dtype
    else:
        dtype = "int16" if any(p.dtype == "int16" for p in values) else "int8"
        scale = activation_scale(*ctx.out_range(), dtype)
        exprs = []
        for p in parts:
            if isinstance(p, np.ndarray):
                exprs.append(emit.const(np.clip(np.round(p / scale), *INT_RANGE[dtype]), dtype))
                continue
            q, m, s = ctx.to_int32_at(p, scale)
            exprs.append(emit.requantize(q, m, s, *INT_RANGE[dtype], dtype))
    return Quantized(ctx.emit(relax.op.concat(exprs, axis=call.attrs.axis)), scale, dtype)


@lowers("relax.split")
def lower_split(ctx, call, args):
    x = ctx.materialize(args[0])
    parts = ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs))
    return [Quantized(ctx.emit(relax.TupleGetItem(parts, i)), x.scale, x.dtype) for i in range(len(call.ty.fields))]
