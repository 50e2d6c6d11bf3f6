"""rewrite_calls: replace every call of one Relax op in a module, the shared body of the
rewrites that turn one op into others (`conv_as_pointwise.py`, `targets/depthwise.py`, ...)."""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


def rewrite_calls(mod: tvm.IRModule, op_name: str,
                  rewrite: Callable[[relax.BlockBuilder, relax.Call], relax.Expr]) -> tvm.IRModule:
    """`mod` with every call of `op_name` (arguments rewritten first) replaced by
    `rewrite(builder, call)`, which returns the call itself to keep it."""

    @mutator
    class _Rewriter(PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == op_name:
                return rewrite(self.builder_, call)
            return call

    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def rewrite_functions(mod: tvm.IRModule, rewrite: Callable[[relax.Function], relax.Function]) -> tvm.IRModule:
    """`mod` with each Relax function that has a body of blocks replaced by `rewrite(function)`: the
    body of the passes that rewrite a function's bindings as a whole."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            mod[gv] = rewrite(func)
    return mod


def is_op(value, name: str) -> bool:
    """Whether `value` is a call of the Relax op `name` ("relax.concat")."""
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def static_shape(expr) -> tuple[int, ...] | None:
    """`expr`'s shape as ints, or None where it is unknown or has a symbolic dim."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def ints(values) -> tuple[int, ...]:
    """An attribute's array (strides, padding, dilation, ...) as ints."""
    return tuple(int(v) for v in values)


def static_dims(shape) -> bool:
    """A rank-4 shape whose dims past the first (a batch, maybe symbolic) are known integers."""
    return shape is not None and len(shape) == 4 and all(isinstance(d, tvm.tirx.IntImm) for d in list(shape)[1:])


def integer_conv(call: relax.Call, kernel_layout: str = "OIHW", dtypes: tuple[str, ...] = ("int8", "uint8")):
    """(x, weights as NumPy, attrs) of an NCHW conv of `dtypes` (or transposed conv: kernel layout
    IOHW) with int32 output, a constant weight and static dims past the batch; None otherwise."""
    if len(call.args) != 2:
        return None
    x, w = call.args
    a = call.attrs
    if (not isinstance(w, tvm.ir.GenericConst) or not static_dims(getattr(x.ty, "shape", None))
            or str(x.ty.dtype) not in dtypes or str(call.ty.dtype) != "int32"
            or a.data_layout != "NCHW" or a.kernel_layout != kernel_layout or a.out_layout != "NCHW"):
        return None
    return x, w.value.numpy(), a
