"""Elementwise functions of two quantized tensors (`intq.binary`, made by `fuse_binary_chains.py`:
tf2onnx's Atan2, a nonlinearity of a quotient or product of two activations) as one table
indexed by the pair of 8-bit integers:

    index = (qx - qmin_x) * 256 + (qy - qmin_y)
    table[index] = clip(round(f(qx S_x, qy S_y) / S_out))     (65536 entries, 64 KiB at 8 bits)

Exact up to the output rounding on the inputs' 8-bit grids (16-bit inputs are requantized to 8
bits first): no intermediate value, such as the unbounded quotient y / x inside atan2, is put on
a grid of its own. Output dtype and scale as for one input (`reference.unary.output_params`).

A scale-free function (atan2 and its quadrant fix-ups: f(kx, ky) = f(x, y) for k > 0) of a 16-bit
input reads the pair normalized per element instead (`reference.unary.normalize_pair`): both on
one scale, shifted right together until the larger fits 7 bits, so each element keeps 7
significant bits of its own size. One 8-bit grid over the calibrated range left most bins of a
speech STFT (35 dB of level between bins) within a step or two of 0, and their phase (and
quadrant) wrong: cosine 0.83 to float on a DCCRN's phase.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..reference import unary as ref
from ..reference.kernels import INT_RANGE, dyadic
from . import emit
from .values import Quantized

R = relax.op


def pair_table_lookup(ctx, x, y, program: str) -> Quantized:
    """The integer form of `program` (a two-input `reference.unary` chain) of the values `x`, `y`."""
    qx, qy = _normalized_pair(ctx, x, y) if ref.scale_free(program) else (None, None)
    if qx is None:
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


def _normalized_pair(ctx, x, y) -> tuple[Quantized | None, Quantized | None]:
    """`x`, `y` as int8 on one scale, normalized per element (`reference.unary.normalize_pair`);
    (None, None) for two 8-bit inputs (nothing to gain). The scale stands for both only up to the
    per-element shift, which a scale-free function does not see."""
    qx, qy = ctx.materialize(x, wide=True), ctx.materialize(y, wide=True)
    if qx.dtype in ("int8", "uint8") and qy.dtype in ("int8", "uint8"):
        return None, None
    scale = max(qx.scale, qy.scale)  # the finer one is requantized onto the coarser: no int32 overflow
    a, b = (_int32_at(q, scale) for q in (qx, qy))
    m = R.maximum(R.abs(a), R.abs(b))
    k = None
    for t in ref.PAIR_THRESHOLDS[ref.PAIR_THRESHOLDS <= 2**15]:  # |a|, |b| <= 2^15: none beyond is reached
        step = R.astype(R.greater_equal(m, emit.const(int(t), "int32")), "int32")
        k = step if k is None else R.add(k, step)
    k = ctx.emit(k)
    half = ctx.emit(R.right_shift(R.left_shift(emit.const(1, "int32"), k), emit.const(1, "int32")))
    return tuple(Quantized(ctx.emit(R.astype(R.right_shift(R.add(v, half), k), "int8")), scale, "int8")
                 for v in (a, b))


def _int32_at(q: Quantized, scale: float) -> relax.Expr:
    if q.scale == scale:
        return R.astype(q.expr, "int32")
    m, s = dyadic(q.scale / scale)
    return emit.requantize(q.expr, m, s, *INT_RANGE["int32"], "int32")
