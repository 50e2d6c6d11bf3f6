"""Binary ops of two activations (numpy broadcasting): one common-scale lowering for the family.

add/subtract/maximum/minimum/where(a, b)
                  -> clamp(op(rq(a -> S_out), rq(b -> S_out)))  (int32 operands, int64 op)
less/greater/equal/... (a, b)
                  -> op(rq(a8 -> S_c), rq(b8 -> S_c)), S_c = min(S_a, S_b) / 2^8: a bool IntTensor.
                     Operands are first 8/16 bits, so the finer one fits int32 at S_c and a
                     saturated coarser one still lies beyond it: the order is never inverted
a * b             -> Accumulator(int32 a * b, S_a S_b): the consumer requantizes once
a * b + c * d     -> common scale in int16: a recurrent state (LSTM cell c = f c + i g, GRU
                     h = (1 - z) n + z h) carried over many steps (elementwise.lower_add);
                     of two products >= 0 (re^2 + im^2): int32 at amax / 2^29 (`sum_of_squares`)
stack(x_i)        -> stack(clamp(rq(x_i -> S_out))): ONNX Min/Max/Sum/Mean of activations
a / b             -> round_div(a << P, b) (half away from zero) -> rq(S_a / (S_b S_out) / 2^P);
                     b = 0 gives +-max of the output dtype (0 / 0 gives 0)
A constant operand is quantized at the common scale (an int64 constant). Ops of one activation and
a scalar that FuseUnaryChains turns into tables (x <= c, where(x <= c, x, c), c / x) never get
here. NumPy twins: `passes.reference.binary`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..reference import binary as ref
from ..reference.kernels import INT_RANGE, dyadic
from . import emit, emit_binary
from .context import activation_scale, calibrated_qmax
from .registry import lowers
from .values import Accumulator, IntTensor, Quantized


def _constant_at(ctx, c: np.ndarray, scale: float):
    if not np.isfinite(c).all():  # NaN or inf on purpose (a masked output): left to float, where it is kept
        ctx.fail(f"constant operand {list(np.shape(c))} holds non-finite values (NaN or inf): they have no "
                 "integer value")
    q = np.clip(np.round(np.asarray(c, np.float64) / scale), *INT_RANGE["int32"])
    return emit.const(q, "int64"), None, None


def _operand(ctx, value, scale: float):
    """(expr, m, s) putting `value` at `scale` in int32 (m None: an int64 constant already)."""
    if isinstance(value, np.ndarray):
        return _constant_at(ctx, value, scale)
    if isinstance(value, IntTensor):  # exact integers (ids, masks, counts): real values at scale 1
        expr = value.expr if str(value.expr.ty.dtype) == "int32" else ctx.emit(emit.R.astype(value.expr, "int32"))
        m, s = dyadic(1.0 / scale)
        return expr, m, s
    return ctx.to_int32_at(value, scale)


def wide_dtype(ctx) -> str:
    """The dtype of a value op's result: the residual stream's, or int16 for a measured-sensitive tensor."""
    return "int16" if ctx.wide_output() else ctx.config.residual_dtype


def common_scale(ctx, op: str, a, b, cond=None, dtype: str | None = None) -> Quantized:
    """A value op (`ref.VALUE_OPS` or "where") at the output scale, clamped to `dtype` (default: the
    activation dtype of the residual stream)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and cond is None:
        ctx.fail(f"{op} of two constants should have been folded")
    dtype = dtype or wide_dtype(ctx)
    scale = activation_scale(*ctx.out_range(), dtype)
    # an 8-bit sum rounds once: each operand rounded to the output grid first doubled the rounding
    # noise of every residual add (ESRGAN's RRDN: 40 chained x + 0.2 f(x), 3.5 dB of PSNR)
    extra = ref.SUM_EXTRA_BITS if op in ("add", "subtract") and dtype in ("int8", "uint8") else 0
    (ea, ma, sa), (eb, mb, sb) = _operand(ctx, a, scale / 2**extra), _operand(ctx, b, scale / 2**extra)
    expr = emit_binary.common_scale(op, ea, eb, ma, sa, mb, sb, *INT_RANGE[dtype], dtype, cond=cond,
                                    extra_bits=extra)
    return Quantized(ctx.emit(expr), scale, dtype, qmax=calibrated_qmax(dtype))


