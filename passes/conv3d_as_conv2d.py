"""Conv3dAsConv2d: a 3-D conv (video, volumes, watermark encoders over frames) is a 2-D conv over
its depth taps stacked as channels, with the output depths as a batch.

    conv3d(x[N, C, D, H, W], w[O, C/g, kd, kh, kw]), strides (sd, sh, sw), pads, dilation, groups g
    ==> xp = pad x along D (front, back)
        t_i = xp[:, :, i*dd :: sd][:, :, :Do]                       i < kd: the depth tap i of every output depth
        s  = stack_i t_i as [N, g, kd, C/g, Do, H, W] -> [N * Do, g * kd * C/g, H, W]
        y  = conv2d(s, w'[O, kd * C/g, kh, kw], (sh, sw), (top, left, bottom, right), (dh, dw), g)
        ==> [N, Do, O, Ho, Wo] -> [N, O, Do, Ho, Wo]

w'[o, i * C/g + c] = w[o, c, i]: the same products and sums, so the integer path's conv2d lowering,
kernels and schedules serve conv3d exactly. Fires on NCDHW/OIDHW convs with a constant weight and a
static input shape (bind first).

A conv along depth only (kernel kd x 1 x 1, stride and dilation 1 in H and W, no H/W pads: the
temporal half of a separable video conv) needs no taps: it is a 2-D conv over [N, C, D, H*W] with a
kd x 1 kernel, both reshapes free. Its taps had been sliced, requantized and stacked by a glue kernel
9x the conv's own time (TransNetV2's dilated 3 x 1 x 1 convs over 100 frames; hunt 16 F1).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .call_rewrite import ints, static_shape


def _as_conv2d(call: relax.Call, x: relax.Expr, w: relax.Expr) -> relax.Expr | None:
    a = call.attrs
    shape = static_shape(x)
    if a.data_layout != "NCDHW" or a.kernel_layout != "OIDHW" or a.out_layout != "NCDHW" or shape is None:
        return None
    n, c, d, h, wd = shape
    weights = w.value.numpy()
    o, cg, kd, kh, kw = weights.shape
    g = int(a.groups)
    (sd, sh, sw), (dd, dh, dw) = ints(a.strides), ints(a.dilation)
    front, top, left, back, bottom, right = ints(a.padding)
    do = (d + front + back - dd * (kd - 1) - 1) // sd + 1
    if kh == kw == sh == sw == dh == dw == 1 and not (top or left or bottom or right):  # along depth only
        return _along_depth(x, weights, (n, c, d, h * wd), (sd, dd, front, back), g, a.out_dtype, (o, do, h, wd))
    if front or back:
        x = relax.op.nn.pad(x, [0, 0, 0, 0, front, back, 0, 0, 0, 0])
    taps = [relax.op.strided_slice(x, axes=[2], begin=[i * dd], end=[i * dd + (do - 1) * sd + 1], strides=[sd])
            for i in range(kd)]
    stacked = relax.op.stack([relax.op.reshape(t, [n, g, cg, do, h, wd]) for t in taps], axis=2)  # [N, g, kd, C/g, Do, H, W]
    batch = relax.op.reshape(relax.op.permute_dims(stacked, [0, 4, 1, 2, 3, 5, 6]), [n * do, g * kd * cg, h, wd])
    w2 = relax.const(weights.transpose(0, 2, 1, 3, 4).reshape(o, kd * cg, kh, kw))
    y = relax.op.nn.conv2d(batch, w2, (sh, sw), (top, left, bottom, right), (dh, dw), g, "NCHW", "OIHW", "NCHW",
                           a.out_dtype)
    ho, wo = int(call.ty.shape[3]), int(call.ty.shape[4])
    return relax.op.permute_dims(relax.op.reshape(y, [n, do, o, ho, wo]), [0, 2, 1, 3, 4])


def _along_depth(x, weights, shape, depth, g: int, out_dtype, out) -> relax.Expr:
    """A kd x 1 x 1 conv as a 2-D conv over [N, C, D, H*W]. Dilated with pads that are multiples of
    the dilation (stride 1): depth d = q * dd + r reads only depths of its own phase r, so over
    [N, C, D/dd, dd*H*W] (D zero-padded to a multiple of dd, sliced back) it is an undilated kd x 1
    conv with pads / dd: the taps kernel takes it, where a dilated conv gathered its patches first
    (25 of 33 ms)."""
    n, c, d, hw = shape
    sd, dd, front, back = depth
    o, do, h, wd = out
    w = relax.const(weights.reshape(weights.shape[0], weights.shape[1], weights.shape[2], 1))
    conv = lambda t, stride, pads, dilation: relax.op.nn.conv2d(  # noqa: E731
        t, w, (stride, 1), (pads[0], 0, pads[1], 0), (dilation, 1), g, "NCHW", "OIHW", "NCHW", out_dtype)
    if dd == 1 or sd != 1 or front % dd or back % dd:
        return relax.op.reshape(conv(relax.op.reshape(x, [n, c, d, hw]), sd, (front, back), dd), [n, o, do, h, wd])
    whole = -(-d // dd) * dd
    if whole != d:
        x = relax.op.nn.pad(x, [0, 0, 0, 0, 0, whole - d, 0, 0, 0, 0])
    y = conv(relax.op.reshape(x, [n, c, whole // dd, dd * hw]), 1, (front // dd, back // dd), 1)
    length = whole + do - d  # the pads' zero depths of phase r stay in phase r: the first `do` are the conv's
    y = relax.op.reshape(y, [n, o, length, h, wd])
    return y if length == do else relax.op.strided_slice(y, axes=[2], begin=[0], end=[do])


@tvm.transform.module_pass(opt_level=0, name="Conv3dAsConv2d")
def conv3d_as_conv2d(mod, _ctx):
    """Rewrite every constant-weight NCDHW conv3d into a 2-D conv over its depth taps (see module doc)."""
    x_p, w_p = wildcard(), is_const()
    conv_p = is_op("relax.nn.conv3d")(x_p, w_p)

    def rewrite(expr, match):
        new = _as_conv2d(match[conv_p], match[x_p], match[w_p])
        return expr if new is None else new

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(conv_p, rewrite, func)
    return mod
