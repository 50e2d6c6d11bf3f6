"""FullWidthConvAsChannels: a conv whose kernel spans the whole (unpadded) width of its input is a
1-D conv along the height with the width as channels, written along the width of a height-one image.

    conv2d(x[N, C, H, W], w[O, C, kh, W])  ==>
        reshape(conv2d(reshape(permute(x, [0, 1, 3, 2]), [N, C*W, 1, H]), w'[O, C*W, 1, kh]), [N, O, H', 1])
    with w'[o, c*W + j, 0, k] = w[o, c, k, j]

TensorFlow's conv1d over a feature axis exports this way (musicnn's midend: one channel of 561
features, a 7 x 561 kernel, one output column). Exact (the same products and sums); as a conv over
one wide channel it computed a full row of positions for its single output column (1.3 s where
onnxruntime takes 2 ms), or built patches of the whole input; over C*W channels it is a plain
spatial conv, which the dot-product kernels take.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _static(shape) -> list[int] | None:
    try:
        return [int(d) for d in shape]
    except TypeError:
        return None


@tvm.transform.module_pass(opt_level=0, name="FullWidthConvAsChannels")
def full_width_conv_as_channels(mod, _ctx):
    """Rewrite every constant-weight NCHW conv2d (groups 1) whose kernel covers its input's whole
    width with no width padding (see module doc)."""
    x_p, w_p = wildcard(), is_const()
    conv_p = is_op("relax.nn.conv2d")(x_p, w_p)

    def rewrite(expr, matches):
        call = matches[conv_p]  # `expr` may be the var the conv is bound to (a DataflowVar has no attrs)
        x, w, a = matches[x_p], matches[w_p], call.attrs
        shape = _static(getattr(x.ty, "shape", None) or [])
        if (shape is None or len(shape) != 4 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW"
                or a.out_layout != "NCHW" or int(a.groups) != 1):
            return expr
        n, c, h, width = shape
        weights = w.value.numpy()
        o, _, kh, kw = weights.shape
        pads = [int(p) for p in a.padding]
        if kw != width or width == 1 or pads[1] or pads[3] or int(a.dilation[1]) != 1:
            return expr
        flat = relax.op.reshape(relax.op.permute_dims(x, [0, 1, 3, 2]), [n, c * width, 1, h])
        w_flat = np.ascontiguousarray(weights.transpose(0, 1, 3, 2).reshape(o, c * width, 1, kh))
        conv = relax.op.nn.conv2d(flat, relax.const(w_flat), strides=[1, int(a.strides[0])],
                                  padding=[0, pads[0], 0, pads[2]], dilation=[1, int(a.dilation[0])],
                                  out_dtype=a.out_dtype)
        return relax.op.reshape(conv, call.ty.shape)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(conv_p, rewrite, func)
    return mod
