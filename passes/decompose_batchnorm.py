"""DecomposeBatchNorm: a BatchNorm that did not fold into a conv (after a ConvTranspose, an
Add, a Resize...) becomes a per-channel affine map of constants.

    batch_norm(x, gamma, beta, mean, var)[0]  ==>  x * k + (beta - mean * k),   k = gamma / sqrt(var + eps)

with k and the shift shaped to broadcast along the BatchNorm's axis. The integer lowering
takes both: a per-channel multiply changes the per-channel scales, the add is a bias. Fires
only on inference BatchNorms with constant statistics (bind the parameters first; run
`fold_batchnorm` before, so that conv-fed ones still fold into the weights).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="DecomposeBatchNorm")
def decompose_batchnorm(mod, _ctx):
    """Rewrite every remaining constant-statistics BatchNorm into multiply + add."""
    x_p, stats_p = wildcard(), [is_const() for _ in range(4)]
    bn_p = is_op("relax.nn.batch_norm")(x_p, *stats_p)
    pattern = is_tuple_get_item(bn_p, 0)

    def rewrite(orig, match):
        bn, x = match[bn_p], match[x_p]
        if not isinstance(x.ty, relax.TensorType) or x.ty.shape is None:
            return orig
        gamma, beta, mean, var = (match[p].value.numpy().astype(np.float64) for p in stats_p)
        k = gamma / np.sqrt(var + float(bn.attrs.epsilon))
        rank, axis = len(x.ty.shape), int(bn.attrs.axis) % len(x.ty.shape)
        shape = [1] * rank
        shape[axis] = k.size
        dtype = str(x.ty.dtype)
        scale = relax.const(k.reshape(shape).astype(dtype))
        shift = relax.const((beta - mean * k).reshape(shape).astype(dtype))
        return relax.op.add(relax.op.multiply(x, scale), shift)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod
