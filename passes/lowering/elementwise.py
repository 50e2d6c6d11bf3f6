"""Add, ReLU and clamps.

add(acc, bias)      -> acc + round(bias / S_acc)              (int32, stays an Accumulator)
add(a, b)           -> clamp(rq(a -> S_out) + rq(b -> S_out))  (per-branch requantization)
add(a, c)           -> clamp(rq(a -> S_out) + round(c / S_out))
relu/max/min(acc,c) -> the accumulator's clamp                 (folded into its requantization)
x * c, x / c        -> the same integers at scale S * c, S / c  (c > 0 scalar, or a per-channel
                       vector: per-channel scales, integers negated where c < 0)
max/min(q, c)       -> max/min(q, round(c / S_q))              (integer clamp, same scale)
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE
from . import emit
from .context import activation_scale, calibrated_qmax
from .registry import lowers
from .values import Accumulator, MaskedLogits, MaskPenalty, Quantized

R = relax.op


def _is_clean_acc(value) -> bool:
    return isinstance(value, Accumulator) and value.clamp == (-math.inf, math.inf)


def _add_bias(ctx, acc: Accumulator, bias: np.ndarray) -> Accumulator:
    rank = len(acc.expr.ty.shape)
    scale = np.broadcast_to(emit.channel_shape(acc.scale, rank, acc.axis), np.broadcast_shapes(
        emit.channel_shape(acc.scale, rank, acc.axis).shape, bias.shape))
    bias_q = np.round(bias.astype(np.float64) / scale)
    expr = acc.expr
    if np.abs(bias_q).max(initial=0) >= 2**29 and acc.axis is not None:
        # Near-dead channels (tiny weights, large folded bias): coarsen their accumulator
        # by a rounding right shift of k bits so that the bias fits int32 with headroom.
        limit = np.abs(bias_q).reshape(-1, acc.scale.size).max(0) if bias_q.ndim else np.abs(bias_q)
        k = np.where(limit >= 2**29, np.ceil(np.log2(np.maximum(limit, 1) / 2**28)), 0).astype(np.int64)
        m, s = np.full_like(k, 2**30), 30 + k
        expr = ctx.emit(emit.requantize(expr, emit.channel_shape(m, rank, acc.axis),
                                        emit.channel_shape(s, rank, acc.axis), *INT_RANGE["int32"], "int32"))
        acc = Accumulator(expr, acc.scale * 2.0**k, acc.axis, acc.out_range, acc.clamp)
        return _add_bias(ctx, acc, bias)
    if np.abs(bias_q).max(initial=0) >= 2**30:
        ctx.fail("bias does not fit int32 at the accumulator scale (input scale too small)")
    expr = ctx.emit(R.add(expr, emit.const(bias_q, "int32")))
    return Accumulator(expr, acc.scale, acc.axis, ctx.out_range())


@lowers("relax.add")
def lower_add(ctx, call, args):
    a, b = args
    if isinstance(a, MaskPenalty) or isinstance(b, MaskPenalty):  # logits + additive attention mask
        logits, mask = (b, a) if isinstance(a, MaskPenalty) else (a, b)
        return MaskedLogits(logits, mask.keep)
    if isinstance(a, np.ndarray):
        a, b = b, a
    if isinstance(a, np.ndarray):
        ctx.fail("add of two constants should have been folded")
    if isinstance(b, np.ndarray) and _is_clean_acc(a):
        return _add_bias(ctx, a, b)
    lo, hi = ctx.out_range()
    dtype = ctx.config.residual_dtype
    scale = activation_scale(lo, hi, dtype)
    qlo, qhi = INT_RANGE[dtype]
    qa, ma, sa = ctx.to_int32_at(a, scale)
    if isinstance(b, np.ndarray):
        c_q = np.clip(np.round(b.astype(np.float64) / scale), -(2**31), 2**31 - 1)
        y = R.add(R.astype(emit.requantize(qa, ma, sa, *INT_RANGE["int32"], "int32"), "int64"),
                  emit.const(c_q, "int64"))
        expr = R.astype(R.clip(y, qlo, qhi), dtype)
    else:
        qb, mb, sb = ctx.to_int32_at(b, scale)
        expr = emit.add_requant(qa, qb, ma, sa, mb, sb, qlo, qhi, dtype)
    return Quantized(ctx.emit(expr), scale, dtype, qmax=calibrated_qmax(dtype))


def _clamp(ctx, x, lo: float = -math.inf, hi: float = math.inf):
    if isinstance(x, Accumulator):
        return x.with_clamp(lo, hi, out_range=ctx.out_range())
    qmin, qmax = INT_RANGE[x.dtype]
    expr = x.expr
    if math.isfinite(lo):
        expr = R.maximum(expr, emit.const(int(np.clip(round(lo / x.scale), qmin, qmax)), x.dtype))
    if math.isfinite(hi):
        expr = R.minimum(expr, emit.const(int(np.clip(round(hi / x.scale), qmin, qmax)), x.dtype))
    return replace(x, expr=ctx.emit(expr))


def _scalar_bound(ctx, args) -> tuple[object, float]:
    x, c = args
    if isinstance(x, np.ndarray):
        x, c = c, x
    if not isinstance(c, np.ndarray) or c.size != 1:
        ctx.fail("maximum/minimum is supported only against a scalar constant (Clip/ReLU)")
    return x, float(c.reshape(()))


def _constant_factor(ctx, args, op: str):
    x, c = args
    if op == "multiply" and isinstance(x, np.ndarray):
        x, c = c, x
    if not isinstance(c, np.ndarray) or isinstance(x, np.ndarray):
        ctx.fail(f"{op} is supported only by a constant (a rescale)")
    c = c.astype(np.float64)
    return x, (1.0 / c if op == "divide" else c)


def _rescaled(ctx, call, x, factor: np.ndarray):
    """x * factor, factor a constant: a scalar > 0 changes the scale only; a per-channel
    vector along an accumulator's channel axis (e.g. ViT LayerScale) changes its per-channel
    scales, with the integers negated where the factor is negative."""
    rank = len(call.ty.shape)
    if factor.size == 1 and float(factor.reshape(())) > 0:
        f = float(factor.reshape(()))
        if isinstance(x, Accumulator):
            return Accumulator(x.expr, np.asarray(x.scale) * f, x.axis, ctx.out_range(), (x.clamp[0] * f, x.clamp[1] * f))
        return replace(x, scale=x.scale * f)
    channels = int(call.ty.shape[-1])
    if factor.size != channels or factor.reshape(-1).shape != (channels,) or factor.ndim > rank:
        ctx.fail("multiply/divide by a constant: only positive scalars or per-channel (last axis) vectors")
    if np.any(factor == 0) or np.any(~np.isfinite(factor)):
        ctx.fail("multiply/divide by a per-channel constant with zero or non-finite entries")
    acc = x if isinstance(x, Accumulator) and x.clamp == (-math.inf, math.inf) else None
    if acc is None:  # an 8/16-bit value: its per-tensor scale becomes per channel
        q = ctx.materialize(x)
        expr = ctx.emit(R.astype(q.expr, "int32"))
        acc = Accumulator(expr, np.full(channels, q.scale), rank - 1, ctx.out_range())
    if acc.axis not in (None, rank - 1):
        ctx.fail("per-channel multiply along an axis other than the accumulator's channel axis")
    f = factor.reshape(-1)
    scale = np.broadcast_to(np.asarray(acc.scale, np.float64), (channels,)) * np.abs(f)
    expr = acc.expr
    if np.any(f < 0):
        expr = ctx.emit(R.multiply(expr, emit.const(np.sign(f).astype(np.int32), "int32")))
    return Accumulator(expr, scale, rank - 1, ctx.out_range())


@lowers("relax.multiply")
def lower_multiply(ctx, call, args):
    """x * c (c constant): the same integers at scale S * c (per channel for vectors)."""
    x, c = _constant_factor(ctx, args, "multiply")
    return _rescaled(ctx, call, x, c)


@lowers("relax.divide")
def lower_divide(ctx, call, args):
    """x / c (c constant, e.g. attention's sqrt(d)): the same integers at scale S / c."""
    x, c = _constant_factor(ctx, args, "divide")
    return _rescaled(ctx, call, x, c)


@lowers("relax.maximum")
def lower_maximum(ctx, call, args):
    x, c = _scalar_bound(ctx, args)
    return _clamp(ctx, x, lo=c)


@lowers("relax.minimum")
def lower_minimum(ctx, call, args):
    x, c = _scalar_bound(ctx, args)
    return _clamp(ctx, x, hi=c)


@lowers("relax.nn.relu")
def lower_relu(ctx, call, args):
    return _clamp(ctx, args[0], lo=0.0)


@lowers("relax.clip")
def lower_clip(ctx, call, args):
    lo, hi = (float(a.value) for a in call.args[1:3])
    return _clamp(ctx, args[0], lo=lo, hi=hi)
