"""exp2's cubic computed in vectors, not read from its table, on targets with AVX-512.

    take(P, f)  ->  p(f)      P = [p(0), ..., p(2^16 - 1)], p the cubic of `reference.transformer.exp2_neg`

The lowering reads the cubic of every softmax's and ShiftGELU's exp2 from a table of its 2^16 values
(`passes.lowering.emit_transformer.exp2_neg`): on AVX2 its Horner steps' 64-bit multiplies cost more
than the lookup. A lookup is gathered one lane at a time, though, and with AVX-512's 64-bit lane
arithmetic the steps are cheaper: MiniLM's softmax kernels 1.22 -> 0.89 ms at 1 thread on an AMX Xeon
(kernel thread time), where AVX2 code of the same steps took 2.01 ms against the table's 1.70. The
integers are the same: the table holds the cubic's values.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from frontends.relax_rewrite import mutate_functions
from passes.lowering.emit_transformer import exp2_cubic, exp2_fraction_table


def _is_exp2_table(value) -> bool:
    table = exp2_fraction_table()
    if not isinstance(value, tvm.ir.GenericConst) or str(value.value.dtype) != "int32" \
            or tuple(value.value.shape) != table.shape:
        return False
    return np.array_equal(value.value.numpy(), table)


@mutator
class _Cubic(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.take" and _is_exp2_table(call.args[0]):
            return relax.op.astype(exp2_cubic(relax.op.astype(call.args[1], "int64")), "int32")
        return call


def has_avx512(target) -> bool:
    """An x86 LLVM target with AVX-512 (64-bit lane multiplies and shifts in vectors)."""
    from tvm.target import codegen

    from .kernel_family import is_x86

    return is_x86(target) and codegen.target_has_features(["avx512f"], target)


@tvm.transform.module_pass(opt_level=0, name="Exp2Cubic")
def exp2_cubic_pass(mod, _ctx):
    """Every lookup in exp2's table of cubic values becomes the cubic's Horner steps."""
    return mutate_functions(_Cubic(mod), mod)
