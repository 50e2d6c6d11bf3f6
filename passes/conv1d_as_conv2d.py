"""Conv1dAsConv2d: a 1-D conv (audio front ends, TCNs) is a 2-D conv over a height of one.

    conv1d(x[N, C, L], w[O, C/g, K])  ==>  reshape(conv2d(x[N, C, 1, L], w[O, C/g, 1, K]), [N, O, L'])

Exact (the same products and sums), so the integer path's conv2d lowering, kernels and
schedules serve conv1d too. Fires on NCW/OIW convs with a constant weight (bind first).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="Conv1dAsConv2d")
def conv1d_as_conv2d(mod, _ctx):
    """Rewrite every constant-weight NCW conv1d into a conv2d of height one."""
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

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(conv_p, rewrite, func)
    return mod
