"""Reuse one tensor view per planned (storage, offset, shape, dtype), after StaticPlanBlockMemory.

The memory plan gives each kernel's output a view into a planned storage; the VM builds every view
afresh (`vm.builtin.alloc_tensor`) and drops it after its last read (`vm.builtin.null_value`).
Where the same view recurs, as in a recurrence unrolled over hundreds of steps whose temporaries
cycle through a few storages, those two VM calls cost more than the kernels: an LSTM 150 -> 150
over 500 steps spent 40% of its run in them. A view equal to an earlier one (same storage var,
offset, shape and dtype) names the same bytes, so the earlier view is read instead; the storage
then lives until the last use of its views, as it would have until its own last use.
"""

from __future__ import annotations

import tvm
from tvm import relax

from frontends.relax_rewrite import Substitute

_ALLOC_TENSOR = tvm.ir.Op.get("relax.memory.alloc_tensor")


def _key(value) -> tuple | None:
    """(storage, offset, shape, dtype) of a planned view with constant offset and shape; else None."""
    if not (isinstance(value, relax.Call) and value.op.same_as(_ALLOC_TENSOR)):
        return None
    storage, offset, shape, dtype = value.args[:4]
    if not (isinstance(storage, relax.Var) and isinstance(offset, tvm.tirx.IntImm)
            and isinstance(shape, relax.ShapeExpr) and all(isinstance(d, tvm.tirx.IntImm) for d in shape.values)):
        return None
    return storage, int(offset), tuple(int(d) for d in shape.values), str(dtype)


def _reuse(body: relax.SeqExpr) -> relax.SeqExpr | None:
    first, mapping = {}, {}
    for block in body.blocks:
        for b in block.bindings:
            key = _key(b.value) if isinstance(b, relax.VarBinding) else None
            if key is not None:
                if key in first:
                    mapping[b.var] = first[key]
                else:
                    first[key] = b.var
    if not mapping:
        return None
    rename = Substitute(mapping)
    blocks = []
    for block in body.blocks:
        bindings = [b if isinstance(b, relax.VarBinding) and b.var in mapping else
                    relax.VarBinding(b.var, rename.visit_expr(b.value)) if isinstance(b, relax.VarBinding) else
                    relax.MatchCast(b.var, rename.visit_expr(b.value), b.ty)
                    for b in block.bindings]
        bindings = [b for b in bindings if b.var not in mapping]
        blocks.append(type(block)(bindings))
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
