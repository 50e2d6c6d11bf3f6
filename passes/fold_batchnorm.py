"""FoldBatchNorm: conv2d(x, W) [+ b] -> batch_norm(gamma, beta, mean, var)[0]
                 ==> conv2d(x, W * k) + (b - mean) * k + beta,   k = gamma / sqrt(var + eps).

Fires only when W, b and the statistics are constants (bind the parameters first) and the
layouts are NCHW/OIHW. A BatchNorm not fed by a conv is left to `decompose_batchnorm`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, rewrite_call, wildcard


def _value(expr) -> np.ndarray:
    return expr.value.numpy().astype(np.float64)


def _build_pattern():
    x, w, b = wildcard(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(x, w)
    src = conv | is_op("relax.add")(conv, b)
    stats = [is_const() for _ in range(4)]
    bn = is_op("relax.nn.batch_norm")(src, *stats)
    return is_tuple_get_item(bn, 0), conv, w, b, stats, bn


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
def fold_batchnorm(mod, _ctx):
    """Fold every BatchNorm that directly follows a constant-weight conv2d into it."""
    pattern, conv_p, w_p, b_p, stats_p, bn_p = _build_pattern()

    def rewrite(_orig, match):
        conv = match[conv_p]
        if conv.attrs.data_layout != "NCHW" or conv.attrs.kernel_layout != "OIHW" or match[bn_p].attrs.axis != 1:
            return _orig
        gamma, beta, mean, var = (_value(match[p]) for p in stats_p)
        k = gamma / np.sqrt(var + float(match[bn_p].attrs.epsilon))
        weight = _value(match[w_p])
        dtype = str(match[w_p].ty.dtype)
        bias = _value(match[b_p]).reshape(-1) if b_p in match else np.zeros_like(mean)
        folded_w = relax.const((weight * k.reshape(-1, 1, 1, 1)).astype(dtype))
        folded_b = relax.const(((bias - mean) * k + beta).reshape(1, -1, 1, 1).astype(dtype))
        attrs = conv.attrs
        new_conv = relax.op.nn.conv2d(conv.args[0], folded_w, attrs.strides, attrs.padding, attrs.dilation,
                                      attrs.groups, attrs.data_layout, attrs.kernel_layout, attrs.out_layout,
                                      attrs.out_dtype)
        return relax.op.add(new_conv, folded_b)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod
