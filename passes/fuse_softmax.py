"""FuseSoftmax: a softmax written out -> one op.

    exp(x) / sum(exp(x), axis=a, keepdims)          ==>  nn.softmax(x, axis=a)

Exports of hand-written attention or a classifier's normalized scores (`torch.exp(s) / torch.exp(s).sum(-1,
keepdim=True)`, with or without the max subtracted first) have this form. Left as it is, exp(x) gets one
per-tensor grid: a row whose logits are all low (here [-38, -31]) underflows it, and 0 / 0 gives a row of
zeros where float gives a distribution. A softmax is shift-invariant, and Shiftmax subtracts each row's
own max. Fires only for one axis, keepdims, and the same x under both exps.

    nn.softmax(y - max(y, axis=a, keepdims), axis=a)  ==>  nn.softmax(y, axis=a)

The max a written-out softmax subtracts first (JAX's `jax.nn.softmax` and hand-written ones with
`stop_gradient(x.max())`, tf2onnx's) is the shift Shiftmax makes itself. Left in, `y - max` was a tensor of
its own: over a masked row (`where(mask, s, finfo.min)`) it spans 3.4e38 and its grid lost every logit;
without it the where is the mask Shiftmax takes (a jax2onnx BERT: cosine 0.46).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="FuseSoftmax")
def fuse_softmax(mod, _ctx):
    """Rewrite every written-out softmax into `R.nn.softmax`."""
    x, y = wildcard(), wildcard()
    total = is_op("relax.sum")(is_op("relax.exp")(y))
    ratio = is_op("relax.divide")(is_op("relax.exp")(x), total)

    def fused(call, m):
        attrs = m[total].attrs
        axes = None if attrs.axis is None else [int(a) for a in attrs.axis]
        if not m[x].same_as(m[y]) or axes is None or len(axes) != 1 or not attrs.keepdims:
            return call
        return relax.op.nn.softmax(m[x], axis=axes[0])

    z = wildcard()
    peak = is_op("relax.max")(z)
    shifted = is_op("relax.nn.softmax")(is_op("relax.subtract")(z, peak))

    def unshifted(call, m):
        attrs, rank = m[peak].attrs, len(m[z].ty.shape)
        axes = None if attrs.axis is None else [int(a) % rank for a in attrs.axis]
        axis = int(m[shifted].attrs.axis) % rank
        if axes != [axis] or not attrs.keepdims:
            return call
        return relax.op.nn.softmax(m[z], axis=axis)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(shifted, unshifted, rewrite_call(ratio, fused, func))
    return mod
