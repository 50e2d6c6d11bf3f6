"""UniqueBindingNames: every binding of `main` gets a name of its own.

    lv1 = relu(lv); lv1 = multiply(lv1, k)   ==>   lv1 = relu(lv); lv1_1 = multiply(lv1, k)

Rewrites that replace one binding by several (`decompose_batchnorm`, `fold_batchnorm`) let
the new bindings inherit the replaced one's name; calibration keys its ranges by name.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _Renamer(PyExprMutator):
    def __init__(self, mod, taken: set[str]):
        super().__init__(mod)
        self.taken = taken

    def _fresh(self, var):
        name, k = var.name, 1
        while name in self.taken:
            name, k = f"{var.name}_{k}", k + 1
        self.taken.add(name)
        return name

    def visit_var_def_(self, var):
        name = self._fresh(var)
        return var if name == var.name else relax.Var(name, var.ty)

    def visit_dataflow_var_def_(self, var):
        name = self._fresh(var)
        return var if name == var.name else relax.DataflowVar(name, var.ty)


@tvm.transform.module_pass(opt_level=0, name="UniqueBindingNames")
def unique_binding_names(mod, _ctx):
    """Rename repeated binding names of every Relax function (parameters keep theirs)."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            renamer = _Renamer(mod, set())  # parameters are defined first and keep their names
            func = renamer.visit_expr(func)
            mod[gv] = func
    return mod
