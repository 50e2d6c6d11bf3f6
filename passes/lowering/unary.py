"""Elementwise functions of one quantized input as table lookups, and PReLU.

intq.unary(x, program) -> take(table, q - qmin)      table[i] = clip(round(f((i + qmin) S_in) / S_out))
sigmoid/tanh/exp/...(x) -> the same, one-step program (graphs that skipped FuseUnaryChains)
prelu(x, alpha)         -> where(q >= 0, rq(q, S_in/S_out), rq(sign(a_c) q, |a_c| S_in/S_out))

`passes/fuse_unary_chains.py` has already turned each chain of float ops on one input (HardSwish,
Mish, Elu, x * sigmoid(x), ...) into one `intq.unary` call, so one table serves the whole chain;
a new function is one line in `passes.reference.unary.TABLE_OPS`.

Input width:
- 8 bits (int8/uint8; an Accumulator is first requantized to 8 bits, or to 16 in models whose
  residual stream is 16-bit: transformers' tanh-GELU, SiLU gates): 256 entries, exact up to the
  output rounding (<= 0.5 output LSB against f on the input grid).
- 16 bits (int16 residual streams, LayerNorm outputs): an exact 65536-entry table (64 KiB of
  constants per op, int8/uint8 entries), so the 16-bit input keeps its precision. Measured worst
  case against f of the real input over the calibrated range (16-bit input at the 2x headroom),
  in output LSBs (`tests/test_unary.py::test_sixteen_bit_error`), this table / the input first
  requantized to int8 and a 256-entry table: sigmoid 0.51 / 2.48, tanh 0.51 / 2.34, exp 0.52 /
  3.25, erf 0.51 / 2.18, HardSwish 0.51 / 1.19, Mish 0.50 / 1.03, SiLU 0.50 / 1.05, Elu 0.50 /
  0.88, Softplus 0.51 / 1.46 (0.5 is the output rounding, the rest the input's own). A 257-entry
  table with integer linear interpolation would be 256x smaller but adds the interpolation
  error, largest where f bends (sqrt at 0), and a multiply-shift per element.
Output: uint8 where f >= 0 over the whole input grid, else int8 (int16 for a measured-sensitive
tensor, `QuantConfig.wide_tensors`); max |y| from the calibrated range or from f's exact image of
the input grid, whichever is smaller. No arithmetic at run
time beyond the index, so nothing can overflow.
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax, te, tirx

from ..chain_calls import BINARY_CALL, UNARY_CALL
from ..fuse_unary_chains import chain_step, program_json
from ..reference import unary as ref
from ..reference.kernels import INT_RANGE, dyadic
from . import emit
from .float_fallback import float_fallback
from .registry import LOWERINGS, lowers
from .binary import multiply_activations
from .pair_table import pair_table_lookup
from .values import Accumulator, Quantized

R = relax.op
TABLE_INPUTS = ("int8", "uint8", "int16")


LOG_LIKE = ("relax.log", "relax.sqrt", "relax.rsqrt")  # relative precision at small inputs is what counts


def _log_like(program: str) -> bool:
    """Does the chain take a log, a root or a reciprocal of its input (or of what it made of it)?"""
    for op, operands, _ in json.loads(program):
        if op in LOG_LIKE or (op == "relax.divide" and isinstance(operands[1], list)):
            return True
        if op == "relax.power" and not isinstance(operands[1], list) and float(operands[1]) != round(float(operands[1])):
            return True
    return False


def octave_lookup(ctx, acc: Accumulator, program: str) -> Quantized:
    """`program` of a nonnegative int32 accumulator through an octave table (`ref.octave_index`:
    its octave and the 7 bits after its leading one): a log or root of a power spectrum keeps
    every octave of it, where 8 or 16 bits would floor its weak bins."""
    values = ref.octave_values()
    lo, hi = acc.clamp
    image = ref.evaluate(program, np.clip(values * float(acc.scale), lo, hi))
    scale, dtype = ref.output_params(image, ctx.out_range(), ctx.config.unsigned_activations, ctx.wide_output())
    table = ref.build_table(image, scale, dtype)
    return Quantized(ctx.emit(octave_call(ctx.bb, acc.expr, emit.const(table, dtype))), scale, dtype)


OCTAVE_KERNEL = "octave_lookup"  # its PrimFuncs' name (deduplicated: octave_lookup1, ...)


def octave_call(bb: relax.BlockBuilder, x: relax.Expr, table: relax.Expr) -> relax.Expr:
    """call_tir of the octave table lookup on `x` of any shape, a symbolic batch too
    (passes/generalize_batch.py emits it again at batch n)."""
    return bb.call_te(_octave_te, x, table, ref.OCTAVE_BITS, primfunc_name_hint=OCTAVE_KERNEL)


def _octave_te(v: te.Tensor, table: te.Tensor, bits: int) -> te.Tensor:
    """table[ref.octave_index(v)], each step bound once (tirx.Let): written as Relax ops, the
    halving steps nest their operands, and fused with the producer the expression grows past what
    TVM's simplifier finishes."""
    i32 = lambda c: tirx.const(c, "int32")  # noqa: E731

    def entry(*i):
        pos = tirx.Var("pos", "int32")
        steps = [tirx.Var(f"e{k}", "int32") for k in (16, 8, 4, 2, 1)]
        e = steps[-1]
        top = tirx.if_then_else(e >= bits, tirx.shift_right(pos, tirx.max(e - bits, 0)),
                                tirx.shift_left(pos, tirx.max(bits - e, 0)))
        index = tirx.if_then_else(v[i] <= 0, i32(0), e * (2**bits) + top - (2**bits - 1))
        body = table[index]
        prev = [i32(0), *steps[:-1]]
        for var, k, before in reversed(list(zip(steps, (16, 8, 4, 2, 1), prev))):
            body = tirx.Let(var, tirx.if_then_else(tirx.shift_right(pos, before + k) > 0, before + k, before), body)
        return tirx.Let(pos, tirx.max(v[i], i32(1)), body)

    return te.compute(v.shape, entry, name="octave_lookup")


