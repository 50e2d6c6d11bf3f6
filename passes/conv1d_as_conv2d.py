"""Conv1dAsConv2d: a 1-D conv (audio front ends, TCNs) is a 2-D conv over a height of one, and a
1-D transposed conv (vocoders, audio decoders) a 2-D transposed one.

    conv1d(x[N, C, L], w[O, C/g, K])  ==>  reshape(conv2d(x[N, C, 1, L], w[O, C/g, 1, K]), [N, O, L'])
    conv1d_transpose(x, w[C, O/g, K]) ==>  reshape(conv2d_transpose(x[N, C, 1, L], w[C, O/g, 1, K]), ...)

Exact (the same products and sums), so the integer path's conv2d lowering, kernels and
schedules serve conv1d too. Fires on NCW/OIW convs with a constant weight (bind first).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="Conv1dAsConv2d")
def conv1d_as_conv2d(mod, _ctx):
    """Rewrite every constant-weight NCW conv1d (and conv1d_transpose) into its 2-D form of height one."""
    x_p, w_p = wildcard(), is_const()
    conv_p = is_op("relax.nn.conv1d")(x_p, w_p)

    def rewrite(expr, match):
        call = match[conv_p]  # `expr` may be the variable bound to it
        a, x, w = call.attrs, match[x_p], match[w_p]
        if a.data_layout != "NCW" or a.kernel_layout != "OIW" or x.ty.shape is None:
            return expr
        n, c, length = x.ty.shape
        o, ci, k = (int(d) for d in w.ty.shape)
        (left, right), stride, dilation = a.padding, int(a.strides[0]), int(a.dilation[0])
        weight = relax.const(w.value.numpy().reshape(o, ci, 1, k))
        conv = relax.op.nn.conv2d(relax.op.reshape(x, [n, c, 1, length]), weight, (1, stride), (0, left, 0, right),
                                  (1, dilation), int(a.groups), "NCHW", "OIHW", "NCHW", a.out_dtype)
        return relax.op.reshape(conv, call.ty.shape)

    t_p = is_op("relax.nn.conv1d_transpose")(x_p, w_p)

    def rewrite_transpose(expr, match):
        call = match[t_p]
        a, x, w = call.attrs, match[x_p], match[w_p]
        if a.data_layout != "NCW" or a.kernel_layout != "IOW" or x.ty.shape is None:
            return expr
        n, c, length = x.ty.shape
        i, o, k = (int(d) for d in w.ty.shape)
        (left, right) = (int(p) for p in a.padding)
        weight = relax.const(w.value.numpy().reshape(i, o, 1, k))
        conv = relax.op.nn.conv2d_transpose(relax.op.reshape(x, [n, c, 1, length]), weight, (1, int(a.strides[0])),
                                            (0, left, 0, right), (0, int(a.output_padding[0])),
                                            (1, int(a.dilation[0])), int(a.groups), "NCHW", "IOHW", "NCHW", a.out_dtype)
        return relax.op.reshape(conv, call.ty.shape)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(t_p, rewrite_transpose, rewrite_call(conv_p, rewrite, func))
    return mod
