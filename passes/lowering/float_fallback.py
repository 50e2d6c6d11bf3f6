"""Float fallback (only with `allow_float`): an op without an integer lowering runs in
float between a dequantize and a quantize.

    op(x_i)  ->  q(op(deq(x_i)))   with deq(q) = float(q) * S,  q(y) = clip(round(y / S_y))

The result is not integer-only; the verifier says so and the manifest records it.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..reference.kernels import INT_RANGE
from .context import activation_scale
from .values import Quantized

R = relax.op


def float_fallback(ctx, call, args):
    def to_float(value):
        if isinstance(value, np.ndarray):
            return relax.const(value)
        if isinstance(value, list):
            return relax.Tuple([to_float(v) for v in value])
        if isinstance(value, relax.Expr) and not isinstance(value, relax.Var):
            return value  # shapes and prim values
        q = ctx.materialize(value)
        return R.multiply(R.astype(q.expr, "float32"), relax.const(q.scale, "float32"))

    y = ctx.emit(relax.Call(call.op, [to_float(a) for a in args], call.attrs))
    if not isinstance(y.ty, relax.TensorType) or not str(y.ty.dtype).startswith("float"):
        ctx.fail(f"float fallback for {call.op.name} supports float tensor results only")
    scale = activation_scale(*ctx.out_range(), "int8")
    q = R.clip(R.round(R.divide(y, relax.const(scale, str(y.ty.dtype)))), *INT_RANGE["int8"])
    return Quantized(ctx.emit(R.astype(q, "int8")), scale, "int8")
