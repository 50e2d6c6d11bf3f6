"""Float inputs that only ever become integers: ids that tf2onnx (Keras Embedding) exports as float
graph inputs and Casts to int inside the graph.

    x: float32 -> [reshape | flatten | permute_dims | squeeze | expand_dims | strided_slice]* -> Cast(int)
        ==>  x: int (exact, `scale: None` at the boundary) -> the same layout ops on the integers -> Cast

Preconditions: every use of `x` (and of each layout op of it) is such a chain ending in a Cast to a
signed or unsigned integer type (not bool: Cast to bool is `x != 0`, not a truncation). One other use
(a Mul, an output, ...) and `x` stays a quantized float input as before.

TVM imports ONNX's float -> int Cast as `t = astype(where(!isfinite(x), 0, x), int64)` (int32 below 32
bits), for 8-32 bits followed by a wrap to 2^bits (`floor_mod` / `bitwise_and`, `where`) and `astype(to)`. The guard is
dropped (the runtime refuses non-finite inputs) and the truncation moves to the boundary
(`runtime.boundary.to_integer`: truncation toward zero, like ONNX Cast, onnxruntime and TVM's
`astype`); `t` becomes `astype(x_int, int64)` and the wrap that follows stays, as integer ops that
no longer change anything. The input's dtype is the Cast's `to` as written in the ONNX graph (int32
for tf2onnx's Embedding, found past TVM's int64 wrap); with several Casts the widest (int64 where
signed and unsigned ones mix), so that every Cast sees the same integers as the float graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .values import IntTensor

LAYOUT = frozenset({"relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
                    "relax.strided_slice"})
_WRAP = frozenset({"relax.floor_mod", "relax.bitwise_and", "relax.greater_equal", "relax.subtract", "relax.add",
                   "relax.where"})  # TVM's wrap of a cast result to 2^bits
SKIP, SAME, MOVE, CAST = "skip", "same", "move", "cast"  # what each binding of a chain becomes


@dataclass
class ExactInputs:
    """`dtypes`: {float input name: the integer dtype it is passed as}; `roles`: {binding var: SKIP (the
    isfinite guard), SAME (the guarded value: the integers themselves), MOVE (a layout op on them),
    CAST (the Cast: astype of the integers)}."""

    dtypes: dict[str, str] = field(default_factory=dict)
    roles: dict[relax.Var, str] = field(default_factory=dict)


def find_exact_inputs(func: relax.Function) -> ExactInputs:
    """The float params of `func` that reach nothing but integer Casts (through layout ops)."""
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    uses: dict[relax.Var, list] = {}
    for var, value in bound.items():
        for arg in vars_read(value):
            uses.setdefault(arg, []).append(var)
    for arg in vars_read(func.body.body):
        uses.setdefault(arg, []).append(None)  # an output
    found = ExactInputs()
    for p in func.params:
        if not str(getattr(p.ty, "dtype", "")).startswith("float"):
            continue
        roles: dict[relax.Var, str] = {}
        dtypes = _follow(p, uses, bound, roles)
        if dtypes:
            found.dtypes[p.name] = _widest(dtypes)
            found.roles.update(roles)
    return found


def lower_exact(ctx, role: str, call: relax.Call, env: dict):
    """The integer value of a chain binding (SKIP: None, never read: its only readers are SAME bindings)."""
    if role == SKIP:
        return None
    x = env[call.args[2] if role == SAME else call.args[0]]
    if role == SAME:
        return x
    if role == MOVE:
        return IntTensor(ctx.emit(relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs)))
    dtype = str(call.attrs.dtype)
    return x if str(x.expr.ty.dtype) == dtype else IntTensor(ctx.emit(relax.op.astype(x.expr, dtype)))


def _follow(v: relax.Var, uses: dict, bound: dict, roles: dict) -> list[str] | None:
    """The integer dtypes the uses of float `v` cast it to, or None if one use is anything else."""
    dtypes = []
    for u in uses.get(v, []) or [None]:
        call = bound.get(u)
        op = call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) else None
        if op in LAYOUT and call.args[0].same_as(v):
            roles[u] = MOVE
            more = _follow(u, uses, bound, roles)
            if more is None:
                return None
            dtypes += more
        elif op == "relax.isfinite" and all(_is_guard(n, v, uses, bound) for n in uses.get(u, [])):
            roles[u] = SKIP
            roles.update({n: SKIP for n in uses[u]})
        elif op == "relax.where" and call.args[2].same_as(v) and _is_guard(call.args[0], v, uses, bound) \
                and _is_zero(call.args[1]):
            roles[u] = SAME
            more = _follow(u, uses, bound, roles)
            if more is None:
                return None
            dtypes += more
        elif op == "relax.astype" and _is_int(str(call.attrs.dtype)):
            roles[u] = CAST
            dtypes.append(_written_dtype(u, uses, bound))
        else:
            return None
    return dtypes


def _is_guard(n, v, uses, bound) -> bool:
    """`n = logical_not(isfinite(v))`, read only by `where(n, 0, v)`."""
    call = bound.get(n)
    if not (isinstance(call, relax.Call) and getattr(call.op, "name", None) == "relax.logical_not"):
        return False
    inner = bound.get(call.args[0])
    if not (isinstance(inner, relax.Call) and getattr(inner.op, "name", None) == "relax.isfinite"
            and inner.args[0].same_as(v)):
        return False
    readers = [bound.get(r) for r in uses.get(n, [])]
    return bool(readers) and all(isinstance(r, relax.Call) and getattr(r.op, "name", None) == "relax.where"
                                 and r.args[0].same_as(n) and r.args[2].same_as(v) and _is_zero(r.args[1])
                                 for r in readers)


def _written_dtype(t: relax.Var, uses: dict, bound: dict) -> str:
    """The Cast's `to`: `t`'s own dtype, or, where TVM wraps `t` (int64 for 32 bits, int32 for fewer) to
    2^bits, the dtype of the astype that ends the wrap (when its bits match the wrap's modulus)."""
    dtype = str(bound[t].attrs.dtype)
    wraps = [u for u in uses.get(t, []) if getattr(getattr(bound.get(u), "op", None), "name", None)
             in ("relax.floor_mod", "relax.bitwise_and") and isinstance(bound[u].args[1], tvm.ir.GenericConst)]
    if dtype not in ("int64", "int32") or len(wraps) != 1:
        return dtype
    modulus = int(bound[wraps[0]].args[1].value.numpy()) + (bound[wraps[0]].op.name == "relax.bitwise_and")
    seen, todo = set(wraps), list(wraps)
    while todo:
        for u in uses.get(todo.pop(), []):
            call = bound.get(u)
            op = getattr(getattr(call, "op", None), "name", None)
            if op == "relax.astype" and _is_int(str(call.attrs.dtype)) and str(call.attrs.dtype) != dtype:
                to = str(call.attrs.dtype)
                return to if modulus == 2 ** np.iinfo(to).bits else dtype
            if op in _WRAP and u not in seen and len(seen) < 16:
                seen.add(u)
                todo.append(u)
    return dtype


def _widest(dtypes: list[str]) -> str:
    if len(set(dtypes)) == 1:
        return dtypes[0]
    if len({d.startswith("uint") for d in dtypes}) > 1:
        return "int64"
    return max(dtypes, key=lambda d: np.dtype(d).itemsize)


def _is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def _is_zero(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst) and not np.any(expr.value.numpy())


def vars_read(expr) -> list[relax.Var]:
    """The variables an expression reads directly (call arguments, tuple fields, a tuple item's tuple)."""
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in vars_read(a)]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in vars_read(f)]
    if isinstance(expr, relax.TupleGetItem):
        return vars_read(expr.tuple_value)
    return []
