"""Compile each distinct kernel once: layers that differ only in their constants share code.

    R.right_shift(x, R.const(13))                 ->  R.right_shift(x, R.const([13]))   (lift_scalar_constants)
    call_tir(fused_ln_7, ...), call_tir(fused_ln_9, ...) with fused_ln_7 == fused_ln_9 (structurally)
                                                  ->  both call fused_ln_7                (dedupe_kernels)

Legalization inlines scalar constants into the kernels, so the six LayerNorms of MiniLM,
equal but for their requantization multipliers and shifts, became six kernels for LLVM to
compile. A one-element tensor constant is a kernel argument instead (a load hoisted out of
the loop), so equal layers give structurally equal PrimFuncs, which `dedupe_kernels` merges.
Only integer scalars of elementwise binary ops whose other operand has rank >= 1 are lifted
(the result's shape is unchanged); float, bool and rank-0 results are left alone.
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from frontends.relax_rewrite import mutate_functions

_BINARY = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.right_shift", "relax.left_shift",
                     "relax.minimum", "relax.maximum", "relax.floor_divide", "relax.bitwise_and",
                     "relax.greater_equal", "relax.less_equal", "relax.greater", "relax.less", "relax.equal"})


def _lift(expr):
    if (isinstance(expr, tvm.ir.GenericConst) and expr.value.numpy().ndim == 0
            and np.issubdtype(expr.value.numpy().dtype, np.integer)):
        value = expr.value.numpy()
        return relax.const(value.reshape(1), str(value.dtype))
    return expr


@mutator
class _LiftScalars(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in _BINARY or len(call.args) != 2:
            return call
        ranks = [len(a.ty.shape) if isinstance(a.ty, relax.TensorType) and a.ty.shape is not None else -1
                 for a in call.args]
        if min(ranks) != 0 or max(ranks) < 1:
            return call
        return relax.Call(call.op, [_lift(a) for a in call.args], call.attrs)


@tvm.transform.module_pass(opt_level=0, name="LiftScalarConstants")
def lift_scalar_constants(mod, _ctx):
    """Integer scalar operands of elementwise ops become one-element tensor constants."""
    mutator_ = _LiftScalars(mod)
    return mutate_functions(mutator_, mod)


@tvm.transform.module_pass(opt_level=0, name="DedupeKernels")
def dedupe_kernels(mod, _ctx):
    """Calls to structurally equal PrimFuncs go to the first of them; the others are dropped."""
    first: dict[int, tvm.ir.GlobalVar] = {}
    replace: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar] = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            key = tvm_ffi.structural_hash(func.without_attr("global_symbol"))
            if key in first and tvm_ffi.structural_equal(func.without_attr("global_symbol"),
                                                         mod[first[key]].without_attr("global_symbol")):
                replace[gv] = first[key]
            else:
                first.setdefault(key, gv)
    if not replace:
        return mod

    @mutator
    class _Redirect(PyExprMutator):
        def visit_global_var_(self, gv):
            return replace.get(gv, gv)

    redirect = _Redirect(mod)
    out = mutate_functions(redirect, mod)
    return tvm.IRModule({gv: f for gv, f in out.functions_items() if gv not in replace}, attrs=out.attrs)