def table_lookup(ctx, x, program: str) -> Quantized:
    """The integer form of `program` (a `reference.unary` chain) applied to the value `x`
    (an accumulator requantized to 16 bits where the residual stream or the result is 16-bit, else 8; a
    nonnegative one-scale accumulator into a log-like chain: an octave table on its int32)."""
    x = ctx.without_offset(x)
    if isinstance(x, Accumulator) and x.axis is None and (x.clamp[0] >= 0 or x.out_range[0] >= 0) \
            and _log_like(program):
        return octave_lookup(ctx, x if x.clamp[0] >= 0 else x.with_clamp(0.0, x.clamp[1]), program)
    if _is_square(program):  # x^2 alone: the exact int32 product (a power spectrum's terms)
        return multiply_activations(ctx, None, x, x)
    special = periodic_lookup(ctx, x, program) or channel_table_lookup(ctx, x, program)
    if special is not None:
        return special
    # a result wanted at 16 bits (a measured-sensitive tensor) reads a 16-bit input: from 8 bits it
    # would take at most 256 values, and its widening would buy nothing
    q = ctx.materialize(x, wide=ctx.config.residual_bits == 16 or ctx.wide_output())
    if not isinstance(q, Quantized) or q.dtype not in TABLE_INPUTS:
        ctx.fail(f"a table lookup needs an 8/16-bit input, got {type(q).__name__}")
    image = ref.evaluate(program, ref.grid(q.dtype) * q.scale)
    scale, dtype = ref.output_params(image, ctx.out_range(), ctx.config.unsigned_activations, ctx.wide_output())
    table = ref.build_table(image, scale, dtype)
    index = R.astype(q.expr, "int32")
    qmin = INT_RANGE[q.dtype][0]
    if qmin != 0:
        index = R.subtract(index, emit.const(qmin, "int32"))
    # "clip": the index is in range by construction, and "fast" makes TVM warn once per table at compile time
    return Quantized(ctx.emit(R.take(emit.const(table, dtype), index, axis=0, mode="clip")), scale, dtype)


MAX_CHANNEL_TABLE = 1 << 18  # entries of a per-channel table, at most


