"""FuseRMSNorm: the RMSNorm that exports without an RMSNormalization op write out -> one op.

    r = sqrt(mean(x^2, -1) + eps)                 (x^2 as power(x, 2) or x * x; the add either way, or none)
    y = x / r  |  x * (1 / r)  |  x * rsqrt(mean(x^2, -1) + eps)
    y * w  |  w * y                                ==>  nn.rms_norm(x, w, axes=[-1], epsilon=eps)

T5 / mT5 / ByT5 (`weight * (x / sqrt(variance + eps))`), LLaMA-style and Gemma encoders
exported below opset 23 have this form. Left unfused, `mean(x^2)` gets one per-tensor grid set
by the outlier tokens, ordinary tokens' variance rounds to 0 and their output to x / sqrt(eps).
Fires only for a mean over the last axis with keepdims, the same x in every place, a constant
eps (none: 0, as float16 files whose eps rounded to 0 and was folded away) and a constant w of one
value per channel (none: w = 1); anything else is left as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .fuse_layernorm import _last_axis_mean, _scalar


def _either(op: str, a, b):
    return is_op(op)(a, b) | is_op(op)(b, a)


@tvm.transform.module_pass(opt_level=0, name="FuseRMSNorm")
def fuse_rmsnorm(mod, _ctx):
    """Rewrite every written-out RMSNorm into `R.nn.rms_norm`."""
    x, x_sq, x_a, x_b, x_out = wildcard(), wildcard(), wildcard(), wildcard(), wildcard()
    two, eps, one, weight = is_const(), is_const(), is_const(), is_const()
    square = is_op("relax.power")(x_sq, two) | is_op("relax.multiply")(x_a, x_b)
    mean = is_op("relax.mean")(square)
    # eps gone: a float16 model's eps below 6e-8 is 0 in float16, and x + 0 is folded away before this pass
    var = _either("relax.add", mean, eps) | mean
    root = is_op("relax.sqrt")(var)
    norm = (is_op("relax.divide")(x_out, root)
            | _either("relax.multiply", x_out, is_op("relax.divide")(one, root))
            | _either("relax.multiply", x_out, is_op("relax.rsqrt")(var)))
    weighted = _either("relax.multiply", norm, weight)

    def fused(call, m, w):
        xs = [m[p] for p in (x_sq, x_a, x_b) if p in m] + [m[x_out]]
        if not all(v.same_as(xs[0]) for v in xs) or not m[x_out].ty.shape:  # 1 / r * gamma: x_out the 1
            return call
        channels = int(m[x_out].ty.shape[-1])
        epsilon = _scalar(m[eps]) if eps in m else 0.0
        if (not _last_axis_mean(m[mean])
                or (x_sq in m and _scalar(m[two]) != 2.0) or (one in m and _scalar(m[one]) != 1.0)
                or epsilon is None or (w is not None and w.size != channels)):
            return call
        dtype = str(m[x_out].ty.dtype)
        w = np.ones(channels) if w is None else w.reshape(-1)
        return relax.op.nn.rms_norm(m[x_out], relax.const(w.astype(dtype)), axes=[-1], epsilon=epsilon)

    def with_weight(call, m):
        return fused(call, m, m[weight].value.numpy())

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            func = rewrite_call(weighted, with_weight, func)
            mod[gv] = rewrite_call(norm, lambda call, m: fused(call, m, None), func)
    return mod
