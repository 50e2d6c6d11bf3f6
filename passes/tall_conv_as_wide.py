"""TallConvAsWide: a 1-D conv or pool written along the height of a width-one image (CREPE, TCNs
exported as Conv2d with (k, 1) kernels) runs along the width of a height-one image instead.

    conv2d(x[N, C, H, 1], w[O, I, k, 1])  ==>  reshape(conv2d(x[N, C, 1, H], w[O, I, 1, k]), [N, O, H', 1])
    max/avg_pool2d(x[N, C, H, 1], (k, 1)) ==>  reshape(pool2d(x[N, C, 1, H], (1, k)), [N, C, H', 1])

Exact (a reshape moves no data when a dim is one; the same products and sums), and the rows are
where the conv and pool kernels vectorize and tile: a (64, 1) int8 conv over 128 x 1 ran 2000x
slower than the same conv written as (1, 64) over 1 x 128 (629 ms against 0.29 ms).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

_POOLS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d, "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}


def _tall(x, kernel_w: int, pad_w) -> bool:
    """Is `x` an NCHW tensor of static width one, read by a window of width one with no width padding?"""
    shape = getattr(x.ty, "shape", None)
    return (shape is not None and len(shape) == 4 and isinstance(shape[3], tvm.tirx.IntImm) and int(shape[3]) == 1
            and kernel_w == 1 and all(int(p) == 0 for p in pad_w))


def _wide(x):
    n, c, h, _ = x.ty.shape
    return relax.op.reshape(x, [n, c, 1, h])


@tvm.transform.module_pass(opt_level=0, name="TallConvAsWide")
def tall_conv_as_wide(mod, _ctx):
    """Rewrite every constant-weight NCHW conv2d and every NCHW max/avg pool2d that runs along the
    height of a width-one tensor into its height-one form."""
    x_p, w_p = wildcard(), is_const()
    conv_p = is_op("relax.nn.conv2d")(x_p, w_p)
    pool_p = is_op("relax.nn.max_pool2d")(x_p) | is_op("relax.nn.avg_pool2d")(x_p)

    def conv(expr, match):
        call = match[conv_p]
        a, x, w = call.attrs, match[x_p], match[w_p]
        if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or (a.out_layout or "NCHW") != "NCHW":
            return expr
        o, i, kh, kw = (int(d) for d in w.ty.shape)
        top, _, bottom, _ = (int(p) for p in a.padding)
        if not _tall(x, kw, (a.padding[1], a.padding[3])) or kh == 1:
            return expr
        weight = relax.const(w.value.numpy().reshape(o, i, 1, kh))
        out = relax.op.nn.conv2d(_wide(x), weight, (1, int(a.strides[0])), (0, top, 0, bottom),
                                 (1, int(a.dilation[0])), int(a.groups), "NCHW", "OIHW", "NCHW", a.out_dtype)
        return relax.op.reshape(out, call.ty.shape)

    def pool(expr, match):
        call = match[pool_p]
        a, x = call.attrs, match[x_p]
        if a.layout != "NCHW" or (a.out_layout or "NCHW") != "NCHW":
            return expr
        kh, kw = (int(k) for k in a.pool_size)
        top, _, bottom, _ = (int(p) for p in a.padding)
        if not _tall(x, kw, (a.padding[1], a.padding[3])) or kh == 1:
            return expr
        out = _POOLS[call.op.name](_wide(x), (1, kh), (1, int(a.strides[0])), (0, top, 0, bottom),
                                   (1, int(a.dilation[0])), bool(a.ceil_mode), bool(a.count_include_pad), "NCHW")
        return relax.op.reshape(out, call.ty.shape)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pool_p, pool, rewrite_call(conv_p, conv, func))
    return mod
