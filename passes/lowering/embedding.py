"""Integer inputs, embeddings and attention masks.

op(int tensors)           -> the same op: ids and masks are exact integers (never float)
take(table, ids)          -> take(int16 table, ids): per-tensor symmetric int16 table
where(keep, 0, -huge)     -> MaskPenalty(keep): an additive attention mask
add(logits, MaskPenalty)  -> MaskedLogits: Shiftmax zeroes the masked keys exactly
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE
from . import emit
from .layout import lower_gather
from .registry import lowers
from .values import IntTensor, MaskPenalty, Quantized

MASK_THRESHOLD = -1e4  # an additive mask value at or below this means "masked out"


def is_integer_op(call: relax.Call, args) -> bool:
    """True if the op only combines exact integer/bool tensors (and constants) into one."""
    flat = [a for arg in args for a in (arg if isinstance(arg, list) else [arg])]
    values = [a for a in flat if not isinstance(a, (np.ndarray, relax.Expr))]
    dtype = str(getattr(call.ty, "dtype", ""))
    return bool(values) and all(isinstance(v, IntTensor) for v in values) and dtype.startswith(("int", "uint", "bool"))


def lower_integer_op(ctx, call, args) -> IntTensor:
    def expr(original, value):
        if isinstance(value, IntTensor):
            return value.expr
        if isinstance(value, list):
            return relax.Tuple([expr(o, v) for o, v in zip(original.fields, value)])
        return original  # constants, shapes and attributes as they were

    return IntTensor(ctx.emit(relax.Call(call.op, [expr(o, v) for o, v in zip(call.args, args)], call.attrs)))


@lowers("relax.take")
def lower_take(ctx, call, args):
    table, ids = args
    if not isinstance(table, np.ndarray):  # ONNX Gather of an activation (constant indices)
        return lower_gather(ctx, call, args)
    if not isinstance(ids, IntTensor):
        ctx.fail("take is supported as an embedding lookup: a constant table indexed by integer ids")
    amax = float(np.abs(table).max()) or 1.0
    scale = amax / INT_RANGE["int16"][1]
    table_q = np.clip(np.round(table.astype(np.float64) / scale), *INT_RANGE["int16"])
    out = relax.op.take(emit.const(table_q, "int16"), ids.expr, axis=call.attrs.axis, mode=call.attrs.mode)
    return Quantized(ctx.emit(out), scale, "int16")


@lowers("relax.where")
def lower_where(ctx, call, args):
    cond, on_true, on_false = args
    if (isinstance(cond, IntTensor) and isinstance(on_true, np.ndarray) and isinstance(on_false, np.ndarray)
            and on_true.size == 1 and on_false.size == 1 and float(on_true) == 0.0
            and float(on_false) <= MASK_THRESHOLD):
        return MaskPenalty(cond.expr)
    from .binary import lower_where_values  # two activation/constant branches at one scale

    return lower_where_values(ctx, call, args)
