"""Each pass of an integer linear resize as a kernel of its own.

    w0 * take(y, i0, axis) + w1 * take(y, i1, axis)   ->   call_tir(resize_taps, y)     (opaque)

`passes/lowering/resize.py` writes a linear resize as one such sum per resized axis (constant
indices and fixed-point weights). FuseOps fused both passes with their consumers: a requantization,
a skip connection's add and the repack before a pointwise conv, a kernel whose layout-changing
schedule recomputed all four taps of every output at gathered indices, or which, where its values
are read twice, ran every step over the whole tensor (a selfie segmenter's x2 upsample to 128x128:
0.9 ms, onnxruntime's whole decoder block 0.55). As kernels of their own, each pass is computed
once, its rows vectorized, and the consumers fuse as usual (0.12 ms for both passes there). The
integers are the same (int32 products and sums, each element read at the same indices).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from tvm.relax.expr_functor import PyExprMutator, mutator

from frontends.relax_rewrite import drop_unused_bindings, mutate_functions

OPAQUE = 8  # FuseOps' kOpaque: AnnotateTIROpPattern keeps an op_pattern it finds


def taps_te(x: te.Tensor, i0: te.Tensor, i1: te.Tensor, w0: te.Tensor, w1: te.Tensor, axis: int) -> te.Tensor:
    """out[..., k, ...] = int32(x[..., i0[k], ...]) * w0[k] + int32(x[..., i1[k], ...]) * w1[k] along `axis`."""
    shape = list(x.shape)
    shape[axis] = i0.shape[0]

    def tap(idx, index):
        return x[tuple(idx[index[axis]] if d == axis else v for d, v in enumerate(index))].astype("int32")

    return te.compute(shape, lambda *index: tap(i0, index) * w0[index[axis]] + tap(i1, index) * w1[index[axis]],
                      name="resize_taps")


def _is(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == f"relax.{name}"


def _vector(expr, axis: int, rank: int) -> np.ndarray | None:
    """The 1-D values of a constant that varies along `axis` only (shape 1 elsewhere), else None."""
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    value = expr.value.numpy()
    if value.ndim == 1 and rank == 1:
        return value
    if value.ndim != rank or any(d != 1 for k, d in enumerate(value.shape) if k != axis):
        return None
    return value.reshape(-1)


@mutator
class _Taps(PyExprMutator):
    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

    def _tap(self, expr):
        """(source, indices, axis, weights) of multiply(take(source, const, axis), const), or None."""
        mul = self._bound(expr)
        if not _is(mul, "multiply"):
            return None
        take = self._bound(mul.args[0])
        if not (_is(take, "take") and isinstance(take.args[1], tvm.ir.GenericConst)
                and str(take.ty.dtype) == "int32" and take.attrs.axis is not None):
            return None
        rank = len(take.ty.shape)
        axis = int(take.attrs.axis) % rank
        weights = _vector(mul.args[1], axis, rank)
        indices = take.args[1].value.numpy()
        if weights is None or indices.ndim != 1 or weights.shape != indices.shape or str(weights.dtype) != "int32":
            return None
        return take.args[0], indices, axis, weights

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not _is(call, "add") or str(call.ty.dtype) != "int32":
            return call
        a, b = self._tap(call.args[0]), self._tap(call.args[1])
        if a is None or b is None or not a[0].same_as(b[0]) or a[2] != b[2]:
            return call
        source, axis = a[0], a[2]
        shape = getattr(source.ty, "shape", None)
        if shape is None or not isinstance(shape[axis], tvm.tirx.IntImm) \
                or max(a[1].max(), b[1].max()) >= int(shape[axis]) or min(a[1].min(), b[1].min()) < 0:
            return call  # an index the take would clip: not what the lowering writes
        cast = self._bound(source)
        if _is(cast, "astype") and str(cast.args[0].ty.dtype) in ("int8", "uint8", "int16", "uint16"):
            source = cast.args[0]  # the widening inside the kernel, not a copy of its own
        consts = [relax.const(v.astype("int32"), "int32") for v in (a[1], b[1], a[3], b[3])]
        return self.builder_.call_te(taps_te, source, *consts, axis, primfunc_name_hint="resize_taps",
                                     primfunc_attrs={"op_pattern": OPAQUE})


@tvm.transform.module_pass(opt_level=0, name="ResizeTaps")
def resize_taps(mod, _ctx):
    """Every two-tap constant gather-and-weigh sum along one axis (a linear resize's pass) becomes an
    opaque kernel of its own (see module doc)."""
    return drop_unused_bindings(mutate_functions(_Taps(mod), mod))
