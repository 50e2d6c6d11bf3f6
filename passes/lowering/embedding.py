"""Integer inputs, embeddings and attention masks.

op(int tensors)           -> the same op: ids and masks are exact integers (never float)
add/sub/mul(float(m), c)  -> the same op in int32 (c an integral scalar): `1.0 - float(mask)` stays exact
float(m) * -huge          -> MaskPenalty(m == 0): BERT's additive mask `(1.0 - mask) * -10000`
take(table, ids)          -> take(int16 table, ids): per-tensor symmetric int16 table
where(keep, 0, -huge)     -> MaskPenalty(keep): an additive attention mask (also where(drop, -huge, 0))
where(keep, B, -huge)     -> MaskPenalty(keep, bias=B), B a constant: a position bias inside the mask (T5)
where(y != 0, -huge, y)   -> MaskPenalty(y == 0), y exact: HF's SDPA mask `inv.masked_fill(inv.bool(), min)`
where(keep, logits, -huge) -> MaskedLogits(logits, keep): `scores.masked_fill(mask == 0, -inf)` (either order)
where(all-false, a, b)    -> b as it is (a for all-true): a condition known at compile time (isnan guards)
add(logits, MaskPenalty)  -> MaskedLogits: Shiftmax zeroes the masked keys exactly (logits + B in int32)
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..reference.kernels import INT_RANGE
from . import emit
from .layout import lower_gather
from .registry import lowers
from .values import Accumulator, IntTensor, MaskedLogits, MaskPenalty, Quantized

MASK_THRESHOLD = -1e4  # an additive mask value at or below this means "masked out"


# Float arithmetic that stays exact on integer tensors and integral scalars (run in int32).
_EXACT_IN_INT32 = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.negative",
                             "relax.maximum", "relax.minimum"})


def _scalar(a: np.ndarray) -> float:
    """A one-element constant as a float, whatever its rank (ONNX exports write scalars as shape [1];
    NumPy 2 refuses float() of those)."""
    return float(a.reshape(()))


def _integral_scalar(a) -> bool:
    return isinstance(a, np.ndarray) and a.size == 1 and _scalar(a) == round(_scalar(a)) and abs(_scalar(a)) < 2**24


def is_integer_op(call: relax.Call, args) -> bool:
    """True if the op only combines exact integer/bool tensors (and constants) into one, or does
    float arithmetic on them that stays exact (`_EXACT_IN_INT32` with integral scalars)."""
    flat = [a for arg in args for a in (arg if isinstance(arg, list) else [arg])]
    values = [a for a in flat if not isinstance(a, (np.ndarray, relax.Expr))]
    dtype = str(getattr(call.ty, "dtype", ""))
    if not values or not all(isinstance(v, IntTensor) for v in values):
        return False
    if dtype.startswith(("int", "uint", "bool")):
        return True
    constants = [a for a in flat if isinstance(a, np.ndarray)]
    if call.op.name == "relax.multiply" and any(a.size == 1 and _scalar(a) <= MASK_THRESHOLD for a in constants):
        return False  # float(m) * -huge: an additive mask (`mask_penalty`), not arithmetic
    return call.op.name in _EXACT_IN_INT32 and all(_integral_scalar(a) for a in constants)


def _fits(c: np.ndarray, dtype: str) -> bool:
    """A float constant whose values are integers within `dtype` (exact when cast to it)."""
    if not dtype.startswith(("int", "uint")):
        return False
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    return bool(np.all(np.isfinite(c)) and np.all(c == np.round(c)) and np.all((c >= lo) & (c <= hi)))


def lower_integer_op(ctx, call, args) -> IntTensor:
    if str(call.ty.dtype).startswith("float"):  # exact float arithmetic on integers: in int32
        operands = [ctx.emit(relax.op.astype(a.expr, "int32")) if isinstance(a, IntTensor)
                    else emit.const(np.round(a).astype(np.int32), "int32") for a in args]
        bounds = tuple(ctx.out_range()) if ctx.var is not None and ctx.var.name in ctx.ranges else None
        return IntTensor(ctx.emit(relax.Call(call.op, operands, call.attrs)), bounds)

    ints = [str(a.expr.ty.dtype) for a in args if isinstance(a, IntTensor)]

    def expr(original, value):
        if isinstance(value, IntTensor):
            return value.expr
        if isinstance(value, list):
            return relax.Tuple([expr(o, v) for o, v in zip(original.fields, value)])
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and ints and _fits(value, ints[0]):
            return emit.const(value, ints[0])  # less(float(ids), 0.0): the integral constant as the ids' dtype
        return original  # constants, shapes and attributes as they were

    return IntTensor(ctx.emit(relax.Call(call.op, [expr(o, v) for o, v in zip(call.args, args)], call.attrs)))


def mask_penalty(ctx, x, c) -> MaskPenalty | None:
    """`float(m) * c` with c <= MASK_THRESHOLD and m in {0, 1} (calibrated): masked where m != 0."""
    if not (isinstance(x, IntTensor) and isinstance(c, np.ndarray) and c.size == 1 and _scalar(c) <= MASK_THRESHOLD):
        return None
    lo, hi = ctx.out_range()
    if not (_scalar(c) <= hi <= 0.0 and lo >= _scalar(c) * 1.0001 or (lo, hi) == (0.0, 0.0)):
        return None
    zero = emit.const(0, str(x.expr.ty.dtype))
    return MaskPenalty(ctx.emit(relax.op.equal(x.expr, zero)), fill=_scalar(c))


@lowers("relax.take")
def lower_take(ctx, call, args):
    table, ids = args
    if not isinstance(table, np.ndarray):  # ONNX Gather of an activation (constant indices)
        return lower_gather(ctx, call, args)
    if not isinstance(ids, IntTensor):
        ctx.fail("take is supported as an embedding lookup: a constant table indexed by integer ids")
    if not np.isfinite(table).all():  # a -inf row is a mask (Graphormer's padding): no integer grid holds it
        ctx.fail(f"embedding table {list(table.shape)} holds {int((~np.isfinite(table)).sum())} non-finite "
                 "value(s) (-inf rows as a mask): they have no integer value")
    amax = float(np.abs(table).max()) or 1.0
    scale = amax / INT_RANGE["int16"][1]
    table_q = np.clip(np.round(table.astype(np.float64) / scale), *INT_RANGE["int16"])
    out = relax.op.take(emit.const(table_q, "int16"), ids.expr, axis=call.attrs.axis, mode=call.attrs.mode)
    return Quantized(ctx.emit(out), scale, "int16")


@lowers("relax.where")
def lower_where(ctx, call, args):
    chosen = _constant_choice(call, args)
    if chosen is not None:
        return chosen
    cond = args[0]
    if isinstance(cond, np.ndarray) and cond.dtype.kind in "biu":  # a mask known at compile time (a causal Trilu)
        cond = IntTensor(emit.const(cond, cond.dtype.name))
    masked = _where_mask(ctx, cond, *args[1:]) if isinstance(cond, IntTensor) else None
    if masked is not None:
        return masked
    from .binary import lower_where_values  # two activation/constant branches at one scale

    return lower_where_values(ctx, call, args)


def _constant_choice(call, args):
    """where(c, a, b) with c known at compile time to be all true (all false) -> a (b) as it is, when
    it already has the output's shape: torch SDPA's guard `where(isnan(softmax), 0, softmax)` (isnan
    of integers is all false) keeps Shiftmax's unsigned output for the attention-value matmul."""
    cond = args[0]
    if isinstance(cond, np.ndarray):
        mask = cond
    elif isinstance(cond, IntTensor) and isinstance(cond.expr, tvm.ir.GenericConst):
        mask = cond.expr.value.numpy()
    else:
        return None
    if not (mask.all() or not mask.any()):
        return None
    k = 1 if mask.all() else 2
    if isinstance(args[k], (np.ndarray, list)) or not isinstance(call.args[k].ty, relax.TensorType):
        return None
    same = [int(d) for d in call.args[k].ty.shape] == [int(d) for d in call.ty.shape]
    return args[k] if same else None