def residual_sum(ctx, op: str, a, b) -> Accumulator:
    """a +- b of a transformer's residual stream as an int32 Accumulator at amax / 2^29 (four times
    the calibrated range). A few outlier channels or tokens (T5: 60,000 beside ordinary values of 30)
    set a 16-bit grid that leaves ordinary tokens a handful of steps; in int32 the stream keeps
    them, the next residual add reads it unrounded and a LayerNorm/RMSNorm normalizes its integers
    (`transformer._normalize`); any other consumer requantizes it to 8 or 16 bits as before."""
    amax = max(abs(v) for v in ctx.out_range())
    scale = amax / 2**29 if amax > 0 else 1.0  # 4x the calibrated range: a bias added next still fits
    (ea, ma, sa), (eb, mb, sb) = _operand(ctx, a, scale), _operand(ctx, b, scale)
    expr = emit_binary.common_scale(op, ea, eb, ma, sa, mb, sb, *INT_RANGE["int32"], "int32")
    return Accumulator(ctx.emit(expr), np.asarray(scale), None, ctx.out_range())


_FLIPPED = {"less": "greater", "greater": "less", "less_equal": "greater_equal", "greater_equal": "less_equal",
            "equal": "equal", "not_equal": "not_equal"}


def _compare_accumulator(ctx, op: str, acc: Accumulator, c: np.ndarray, shape) -> IntTensor | None:
    """acc op c (c constant) on acc's own int32 integers, the real threshold c / S turned into the
    integer one that gives the same answer for every integer: acc <= t <=> acc <= floor(t / S), acc < t
    <=> acc <= ceil(t / S) - 1, ... A requantization to 8 or 16 bits first would put features of their
    own ranges (a decision tree's thresholds over raw tabular inputs) on one grid; None: not this case."""
    if acc.clamp != (-np.inf, np.inf) or acc.offset or op not in _FLIPPED or not np.all(np.isfinite(c)):
        return None
    rank = len(shape)
    t = c.astype(np.float64).reshape((1,) * max(rank - c.ndim, 0) + c.shape) / emit.channel_shape(
        np.asarray(acc.scale, np.float64), rank, acc.axis)
    if op in ("equal", "not_equal"):
        t = np.where(t == np.round(t), t, np.inf)  # no integer equals a fractional threshold
    else:
        t = np.ceil(t) - (op == "less") if op in ("less", "greater_equal") else np.floor(t)
        op = {"less": "less_equal"}.get(op, op)
    lo, hi = INT_RANGE["int32"]
    bound = np.clip(t, lo - 1, hi + 1).astype(np.int64)  # past int32's ends: always or never
    return IntTensor(ctx.emit(getattr(emit.R, op)(emit.R.astype(acc.expr, "int64"), emit.const(bound, "int64"))))


def _compare_code(ctx, op: str, var: relax.Expr, x, c: np.ndarray, shape) -> IntTensor | None:
    """x == c or x != c for a constant c, on x's integers: equal where x's code is c's, round(c / S).
    A real value equal to c gets that code wherever c lies on the grid or not (1.0 on a 16-bit grid
    with headroom is 16383.5 steps: compared at a finer scale it never matched). A c beyond the grid
    has the end code on its side, where x's calibrated range leaves that code unused: what saturates
    there is c (a sentinel that calibration set apart, such as Keras' mask padding:
    `calibrate._set_apart`). None: not this case (a c beyond a grid whose end is in use: never equal)."""
    if op not in ("equal", "not_equal") or not isinstance(var, relax.Var) or var.name not in ctx.ranges \
            or not c.size or not np.all(c == c.flat[0]) or not np.isfinite(c.flat[0]):
        return None
    q = ctx.materialize(x)
    if not isinstance(q, Quantized) or tuple(int(d) for d in q.expr.ty.shape) != tuple(int(d) for d in shape):
        return None
    lo_q, hi_q = INT_RANGE[q.dtype]
    lo, hi = (v / float(q.scale) for v in ctx.range_of(var))
    k = float(c.flat[0]) / float(q.scale)
    if lo_q - 0.5 <= k <= hi_q + 0.5:  # both codes of a tie: the input quantizer rounds half to even
        first, last = (int(np.clip(v, lo_q, hi_q)) for v in (np.ceil(k - 0.5), np.floor(k + 0.5)))
    elif k < lo_q - 0.5 and lo > lo_q + 0.5:
        first = last = lo_q
    elif k > hi_q + 0.5 and hi < hi_q - 0.5:
        first = last = hi_q
    else:
        return None
    if first == last:
        return IntTensor(ctx.emit(getattr(emit.R, op)(q.expr, emit.const(first, q.dtype))))
    a, b = emit.const(first, q.dtype), emit.const(last, q.dtype)
    inside = emit.R.logical_and(emit.R.greater_equal(q.expr, a), emit.R.less_equal(q.expr, b))
    return IntTensor(ctx.emit(inside if op == "equal" else emit.R.logical_not(inside)))


