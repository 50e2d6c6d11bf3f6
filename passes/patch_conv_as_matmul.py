"""PatchConvAsMatmul: a conv whose stride equals its kernel (a ViT's patch embedding) is a
matrix product over non-overlapping patches.

    conv2d(x[1, C, H, W], w[O, C, k, k]), stride k, no padding, groups 1
    ==> patches = reshape(permute(reshape(x, [C, H/k, k, W/k, k]), [1, 3, 0, 2, 4]), [P, C*k*k])
        reshape(permute(matmul(patches, w[O, C*k*k]^T), [1, 0]), [1, O, H/k, W/k])

Exact for integer and float types alike (the same products, summed in another order). Lets a
target use its matmul kernels (VNNI) for the patch embedding instead of a 14x14-window conv.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _is_patchify(call: relax.Call) -> bool:
    a = call.attrs
    if not all(isinstance(d, tvm.tirx.IntImm) for d in call.args[0].ty.shape):
        return False  # a symbolic batch (passes/generalize_batch.py)
    x_shape = [int(d) for d in call.args[0].ty.shape]
    o, c, kh, kw = (int(d) for d in call.args[1].ty.shape)
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and int(a.groups) == 1 and x_shape[0] == 1
            and kh == kw > 1 and [int(s) for s in a.strides] == [kh, kw]
            and all(int(p) == 0 for p in a.padding) and all(int(d) == 1 for d in a.dilation)
            and x_shape[2] % kh == 0 and x_shape[3] % kw == 0)


@tvm.transform.module_pass(opt_level=0, name="PatchConvAsMatmul")
def patch_conv_as_matmul(mod, _ctx):
    """Rewrite every batch-1 conv2d with stride == kernel and a constant weight into a matmul."""
    x_p, w_p = wildcard(), is_const()
    conv_p = is_op("relax.nn.conv2d")(x_p, w_p)

    def rewrite(call, match):
        # rewrite_call may hand over a bound variable (seen with a conv whose result is a graph output)
        if not isinstance(call, relax.Call) or not _is_patchify(call):
            return call
        _, c, h, w = (int(d) for d in call.args[0].ty.shape)
        o, _, k, _ = (int(d) for d in call.args[1].ty.shape)
        rows, cols = h // k, w // k
        x = relax.op.reshape(match[x_p], [c, rows, k, cols, k])
        patches = relax.op.reshape(relax.op.permute_dims(x, [1, 3, 0, 2, 4]), [rows * cols, c * k * k])
        weight = relax.const(match[w_p].value.numpy().reshape(o, c * k * k).T.copy())
        out_dtype = call.attrs.out_dtype or str(call.ty.dtype)
        prod = relax.op.matmul(patches, weight, out_dtype=out_dtype)
        return relax.op.reshape(relax.op.permute_dims(prod, [1, 0]), [1, o, rows, cols])

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(conv_p, rewrite, func)
    return mod
