"""AffineBeforeMax: a per-channel affine of positive scale after a max over positions moves into the
conv before the max (it commutes with max):

    max(conv2d(x, W) [+ b], positions) * c + d   ==>   max(conv2d(x, W * c) + (b * c + d), positions)

PointNet's BatchNorm after its max over points (decomposed to `* c + d`) divided by a small deviation,
magnifying the rounding of the 1024-channel conv's 8-bit grid ~10x (cosine to float 0.9915 at the max,
0.951 after it); folded, the conv's output is on the normalized scale. The max is `max` over axes after
the channels (a Conv1d's reshape between them kept) or `max_pool2d`. Fires only with every c > 0 and
constant W, b, c, d broadcasting per channel. Run after `decompose_batchnorm`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _channel_vector(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """`value` (broadcasting against a rank-`rank` tensor whose axis 1 holds the channels) as one number
    per channel, or None where it varies along another axis."""
    shape = (1,) * (rank - value.ndim) + value.shape
    if len(shape) != rank or any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _build_pattern():
    x, w, b, c, d = wildcard(), is_const(), is_const(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(x, w)
    src = conv | is_op("relax.add")(conv, b)
    src = src | is_op("relax.reshape")(src, wildcard())
    peak = is_op("relax.max")(src) | is_op("relax.nn.max_pool2d")(src)
    out = is_op("relax.add")(is_op("relax.multiply")(peak, c), d)
    return out, conv, src, peak, w, b, c, d


@tvm.transform.module_pass(opt_level=0, name="AffineBeforeMax")
def affine_before_max(mod, _ctx):
    """Move every positive per-channel `* c + d` after a max over a constant-weight conv's positions into the conv."""
    out_p, conv_p, src_p, peak_p, w_p, b_p, c_p, d_p = _build_pattern()

    def rewrite(orig, match):
        conv, peak = match[conv_p], match[peak_p]
        attrs = conv.attrs
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or str(conv.ty.dtype) != "float32":
            return orig
        rank = len(peak.ty.shape)
        channels = int(conv.ty.shape[1])
        if peak.op.name == "relax.max":  # over positions only: not the batch, not the channels
            axes = [int(a) % len(peak.args[0].ty.shape) for a in peak.attrs.axis] if peak.attrs.axis is not None else []
            if not axes or min(axes) < 2 or int(peak.args[0].ty.shape[1]) != channels:
                return orig
        elif peak.attrs.layout != "NCHW":
            return orig
        scale = _channel_vector(match[c_p].value.numpy(), rank, channels)
        shift = _channel_vector(match[d_p].value.numpy(), rank, channels)
        if scale is None or shift is None or not (scale > 0).all():
            return orig
        weight = match[w_p].value.numpy()
        bias = (_channel_vector(match[b_p].value.numpy(), 4, channels) if b_p in match else np.zeros(channels))
        if bias is None:
            return orig
        new = relax.op.nn.conv2d(conv.args[0], relax.const((weight * scale.reshape(-1, 1, 1, 1)).astype(weight.dtype)),
                                 attrs.strides, attrs.padding, attrs.dilation, attrs.groups, attrs.data_layout,
                                 attrs.kernel_layout, attrs.out_layout, attrs.out_dtype)
        new = relax.op.add(new, relax.const((bias * scale + shift).reshape(1, -1, 1, 1).astype("float32")))
        src = match[src_p]
        if src.op.name == "relax.reshape":
            new = relax.op.reshape(new, src.args[1])
        if peak.op.name == "relax.max":
            return relax.op.max(new, peak.attrs.axis, peak.attrs.keepdims)
        a = peak.attrs
        return relax.op.nn.max_pool2d(new, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode,
                                      a.count_include_pad, a.layout, a.out_layout)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(out_p, rewrite, func)
    return mod