@lowers(*(f"relax.{op}" for op in ref.COMPARE_OPS))
def lower_compare(ctx, call, args):
    """a < b etc. of activations (or one activation and a constant) -> an exact bool mask; an
    unrequantized accumulator against a constant: on its own integers (`_compare_accumulator`); a
    quantized tensor's equality with a constant: on its codes (`_compare_code`)."""
    op = call.op.name[len("relax."):]
    for k, how in ((0, op), (1, _FLIPPED.get(op))):  # the accumulator first, the op flipped if it is second
        acc, c = args[k], args[1 - k]
        if isinstance(acc, Accumulator) and isinstance(c, np.ndarray) and how is not None:
            mask = _compare_accumulator(ctx, how, acc, c, call.args[k].ty.shape)
            if mask is not None:
                return mask
        if isinstance(acc, (Quantized, Accumulator)) and isinstance(c, np.ndarray) and how is not None:
            mask = _compare_code(ctx, how, call.args[k], acc, c, call.ty.shape)
            if mask is not None:
                return mask
    values = [ctx.materialize(v) if not isinstance(v, np.ndarray) else v for v in args]
    scales = [v.scale for v in values if isinstance(v, Quantized)]
    if not scales:
        ctx.fail("compare of two constants should have been folded")
    scale = min(scales) / 2**ref.COMPARE_EXTRA_BITS
    (ea, ma, sa), (eb, mb, sb) = (_operand(ctx, v, scale) for v in values)
    return IntTensor(ctx.emit(emit_binary.common_scale(call.op.name[len("relax."):], ea, eb, ma, sa, mb, sb)))


def lower_where_values(ctx, call, args):
    """where(mask, a, b) with activation or constant branches (the mask an exact bool tensor)."""
    cond, a, b = args
    if isinstance(cond, np.ndarray) and cond.dtype.kind in "biu":  # a mask known at compile time
        cond = IntTensor(emit.const(cond, cond.dtype.name))
    if not isinstance(cond, IntTensor):
        ctx.fail("where's condition must be a bool mask (a compare or an integer input)")
    keep = cond.expr if str(cond.expr.ty.dtype) == "bool" else ctx.emit(
        emit.R.not_equal(cond.expr, emit.const(0, str(cond.expr.ty.dtype))))
    return common_scale(ctx, "where", a, b, cond=keep)


def multiply_activations(ctx, call, a, b) -> Accumulator:
    """a * b: the int32 product of the 8/16-bit operands (|a b| <= 2^30) at S_a S_b (x * x: x at 16 bits). An exact
    integer operand (a mask or count cast to float) multiplies the other's integers at its scale; two
    exact ones (a histogram's counts squared for its L2 norm) multiply as the activations they stand for
    (`LoweringContext._exact_operand`: at scale 1 where their calibrated range fits 16 bits)."""
    if isinstance(a, IntTensor) != isinstance(b, IntTensor):
        ints, other = (a, b) if isinstance(a, IntTensor) else (b, a)
        q = ctx.materialize(other)
        expr = ctx.emit(emit.R.multiply(emit.R.astype(q.expr, "int32"), emit.R.astype(ints.expr, "int32")))
        return Accumulator(expr, np.asarray(q.scale), None, ctx.out_range())
    if a is b:  # a square: its range is the square of x's, so x keeps 16 bits (the product still fits int32)
        qa = qb = ctx.materialize(a, wide=True)
    else:
        qa, qb = ctx.materialize(a), ctx.materialize(b)
    expr = ctx.emit(emit_binary.multiply_acc(qa.expr, qb.expr))
    both_unsigned = qa.dtype.startswith("u") and qb.dtype.startswith("u")
    clamp = (0.0, np.inf) if both_unsigned or a is b else (-np.inf, np.inf)
    return Accumulator(expr, np.asarray(qa.scale * qb.scale), None, ctx.out_range(), clamp, product=True)


