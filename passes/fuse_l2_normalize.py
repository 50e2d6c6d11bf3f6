"""FuseL2Normalize: x / max(c * ||x||_2, eps) over one axis -> one RMSNorm.

    n = sqrt(sum(x^2, -1))  (ReduceL2; x^2 as x * x or power(x, 2); mean instead of sum too)
    d = max(c * n, eps)     (c a positive scalar, or none; eps a scalar, or none: max(n, eps) is torch's
                             clamp_min, F.normalize's and ScaleNorm's clamp; broadcast_to after it: Expand)
    y = x / d  [* w]        ==>  nn.rms_norm(x, w / (c sqrt(N)), axes=[-1], epsilon=(eps / (c sqrt(N)))^2)

(over another axis, such as an NCHW descriptor map's channels: that axis moved last and back around it)
with N the channels for a sum (1 for a mean): x / (c sqrt(N) rms(x)). L2 normalization (F.normalize,
LpNormalization p = 2, embedding heads) and ScaleNorm (RTMPose's RTMCC head and its gated attention unit)
have this form. Left apart, x^2 got one 8-bit grid set by the largest rows, so a row 20x smaller than
those had its norm rounded to a few steps (or 0: x / eps) and came out several times too large; as an
RMSNorm each row is normalized from its own integers (an int32 input from its accumulator, up to 4x
its calibrated range).

eps moves from a max to an add under the square root: sqrt(mean + e^2) against max(sqrt(mean), e),
e = eps / (c sqrt(N)), a relative difference below e^2 / (2 mean) where the row's rms is well above e
(at most sqrt(2), for a row whose rms is e). Fires only for eps <= MAX_EPS (torch's 1e-12 and 1e-5,
not a clamp meant to bite, such as max(||x||, 1)), a sum / mean over one axis with keepdims, the
same x in every place and w a constant of one value or one per channel of that axis; anything else is left as it is.
The rewritten function records how many it made (`L2_ATTR`): `runtime.compiler.has_normalization` does
not count them as a transformer's normalization (a CNN ending in an L2 norm keeps its 8-bit residuals).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .fuse_layernorm import _scalar

L2_ATTR = "intq.l2_normalizations"
MAX_EPS = 1e-4  # the clamp's floor, in the units of the norm


def _either(op: str, a, b):
    return is_op(op)(a, b) | is_op(op)(b, a)


def _along(w: np.ndarray, axis: int, rank: int, channels: int) -> bool:
    """Is the constant `w` one value, or one per channel of `axis` (broadcast against a rank-`rank` x)?"""
    if w.size == 1:
        return True
    shape = (1,) * (rank - w.ndim) + tuple(w.shape)
    return w.ndim <= rank and shape[axis] == channels == w.size


def _rms_norms(func) -> int:
    return func.script(show_meta=False).count("R.nn.rms_norm(")


def count_l2(func) -> int:
    """RMSNorms this pass made in `func` (0 if none or the attribute is gone)."""
    attrs = getattr(func, "attrs", None)
    return int(attrs[L2_ATTR]) if attrs is not None and L2_ATTR in attrs else 0


@tvm.transform.module_pass(opt_level=0, name="FuseL2Normalize")
def fuse_l2_normalize(mod, _ctx):
    """Rewrite every x / max(c ||x||, eps) [* w] over one axis into `R.nn.rms_norm` (over the last)."""
    x_sq, x_a, x_b, x_out = wildcard(), wildcard(), wildcard(), wildcard()
    two, c, eps, weight, shape = is_const(), is_const(), is_const(), is_const(), wildcard()
    square = is_op("relax.power")(x_sq, two) | is_op("relax.multiply")(x_a, x_b)
    total = is_op("relax.sum")(square) | is_op("relax.mean")(square)
    root = is_op("relax.sqrt")(total)
    scaled = _either("relax.multiply", root, c) | root
    clamped = _either("relax.maximum", scaled, eps) | scaled
    denominator = is_op("relax.broadcast_to")(clamped, shape) | clamped
    norm = is_op("relax.divide")(x_out, denominator)
    weighted = _either("relax.multiply", norm, weight)
    def fused(call, m, w):
        xs = [m[p] for p in (x_sq, x_a, x_b) if p in m] + [m[x_out]]
        shape_ = getattr(m[x_out].ty, "shape", None)
        if not all(v.same_as(xs[0]) for v in xs) or not shape_:
            return call
        reduction, rank = m[total], len(shape_)
        axes = [int(a) % rank for a in reduction.attrs.axis] if reduction.attrs.axis is not None else []
        if len(axes) != 1 or not reduction.attrs.keepdims or not isinstance(shape_[axes[0]], tvm.tirx.IntImm):
            return call
        axis = axes[0]
        if x_sq in m and _scalar(m[two]) != 2.0:
            return call
        channels = int(shape_[axis])
        n = channels if reduction.op.name == "relax.sum" else 1
        factor = _scalar(m[c]) if c in m else 1.0
        floor = _scalar(m[eps]) if eps in m else 0.0
        if factor is None or floor is None or not factor > 0 or not 0 <= floor <= MAX_EPS:
            return call
        if w is not None and not _along(w, axis, rank, channels):
            return call
        if shape in m and list(call.ty.shape) != list(shape_):  # the Expand only restores x's shape
            return call
        k = 1.0 / (factor * math.sqrt(n))
        dtype = str(m[x_out].ty.dtype)
        w = np.full(channels, k) if w is None else np.broadcast_to(w.reshape(-1).astype(np.float64) * k, (channels,))
        gamma = relax.const(np.ascontiguousarray(w).astype(dtype))
        if axis == rank - 1:
            return relax.op.nn.rms_norm(m[x_out], gamma, axes=[-1], epsilon=(floor * k) ** 2)
        # another axis (NCHW descriptors over channels): moved last and back, where the lowering reads rows
        perm = [i for i in range(rank) if i != axis] + [axis]
        inverse = [perm.index(i) for i in range(rank)]
        moved = relax.op.permute_dims(m[x_out], perm)
        return relax.op.permute_dims(relax.op.nn.rms_norm(moved, gamma, axes=[-1], epsilon=(floor * k) ** 2), inverse)

    def with_weight(call, m):
        return fused(call, m, m[weight].value.numpy())

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            before = _rms_norms(func)
            func = rewrite_call(weighted, with_weight, func)
            func = rewrite_call(norm, lambda call, m: fused(call, m, None), func)
            made = _rms_norms(func) - before
            mod[gv] = func.with_attr(L2_ATTR, count_l2(func) + made) if made else func
    return mod
