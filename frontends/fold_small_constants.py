"""Fold elementwise calls on small constants with NumPy, before TVM's FoldConstant.

    R.where(R.isnan(c_min), R.const(-inf), c_min)   ->   R.const(...)   (c_min a constant)

TVM's ONNX importer guards every Clip bound this way, and `relax.transform.FoldConstant`
folds each such call by compiling a kernel with LLVM: EfficientNet-Lite0's 66 ReLU6s cost
132 kernel builds, 12 of the import's 13 s. NumPy folds them in microseconds. Calls with a
non-constant argument, an op outside the table, or a constant of more than `MAX_ELEMENTS`
are left to FoldConstant.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_rewrite import mutate_functions

MAX_ELEMENTS = 1024

# Relax op -> its NumPy twin (elementwise, broadcasting, result dtype as TVM's).
_NUMPY = {
    "relax.isnan": np.isnan, "relax.isinf": np.isinf, "relax.where": np.where,
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
    "relax.maximum": np.maximum, "relax.minimum": np.minimum, "relax.negative": np.negative,
    "relax.logical_not": np.logical_not, "relax.equal": np.equal, "relax.less": np.less,
    "relax.greater": np.greater,
    "relax.astype": lambda x: x,  # the cast itself is the `.astype(dtype)` below (Gather's int32 dim size)
}


@mutator
class _FoldSmallConstants(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        fn = _NUMPY.get(call.op.name) if isinstance(call.op, tvm.ir.Op) else None
        ty = call.ty
        if fn is None or not isinstance(ty, relax.TensorType):
            return call
        args = [self._constant(a) for a in call.args]
        if any(a is None or a.size > MAX_ELEMENTS for a in args):
            return call
        return relax.const(np.asarray(fn(*args)).astype(str(ty.dtype)), str(ty.dtype))

    def _constant(self, expr) -> np.ndarray | None:
        """The value of a constant, or of a variable bound to one (folded earlier)."""
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


@tvm.transform.module_pass(opt_level=0, name="FoldSmallConstants")
def fold_small_constants(mod, _ctx):
    """Fold the table's elementwise ops on small constants (see the module docstring)."""
    mutator_ = _FoldSmallConstants(mod)
    return mutate_functions(mutator_, mod)
