"""Move reshapes that only add leading unit dims after the elementwise ops that follow them.

A linear layer over [1, T, C] imports as a 2-D matmul, its bias add, and a reshape back to
[1, T, N] before the requantization: FuseOps fuses a matmul only with the elementwise ops right
after it, so the reshape cut the requantization off into a kernel of its own, which read the int32
sums back from memory (MiniLM's FFN: 6 x 68 us a run, ViT's 12 x 210). Here

    f(reshape(x, [1, ..., 1, *x.shape]), c...)  ->  reshape(f(x, c'...), [1, ..., 1, *x.shape])

for every elementwise f whose other operands are constants (c' is c without its leading unit
dims), and for a lookup in a constant table (`take(T, i)`, elementwise in i), step by step down the chain, so the reshape lands after the requantization (and what
follows it elementwise) and the matmul's kernel takes the requantization as its epilogue. Only
the layout of where the reshape sits changes: the same integers. A reshape of such a reshape
reshapes its source instead (the next linear layer's reshape to 2-D undoes it). Runs on the integer Relax module
first in the CPU pipeline (before `requant.py` matches its chains).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from frontends.relax_rewrite import drop_unused_bindings, mutate_functions
from passes.call_rewrite import static_shape

ELEMENTWISE = {"astype", "add", "subtract", "multiply", "right_shift", "left_shift", "clip", "minimum", "maximum",
               "bitwise_and", "bitwise_or", "negative", "abs", "floor_divide"}


def _name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name.startswith("relax."):
        return expr.op.name[len("relax."):]
    return None


def _dims(expr) -> list[int] | None:
    shape = static_shape(expr)
    return None if shape is None else list(shape)


@mutator
class _Sink(PyExprMutator):
    def visit_call_(self, call: relax.Call):
        call = super().visit_call_(call)
        name = _name(call)
        if name == "reshape":  # a reshape of a moved reshape: one reshape of its source, or none
            inner = self._unit_reshape(call.args[0])
            if inner is not None and _dims(call) is not None:
                return inner if _dims(inner) == _dims(call) else relax.op.reshape(inner, _dims(call))
            return call
        # a lookup in a constant table (take along axis 0) maps each index to a value: elementwise in its indices
        lookup = (name == "take" and isinstance(call.args[0], tvm.ir.GenericConst)
                  and len(call.args[0].value.shape) == 1 and int(call.attrs.axis or 0) == 0)
        if name not in ELEMENTWISE and not lookup:
            return call
        found = [i for i, a in enumerate(call.args) if self._unit_reshape(a) is not None and not (lookup and i == 0)]
        if len(found) != 1:
            return call
        i = found[0]
        source = self._unit_reshape(call.args[i])
        lead = len(_dims(call.args[i])) - len(_dims(source))
        args = list(call.args)
        for j, arg in enumerate(args):
            if j == i:
                args[j] = source
            elif lookup:
                continue  # the table
            elif isinstance(arg, tvm.ir.GenericConst):
                value = arg.value.numpy()
                if value.ndim > len(_dims(source)):
                    if any(d != 1 for d in value.shape[:value.ndim - len(_dims(source))]):
                        return call  # the constant varies along a unit dim of the result: it broadcasts x
                    value = value.reshape(value.shape[value.ndim - len(_dims(source)):])
                args[j] = relax.const(value, str(value.dtype))
            elif isinstance(arg, relax.Var):
                return call  # an operand computed at run time (scalar attributes such as clip's bounds stay)
        out = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
        shape = _dims(call)
        if shape is None or shape[lead:] != _dims(out) or any(d != 1 for d in shape[:lead]):
            return call
        return relax.op.reshape(out, shape)

    def _unit_reshape(self, expr):
        """The value `expr` reshapes by adding leading unit dims only (static shapes), or None."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if _name(bound) != "reshape":
            return None
        source, out = _dims(bound.args[0]), _dims(expr)
        if source is None or out is None or len(out) <= len(source):
            return None
        lead = len(out) - len(source)
        return bound.args[0] if out[lead:] == source and all(d == 1 for d in out[:lead]) else None


@tvm.transform.module_pass(opt_level=0, name="ReshapeAfterElementwise")
def reshape_after_elementwise(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Sink leading-unit-dim reshapes below the elementwise ops with constant operands after them."""
    return drop_unused_bindings(mutate_functions(_Sink(mod), mod))
