"""Add, ReLU and clamps.

add(acc, bias)      -> acc + round(bias / S_acc)              (int32, stays an Accumulator)
sub(acc, bias)      -> acc - round(bias / S_acc)
add/sub(a, b)       -> clamp(rq(a -> S_out) +- rq(b -> S_out))  (binary.common_scale; at 8 bits both at
                       S_out / 2^8 and the sum rounded once: (y + 2^7) >> 8; b may be a
                       constant, quantized at S_out; numpy broadcasting; a sum of two products of
                       activations, a recurrent state, in int16); in transformers (16-bit residual
                       streams) an int32 Accumulator at amax / 2^30 (binary.residual_sum)
relu/max/min(acc,c) -> the accumulator's clamp                 (folded into its requantization)
max/min(q, c)       -> max/min(q, round(c / S_q))              (integer clamp, same scale)
max/min(a, b)       -> binary.common_scale                      (two activations, or a tensor c)
x * c, x / c        -> the same integers at scale S * |c|, S / |c| (c a scalar or a vector along
                       any one axis, e.g. [C,1,1] in NCHW: per-channel scales; integers times
                       sign(c), so c <= 0 works); any other constant tensor: int8 x int32 product
a * b, a / b        -> binary.multiply_activations / divide_activations (two activations)
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE
from . import binary, emit
from .embedding import MASK_THRESHOLD, mask_penalty
from .layout import _per_tensor
from .registry import lowers
from .values import Accumulator, IntTensor, MaskedLogits, MaskPenalty, Quantized

R = relax.op


def _is_clean_acc(value) -> bool:
    return isinstance(value, Accumulator) and value.clamp == (-math.inf, math.inf)


FINE_BITS = 24  # an accumulator of few levels is refined until its integers reach about 2^24


def _refined(ctx, acc: Accumulator, bias: np.ndarray) -> Accumulator:
    """`acc` with k more fractional bits where its integers are few (an 8-bit tensor times a
    per-channel constant: a BatchNorm after a ReLU and a pool, an input normalization), so that
    the bias added to it is not rounded to the 8-bit step: that rounding is the same error at every
    position of a channel, which the next conv sums coherently over its taps (a Keras captcha
    CNN: the logits' error fell 2.5x)."""
    scale = np.asarray(acc.scale, np.float64)
    levels = max(abs(acc.out_range[0]), abs(acc.out_range[1])) / float(scale.min(initial=np.inf))
    top = float(np.abs(bias).max(initial=0.0)) / float(scale.min(initial=np.inf))
    if not (np.isfinite(levels) and np.isfinite(top)) or levels >= 2 ** (FINE_BITS - 8):
        return acc
    k = int(np.floor(np.log2(2.0**FINE_BITS / max(levels, top, 1.0))))
    if k <= 0:
        return acc
    expr = ctx.emit(R.multiply(acc.expr, relax.const(2**k, "int32")))
    return Accumulator(expr, scale / 2.0**k, acc.axis, acc.out_range, acc.clamp)


def _add_bias(ctx, acc: Accumulator, bias: np.ndarray) -> Accumulator:
    return _features_of(ctx, acc, _plus_bias(ctx, acc, bias), bias=bias)


def _plus_bias(ctx, acc: Accumulator, bias: np.ndarray) -> Accumulator:
    acc = _refined(ctx, acc, bias)
    rank = len(acc.expr.ty.shape)
    scale = np.broadcast_to(emit.channel_shape(acc.scale, rank, acc.axis), np.broadcast_shapes(
        emit.channel_shape(acc.scale, rank, acc.axis).shape, bias.shape))
    bias_q = np.round(bias.astype(np.float64) / scale)
    expr = acc.expr
    if np.abs(bias_q).max(initial=0) >= 2**29 and (acc.axis is not None or np.size(acc.scale) == 1):
        # Near-dead channels (tiny weights, large folded bias), or a fine int32 residual stream
        # (binary.residual_sum) plus a constant: coarsen the accumulator by a rounding right
        # shift of k bits so that the bias fits int32 with headroom.
        limit = (np.abs(bias_q).reshape(-1, acc.scale.size).max(0) if bias_q.ndim and acc.axis is not None
                 else np.abs(bias_q).max(initial=0))
        k = np.where(limit >= 2**29, np.ceil(np.log2(np.maximum(limit, 1) / 2**28)), 0).astype(np.int64)
        expr = ctx.emit(emit.rounding_shift(expr, emit.channel_shape(k, rank, acc.axis)))
        acc = Accumulator(expr, acc.scale * 2.0**k, acc.axis, acc.out_range, acc.clamp)
        return _plus_bias(ctx, acc, bias)
    if np.abs(bias_q).max(initial=0) >= 2**30:
        ctx.fail("bias does not fit int32 at the accumulator scale (input scale too small)")
    expr = ctx.emit(R.add(expr, emit.const(bias_q, "int32")))
    return Accumulator(expr, acc.scale, acc.axis, ctx.out_range())


def _features_of(ctx, source: Accumulator, result: Accumulator, bias=None, factor=None) -> Accumulator:
    """`result` (`source` plus a constant `bias` or times a `factor`), a per-feature input's if `source`
    is one (`LoweringContext.features`), with its features' bound on |x|."""
    if source in ctx.features and result.axis == source.axis:
        amax = ctx.features[source]
        size = amax.size
        if bias is not None:
            amax = amax + np.broadcast_to(np.abs(bias).reshape(-1) if np.size(bias) in (1, size) else np.inf, size)
        if factor is not None:
            amax = amax * np.broadcast_to(np.abs(factor).reshape(-1), size)
        if np.all(np.isfinite(amax)):
            ctx.features[result] = amax
    return result


def _add_mask_bias(ctx, logits, bias: np.ndarray) -> Accumulator:
    """logits + a constant bias on the kept positions of a mask, in int32 at the logits' scale. The
    calibrated range of the sum holds the mask's -huge, so the range is bounded from the logits'
    range and the bias's instead."""
    if isinstance(logits, Accumulator) and logits.offset == 0.0 and logits.axis is None:
        lo, hi = logits.out_range
        acc = Accumulator(logits.expr, np.asarray(logits.scale), None, logits.out_range, logits.clamp)
        if acc.clamp != (-math.inf, math.inf):
            acc = _requantized_acc(ctx, ctx.materialize(logits, wide=True))
    else:
        q = ctx.materialize(logits, wide=True)
        acc = _requantized_acc(ctx, q)
        lo, hi = acc.out_range
    out = _add_bias(ctx, acc, bias.astype(np.float64))
    return replace(out, out_range=(lo + float(bias.min()), hi + float(bias.max())))


def _requantized_acc(ctx, q: Quantized) -> Accumulator:
    amax = float(q.qmax if q.qmax is not None else INT_RANGE[q.dtype][1]) * q.scale
    return Accumulator(ctx.emit(R.astype(q.expr, "int32")), np.asarray(q.scale), None, (-amax, amax))


ABSORBING_FILL = -1e9  # an additive penalty at or below this swamps float32 logits (a fully masked row: uniform)


def _constant_mask(c) -> MaskPenalty | None:
    """A constant additive mask (a causal mask: -inf or -huge above the diagonal, 0 or a finite bias
    elsewhere) as a MaskPenalty, so that the logits it is added to become MaskedLogits."""
    if not (isinstance(c, np.ndarray) and np.issubdtype(c.dtype, np.floating) and c.size > 1):
        return None
    keep = c > MASK_THRESHOLD
    if keep.all() or not keep.any() or not np.isfinite(c[keep]).all():
        return None
    bias = np.where(keep, c, 0.0).astype(np.float32)
    return MaskPenalty(emit.const(keep, "bool"), bias=bias if bias.any() else None)


@lowers("relax.add", "relax.subtract")
def lower_add(ctx, call, args):
    op = call.op.name[len("relax."):]
    a, b = args
    if op == "add" and not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        a, b = (_constant_mask(v) or v for v in (a, b))
    if op == "add" and (isinstance(a, MaskPenalty) or isinstance(b, MaskPenalty)):  # logits + additive mask
        logits, mask = (b, a) if isinstance(a, MaskPenalty) else (a, b)
        if isinstance(logits, np.ndarray):  # a constant plus a mask: still a mask, with that bias
            return replace(mask, bias=logits if mask.bias is None else logits + mask.bias)
        if mask.bias is not None:
            logits = _add_mask_bias(ctx, logits, mask.bias)
        shifted = mask.fill is not None and mask.fill > ABSORBING_FILL  # float32 x - 1e4 keeps x's differences
        return MaskedLogits(logits, mask.keep, empty_rows="logits" if shifted else "uniform")
    if op == "add" and isinstance(a, np.ndarray):
        a, b = b, a
    if isinstance(b, np.ndarray) and _is_clean_acc(a):
        return _add_bias(ctx, a, ctx.corrected_bias(a, b if op == "add" else -b))
    if op == "add" and all(binary.is_energy_term(v) for v in (a, b)):  # re^2 + im^2: every octave kept
        return binary.sum_of_squares(ctx, a, b)
    if op == "add" and all(isinstance(v, Accumulator) and v.product for v in (a, b)):
        # a sum of gate products is a recurrent state (LSTM cell, GRU hidden): its rounding error
        # compounds over the time steps, so it is carried in 16 bits (tests/test_recurrent.py)
        return binary.common_scale(ctx, op, a, b, dtype="int16")
    if ctx.config.residual_bits == 16 and not ctx.wide_output():
        return binary.residual_sum(ctx, op, a, b)
    return binary.common_scale(ctx, op, a, b)


def _clamp(ctx, x, lo: float = -math.inf, hi: float = math.inf):
    if isinstance(x, Accumulator):
        return x.with_clamp(lo, hi, out_range=ctx.out_range())
    if isinstance(x, MaskPenalty):
        return _clamped_mask(ctx, x, lo, hi)
    qmin, qmax = INT_RANGE[x.dtype]
    expr = x.expr
    if math.isfinite(lo):
        expr = R.maximum(expr, emit.const(int(np.clip(round(lo / x.scale), qmin, qmax)), x.dtype))
    if math.isfinite(hi):
        expr = R.minimum(expr, emit.const(int(np.clip(round(hi / x.scale), qmin, qmax)), x.dtype))
    return replace(x, expr=ctx.emit(expr))


def _clamped_mask(ctx, mask: MaskPenalty, lo: float, hi: float) -> MaskPenalty:
    """An additive attention mask clamped (a QDQ pair on the mask, read as the clamp it imposes): kept positions
    add their clamped bias, masked ones the clamped fill, which must still mask (at or below MASK_THRESHOLD)."""
    fill = max(mask.fill if mask.fill is not None else -math.inf, lo)
    if fill > MASK_THRESHOLD:
        ctx.fail(f"an attention mask clamped at {lo:g}: its masked positions would add {fill:g}, a moderate "
                 f"penalty rather than a mask (only fills at or below {MASK_THRESHOLD:g} mask keys out)")
    bias = None if mask.bias is None else np.clip(mask.bias, lo, hi)
    if bias is None and not lo <= 0.0 <= hi:
        ctx.fail(f"an attention mask clamped to [{lo:g}, {hi:g}] shifts its kept positions by a constant")
    return MaskPenalty(mask.keep, bias=bias, fill=None if math.isinf(fill) else fill)


def _scalar_bound(args) -> tuple[object, float] | None:
    """(x, c) for max/min(x, scalar constant c) (a Clip/ReLU bound), else None."""
    x, c = args
    if isinstance(x, np.ndarray):
        x, c = c, x
    if not isinstance(c, np.ndarray) or c.size != 1 or isinstance(x, np.ndarray):
        return None
    return x, float(c.reshape(()))


def _constant_factor(ctx, args, op: str):
    x, c = args
    if op == "multiply" and isinstance(x, np.ndarray):
        x, c = c, x
    c = c.astype(np.float64)
    factor = 1.0 / c if op == "divide" else c
    if not np.all(np.isfinite(factor)):
        ctx.fail(f"{op} by a constant with zero or non-finite entries")
    return x, factor


def _factor_axis(factor: np.ndarray, rank: int) -> int | None | str:
    """The one axis a constant factor varies along (None: a scalar; "tensor": several axes)."""
    shape = (1,) * (rank - factor.ndim) + factor.shape
    axes = [i for i, d in enumerate(shape) if d != 1]
    return None if not axes else axes[0] if len(axes) == 1 else "tensor"


def _rescaled(ctx, call, x, factor: np.ndarray):
    """x * factor, factor a constant: a scalar > 0 changes the scale only; a scalar <= 0 or a
    vector along one axis (ViT LayerScale [C], squeeze-excitation style [C,1,1]) gives per-channel
    scales S |f| with the int32 integers multiplied by sign(f) (0 where f = 0, whose scale is
    then arbitrary: 1); a general constant tensor is quantized to int8 and multiplied in."""
    rank = len(call.ty.shape)
    if isinstance(x, IntTensor) and str(x.expr.ty.dtype) in ("bool", "int8", "uint8", "int16", "uint16", "int32"):
        # exact integers standing for a float (a quantized input's float(q) - zp): int32 at scale 1
        x = Accumulator(ctx.emit(R.astype(x.expr, "int32")), np.asarray(1.0), None, ctx.out_range())
    elif isinstance(x, IntTensor):  # int64 (an ArgMax's bin / 2, a grid index * stride): int16 at its range's scale
        x = ctx.materialize(x)
    if factor.size == 1 and float(factor.reshape(())) > 0:
        f = float(factor.reshape(()))
        if isinstance(x, Accumulator):
            return _features_of(ctx, x, Accumulator(x.expr, np.asarray(x.scale) * f, x.axis, ctx.out_range(),
                                                    (x.clamp[0] * f, x.clamp[1] * f)), factor=f)
        return replace(x, scale=x.scale * f)
    axis = _factor_axis(factor, rank)
    if axis == "tensor":  # int8 constant at amax / 127 times the activation: an int32 product
        amax = float(np.abs(factor).max(initial=0)) or 1.0
        c = np.clip(np.round(factor / (amax / 127)), -127, 127)
        q = ctx.materialize(x)
        expr = ctx.emit(R.multiply(R.astype(q.expr, "int32"), emit.const(c, "int32")))
        return Accumulator(expr, np.asarray(q.scale * amax / 127), None, ctx.out_range())
    acc = x if _is_clean_acc(x) else None
    if acc is None:  # an 8/16-bit value (or a clamped accumulator, clamp applied): widened to int32
        q = ctx.materialize(x)
        acc = Accumulator(ctx.emit(R.astype(q.expr, "int32")), np.asarray(q.scale), None, ctx.out_range())
    if acc.axis is not None and axis is not None and acc.axis != axis:
        acc = _per_tensor(ctx, acc)  # scales along another axis: one int32 scale first
    f = factor.reshape(-1)
    out_axis = acc.axis if axis is None else axis
    size = 1 if out_axis is None else int(call.ty.shape[out_axis])
    scale = np.broadcast_to(np.asarray(acc.scale, np.float64).reshape(-1), (size,)) * np.where(f != 0, np.abs(f), 1.0)
    sign = emit.channel_shape(np.sign(f).astype(np.int32), rank, axis)
    expr = acc.expr if np.all(f > 0) else ctx.emit(R.multiply(acc.expr, emit.const(sign, "int32")))
    return _features_of(ctx, acc, Accumulator(expr, scale if out_axis is not None else np.asarray(scale[0]), out_axis,
                                              ctx.out_range()), factor=f)


@lowers("relax.multiply")
def lower_multiply(ctx, call, args):
    """x * c (c constant): the same integers at scale S * c (see `_rescaled`); a * b: int32 product."""
    a, b = args
    penalty = mask_penalty(ctx, a, b) or mask_penalty(ctx, b, a)
    if penalty is not None:
        return penalty
    if not isinstance(a, np.ndarray) and not isinstance(b, np.ndarray):
        return binary.multiply_activations(ctx, call, a, b)
    x, c = _constant_factor(ctx, args, "multiply")
    return _rescaled(ctx, call, x, c)


@lowers("relax.divide")
def lower_divide(ctx, call, args):
    """x / c (c constant, e.g. attention's sqrt(d)): the same integers at scale S / c; x / b and
    c / b (b an activation): rounded integer division, or, by a b broadcast over 8 outputs or more
    (an instance norm's std), a multiply by b's reciprocal taken once per element of b."""
    a, b = args
    if not isinstance(b, np.ndarray):
        return binary.divide_activations(ctx, call, a, b)
    x, c = _constant_factor(ctx, args, "divide")
    return _rescaled(ctx, call, x, c)


@lowers("relax.maximum", "relax.minimum")
def lower_max_min(ctx, call, args):
    """max/min with a scalar bound: a clamp (folded into a requantization); else common scale."""
    op = call.op.name[len("relax."):]
    bound = _scalar_bound(args)
    if bound is None:
        return binary.common_scale(ctx, op, *args)
    x, c = bound
    return _clamp(ctx, x, lo=c) if op == "maximum" else _clamp(ctx, x, hi=c)


@lowers("relax.nn.relu")
def lower_relu(ctx, call, args):
    return _clamp(ctx, args[0], lo=0.0)


@lowers("relax.clip")
def lower_clip(ctx, call, args):
    lo, hi = (float(a.value) for a in call.args[1:3])
    return _clamp(ctx, args[0], lo=lo, hi=hi)
