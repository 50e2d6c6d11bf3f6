"""Undo importer artefacts so that later passes see plain Relax ops.

`call_tir(maximum, (x, c))` -> `R.maximum(x, c)` (and `minimum`), where `c` is a scalar:
TVM's ONNX importer lowers Clip through `emit_te(topi.maximum/minimum)`, which hides the
clamp from pattern-based passes. Other `call_tir`s are left alone.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_rewrite import mutate_functions

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_TOPI_CLAMP = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}


@mutator
class _ClipCallsToOps(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != _CALL_TIR or not isinstance(call.args[0], tvm.ir.GlobalVar):
            return call
        match = re.fullmatch(r"(maximum|minimum)\d*", call.args[0].name_hint)
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        if match is None or len(args) != 2 or len(args[1].ty.shape) != 0:
            return call
        return _TOPI_CLAMP[match.group(1)](args[0], args[1])


@tvm.transform.module_pass(opt_level=0, name="ClipCallsToOps")
def clip_calls_to_ops(mod, _ctx):
    """Rewrite the importer's clamp `call_tir`s into `R.maximum` / `R.minimum`."""
    mutator_ = _ClipCallsToOps(mod)
    return mutate_functions(mutator_, mod)
