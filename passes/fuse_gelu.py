"""FuseGelu: the erf decomposition that opset <= 19 exports produce -> one GELU op.

    multiply(multiply(x, add(erf(divide(x, sqrt(2))), 1)), 0.5)  ==>  nn.gelu(x)

Fires only when the constants are sqrt(2), 1 and 0.5 (within float32 rounding) and both
uses of x are the same value; anything else is left as it is.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _is(expr, value: float) -> bool:
    v = expr.value.numpy()
    return v.size == 1 and abs(float(v.reshape(())) - value) < 1e-6 * max(1.0, abs(value))


@tvm.transform.module_pass(opt_level=0, name="FuseGelu")
def fuse_gelu(mod, _ctx):
    """Rewrite every erf-based GELU decomposition into `R.nn.gelu`."""
    x, x2, c_sqrt2, c_one, c_half = wildcard(), wildcard(), is_const(), is_const(), is_const()
    inner = is_op("relax.add")(is_op("relax.erf")(is_op("relax.divide")(x, c_sqrt2)), c_one)
    pattern = is_op("relax.multiply")(is_op("relax.multiply")(x2, inner), c_half)

    def rewrite(call, m):
        if not (m[x].same_as(m[x2]) and _is(m[c_sqrt2], math.sqrt(2)) and _is(m[c_one], 1.0)
                and _is(m[c_half], 0.5)):
            return call
        return relax.op.nn.gelu(m[x])

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod



