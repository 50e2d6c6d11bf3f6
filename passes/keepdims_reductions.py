"""KeepdimsReductions: a reduction whose reduced axes a reshape puts back -> the reduction with keepdims.

    reshape(R(x, A, keepdims=False), S)   ==>  R(x, A, keepdims=True)     (S: x's shape with the axes A as 1)

for R in sum, mean, max, min, prod. JAX's reductions drop the axes and `keepdims=True` (jnp.mean(x, -1,
keepdims=True), softmax's max and sum, a layer norm's moments) puts them back with a broadcast_in_dim,
which jax2onnx writes as ReduceX(keepdims=0) -> Reshape. The fusions that read a softmax or a norm
(fuse_softmax, fuse_layernorm, fuse_written_layernorm, fuse_rmsnorm) look for keepdims reductions, and took
none of these: a BERT's `exp(s - max) / sum(exp(s - max))` over a masked row stayed an exp on one grid
(cosine 0.46). Fires only where S is exactly that shape; anything else is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

_REDUCTIONS = {"relax.sum": relax.op.sum, "relax.mean": relax.op.mean, "relax.max": relax.op.max,
               "relax.min": relax.op.min, "relax.prod": relax.op.prod}


@tvm.transform.module_pass(opt_level=0, name="KeepdimsReductions")
def keepdims_reductions(mod, _ctx):
    """Rewrite every reshape that restores a reduction's axes into the reduction with keepdims."""
    x, shape = wildcard(), wildcard()
    reductions = [is_op(name)(x) for name in _REDUCTIONS]

    def rewrite(call, m):
        red = next(m[r] for r in reductions if r in m)
        dims = getattr(m[x].ty, "shape", None)
        out = getattr(call.ty, "shape", None)
        if red.attrs.keepdims or red.attrs.axis is None or dims is None or out is None \
                or not all(isinstance(d, tvm.tirx.IntImm) for d in (*dims, *out)):
            return call
        rank = len(dims)
        axes = sorted({int(a) % rank for a in red.attrs.axis})
        kept = [1 if i in axes else int(d) for i, d in enumerate(dims)]
        if [int(d) for d in out] != kept:
            return call
        return _REDUCTIONS[red.op.name](m[x], axes, keepdims=True)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            for reduced in reductions:
                func = rewrite_call(is_op("relax.reshape")(reduced, shape), rewrite, func)
            mod[gv] = func
    return mod
