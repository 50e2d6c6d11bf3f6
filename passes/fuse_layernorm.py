"""FuseLayerNorm: the decomposition that LayerNorm exports below opset 17 produce -> one op.

    d = x - mean(x, -1); y = d / sqrt(mean(d^2, -1) + eps) * gamma + beta
    ==> nn.layer_norm(x, gamma, beta, axes=[-1], epsilon=eps)

Fires only for means over the last axis with keepdims, an exponent of 2, the same `d` in
both places, and constant eps, gamma and beta; anything else is left as it is. Without the
`+ eps` (a float16 model's 1e-12 rounds to 0, and the add is folded away) it fires with eps 0.

    (x - mean(x, A)) / sqrt(variance(x, A) + eps), A the trailing axes, keepdims
    ==> reshape(nn.layer_norm(reshape(x, [..., prod A]), 1, 0, axes=[-1], epsilon=eps))

An `nn.layer_norm` over several trailing axes (ONNX LayerNormalization with axis < -1) becomes the
same reshape around a LayerNorm over the last axis, its gamma and beta broadcast and flattened.

TVM's import of InstanceNormalization (GroupNorm as the legacy exporter writes it: reshape to
[N, groups, -1], InstanceNormalization, reshape back, per-channel Mul and Add; InstanceNorm2d) is
this form; its per-channel affine stays a multiply and add (lowered as per-channel rescales).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _last_axis_mean(call: relax.Call) -> bool:
    rank = len(call.args[0].ty.shape)
    axes = [int(a) % rank for a in call.attrs.axis] if call.attrs.axis is not None else []
    return axes == [rank - 1] and bool(call.attrs.keepdims)


def _scalar(expr) -> float | None:
    v = expr.value.numpy()
    return float(v.reshape(())) if v.size == 1 else None


@tvm.transform.module_pass(opt_level=0, name="FuseLayerNorm")
def fuse_layernorm(mod, _ctx):
    """Rewrite every decomposed LayerNorm into `R.nn.layer_norm`."""
    x = wildcard()
    mean1 = is_op("relax.mean")(x)
    d1, d2 = is_op("relax.subtract")(x, mean1), wildcard()
    exponent, eps, gamma, beta = is_const(), is_const(), is_const(), is_const()
    mean2 = is_op("relax.mean")(is_op("relax.power")(d1, exponent))
    norm = is_op("relax.divide")(d2, is_op("relax.sqrt")(is_op("relax.add")(mean2, eps)))
    pattern = is_op("relax.add")(is_op("relax.multiply")(norm, gamma), beta)
    # eps gone: a float16 model's 1e-12 is 0 in float16, and x + 0 is folded away before this pass
    unguarded = is_op("relax.add")(is_op("relax.multiply")(
        is_op("relax.divide")(d2, is_op("relax.sqrt")(mean2)), gamma), beta)

    def rewrite(call, m):
        channels = int(m[x].ty.shape[-1])
        g, b = m[gamma].value.numpy(), m[beta].value.numpy()
        epsilon = _scalar(m[eps]) if eps in m else 0.0
        if not (m[d1].same_as(m[d2]) and _last_axis_mean(m[mean1]) and _last_axis_mean(m[mean2])
                and _scalar(m[exponent]) == 2.0 and epsilon is not None
                and g.size == channels and b.size == channels):
            return call
        dtype = str(m[x].ty.dtype)
        return relax.op.nn.layer_norm(m[x], relax.const(g.reshape(-1).astype(dtype)),
                                      relax.const(b.reshape(-1).astype(dtype)), axes=[-1],
                                      epsilon=epsilon)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            func = rewrite_call(unguarded, rewrite, rewrite_call(pattern, rewrite, func))
            func = rewrite_call(instance_pattern, instance_rewrite, func)
            mod[gv] = rewrite_call(_norm_many, _flatten_norm_axes, func)
    return mod


_norm_x, _norm_gamma, _norm_beta = wildcard(), is_const(), is_const()
_norm_many = is_op("relax.nn.layer_norm")(_norm_x, _norm_gamma, _norm_beta)


def _flatten_norm_axes(call, m):
    """A LayerNorm over trailing axes [first, rank) with first < rank - 1, as one over a merged last axis."""
    x, attrs = m[_norm_x], m[_norm_many].attrs  # `call` may be the var it is bound to
    shape = getattr(x.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return call
    shape, rank, dtype = [int(d) for d in shape], len(shape), str(x.ty.dtype)
    axes = sorted(int(a) % rank for a in attrs.axes)
    if len(axes) < 2 or axes != list(range(axes[0], rank)):
        return call
    first, trailing = axes[0], shape[axes[0]:]
    try:
        g, b = (np.broadcast_to(m[c].value.numpy(), trailing).reshape(-1).astype(dtype)
                for c in (_norm_gamma, _norm_beta))
    except ValueError:  # gamma or beta spanning more than the normalized axes
        return call
    return _norm_merged(x, shape, first, g, b, float(attrs.epsilon))


def _norm_merged(x, shape: list[int], first: int, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """reshape(nn.layer_norm(reshape(x, [..., prod shape[first:]]), gamma, beta, axes=[-1]), shape)."""
    flat = shape[:first] + [int(np.prod(shape[first:]))]
    merged = len(flat) != len(shape)
    y = relax.op.nn.layer_norm(relax.op.reshape(x, flat) if merged else x, relax.const(gamma), relax.const(beta),
                               axes=[-1], epsilon=eps)
    return relax.op.reshape(y, shape) if merged else y


def _trailing_axes(call: relax.Call) -> int | None:
    """The first of the trailing axes a keepdims reduction runs over (None: not trailing axes)."""
    rank = len(call.args[0].ty.shape)
    if call.attrs.axis is None or not call.attrs.keepdims:
        return None
    axes = sorted(int(a) % rank for a in call.attrs.axis)
    return axes[0] if axes and axes == list(range(axes[0], rank)) else None


x_i = wildcard()
_mean_i, _var_i, _eps_i = is_op("relax.mean")(x_i), is_op("relax.variance")(x_i), is_const()
instance_pattern = is_op("relax.divide")(is_op("relax.subtract")(x_i, _mean_i),
                                         is_op("relax.sqrt")(is_op("relax.add")(_var_i, _eps_i)))


def instance_rewrite(call, m):
    first = _trailing_axes(m[_mean_i])
    if first is None or first == 0 or _trailing_axes(m[_var_i]) != first or _scalar(m[_eps_i]) is None:
        return call
    x = m[x_i]
    shape, dtype = [int(d) for d in x.ty.shape], str(x.ty.dtype)
    width = int(np.prod(shape[first:]))
    return _norm_merged(x, shape, first, np.ones(width, dtype), np.zeros(width, dtype), _scalar(m[_eps_i]))


