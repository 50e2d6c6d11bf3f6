"""Run a `PyExprMutator` over every Relax function of a module (the shared loop of the
project's mutator-based passes)."""

from __future__ import annotations

import tvm
from tvm import relax


def mutate_functions(mutator, mod: tvm.IRModule) -> tvm.IRModule:
    """`mutator` (built on `mod`) applied to each Relax function of `mod`; returns the mutator's
    module, PrimFuncs untouched."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
