"""Reuse one tensor view per planned (storage, offset, shape, dtype), after StaticPlanBlockMemory.

The memory plan gives each kernel's output a view into a planned storage; the VM builds every view
afresh (`vm.builtin.alloc_tensor`) and drops it after its last read (`vm.builtin.null_value`).
Where the same view recurs, as in a recurrence unrolled over hundreds of steps whose temporaries
cycle through a few storages, those two VM calls cost more than the kernels: an LSTM 150 -> 150
over 500 steps spent 40% of its run in them. A view equal to an earlier one (same storage var,
offset, shape and dtype) names the same bytes, so the earlier view is read instead; the storage
then lives until the last use of its views, as it would have until its own last use. So does a
reshape of the same tensor to the same shape (`vm.builtin.reshape`: a BiGRU exported by torch's
dynamo exporter reshapes each step's state twice).
"""

from __future__ import annotations

import tvm
from tvm import relax

from frontends.relax_rewrite import Substitute

_ALLOC_TENSOR = tvm.ir.Op.get("relax.memory.alloc_tensor")
_RESHAPE = tvm.ir.Op.get("relax.reshape")


def _static(shape) -> tuple | None:
    if not (isinstance(shape, relax.ShapeExpr) and all(isinstance(d, tvm.tirx.IntImm) for d in shape.values)):
        return None
    return tuple(int(d) for d in shape.values)


def _key(value) -> tuple | None:
    """What makes a view: (storage, offset, shape, dtype) of a planned view with constant offset and
    shape, or (tensor, shape) of a reshape (a view of the same bytes); else None."""
    if isinstance(value, relax.Call) and value.op.same_as(_ALLOC_TENSOR):
        storage, offset, shape, dtype = value.args[:4]
        if isinstance(storage, relax.Var) and isinstance(offset, tvm.tirx.IntImm) and _static(shape) is not None:
            return storage, int(offset), _static(shape), str(dtype)
    if isinstance(value, relax.Call) and value.op.same_as(_RESHAPE) and isinstance(value.args[0], relax.Var):
        shape = _static(value.args[1])
        if shape is not None:
            return "reshape", value.args[0], shape
    return None


def _reuse(body: relax.SeqExpr) -> relax.SeqExpr | None:
    first, mapping = {}, {}
    rename = Substitute(mapping)  # reads `mapping` as it grows: a var is renamed before any use of it
    blocks = []
    for block in body.blocks:
        bindings = []
        for b in block.bindings:
            value = rename.visit_expr(b.value) if mapping else b.value
            key = _key(value) if isinstance(b, relax.VarBinding) else None
            if key is not None and key in first:
                mapping[b.var] = first[key]
                continue
            if key is not None:
                first[key] = b.var
            bindings.append(relax.VarBinding(b.var, value) if isinstance(b, relax.VarBinding) else
                            relax.MatchCast(b.var, value, b.ty))
        blocks.append(type(block)(bindings))
    if not mapping:
        return None
    return relax.SeqExpr(blocks, rename.visit_expr(body.body))


@tvm.transform.module_pass(opt_level=0, name="ReuseTensorViews")
def reuse_tensor_views(mod, _ctx):
    """Every planned view equal to an earlier one in its function's body, replaced by that one."""
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if not (isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr)):
            continue
        body = _reuse(func.body)
        if body is not None:
            out[gv] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
    return out
