"""FuseWrittenLayerNorm: the LayerNorms JAX / Flax exports write out -> one op.

    (x - M) / sqrt(V + eps) [* gamma + beta]      ==>  nn.layer_norm(x, gamma, beta, axes=A, epsilon=eps)
    (x - M) * (gamma / sqrt(V + eps)) + beta       ==>  the same   (Flax's order, use_fast_variance=False)

where M is the mean of x over the trailing axes A and V its variance, in any of the forms exporters write:

    M:  mean(x, A, keepdims)  |  sum(x, A, keepdims) / n  |  reshape(sum(x, A), keepdims shape) / n
     |  reshape(sum(x, A) / n, keepdims shape)
    V:  M(d * d)  |  M(d ** 2)                     with d = x - M(x)   (jnp.var, hand-written layer norms)
     |  max(M(x * x) - M(x) * M(x), 0)  |  the same without the max     (Flax's fast variance)

n is the number of elements A holds. jax2onnx writes Flax's `LayerNorm` (use_fast_variance, the default)
as ReduceMean(x * x) - mean^2 clamped at 0, and `jnp.mean` / `.var` as ReduceSum / n (ReduceSumSquare for
the squares); fuse_layernorm takes neither. Left unfused, E[x^2] and E[x]^2 each get one per-tensor grid
set by the widest rows: a ViT's class-token row (variance ~1e-4 beside patch rows of ~1) came out as 0,
its normalized values x / sqrt(eps), cosine 0.48 at the logits. Fires only where both moments are of the
same x over the same trailing axes and eps, gamma and beta are constants (gamma and beta spanning only A);
anything else is left as it is. Runs after fuse_layernorm, which takes the torch form.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .fuse_layernorm import _norm_merged, _scalar


def _either(op: str, a, b):
    return is_op(op)(a, b) | is_op(op)(b, a)


class _Moments:
    """Reads means and variances of a function's tensors through its bindings."""

    def __init__(self, func):
        self.val = relax.analysis.get_var2val(func)

    def _v(self, e):
        while isinstance(e, relax.Var) and e in self.val:
            e = self.val[e]
        return e

    @staticmethod
    def _op(e, name: str) -> bool:
        return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name

    def _const(self, e) -> float | None:
        e = self._v(e)
        return _scalar(e) if isinstance(e, tvm.ir.GenericConst) else None

    def _same(self, a, b) -> bool:
        return a.same_as(b) or self._v(a).same_as(self._v(b))

    @staticmethod
    def _trailing(x, axes, keepdims: bool) -> tuple[int, ...] | None:
        shape = getattr(x.ty, "shape", None)
        if shape is None or axes is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            return None
        rank = len(shape)
        axes = sorted(int(a) % rank for a in axes)
        return tuple(axes) if axes and axes == list(range(axes[0], rank)) else None

    def mean(self, e):
        """(x, axes) where e is the keepdims mean of x over trailing axes, else None."""
        e = self._v(e)
        if self._op(e, "relax.reshape"):  # the mean without keepdims, its axes put back afterwards
            flat = self._v(e.args[0])
            got = self._flat_mean(flat)
            if got and [int(d) for d in e.ty.shape] == [1 if i in got[1] else int(d)
                                                         for i, d in enumerate(got[0].ty.shape)]:
                return got
            return None
        if self._op(e, "relax.mean") and e.attrs.keepdims:
            axes = self._trailing(e.args[0], e.attrs.axis, True)
            return (e.args[0], axes) if axes else None
        if self._op(e, "relax.divide") or self._op(e, "relax.multiply"):
            for total, k in ((e.args[0], e.args[1]), (e.args[1], e.args[0])):
                c = self._const(k)
                if c is None or (self._op(e, "relax.divide") and total is e.args[1]):
                    continue
                total = self._v(total)
                keep_shape = None
                if self._op(total, "relax.reshape"):
                    keep_shape = [int(d) for d in total.ty.shape]
                    total = self._v(total.args[0])
                if not self._op(total, "relax.sum"):
                    continue
                x = total.args[0]
                axes = self._trailing(x, total.attrs.axis, bool(total.attrs.keepdims))
                if axes is None:
                    continue
                shape = [int(d) for d in x.ty.shape]
                kept = [1 if i in axes else d for i, d in enumerate(shape)]
                if (keep_shape is None) != bool(total.attrs.keepdims) or (keep_shape is not None and keep_shape != kept):
                    continue
                n = float(np.prod([shape[i] for i in axes]))
                scale = 1.0 / c if self._op(e, "relax.divide") else c
                if abs(scale * n - 1.0) < 1e-6:
                    return x, axes
        return None

    def _flat_mean(self, e):
        """(x, axes) where e is mean(x, A) or sum(x, A) / n without keepdims."""
        if self._op(e, "relax.mean") and not e.attrs.keepdims:
            axes = self._trailing(e.args[0], e.attrs.axis, False)
            return (e.args[0], axes) if axes else None
        if self._op(e, "relax.divide") and self._const(e.args[1]) is not None:
            total = self._v(e.args[0])
            if self._op(total, "relax.sum") and not total.attrs.keepdims:
                x = total.args[0]
                axes = self._trailing(x, total.attrs.axis, False)
                if axes and abs(self._const(e.args[1]) - float(np.prod([int(x.ty.shape[i]) for i in axes]))) < 1e-6:
                    return x, axes
        return None

    def _square_of(self, e):
        """x where e is x * x or x ** 2."""
        e = self._v(e)
        if self._op(e, "relax.multiply") and self._same(e.args[0], e.args[1]):
            return e.args[0]
        if self._op(e, "relax.power") and self._const(e.args[1]) == 2.0:
            return e.args[0]
        return None

    def centered(self, e):
        """(x, axes) where e is x - mean(x)."""
        e = self._v(e)
        if not self._op(e, "relax.subtract"):
            return None
        mean = self.mean(e.args[1])
        return mean if mean and self._same(mean[0], e.args[0]) else None

    def variance(self, e):
        """(x, axes) where e is the variance of x over trailing axes in one of the forms above."""
        e = self._v(e)
        if self._op(e, "relax.maximum") and self._const(e.args[1]) == 0.0:
            e = self._v(e.args[0])
        mean = self.mean(e)
        if mean:  # mean((x - mean x)^2)
            d = self._square_of(mean[0])
            c = self.centered(d) if d is not None else None
            return c if c and c[1] == mean[1] else None
        if not self._op(e, "relax.subtract"):
            return None
        second, first = self.mean(e.args[0]), e.args[1]
        if second is None:
            return None
        x = self._square_of(second[0])
        m = self._square_of(first)
        if m is None:
            fv = self._v(first)
            m = fv.args[0] if self._op(fv, "relax.multiply") and self._same(fv.args[0], fv.args[1]) else None
        mean = self.mean(m) if m is not None else None
        if x is None or mean is None or not self._same(mean[0], x) or mean[1] != second[1]:
            return None
        return mean