def _is_op(value, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def _widened_8bit(ctx, acc: Accumulator) -> tuple[int, int] | None:
    """The integer range of an accumulator that is an 8-bit value widened to int32, times a
    per-channel sign or not (what a constant per-channel factor makes: `elementwise._rescaled`)."""
    value = ctx.bb.lookup_binding(acc.expr) if isinstance(acc.expr, relax.Var) else None
    signed = False
    if _is_op(value, "relax.multiply") and isinstance(value.args[1], tvm.ir.GenericConst):
        signed, value = True, ctx.bb.lookup_binding(value.args[0]) if isinstance(value.args[0], relax.Var) else None
    if not (_is_op(value, "relax.astype") and str(value.args[0].ty.dtype) in ("int8", "uint8")):
        return None
    lo, hi = INT_RANGE[str(value.args[0].ty.dtype)]
    return (-max(hi, -lo), max(hi, -lo)) if signed else (lo, hi)


def channel_table_lookup(ctx, x, program: str) -> Quantized | None:
    """`program` of 8-bit integers at one scale per channel (x * [c_1 .. c_C] before a sigmoid; sin
    and cos take `periodic_lookup`) as one table per channel, indexed by channel * n + q: one grid
    for all channels would span their scales' range and round the small ones away. None where x is
    not such a value."""
    if not (isinstance(x, Accumulator) and x.axis is not None and x.offset == 0.0
            and x.clamp == (-np.inf, np.inf)):
        return None
    bounds = _widened_8bit(ctx, x)
    scale = np.asarray(x.scale, np.float64).reshape(-1)
    if bounds is None or scale.size * (bounds[1] - bounds[0] + 1) > MAX_CHANNEL_TABLE:
        return None
    values = np.arange(bounds[0], bounds[1] + 1, dtype=np.float64)
    image = ref.evaluate(program, scale[:, None] * values[None, :])  # [channel, integer]
    out_scale, dtype = ref.output_params(image, ctx.out_range(), ctx.config.unsigned_activations, ctx.wide_output())
    table = ref.build_table(image, out_scale, dtype).reshape(-1)
    rank = len(x.expr.ty.shape)
    offset = emit.channel_shape(np.arange(scale.size, dtype=np.int64) * values.size - bounds[0], rank, x.axis)
    index = R.add(x.expr, emit.const(offset.astype(np.int32), "int32"))
    return Quantized(ctx.emit(R.take(emit.const(table, dtype), index, axis=0, mode="clip")), out_scale, dtype)


PHASE_BITS = 12  # entries of a period's table: 4096 (|sin| steps <= 0.0008, below 8-bit output's 0.004)
MAX_PHASE_ERROR = 2.0**-14  # of a period, from the 32-bit phase step's rounding over the integers' range


def periodic_lookup(ctx, x, program: str) -> Quantized | None:
    """sin or cos of an accumulator's integers q at scale S (per channel or not): the phase
    q * S / 2 pi mod 1 as a 32-bit fraction, q * M mod 2^32 with M = round(S / 2 pi * 2^32) (a
    wrapping uint32 multiply), its top PHASE_BITS bits index one period's table. Any argument range
    works (Fourier features sin(x * 2^15 pi) next to sin(x * pi / 2)), where one grid over the
    arguments rounds the low frequencies away. None for other programs, or integers too wide
    for the phase step's rounding (|q| * 2^-33 <= MAX_PHASE_ERROR periods)."""
    steps = json.loads(program)
    if len(steps) != 1 or steps[0][0] not in ("relax.sin", "relax.cos") or steps[0][1] != [["v", -1]]:
        return None
    if not isinstance(x, Accumulator) or x.offset != 0.0 or x.clamp != (-np.inf, np.inf):
        return None  # an 8/16-bit value: the plain table is exact
    scale, axis, expr = np.asarray(x.scale, np.float64).reshape(-1), x.axis, x.expr
    # the same integers at every channel's scale: the largest scale bounds them
    bound = max(abs(v) for v in x.out_range) / float(scale.max()) if scale.max() > 0 else np.inf
    if not bound * 2.0**-33 <= MAX_PHASE_ERROR or not np.all(scale > 0):
        return None
    step = np.round(np.mod(scale / (2 * np.pi), 1.0) * 2.0**32).astype(np.uint64) % 2**32
    angles = np.arange(2**PHASE_BITS, dtype=np.float64) * (2 * np.pi / 2**PHASE_BITS)
    image = ref.evaluate(program, angles)
    out_scale, dtype = ref.output_params(image, ctx.out_range(), ctx.config.unsigned_activations, ctx.wide_output())
    table = ref.build_table(image, out_scale, dtype)
    rank = len(expr.ty.shape)
    m = emit.channel_shape(step.astype(np.uint32), rank, axis if step.size > 1 else None)
    wide = R.astype(expr, "int32") if str(expr.ty.dtype) != "int32" else expr  # two's complement: q mod 2^32
    half = emit.const(np.uint32(1 << (31 - PHASE_BITS)), "uint32")  # to the nearest entry
    phase = R.add(R.multiply(R.astype(wide, "uint32"), emit.const(m, "uint32")), half)
    index = R.astype(R.right_shift(phase, emit.const(np.uint32(32 - PHASE_BITS), "uint32")), "int32")
    return Quantized(ctx.emit(R.take(emit.const(table, dtype), index, axis=0, mode="clip")), out_scale, dtype)


def _is_square(program: str) -> bool:
    steps = json.loads(program)
    if len(steps) != 1:
        return False
    op, operands, _ = steps[0]
    return op == "relax.square" or (op == "relax.multiply" and operands == [["v", -1], ["v", -1]]) or \
        (op == "relax.power" and not isinstance(operands[1], list) and float(operands[1]) == 2.0)


@lowers("relax.call_pure_packed")
def lower_unary_call(ctx, call, args):
    """intq.unary(x, program) / intq.binary(x, y, program): one table for a fused chain."""
    callee = call.args[0]
    if isinstance(callee, relax.ExternFunc) and callee.global_symbol == BINARY_CALL:
        return pair_table_lookup(ctx, args[1], args[2], str(call.args[3].value))
    if not (isinstance(callee, relax.ExternFunc) and callee.global_symbol == UNARY_CALL):
        if ctx.config.allow_float:
            return float_fallback(ctx, call, args)
        ctx.fail(f"no integer lowering for the packed call {getattr(callee, 'global_symbol', callee)!r}")
    return table_lookup(ctx, args[1], str(call.args[2].value))


def lower_table_op(ctx, call, args):
    """One op of TABLE_OPS on its own: a one-step program."""
    found = chain_step(call, {}, call.ty)
    if found is None:
        ctx.fail(f"{call.op.name} is lowered as a table only on one tensor with scalar constants")
    source, members, step, _ = found
    return table_lookup(ctx, args[list(call.args).index(source)], program_json(source, members, {}, step))


# Direct registration of every table op no other module lowers (imported after them).
lowers(*[op for op in ref.TABLE_OPS if op not in LOWERINGS])(lower_table_op)


@lowers("relax.nn.prelu")
def lower_prelu(ctx, call, args):
    """PReLU with one slope per channel of `axis` (NCHW: 1, NHWC: -1): the positive side keeps
    its integers (S_out = S_in * max(1, max |alpha|)), the negative side is a per-channel dyadic
    multiply; the integers of x are 8 or 16 bits (an accumulator: as wide as the residual stream),
    the result the same width."""
    x, alpha = args
    if not isinstance(alpha, np.ndarray):
        ctx.fail("PReLU with a non-constant slope")
    q = ctx.materialize(x, wide=ctx.config.residual_bits == 16 or ctx.wide_output())
    if q.dtype == "uint8":
        return q  # x >= 0: PReLU is the identity
    rank = len(call.ty.shape)
    axis = int(call.attrs.axis) % rank
    channels = int(call.ty.shape[axis])
    if alpha.size not in (1, channels):
        ctx.fail(f"PReLU slope of {alpha.size} values for {channels} channels")
    alpha = np.broadcast_to(alpha.astype(np.float64).reshape(-1), (channels,))
    grow = max(1.0, float(np.abs(alpha).max()))
    scale = q.scale * grow
    m_pos, s_pos = dyadic(1.0 / grow)
    ratio = np.abs(alpha) / grow
    m_neg, s_neg = dyadic(np.where(ratio > 0, ratio, 1.0))
    m_neg = np.where(ratio > 0, m_neg, 0)  # alpha == 0: ReLU on that channel
    shaped = [emit.channel_shape(v, rank, axis) for v in (m_neg, s_neg, np.sign(alpha).astype(np.int32))]
    lo, hi = INT_RANGE[q.dtype]
    # pos(max(q, 0)) + neg(min(q, 0)): the same integers as where(q >= 0, pos(q), neg(q)), since both
    # requantize 0 to 0, without a bool select (which kept a conv's fused epilogue scalar: 5x slower)
    wide = R.astype(q.expr, "int32")
    pos = emit.requantize(R.maximum(wide, emit.const(0, "int32")), m_pos, s_pos, lo, hi, "int32")
    neg = emit.requantize(R.multiply(R.minimum(wide, emit.const(0, "int32")), emit.const(shaped[2], "int32")),
                          shaped[0], shaped[1], lo, hi, "int32")
    y = R.add(pos, neg)
    qmax = q.qmax / grow if q.qmax else None
    return Quantized(ctx.emit(R.astype(y, q.dtype)), scale, q.dtype, qmax=qmax)
