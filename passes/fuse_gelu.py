"""FuseGelu: the erf decompositions that opset <= 19 exports produce -> one GELU op.

    multiply(multiply(x, inner), 0.5)   (torch.onnx.export, TorchScript)      ==>  nn.gelu(x)
    multiply(x, multiply(inner, 0.5))   (torch.onnx.export(dynamo=True))
    multiply(multiply(x, 0.5), inner)   (0.5 * x * (1 + erf(x / sqrt(2))), hand-written)
    with inner = add(erf(divide(x, sqrt(2)) | multiply(x, 1/sqrt(2))), 1); every multiply and the
    add in either operand order.

Fires only when the constants are sqrt(2) (or 1/sqrt(2)), 1 and 0.5 (within float32 rounding)
and every use of x is the same value; anything else is left as it is.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _is(expr, value: float) -> bool:
    v = expr.value.numpy()
    return v.size == 1 and abs(float(v.reshape(())) - value) < 1e-6 * max(1.0, abs(value))


def _either(op: str, a, b):
    """op(a, b) or op(b, a)."""
    return is_op(op)(a, b) | is_op(op)(b, a)


@tvm.transform.module_pass(opt_level=0, name="FuseGelu")
def fuse_gelu(mod, _ctx):
    """Rewrite every erf-based GELU decomposition into `R.nn.gelu`."""
    x, x2, c_arg, c_one, c_half = wildcard(), wildcard(), is_const(), is_const(), is_const()
    divided = is_op("relax.divide")(x, c_arg)
    arg = divided | _either("relax.multiply", x, c_arg)
    inner = _either("relax.add", is_op("relax.erf")(arg), c_one)
    mul = lambda a, b: _either("relax.multiply", a, b)  # noqa: E731
    pattern = mul(mul(x2, inner), c_half) | mul(x2, mul(inner, c_half)) | mul(mul(x2, c_half), inner)

    def rewrite(call, m):
        scale = math.sqrt(2) if divided in m else 1 / math.sqrt(2)  # x / sqrt(2) or x * (1 / sqrt(2))
        if not (m[x].same_as(m[x2]) and _is(m[c_arg], scale) and _is(m[c_one], 1.0) and _is(m[c_half], 0.5)):
            return call
        return relax.op.nn.gelu(m[x])

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod

