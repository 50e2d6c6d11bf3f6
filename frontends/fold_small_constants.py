"""Fold elementwise calls on small constants, and layout calls on any constant, with NumPy,
before TVM's FoldConstant.

    R.where(R.isnan(c_min), R.const(-inf), c_min)   ->   R.const(...)   (c_min a constant)
    R.reshape(bias, R.shape([1, 32, 1, 1]))         ->   R.const(...)

TVM's ONNX importer guards every Clip bound this way and reshapes every conv bias, and
`relax.transform.FoldConstant` folds each such call by compiling a kernel with LLVM (~65 ms):
EfficientNet-Lite0's 66 ReLU6s cost 132 kernel builds, 12 of the import's 13 s, and its 49
bias reshapes 3.3 s more. NumPy folds them in microseconds. Layout calls (reshape,
permute_dims, ...) only move values, so they fold at any size; calls with a non-constant
argument, an op outside the tables, or arithmetic on a constant of more than `MAX_ELEMENTS`
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

# Relax op -> NumPy, given the constant and the call (its static result shape and attrs): exact moves.
_LAYOUT = {
    "relax.reshape": lambda x, call: x.reshape(_shape(call)),
    "relax.expand_dims": lambda x, call: x.reshape(_shape(call)),
    "relax.squeeze": lambda x, call: x.reshape(_shape(call)),
    "relax.flatten": lambda x, call: x.reshape(_shape(call)),
    "relax.permute_dims": lambda x, call: np.transpose(
        x, None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]),
}


def _shape(call) -> tuple[int, ...]:
    return tuple(int(d) for d in call.ty.shape)


def _static(ty) -> bool:
    return isinstance(ty, relax.TensorType) and ty.shape is not None and all(
        isinstance(d, tvm.tirx.IntImm) for d in ty.shape)


@mutator
class _FoldSmallConstants(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name in _LAYOUT and _static(call.ty):
            x = self._constant(call.args[0])
            return call if x is None else relax.const(np.ascontiguousarray(_LAYOUT[name](x, call)), str(call.ty.dtype))
        fn = _NUMPY.get(name)
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
    """Fold the tables' ops on constants (see the module docstring)."""
    mutator_ = _FoldSmallConstants(mod)
    return mutate_functions(mutator_, mod)
