"""ConvTransposeAsConv: an integer transposed conv is a stride-1 conv over its input with zeros
inserted between the pixels (stride - 1 of them) and a border of (kernel - 1) * dilation - pads:

    conv2d_transpose(x[N, C, H, W], w[C, O/g, kh, kw], stride s, pads, output_padding, dilation d, groups g)
    ==> z[n, c, Y, X] = x[n, c, (Y - t) / s, (X - l) / s] where both divide exactly and land inside, else 0
        conv2d(z, w'[O, C/g, kh, kw], stride 1, dilation d, groups g),  w' the kernel flipped, in and out swapped

with t = d * (kh - 1) - top (negative: rows cropped) and z of height (H_out + d * (kh - 1)). The zeros
add nothing: the int32 sums are bit-identical, at s^2 times the multiplications. A transposed conv
has no kernel of its own on CPU targets (TVM's default loops), while the conv that replaces it runs
on the dot-product or depthwise kernels (`targets/vnni.py`, `targets/depthwise.py`) or as a
pointwise conv over its patches (`conv_as_pointwise.py`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator


def zero_inserted_te(x: te.Tensor, stride: tuple[int, int], offset: tuple[int, int], size: tuple[int, int]) -> te.Tensor:
    """[N, C, *size]: x's pixel (y, x) at (offset + s * y), zeros elsewhere."""
    n, c, h, w = x.shape
    (sh, sw), (t, l) = stride, offset

    def at(b, ch, yy, xx):
        y, xq = yy - t, xx - l
        inside = tirx.all(y >= 0, xq >= 0, y % sh == 0, xq % sw == 0, y // sh < h, xq // sw < w)
        return tirx.if_then_else(inside, x[b, ch, tirx.min(y // sh, h - 1), tirx.min(xq // sw, w - 1)],
                                 tirx.const(0, x.dtype))

    return te.compute((n, c, *size), at, name="zero_inserted")


@mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d_transpose" or len(call.args) != 2:
            return call
        x, w = call.args
        a = call.attrs
        shape = getattr(x.ty, "shape", None)
        if (not isinstance(w, tvm.ir.GenericConst) or shape is None or len(shape) != 4
                or not all(isinstance(d, tvm.tirx.IntImm) for d in list(shape)[1:])
                or str(x.ty.dtype) not in ("int8", "uint8") or str(call.ty.dtype) != "int32"
                or a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or a.out_layout != "NCHW"
                or not all(isinstance(d, tvm.tirx.IntImm) for d in list(call.ty.shape)[1:])):
            return call
        weights, groups = w.value.numpy(), int(a.groups)
        c_in, o_g, kh, kw = weights.shape
        top, left = int(a.padding[0]), int(a.padding[1])
        (dh, dw), (ho, wo) = (int(v) for v in a.dilation), (int(call.ty.shape[2]), int(call.ty.shape[3]))
        # [g, I/g, O/g, kh, kw] -> [g, O/g, I/g, kh, kw], flipped
        flipped = weights.reshape(groups, c_in // groups, o_g, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        conv_w = np.ascontiguousarray(flipped.reshape(groups * o_g, c_in // groups, kh, kw))
        z = self.builder_.call_te(zero_inserted_te, x, tuple(int(s) for s in a.strides),
                                  (dh * (kh - 1) - top, dw * (kw - 1) - left), (ho + dh * (kh - 1), wo + dw * (kw - 1)),
                                  primfunc_name_hint="zero_inserted")
        return relax.op.nn.conv2d(z, relax.const(conv_w), strides=1, padding=0, dilation=(dh, dw), groups=groups,
                                  out_dtype="int32")


@tvm.transform.module_pass(opt_level=0, name="ConvTransposeAsConv")
def conv_transpose_as_conv(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every integer NCHW conv2d_transpose with constant weights (see module doc)."""
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
