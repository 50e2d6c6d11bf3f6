"""Conv2d and MatMul with constant weights -> int8 weights, int32 accumulation.

conv2d(x, W)  -> Accumulator(conv2d(q_x, q_W, out_dtype=int32), scale = S_x * S_W[o], axis 1)
matmul(x, W)  -> Accumulator(matmul(q_x, q_W, out_dtype=int32), scale = S_x * S_W[n], last axis)
matmul(a, b)  -> Accumulator(matmul(q_a, q_b, out_dtype=int32), scale = S_a * S_b)   (activations)

Weights are symmetric per output channel. Bias, ReLU and clamps fold into the
accumulator later; the dyadic requantization happens where a consumer needs 8 bits.
Overflow bound: |acc| <= K * 255 * 2^(b-1) < 2^31 for K < 2^23 / 2^(b-1), checked.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE, quantize_weights
from . import emit
from .registry import lowers
from .values import Accumulator


def _check_accumulator_bound(ctx, reduction: int, x_dtype: str):
    bound = reduction * max(abs(v) for v in INT_RANGE[x_dtype]) * 2 ** (ctx.config.weight_bits - 1)
    if bound >= 2**31:
        ctx.fail(f"int32 accumulator could overflow: reduction length {reduction} (bound {bound} >= 2^31)")


def _record(ctx, op: str, w: np.ndarray):
    ctx.layers.append({"name": ctx.var.name, "op": op, "weight_bits": ctx.config.weight_bits,
                       "params": int(w.size), "shape": list(w.shape)})


@lowers("relax.nn.conv2d")
def lower_conv2d(ctx, call, args):
    x, w = args
    attrs = call.attrs
    if not isinstance(w, np.ndarray):
        ctx.fail("conv2d with a non-constant weight is not supported")
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        ctx.fail(f"conv2d layout {attrs.data_layout}/{attrs.kernel_layout}: only NCHW/OIHW is supported")
    x = ctx.to_8bit(x)
    _check_accumulator_bound(ctx, int(np.prod(w.shape[1:])), x.dtype)
    w_q, w_scale = quantize_weights(w, ctx.config.weight_bits, axis=0)
    _record(ctx, "conv2d", w)
    expr = ctx.emit(emit.conv2d_acc(x.expr, w_q, attrs))
    return Accumulator(expr, x.scale * w_scale, 1, ctx.out_range())


@lowers("relax.matmul")
def lower_matmul(ctx, call, args):
    x, w = args
    if isinstance(x, np.ndarray):
        ctx.fail("matmul with a constant first operand is not supported")
    if not isinstance(w, np.ndarray):
        return _activation_matmul(ctx, call, x, w)
    if w.ndim != 2:
        ctx.fail(f"matmul weight of rank {w.ndim}: only 2-D weights are supported")
    x = ctx.to_8bit(x)
    _check_accumulator_bound(ctx, w.shape[0], x.dtype)
    w_q, w_scale = quantize_weights(w, ctx.config.weight_bits, axis=1)
    _record(ctx, "matmul", w)
    expr = ctx.emit(emit.matmul_acc(x.expr, w_q))
    return Accumulator(expr, x.scale * w_scale, len(call.ty.shape) - 1, ctx.out_range())


def _activation_matmul(ctx, call, a, b):
    """Q @ K^T, attention @ V: both operands 8-bit, int32 accumulation, scale S_a * S_b."""
    a, b = ctx.to_8bit(a), ctx.to_8bit(b)
    reduction = int(call.args[0].ty.shape[-1])
    bound = reduction * 255 * 128
    if bound >= 2**31:
        ctx.fail(f"int32 accumulator could overflow: reduction length {reduction}")
    expr = ctx.emit(relax.op.matmul(a.expr, b.expr, out_dtype="int32"))
    return Accumulator(expr, np.asarray(a.scale * b.scale), None, ctx.out_range())
