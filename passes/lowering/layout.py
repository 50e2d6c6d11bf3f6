"""Data-movement ops pass integers through unchanged (same scale, same dtype).

reshape / flatten / permute_dims / squeeze / expand_dims / strided_slice / split / pad(0)
             on q -> the same op on q
concat(q_i)  -> concat(rq(q_i -> S_out)) with one common scale
"""

from __future__ import annotations

from tvm import relax

from ..reference.kernels import INT_RANGE
from . import emit
from .context import activation_scale
from .registry import lowers
from .values import Quantized


@lowers("relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
        "relax.strided_slice")
def lower_layout(ctx, call, args):
    x = ctx.materialize(args[0])
    return Quantized(ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs)), x.scale, x.dtype)


@lowers("relax.nn.pad")
def lower_pad(ctx, call, args):
    if str(call.attrs.pad_mode) != "constant" or float(call.attrs.pad_value) != 0.0:
        ctx.fail(f"pad mode {call.attrs.pad_mode} value {call.attrs.pad_value}: only constant 0 padding")
    return lower_layout(ctx, call, args)


@lowers("relax.concat")
def lower_concat(ctx, call, args):
    parts = [ctx.materialize(p) for p in args[0]]
    first = parts[0]
    if all(p.scale == first.scale and p.dtype == first.dtype for p in parts):
        exprs, scale, dtype = [p.expr for p in parts], first.scale, first.dtype
    else:
        scale, dtype = activation_scale(*ctx.out_range(), "int8"), "int8"
        exprs = []
        for p in parts:
            q, m, s = ctx.to_int32_at(p, scale)
            exprs.append(emit.requantize(q, m, s, *INT_RANGE[dtype], dtype))
    return Quantized(ctx.emit(relax.op.concat(exprs, axis=call.attrs.axis)), scale, dtype)


@lowers("relax.split")
def lower_split(ctx, call, args):
    x = ctx.materialize(args[0])
    parts = ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs))
    return [Quantized(ctx.emit(relax.TupleGetItem(parts, i)), x.scale, x.dtype) for i in range(len(call.ty.fields))]