def _huge(v) -> bool:
    return isinstance(v, np.ndarray) and v.size == 1 and _scalar(v) <= MASK_THRESHOLD


def _zero(v) -> bool:
    return isinstance(v, np.ndarray) and v.size == 1 and _scalar(v) == 0.0


def _finite_constant(v) -> bool:
    return isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating) and bool(np.isfinite(v).all()) \
        and float(np.abs(v).max(initial=0.0)) < -MASK_THRESHOLD


def _where_mask(ctx, cond: IntTensor, on_true, on_false) -> MaskPenalty | MaskedLogits | None:
    """A where that masks attention logits with a huge negative value (module docstring), else None."""
    if not (_huge(on_true) or _huge(on_false)):
        return None
    keep = cond.expr if str(cond.expr.ty.dtype) == "bool" else ctx.emit(
        relax.op.not_equal(cond.expr, emit.const(0, str(cond.expr.ty.dtype))))

    def dropped():
        return ctx.emit(relax.op.logical_not(keep))

    fill = _scalar(on_true if _huge(on_true) else on_false)
    if _zero(on_true):
        return MaskPenalty(keep, fill=fill)
    if _zero(on_false):
        return MaskPenalty(dropped(), fill=fill)
    if _huge(on_false) and _finite_constant(on_true):
        return MaskPenalty(keep, bias=on_true, fill=fill)
    if _huge(on_true) and _finite_constant(on_false):
        return MaskPenalty(dropped(), bias=on_false, fill=fill)
    if _huge(on_true) and isinstance(on_false, IntTensor) and _nonzero_of(ctx, keep, on_false.expr):
        return MaskPenalty(dropped(), fill=fill)  # y is 0 wherever it is kept: where(y != 0, -huge, y) adds -huge (y != 0)
    if _huge(on_false) and isinstance(on_true, (Quantized, Accumulator)):
        return MaskedLogits(on_true, keep)
    if _huge(on_true) and isinstance(on_false, (Quantized, Accumulator)):
        return MaskedLogits(on_false, dropped())
    return None


def _nonzero_of(ctx, cond: relax.Expr, y: relax.Expr) -> bool:
    """True if `cond` was emitted as bool(y) or y != 0."""
    bound = ctx.bb.lookup_binding(cond) if isinstance(cond, relax.Var) else None
    if not isinstance(bound, relax.Call) or not isinstance(bound.op, tvm.ir.Op):
        return False
    if bound.op.name == "relax.astype":
        return str(bound.attrs.dtype) == "bool" and bound.args[0].same_as(y)
    if bound.op.name == "relax.not_equal":
        a, b = bound.args
        return a.same_as(y) and isinstance(b, tvm.ir.GenericConst) and not b.value.numpy().any()
    return False