def is_energy_term(x) -> bool:
    """A product known to be >= 0 (a square x * x, or two unsigned factors), one scale."""
    return isinstance(x, Accumulator) and x.product and x.clamp[0] >= 0 and x.axis is None and not x.offset


def sum_of_squares(ctx, a: Accumulator, b: Accumulator) -> Accumulator:
    """a + b of two nonnegative products (a power spectrum re^2 + im^2, a sum of squares): int32
    at one scale, amax / 2^29 of the calibrated range. The int16 of a recurrent state would floor
    its weak bins, and its consumers (sqrt, log: `unary.octave_lookup`) want all its octaves."""
    amax = max(abs(v) for v in ctx.out_range())
    scale = amax / 2**29 if amax > 0 else float(max(a.scale, b.scale))
    lo, hi = INT_RANGE["int32"]
    terms = []
    for x in (a, b):
        m, s = dyadic(np.asarray(x.scale, np.float64) / scale)
        terms.append(emit.R.astype(emit.requantize(x.expr, m, s, lo, hi, "int32"), "int64"))
    expr = ctx.emit(emit.R.astype(emit.R.clip(emit.R.add(*terms), 0, hi), "int32"))
    return Accumulator(expr, np.asarray(scale), None, ctx.out_range(), (0.0, np.inf))


def divide_activations(ctx, call, a, b) -> Quantized:
    """a / b of two activations, rounded, at the output scale. A scalar over an activation arrives as
    a unary table; a constant that varies (Flax's gamma / std: one per channel) is the numerator as
    int16 at its own scale."""
    qa = _constant_operand(a) if isinstance(a, np.ndarray) else ctx.materialize(a)
    qb = ctx.materialize(b)
    dtype = wide_dtype(ctx)
    if dtype == "int8" and ctx.config.unsigned_activations and qa.dtype == qb.dtype == "uint8":
        dtype = "uint8"  # >= 0 over >= 0 (LRN: a ReLU output over its window norm): int8 kept 7 of 8 bits
    scale = activation_scale(*ctx.out_range(), dtype)
    frac = ref.DIV_FRAC_BITS[qa.dtype]
    m, s = dyadic(qa.scale / (qb.scale * scale) * 2.0**-frac)
    # a divisor broadcast over many elements (an instance norm's std per channel): its reciprocal
    # once per element of it, a multiply per output (a written-out instance norm divided 2M times)
    broadcast = _elements(call.args[1]) * BROADCAST_DIVISOR <= _elements(call)
    divide = emit_binary.divide_by_reciprocal if broadcast else emit_binary.divide
    expr = divide(qa.expr, qb.expr, frac, m, s, *INT_RANGE[dtype], dtype)
    return Quantized(ctx.emit(expr), scale, dtype, qmax=calibrated_qmax(dtype))


BROADCAST_DIVISOR = 8  # outputs per divisor element from which the divisor's reciprocal is taken


def _constant_operand(c: np.ndarray) -> Quantized:
    """A float constant as int16 integers at the scale of its largest magnitude (zeros: scale 1)."""
    amax = float(np.max(np.abs(c))) if c.size else 0.0
    scale = amax / INT_RANGE["int16"][1] if amax > 0 else 1.0
    q = np.clip(np.round(np.asarray(c, np.float64) / scale), *INT_RANGE["int16"]).astype(np.int16)
    return Quantized(emit.const(q, "int16"), scale, "int16")


def _elements(expr) -> int:
    """Elements of a tensor's static shape (symbolic dims, a free batch, count once)."""
    shape = getattr(expr.ty, "shape", None) or []
    return int(np.prod([int(d) for d in shape if isinstance(d, tvm.tirx.IntImm)] or [1]))


@lowers("relax.stack")
def lower_stack(ctx, call, args):
    """stack(x_i): every part requantized to the output scale. ONNX Min/Max/Sum/Mean of activations
    arrive as a reduction over such a stack (of broadcast_to's), which then runs on the integers."""
    dtype = wide_dtype(ctx)
    scale = activation_scale(*ctx.out_range(), dtype)
    lo, hi = INT_RANGE[dtype]
    parts = [emit.R.astype(emit.R.clip(emit_binary.at_scale(*_operand(ctx, p, scale)), lo, hi), dtype)
             for p in args[0]]
    expr = ctx.emit(emit.R.stack(parts, axis=call.attrs.axis))
    return Quantized(expr, scale, dtype, qmax=calibrated_qmax(dtype))
