"""UseVnniKernels: int8 matmuls and pointwise convs with constant weights -> VNNI kernels.

Runs on the integer Relax module before legalization, for LLVM targets with AVX512-VNNI.

    matmul(x[..., K], W[K, N]) -> vnni_dense(x_u8, pack(W^T))                       lanes over N
    conv2d(x[1, C, H, W], W[O, C, 1, 1])
        -> vnni_conv_lanes_pixels(repack(x_u8)[C/4, H*W, 4], W[O, C])           big images
        -> vnni_conv_lanes_out(transpose(x_u8)[H*W, C], pack(W))                small images

`vpdpbusd` multiplies unsigned by signed bytes. An int8 activation is shifted into uint8
(x + 128) and the shift is taken back exactly with a constant per output channel:
sum_k (x_k + 128) w_k - 128 sum_k w_k = sum_k x_k w_k. Shapes without a fitting tile
(K or C not a multiple of 4, no 16-lane tile, batch > 1) keep the generic lowering, and so
does any call it cannot read (tuple results, non-tensor arguments: never an error).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from . import vnni

_INT8 = ("int8", "uint8")


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


@mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        # tuples (split, float fallbacks), non-tensor args and unknown shapes keep the generic lowering
        if (not isinstance(call.op, tvm.ir.Op) or not isinstance(call.ty, relax.TensorType)
                or str(call.ty.dtype) != "int32" or len(call.args) != 2
                or not all(isinstance(a.ty, relax.TensorType) for a in call.args)):
            return call
        rewrite = {"relax.matmul": self._matmul, "relax.nn.conv2d": self._conv}.get(call.op.name)
        new = rewrite(call) if rewrite else None
        return call if new is None else new

    def _unsigned(self, x: relax.Expr) -> relax.Expr:
        if str(x.ty.dtype) == "uint8":
            return x
        shifted = relax.op.add(relax.op.astype(x, "int16"), relax.const(128, "int16"))
        return self.builder_.emit(relax.op.astype(shifted, "uint8"))

    def _kernel(self, compute, x: relax.Expr, activations: relax.Expr, weights: np.ndarray, w_sum: np.ndarray,
                *shape_args) -> relax.Expr:
        """call_te of `compute`, with the +128 correction for int8 activations."""
        args = [self.builder_.emit(activations), relax.const(weights), *shape_args]
        if str(x.ty.dtype) != "uint8":
            args.append(relax.const((128 * w_sum).astype("int32")))
        return self.builder_.call_te(compute, *args, primfunc_name_hint=compute.__name__.removesuffix("_te"))

    def _matmul(self, call: relax.Call):
        x, w = call.args
        w_np, x_shape = _const(w), _shape(x)
        if w_np is None or x_shape is None or len(x_shape) < 2 or w_np.ndim != 2 or str(x.ty.dtype) not in _INT8:
            return None
        k, n = w_np.shape
        if w_np.dtype != np.int8 or k % 4 or n % vnni.LANES or vnni.dense_tile(x_shape[-2], n) is None:
            return None
        return self._kernel(vnni.dense_te, x, self._unsigned(x), vnni.pack_weights(w_np.T),
                            w_np.astype(np.int64).sum(0))

    def _conv(self, call: relax.Call):
        x, w = call.args
        w_np, x_shape, a = _const(w), _shape(x), call.attrs
        if (w_np is None or x_shape is None or str(x.ty.dtype) not in _INT8 or w_np.dtype != np.int8
                or a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or int(a.groups) != 1
                or list(w_np.shape[2:]) != [1, 1] or any(int(s) != 1 for s in a.strides)
                or any(int(p) != 0 for p in a.padding) or any(int(d) != 1 for d in a.dilation)):
            return None
        n, c, h, wd = x_shape
        o = w_np.shape[0]
        if n != 1 or c % 4:
            return None
        w2 = w_np.reshape(o, c)
        w_sum = w2.astype(np.int64).sum(1)
        if vnni.conv_tile(vnni.CONV_LANES_PIXELS, o, h, wd) is not None:
            xp = relax.op.permute_dims(relax.op.reshape(self._unsigned(x), [c // 4, 4, h * wd]), [0, 2, 1])
            return self._kernel(vnni.conv_lanes_pixels_te, x, xp, w2, w_sum, h, wd)
        if o % vnni.LANES == 0 and vnni.conv_tile(vnni.CONV_LANES_OUT, o, h, wd) is not None:
            xt = relax.op.permute_dims(relax.op.reshape(self._unsigned(x), [c, h * wd]), [1, 0])
            return self._kernel(vnni.conv_lanes_out_te, x, xt, vnni.pack_weights(w2), w_sum, h, wd)
        return None


@tvm.transform.module_pass(opt_level=0, name="UseVnniKernels")
def use_vnni_kernels(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every eligible int8 matmul/pointwise conv of `mod` into a VNNI kernel call."""
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
