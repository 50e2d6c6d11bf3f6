"""Data-movement ops pass integers through unchanged (same scale, same dtype).

reshape / flatten / permute_dims / squeeze / expand_dims / strided_slice (negative steps too) /
split (uneven too) / broadcast_to / tile / take(q, constant indices) / topk / resize nearest /
gather_nd, gather_elements (constant or exact integer indices)
             on q -> the same op on q (topk: values at the same scale, indices exact integers)
pad(q, reflect | replicate | circular | constant v) -> pad(q, ..., round(v / S_q) saturated)
astype(q, float -> float) -> q (the integers do not change)
concat(q_i)  -> concat(rq(q_i -> S_out)) with one common scale (int16 when a part is an int32
                accumulator and the residual stream is 16-bit); at a graph output, parts of very
                different ranges keep their own scales (int32, per-index scales along the axis)
Accumulators pass through transposes, splits, slices and reshapes (one that mixes channels
first requantizes a per-channel accumulator to one int32 scale).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tvm
from tvm import relax

from frontends.errors import CompileError

from ..reference.kernels import INT_RANGE, dyadic
from . import emit
from .context import activation_scale, calibrated_qmax
from .registry import lowers
from .values import Accumulator, IntTensor, MaskPenalty, Quantized


@lowers("relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
        "relax.strided_slice")
def lower_layout(ctx, call, args):
    if isinstance(args[0], IntTensor):  # exact integers (a mask computed from an integer input)
        return replace(args[0], expr=ctx.emit(relax.Call(call.op, [args[0].expr, *call.args[1:]], call.attrs)))
    if isinstance(args[0], MaskPenalty):  # an additive attention mask reshaped to (B, 1, 1, T): its bool moves
        return _mask_through(ctx, call, args[0])
    acc = _accumulator_through(ctx, call, args[0])
    if acc is not None:
        return acc
    x = ctx.materialize(args[0])
    return replace(x, expr=ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs)))


def _mask_through(ctx, call, mask: MaskPenalty) -> MaskPenalty:
    keep = ctx.emit(relax.Call(call.op, [mask.keep, *call.args[1:]], call.attrs))
    bias, op = mask.bias, call.op.name
    if bias is not None:
        shape = [int(d) for d in call.ty.shape]
        if op == "relax.permute_dims":
            bias = np.transpose(bias, None if call.attrs.axes is None else [int(a) for a in call.attrs.axes])
        elif op in ("relax.broadcast_to", "relax.tile"):
            bias = np.broadcast_to(bias, shape) if op == "relax.broadcast_to" else \
                np.tile(bias, [int(r) for r in call.attrs.repeats])
        elif op in ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims"):
            bias = bias.reshape(shape)
        else:
            raise CompileError(f"{op} of an attention mask with a position bias: not lowered")
    return MaskPenalty(keep, bias=bias, fill=mask.fill)  # the fill decides fully masked rows (elementwise.lower_add)


def _accumulator_through(ctx, call, x):
    """Reshapes that keep every element's channel, and transposes, move an accumulator unchanged
    (its channel axis renumbered), so that its requantization stays deferred (e.g. a matmul +
    bias reshaped into a residual add, a patch-embedding conv flattened into tokens)."""
    if not isinstance(x, Accumulator):
        return None
    op = call.op.name
    before, after = [int(d) for d in call.args[0].ty.shape], [int(d) for d in call.ty.shape]
    if x.axis is None:
        axis = None
    elif op == "relax.permute_dims":
        axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(len(before)))[::-1]
        axis = axes.index(x.axis)
    elif op in ("relax.reshape", "relax.expand_dims", "relax.squeeze"):
        axis = channel_axis_after_reshape(before, after, x.axis)
        if axis is None:  # e.g. channels split into attention heads: one int32 scale for all
            x = _per_tensor(ctx, x)
    elif op == "relax.strided_slice":
        axis, scale = x.axis, _sliced_scale(call, x, before)
        if scale is None:
            return None
        expr = ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs))
        return Accumulator(expr, scale, axis, ctx.out_range(), x.clamp, x.offset, x.product)
    else:
        return None
    expr = ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs))
    moved = Accumulator(expr, x.scale, axis, ctx.out_range(), x.clamp, x.offset, x.product)  # a square stays one
    if axis is not None and x in ctx.bias_shift:  # the same channels: the bias added next still corrects them
        ctx.bias_shift[moved] = ctx.bias_shift[x]
    if axis is not None and x in ctx.features:  # the same features, maybe on another axis
        ctx.features[moved] = ctx.features[x]
    return moved


def _sliced_scale(call, x: Accumulator, shape: list[int]):
    """The per-channel scales of a strided slice of `x` (sliced where the slice cuts the channel
    axis with stride 1), or None for a slice it cannot follow."""
    axes, begin, end, *strides = ([int(v.value) for v in arg.fields] for arg in call.args[1:5])
    strides = strides[0] if strides else [1] * len(axes)  # a slice without strides: steps of one
    axes = [a % len(shape) for a in axes]
    if x.axis is None or x.axis not in axes:
        return x.scale
    i = axes.index(x.axis)
    if strides[i] != 1:
        return None
    return np.asarray(x.scale)[slice(begin[i], end[i])]


def _per_tensor(ctx, x: Accumulator) -> Accumulator:
    """The accumulator requantized (int32 to int32) to one scale, amax / 2^29 of its calibrated
    range (headroom 4x, saturating): no precision lost to the 8/16 bits a consumer will want."""
    scale = max(abs(v) for v in x.out_range) / 2**29 or float(np.max(x.scale))
    rank = len(x.expr.ty.shape)
    m, s = dyadic(np.asarray(x.scale, np.float64) / scale)
    expr = ctx.emit(emit.requantize(x.expr, emit.channel_shape(m, rank, x.axis), emit.channel_shape(s, rank, x.axis),
                                    *INT_RANGE["int32"], "int32"))
    return Accumulator(expr, np.asarray(scale), None, x.out_range, x.clamp, x.offset, x.product)


def channel_axis_after_reshape(before: list[int], after: list[int], axis: int) -> int | None:
    """The axis of `after` holding `before`'s channel axis (same size, same number of elements
    before it in row-major order), or None if a reshape mixes channels."""
    outer = int(np.prod(before[:axis]))
    for j, d in enumerate(after):
        if d == before[axis] and int(np.prod(after[:j])) == outer:
            return j
    return None


@lowers("relax.nn.pad")
def lower_pad(ctx, call, args):
    """Zero, reflect, edge and circular pads copy integers (an accumulator too: each padded element
    keeps its channel); a constant v pads with round(v / S), saturated to the dtype (-inf -> min)."""
    x, mode, value = args[0], str(call.attrs.pad_mode), float(call.attrs.pad_value)
    if not (isinstance(x, Accumulator) and (mode != "constant" or value == 0.0)):
        x = ctx.materialize(x)
    q_value = 0.0
    if mode == "constant" and value != 0.0:
        lo, hi = INT_RANGE[x.dtype]
        q_value = float(np.clip(np.round(value / x.scale), lo, hi)) if np.isfinite(value) else (lo if value < 0 else hi)
    widths = [int(v) for v in call.attrs.pad_width]  # before_0, after_0, before_1, ...
    expr = relax.op.nn.pad(x.expr, widths, mode, q_value)
    if isinstance(x, Accumulator) and x.axis is not None and (widths[2 * x.axis] or widths[2 * x.axis + 1]):
        # padded along its channels (Transformer-XL's rel_shift pads the position axis of a linear's output):
        # each new element's scale is that of the channel it copies (any scale for a zero)
        scale = np.pad(np.asarray(x.scale, np.float64).reshape(-1), (widths[2 * x.axis], widths[2 * x.axis + 1]),
                       mode={"reflect": "reflect", "replicate": "edge", "circular": "wrap"}.get(mode, "edge"))
        return replace(x, expr=ctx.emit(expr), scale=scale)
    return replace(x, expr=ctx.emit(expr))


@lowers("relax.tril", "relax.triu")
def lower_triangle(ctx, call, args):
    """Trilu of an activation: the same integers, zeros (the integer 0 is the real 0) outside the triangle."""
    x = ctx.materialize(args[0])
    op = relax.op.tril if call.op.name == "relax.tril" else relax.op.triu
    return replace(x, expr=ctx.emit(op(x.expr, call.args[1])))


def _moved(ctx, call, x, axis_after):
    """`call`'s op applied to the integers of `x`; an accumulator's per-channel axis becomes
    `axis_after(axis)`, or None if the op mixes channels (then it is requantized to 8 bits)."""
    if isinstance(x, MaskPenalty):
        return _mask_through(ctx, call, x)
    if isinstance(x, Accumulator) and x.axis is not None and axis_after(x.axis) is None:
        x = ctx.materialize(x)
    if isinstance(x, Accumulator) and x.axis is not None:
        x = replace(x, axis=axis_after(x.axis))
    elif not isinstance(x, Accumulator):
        x = ctx.materialize(x)
    return replace(x, expr=ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs)))


@lowers("relax.broadcast_to")
def lower_broadcast_to(ctx, call, args):
    before, after = [int(d) for d in call.args[0].ty.shape], [int(d) for d in call.ty.shape]
    lead = len(after) - len(before)
    return _moved(ctx, call, args[0], lambda a: a + lead if after[a + lead] == before[a] else None)


@lowers("relax.tile")
def lower_tile(ctx, call, args):
    reps = [int(r) for r in call.attrs.repeats]
    rank = len(call.ty.shape)
    lead = rank - len(call.args[0].ty.shape)
    reps = [1] * (rank - len(reps)) + reps
    return _moved(ctx, call, args[0], lambda a: a + lead if reps[a + lead] == 1 else None)


def lower_gather(ctx, call, args):
    """take(activation, constant or integer indices) (ONNX Gather): the selected integers, same scale.

    Integer indices (an argmax: CLIP's pooling at the EOS token, `x[arange(b), ids.argmax(-1)]`)
    select from the materialized 8/16-bit integers."""
    x, idx = args
    if isinstance(idx, IntTensor):
        q = ctx.materialize(x)
        return replace(q, expr=ctx.emit(relax.op.take(q.expr, idx.expr, axis=call.attrs.axis, mode=call.attrs.mode)))
    if not isinstance(idx, np.ndarray):
        ctx.fail("take of an activation needs constant or integer indices")
    axis = int(call.attrs.axis) % len(call.args[0].ty.shape)
    if isinstance(x, Accumulator) and x.axis == axis and idx.ndim == 1:  # channels selected: their scales
        expr = ctx.emit(relax.op.take(x.expr, emit.const(idx, "int64"), axis=axis, mode=call.attrs.mode))
        return replace(x, expr=expr, scale=np.asarray(x.scale)[idx])
    if not isinstance(x, Accumulator) or x.axis is None or x.axis == axis:
        x = ctx.materialize(x)
    elif x.axis > axis:
        x = replace(x, axis=x.axis + idx.ndim - 1)
    expr = relax.op.take(x.expr, emit.const(idx, "int64"), axis=axis, mode=call.attrs.mode)
    return replace(x, expr=ctx.emit(expr))


def _indices(ctx, call, idx) -> relax.Expr:
    """Index operand of a gather or scatter: a constant, or an exact integer tensor (ids, argmax)."""
    if isinstance(idx, np.ndarray):
        return emit.const(idx.astype(np.int64), "int64")
    if isinstance(idx, IntTensor):
        return idx.expr
    ctx.fail(f"{call.op.name} needs constant or integer indices")


@lowers("relax.gather_nd", "relax.gather_elements")
def lower_gather_indices(ctx, call, args):
    """ONNX GatherND / GatherElements of an activation: the selected integers at the same scale.

    The indices are a constant or an exact integer tensor (ids, argmax)."""
    x, idx = args
    idx = _indices(ctx, call, idx)
    if isinstance(x, np.ndarray):  # a constant table read at computed indices (a pitch decoder's cents)
        if not np.isfinite(x).all():
            ctx.fail(f"{call.op.name} from a constant holding non-finite values")
        amax = float(np.abs(x).max()) or 1.0  # on its own 16-bit grid: the table's values, not calibration's
        table = emit.const(np.round(x.astype(np.float64) * (32767 / amax)), "int16")
        return Quantized(ctx.emit(relax.Call(call.op, [table, idx], call.attrs)), amax / 32767, "int16")
    x = ctx.materialize(x)
    return replace(x, expr=ctx.emit(relax.Call(call.op, [x.expr, idx], call.attrs)))


@lowers("relax.scatter_elements", "relax.scatter_nd")
def lower_scatter(ctx, call, args):
    """ONNX ScatterElements / ScatterND (graph networks' sums over neighbours, index updates): data and
    updates at one fine int32 scale (amax / 2^29 of the calibrated output: sums of many updates keep
    headroom), scattered with the same reduction in int32; an Accumulator for its consumers. A max
    (min) readout's -inf (+inf) start is int32's lowest (highest) value, where it saturates as in
    float. Indices are constants or exact integers; mul and mean have no common-scale form."""
    data, idx, updates = args
    reduction = str(call.attrs.reduction)
    if reduction not in ("update", "add", "max", "min"):
        ctx.fail(f"{call.op.name} with reduction {reduction!r}: update, add, max and min have integer forms")
    idx = _indices(ctx, call, idx)
    amax = max(abs(v) for v in ctx.out_range())
    scale = amax / 2**29 if amax > 0 else 1.0
    parts = []
    for value in (data, updates):
        if isinstance(value, np.ndarray):
            identity = {"max": -np.inf, "min": np.inf}.get(reduction)  # a max readout starts from -inf
            if not np.isfinite(value[value != identity] if identity is not None else value).all():
                ctx.fail(f"{call.op.name} of a constant holding non-finite values")
            q = np.clip(np.round(value.astype(np.float64) / scale), *INT_RANGE["int32"])  # -inf: int32's end
            parts.append(emit.const(q, "int32"))
            continue
        q, m, sh = ctx.to_int32_at(value, scale)
        parts.append(emit.requantize(q, m, sh, *INT_RANGE["int32"], "int32"))
    expr = ctx.emit(relax.Call(call.op, [parts[0], idx, parts[1]], call.attrs))
    return Accumulator(expr, np.asarray(scale), None, ctx.out_range())


@lowers("relax.topk")
def lower_topk(ctx, call, args):
    """The k largest (smallest) integers: scales are positive, so the order is the real order
    (ties between reals that round to one integer may come out in another order: 16 bits, not 8,
    where an accumulator is requantized)."""
    axis = int(call.attrs.axis) % len(call.args[0].ty.shape)
    x = args[0]
    if isinstance(x, IntTensor) and x.range is None:  # integers as they are (torch's sort of sequence lengths)
        return _exact_topk(ctx, call, x)
    if not isinstance(x, Accumulator) or x.axis in (None, axis):
        x = ctx.materialize(x, wide=True)
    dtype = str(x.expr.ty.dtype)
    # TVM's CPU sort takes int32 but not int16 ("Unsupported input dtype" at run time): sorted in int32
    keys = x.expr if dtype == "int32" else ctx.emit(relax.op.astype(x.expr, "int32"))
    out = ctx.emit(relax.Call(call.op, [keys], call.attrs))
    ret = str(call.attrs.ret_type)

    def values(v):
        return ctx.emit(v if dtype == "int32" else relax.op.astype(v, dtype))

    if ret == "both":
        return [replace(x, expr=values(relax.TupleGetItem(out, 0))), IntTensor(ctx.emit(relax.TupleGetItem(out, 1)))]
    return IntTensor(out) if ret == "indices" else replace(x, expr=values(out))


def _exact_topk(ctx, call, x: IntTensor):
    """TopK of exact integers (never a float: lengths, ids), in their own dtype where TVM's CPU sort
    takes it (int32, int64), else in int32."""
    dtype = str(x.expr.ty.dtype)
    keys = x.expr if dtype in ("int32", "int64") else ctx.emit(relax.op.astype(x.expr, "int32"))
    out = ctx.emit(relax.Call(call.op, [keys], call.attrs))
    ret = str(call.attrs.ret_type)

    def values(v):
        return IntTensor(ctx.emit(v if str(keys.ty.dtype) == dtype else relax.op.astype(v, dtype)))

    if ret == "both":
        return [values(relax.TupleGetItem(out, 0)), IntTensor(ctx.emit(relax.TupleGetItem(out, 1)))]
    return IntTensor(out) if ret == "indices" else values(out)


@lowers("relax.astype")
def lower_astype(ctx, call, args):
    """Casts: float -> float keep the integers; float -> int a table over the 8/16-bit grid."""
    if not str(call.ty.dtype).startswith("float"):
        return _to_integers(ctx, call, args[0])
    if isinstance(args[0], IntTensor) and ctx.var.name in ctx.ranges:  # integers -> float: their range
        return replace(args[0], range=tuple(ctx.out_range()))
    return args[0]  # float -> float: the same real values, the same integers


def _to_integers(ctx, call, x) -> IntTensor:
    """A float tensor cast to integers (an index computed in float: floor(x * 4) -> Cast -> Gather,
    a bucket of a value) as a table over its 8/16-bit grid: each integer q stands for q * S, cast
    as ONNX does (toward zero), or rounded to the nearest where the tensor held whole numbers on
    every calibration sample (`CalibratedRanges.whole`): their grid need not hold them exactly (5
    at a step of 0.496 is 10 steps, 4.96, which truncates to 4)."""
    dtype = str(call.ty.dtype)
    if dtype not in ("int64", "int32", "int16", "int8", "uint8") or isinstance(x, np.ndarray):
        ctx.fail(f"cast of a quantized tensor to {dtype}: only float and integer casts")
    q = ctx.materialize(x, wide=True)
    if not isinstance(q, Quantized) or q.dtype not in ("int8", "uint8", "int16"):
        ctx.fail(f"cast of a {type(q).__name__} to {dtype}: no 8/16-bit grid to tabulate")
    lo, hi = INT_RANGE[q.dtype]
    reals = np.arange(lo, hi + 1, dtype=np.float64) * float(q.scale)
    whole = getattr(call.args[0], "name", None) in getattr(ctx.ranges, "whole", ())
    info = np.iinfo(dtype)
    table = np.clip(np.rint(reals) if whole else np.trunc(reals), info.min, info.max).astype(dtype)
    index = relax.op.subtract(relax.op.astype(q.expr, "int32"), emit.const(lo, "int32"))
    return IntTensor(ctx.emit(relax.op.take(emit.const(table, dtype), index, axis=0, mode="clip")))


PART_RATIO = 16  # a part whose max |x| is this far below the concat's keeps its own scale at an output


@lowers("relax.concat")
def lower_concat(ctx, call, args):
    """Inputs at one common scale; constant parts (e.g. a ViT class token) are quantized at it.
    A concat that only layout ops take to a graph output, with a part PART_RATIO below the
    whole's range (a detector's boxes in pixels beside its scores in [0, 1]), keeps one scale per
    part instead: an int32 accumulator with per-index scales along the axis (`_per_part`)."""
    per_part = _per_part(ctx, call, args[0])
    if per_part is not None:
        return per_part
    parts = [p if isinstance(p, (np.ndarray, Accumulator)) else ctx.materialize(p) for p in args[0]]
    values = [p for p in parts if isinstance(p, Quantized)]
    first = values[0] if values else None
    if len(values) == len(parts) and all(p.scale == first.scale and p.dtype == first.dtype for p in parts):
        exprs, scale, dtype = [p.expr for p in parts], first.scale, first.dtype
    else:
        wide = any(isinstance(p, Accumulator) for p in parts) and ctx.config.residual_dtype == "int16"
        # an int32 part (e.g. patch embeddings) joining a 16-bit residual stream stays 16-bit
        dtype = "int16" if (wide or ctx.wide_output() or any(p.dtype == "int16" for p in values)
                            or (ctx.config.sized_widths and _mixed_small(call, parts))) else "int8"
        if dtype == "int8" and ctx.config.unsigned_activations and all(_nonnegative(p) for p in parts):
            dtype = "uint8"  # ReLU branches (Inception, SqueezeNet, DenseNet): int8 kept 7 of their 8 bits
        scale = activation_scale(*ctx.out_range(), dtype)
        exprs = []
        for p in parts:
            if isinstance(p, np.ndarray):
                exprs.append(emit.const(np.clip(np.round(p / scale), *INT_RANGE[dtype]), dtype))
                continue
            q, m, s = ctx.to_int32_at(p, scale)
            exprs.append(emit.requantize(q, m, s, *INT_RANGE[dtype], dtype))
    return Quantized(ctx.emit(relax.op.concat(exprs, axis=call.attrs.axis)), scale, dtype, qmax=calibrated_qmax(dtype))


def _nonnegative(part) -> bool:
    """Whether a concat part is >= 0 by construction: uint8, an int32 accumulator clamped at 0, a constant >= 0."""
    if isinstance(part, np.ndarray):
        return bool(part.size == 0 or part.min() >= 0)
    if isinstance(part, Accumulator):
        return part.clamp[0] >= 0 and not part.offset
    return part.dtype == "uint8"


SMALL_CONCAT = 4096  # elements of a concat whose parts of very different ranges share one 16-bit grid


def _mixed_small(call, parts) -> bool:
    """Whether a small concat joins parts whose ranges differ PART_RATIO-fold or more: homogeneous
    coordinates [x, y, 1] with x, y near 35 (a face mesh's landmarks), where one 8-bit grid read the
    1 as 1.11 and every translation through it 11% too long."""
    size = 1
    for d in call.ty.shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return False
        size *= int(d)
    def amax(p) -> float:
        if isinstance(p, np.ndarray):
            return float(np.abs(p).max(initial=0.0))
        if isinstance(p, Accumulator):
            return max(abs(v) for v in p.out_range)
        return p.scale * (p.qmax or INT_RANGE[p.dtype][1])

    ranges = [amax(p) for p in parts]
    return size <= SMALL_CONCAT and max(ranges) > PART_RATIO * max(min(ranges), 1e-30)


def _per_part(ctx, call, args) -> Accumulator | None:
    """The concat of `args` as int32 with each part's own scale (see `lower_concat`), or None. An
    int32 accumulator part stays as it is (per channel along another axis: at one int32 scale)."""
    if ctx.var is None or ctx.var.name not in ctx.output_bound or ctx.var.name not in ctx.ranges:
        return None
    amax = max(abs(v) for v in ctx.out_range())
    axis = int(call.attrs.axis) % len(call.ty.shape)
    parts, scales, small = [], [], False
    for value, ty in zip(args, call.args[0].ty.fields):
        if getattr(ty, "shape", None) is None or not isinstance(ty.shape[axis], tvm.tirx.IntImm):
            return None  # along a free dim (a cache's sequence axis): one scale
        size = int(ty.shape[axis])
        if isinstance(value, np.ndarray):
            part_amax = float(np.abs(value).max(initial=0.0))
            scale = part_amax / 32767 or 1.0
            expr = emit.const(np.round(value / scale).astype(np.int32), "int32")
        elif isinstance(value, Accumulator) and value.offset == 0.0 and value.clamp == (-np.inf, np.inf):
            acc = value if value.axis in (None, axis) else _per_tensor(ctx, value)  # int32: nothing lost
            scale, expr = np.broadcast_to(np.asarray(acc.scale, np.float64).reshape(-1), (size,)), acc.expr
            part_amax = max(abs(v) for v in acc.out_range)
        else:
            q = ctx.materialize(value)
            if not isinstance(q, Quantized):
                return None
            part_amax = q.scale * (q.qmax or INT_RANGE[q.dtype][1])
            scale, expr = q.scale, relax.op.astype(q.expr, "int32")
        small |= part_amax * PART_RATIO < amax
        parts.append(expr)
        scales.append(np.full(size, scale))
    if not small:
        return None
    return Accumulator(ctx.emit(relax.op.concat(parts, axis=axis)), np.concatenate(scales), axis, ctx.out_range())


@lowers("relax.split")
def lower_split(ctx, call, args):
    x = args[0]
    if isinstance(x, Accumulator):  # each part keeps its slice of the per-channel scales
        axis = int(call.attrs.axis) % len(call.args[0].ty.shape)
        parts = ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs))
        out, start = [], 0
        for i, field in enumerate(call.ty.fields):
            size = int(field.shape[axis])
            scale = x.scale[start:start + size] if x.axis == axis else x.scale
            out.append(Accumulator(ctx.emit(relax.TupleGetItem(parts, i)), scale, x.axis, x.out_range, x.clamp,
                                   x.offset))
            start += size
        return out
    if not isinstance(x, IntTensor):  # exact integers (a Floor cast to int64) split as they are
        x = ctx.materialize(x)
    parts = ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs))
    return [replace(x, expr=ctx.emit(relax.TupleGetItem(parts, i))) for i in range(len(call.ty.fields))]
