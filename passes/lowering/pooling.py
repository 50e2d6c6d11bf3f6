"""Pooling.

mean(q, axes)       -> Accumulator(sum(q, axes) in int32, scale = S_q / N)   (no int mean:
                       Relax's int mean/avg_pool truncate and return int64, DESIGN.md s.3)
max_pool2d(q)       -> max_pool2d(q) on integers, same scale (symmetric: max commutes with q)
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tvm import relax

from . import emit
from .registry import lowers
from .values import Accumulator, Quantized


@lowers("relax.mean")
def lower_mean(ctx, call, args):
    x = ctx.materialize(args[0])
    shape = [int(d) for d in call.args[0].ty.shape]
    axes = [int(a) % len(shape) for a in call.attrs.axis] if call.attrs.axis is not None else list(range(len(shape)))
    count = int(np.prod([shape[a] for a in axes]))
    if count * 255 >= 2**31:
        ctx.fail(f"mean over {count} elements could overflow the int32 sum")
    expr = ctx.emit(emit.sum_pool(x.expr, axes, bool(call.attrs.keepdims)))
    clamp = (0.0, math.inf) if x.dtype.startswith("u") else (-math.inf, math.inf)
    return Accumulator(expr, np.asarray(x.scale / count), None, ctx.out_range(), clamp)


@lowers("relax.nn.max_pool2d")
def lower_max_pool2d(ctx, call, args):
    x = ctx.materialize(args[0])
    return replace(x, expr=ctx.emit(relax.Call(call.op, [x.expr], call.attrs)))