@tvm.transform.module_pass(opt_level=0, name="FuseWrittenLayerNorm")
def fuse_written_layernorm(mod, _ctx):
    """Rewrite every written-out LayerNorm of the forms above into `R.nn.layer_norm`."""
    d, v, eps, gamma, beta = wildcard(), wildcard(), is_const(), is_const(), is_const()
    norm = is_op("relax.divide")(d, is_op("relax.sqrt")(_either("relax.add", v, eps) | v))
    affine = _either("relax.add", _either("relax.multiply", norm, gamma), beta)
    # Flax's own order: mul = rsqrt(var + eps) * scale, y = (x - mean) * mul + bias
    scaled = _either("relax.multiply", d, is_op("relax.divide")(gamma, is_op("relax.sqrt")(_either("relax.add", v, eps) | v)))
    scaled_affine = _either("relax.add", scaled, beta)

    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        moments = _Moments(func)

        def fused(call, m, with_affine: bool):
            centered, variance = moments.centered(m[d]), moments.variance(m[v])
            epsilon = _scalar(m[eps]) if eps in m else 0.0
            if not centered or not variance or epsilon is None or centered[1] != variance[1] \
                    or not moments._same(centered[0], variance[0]):
                return call
            x, axes = centered
            shape, dtype = [int(s) for s in x.ty.shape], str(x.ty.dtype)
            trailing = shape[axes[0]:]
            g, b = np.ones(trailing, dtype), np.zeros(trailing, dtype)
            if with_affine:
                try:
                    g, b = (_over(m[c].value.numpy(), trailing) for c in (gamma, beta))
                except ValueError:
                    return call
            return _norm_merged(x, shape, axes[0], g.reshape(-1).astype(dtype), b.reshape(-1).astype(dtype), epsilon)

        func = rewrite_call(affine, lambda c, m: fused(c, m, True), func)
        moments = _Moments(func)
        func = rewrite_call(scaled_affine, lambda c, m: fused(c, m, True), func)  # Flax: d * (gamma / std) + beta
        moments = _Moments(func)
        mod[gv] = rewrite_call(norm, lambda c, m: fused(c, m, False), func)
    return mod


def _over(value: np.ndarray, trailing: list[int]) -> np.ndarray:
    """value broadcast over the normalized axes only (ValueError where it spans others)."""
    while value.ndim > len(trailing) and value.shape[0] == 1:
        value = value.reshape(value.shape[1:])
    return np.broadcast_to(value, trailing)
