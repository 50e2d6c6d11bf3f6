"""Elementwise functions of two quantized tensors (`intq.binary`, made by `fuse_binary_chains.py`:
tf2onnx's Atan2, a nonlinearity of a quotient or product of two activations) as one table
indexed by the pair of 8-bit integers:

    index = (qx - qmin_x) * 256 + (qy - qmin_y)
    table[index] = clip(round(f(qx S_x, qy S_y) / S_out))     (65536 entries, 64 KiB at 8 bits)

Exact up to the output rounding on the inputs' 8-bit grids (16-bit inputs are requantized to 8
bits first): no intermediate value, such as the unbounded quotient y / x inside atan2, is put on
a grid of its own. Output dtype and scale as for one input (`reference.unary.output_params`).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..reference import unary as ref
from ..reference.kernels import INT_RANGE
from . import emit
from .values import Quantized

R = relax.op


def pair_table_lookup(ctx, x, y, program: str) -> Quantized:
    """The integer form of `program` (a two-input `reference.unary` chain) of the values `x`, `y`."""
    qx, qy = ctx.to_8bit(x), ctx.to_8bit(y)
    if qx.expr.ty.shape is not None and qy.expr.ty.shape is not None and \
            [int(d) for d in qx.expr.ty.shape] != [int(d) for d in qy.expr.ty.shape]:
        ctx.fail("a table of two tensors needs them in one shape")
    image = ref.evaluate(program, (ref.grid(qx.dtype) * qx.scale)[:, None], (ref.grid(qy.dtype) * qy.scale)[None, :])
    image = np.broadcast_to(image, (256, 256))  # a program that ignores one input
    scale, dtype = ref.output_params(image, ctx.out_range(), ctx.config.unsigned_activations, ctx.wide_output())
    table = ref.build_table(image.reshape(-1), scale, dtype)
    base = -INT_RANGE[qx.dtype][0] * 256 - INT_RANGE[qy.dtype][0]
    index = R.add(R.multiply(R.astype(qx.expr, "int32"), emit.const(256, "int32")), R.astype(qy.expr, "int32"))
    if base:
        index = R.add(index, emit.const(base, "int32"))
    return Quantized(ctx.emit(R.take(emit.const(table, dtype), index, axis=0, mode="clip")), scale, dtype)
