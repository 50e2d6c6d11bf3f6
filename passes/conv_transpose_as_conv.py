"""ConvTransposeAsConv: an integer transposed conv as stride-1 convs.

With dilation 1, each output phase (the pixels y = p (mod stride)) is a stride-1 conv of the input
with every stride-th tap of the flipped kernel; the s^2 phase outputs are interleaved. Otherwise
it is one conv over the input with zeros inserted between the pixels (stride - 1 of them) and a
border of (kernel - 1) * dilation - pads:

    conv2d_transpose(x[N, C, H, W], w[C, O/g, kh, kw], stride s, pads, output_padding, dilation d, groups g)
    ==> z[n, c, Y, X] = x[n, c, (Y - t) / s, (X - l) / s] where both divide exactly and land inside, else 0
        conv2d(z, w'[O, C/g, kh, kw], stride 1, dilation d, groups g),  w' the kernel flipped, in and out swapped

with t = d * (kh - 1) - top (negative: rows cropped) and z of height (H_out + d * (kh - 1)). The zeros
add nothing: the int32 sums are bit-identical (at s^2 times the multiplications, which the phases
avoid). A transposed conv
has no kernel of its own on CPU targets (TVM's default loops), while the conv that replaces it runs
on the dot-product or depthwise kernels (`targets/vnni.py`, `targets/depthwise.py`) or as a
pointwise conv over its patches (`conv_as_pointwise.py`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from .call_rewrite import integer_conv, rewrite_calls, static_dims


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


def _rewrite(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    operands = integer_conv(call, "IOHW", ("int8", "uint8", "int16"))  # 16-bit inputs: the convs' wide recipe
    if operands is None or not static_dims(call.ty.shape):
        return call
    x, weights, a = operands
    groups = int(a.groups)
    c_in, o_g, kh, kw = weights.shape
    top, left = int(a.padding[0]), int(a.padding[1])
    (dh, dw), (ho, wo) = (int(v) for v in a.dilation), (int(call.ty.shape[2]), int(call.ty.shape[3]))
    # [g, I/g, O/g, kh, kw] -> [g, O/g, I/g, kh, kw], flipped
    flipped = weights.reshape(groups, c_in // groups, o_g, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    conv_w = np.ascontiguousarray(flipped.reshape(groups * o_g, c_in // groups, kh, kw))
    strides = tuple(int(v) for v in a.strides)
    offsets = (dh * (kh - 1) - top, dw * (kw - 1) - left)
    if (dh, dw) == (1, 1) and strides != (1, 1) and all(k >= s for k, s in zip((kh, kw), strides)):
        return _phases(builder, x, conv_w, strides, offsets, (ho, wo), groups)
    z = builder.call_te(zero_inserted_te, x, strides, offsets, (ho + dh * (kh - 1), wo + dw * (kw - 1)),
                        primfunc_name_hint="zero_inserted")
    return relax.op.nn.conv2d(z, relax.const(conv_w), strides=1, padding=0, dilation=(dh, dw), groups=groups,
                              out_dtype="int32")


def _phases(builder, x, conv_w, strides, offsets, out_size, groups):
    """Output phase (py, px) (pixels y % sy == py, x % sx == px) reads only the taps
    a = a0 (mod s) of the flipped kernel, at input offset (p + a0 - t) / s: one stride-1 conv
    per phase over a window of x, interleaved afterwards (no multiplication by inserted zeros)."""
    (sy, sx), (ty, tx), (ho, wo) = strides, offsets, out_size
    hq, wq = -(-ho // sy), -(-wo // sx)
    rows = []
    for py in range(sy):
        cols = []
        for px in range(sx):
            ay, ax = (ty - py) % sy, (tx - px) % sx
            sub = np.ascontiguousarray(conv_w[:, :, ay::sy, ax::sx])
            window = _window(x, ((py + ay - ty) // sy, hq + sub.shape[2] - 1),
                             ((px + ax - tx) // sx, wq + sub.shape[3] - 1))
            conv = relax.op.nn.conv2d(builder.emit(window), relax.const(sub), groups=groups, out_dtype="int32")
            cols.append(relax.op.expand_dims(builder.emit(conv), [4]))
        rows.append(relax.op.expand_dims(builder.emit(relax.op.concat(cols, axis=4)), [3]))
    grid = builder.emit(relax.op.concat(rows, axis=3))  # [N, O, Hq, sy, Wq, sx]
    n, o = grid.ty.shape[0], grid.ty.shape[1]
    out = builder.emit(relax.op.reshape(grid, [n, o, hq * sy, wq * sx]))
    if (hq * sy, wq * sx) == (ho, wo):
        return out
    return relax.op.strided_slice(out, axes=[2, 3], begin=[0, 0], end=[ho, wo])


def _window(x: relax.Expr, rows: tuple[int, int], cols: tuple[int, int]) -> relax.Expr:
    """x[..., start:start + length] along H and W, zeros where that runs past the image."""
    h, w = int(x.ty.shape[2]), int(x.ty.shape[3])
    (r0, rn), (c0, cn) = rows, cols
    pads = [max(0, -r0), max(0, -c0), max(0, r0 + rn - h), max(0, c0 + cn - w)]
    begin, end = [max(0, r0), max(0, c0)], [min(h, r0 + rn), min(w, c0 + cn)]
    if begin != [0, 0] or end != [h, w]:
        x = relax.op.strided_slice(x, axes=[2, 3], begin=begin, end=end)
    if any(pads):
        x = relax.op.nn.pad(x, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]])
    return x


@tvm.transform.module_pass(opt_level=0, name="ConvTransposeAsConv")
def conv_transpose_as_conv(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every integer NCHW conv2d_transpose with constant weights (see module doc)."""
    return rewrite_calls(mod, "relax.nn.conv2d_transpose", _rewrite)
