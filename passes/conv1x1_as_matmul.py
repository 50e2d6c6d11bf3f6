"""Conv1x1AsMatmul: a pointwise conv on an NCHW tensor is a matrix product (per sample).

    conv2d(x[1, C, H, W], w[O, C, 1, 1]), stride 1, no padding, groups 1
    ==> reshape(matmul(w[O, C], reshape(x, [C, H*W])), [1, O, H, W])
    (batch N > 1: matmul(w[O, C], reshape(x, [N, C, H*W])), the weight broadcast over N)

Exact for integer and float types alike (the same products, summed over C). Lets a target
reuse its matmul schedule (CUDA: __dp4a) for pointwise convolutions: batched ones too, which
the float model calibration runs met as TVM's plain loops (a fingerprint net's crops, batch
9 and 36: 0.25 s each). Does not fire on any other conv (spatial kernels, strides, padding,
groups, a symbolic batch) or a non-constant weight.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _is_pointwise(call: relax.Call) -> bool:
    a = call.attrs
    if not all(isinstance(d, tvm.tirx.IntImm) for d in call.args[0].ty.shape):
        return False  # a symbolic batch (passes/generalize_batch.py)
    x_shape = [int(d) for d in call.args[0].ty.shape]
    w_shape = [int(d) for d in call.args[1].ty.shape]
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.groups == 1
            and w_shape[2:] == [1, 1] and all(int(s) == 1 for s in a.strides)
            and all(int(p) == 0 for p in a.padding) and all(int(d) == 1 for d in a.dilation))


@tvm.transform.module_pass(opt_level=0, name="Conv1x1AsMatmul")
def conv1x1_as_matmul(mod, _ctx):
    """Rewrite every pointwise static-shape conv2d with a constant weight into a matmul."""
    x_p, w_p = wildcard(), is_const()
    conv_p = is_op("relax.nn.conv2d")(x_p, w_p)

    def rewrite(expr, match):
        call = match[conv_p]  # `expr` may be the variable bound to it
        if not _is_pointwise(call):
            return expr
        n, c, h, w = (int(d) for d in call.args[0].ty.shape)
        o = int(call.args[1].ty.shape[0])
        weight = relax.const(match[w_p].value.numpy().reshape(o, c))
        out_dtype = call.attrs.out_dtype or str(call.ty.dtype)
        x = relax.op.reshape(match[x_p], [c, h * w] if n == 1 else [n, c, h * w])
        return relax.op.reshape(relax.op.matmul(weight, x, out_dtype=out_dtype), [n, o, h, w])

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(conv_p, rewrite, func)
    return mod
