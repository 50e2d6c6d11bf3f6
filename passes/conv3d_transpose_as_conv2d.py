"""Conv3dTransposeAsConv2d: a 3-D transposed conv (3-D U-Net decoders) is a 2-D transposed conv over
its depth taps stacked as channels, the depth handled as a stride-1 conv over zero-inserted depths.

    conv3d_transpose(x[N, C, D, H, W], w[C, O/g, kd, kh, kw], strides (sd, sh, sw), pads, output
    padding, dilation (dd, dh, dw), groups g)
    ==> z  = x with sd - 1 zero depths between its depths, bordered by dd (kd - 1) - front before and
             dd (kd - 1) - back + opd after (negative: cropped)
        t_i = z[:, :, i dd : i dd + Do]                                i < kd
        s  = stack_i t_i as [N, g, kd, C/g, Do, H, W] -> [N * Do, g * kd * C/g, H, W]
        y  = conv2d_transpose(s, w'[g * kd * C/g, O/g, kh, kw], (sh, sw), (top, left, bottom, right),
                              (oph, opw), (dh, dw), g)  ==> [N, Do, O, Ho, Wo] -> [N, O, Do, Ho, Wo]

w'[(g, i, c), o] = w[g C/g + c, o, kd - 1 - i]: along the depth, a transposed conv is the plain conv
of the zero-inserted input with the flipped kernel (the same products, and zeros that add nothing),
so the integer path's 2-D transposed conv lowering and kernels serve it (`conv_transpose_as_conv.py`).
Fires on NCDHW/IODHW transposed convs with a constant weight and static shapes (bind first).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .call_rewrite import ints, rewrite_calls, static_shape


def _along_depth(x: relax.Expr, lo: int, hi: int, size: int) -> relax.Expr:
    """x [N, C, size, H, W] with `lo` zero depths added before and `hi` after (negative: cropped)."""
    if lo < 0 or hi < 0:
        x = relax.op.strided_slice(x, axes=[2], begin=[max(-lo, 0)], end=[size - max(-hi, 0)])
    if lo > 0 or hi > 0:
        x = relax.op.nn.pad(x, [0, 0, 0, 0, max(lo, 0), max(hi, 0), 0, 0, 0, 0])
    return x


def _as_conv2d_transpose(call: relax.Call, x: relax.Expr, w: relax.Expr) -> relax.Expr | None:
    a = call.attrs
    shape, out = static_shape(x), static_shape(call)
    if a.data_layout != "NCDHW" or a.kernel_layout != "IODHW" or (a.out_layout or "NCDHW") != "NCDHW" \
            or shape is None or out is None:
        return None
    (n, c, d, h, wd), (_, o, do, ho, wo) = shape, out
    weights = w.value.numpy()
    _, og, kd, kh, kw = weights.shape
    g = int(a.groups)
    cg = c // g
    (sd, sh, sw), (dd, dh, dw), (opd, oph, opw) = ints(a.strides), ints(a.dilation), ints(a.output_padding)
    front, top, left, back, bottom, right = ints(a.padding)
    if sd > 1:  # sd - 1 zero depths after each depth, the last ones dropped
        spread = relax.op.nn.pad(relax.op.expand_dims(x, 3), [0, 0, 0, 0, 0, 0, 0, sd - 1, 0, 0, 0, 0])
        x = relax.op.strided_slice(relax.op.reshape(spread, [n, c, d * sd, h, wd]), axes=[2], begin=[0],
                                   end=[(d - 1) * sd + 1])
    size = (d - 1) * sd + 1
    border = dd * (kd - 1)
    x = _along_depth(x, border - front, border - back + opd, size)
    taps = [relax.op.strided_slice(x, axes=[2], begin=[i * dd], end=[i * dd + do]) for i in range(kd)]
    stacked = relax.op.stack([relax.op.reshape(t, [n, g, cg, do, h, wd]) for t in taps], axis=2)  # [N, g, kd, C/g, Do, H, W]
    batch = relax.op.reshape(relax.op.permute_dims(stacked, [0, 4, 1, 2, 3, 5, 6]), [n * do, g * kd * cg, h, wd])
    flipped = weights[:, :, ::-1].reshape(g, cg, og, kd, kh, kw).transpose(0, 3, 1, 2, 4, 5)  # [g, kd, C/g, O/g, ...]
    w2 = relax.const(flipped.reshape(g * kd * cg, og, kh, kw).copy())
    y = relax.op.nn.conv2d_transpose(batch, w2, (sh, sw), (top, left, bottom, right), (oph, opw), (dh, dw), g,
                                     "NCHW", "IOHW", "NCHW", a.out_dtype)
    return relax.op.permute_dims(relax.op.reshape(y, [n, do, o, ho, wo]), [0, 2, 1, 3, 4])


@tvm.transform.module_pass(opt_level=0, name="Conv3dTransposeAsConv2d")
def conv3d_transpose_as_conv2d(mod, _ctx):
    """Rewrite every constant-weight NCDHW conv3d_transpose into a 2-D transposed conv over its depth
    taps (see module doc)."""

    def rewrite(_builder, call):
        x, w = call.args
        new = _as_conv2d_transpose(call, x, w) if isinstance(w, tvm.ir.GenericConst) else None
        return call if new is None else new

    return rewrite_calls(mod, "relax.nn.conv3d_transpose", rewrite)
