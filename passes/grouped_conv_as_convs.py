"""GroupedConvAsConvs: an integer grouped conv (1 < groups < channels: ResNeXt, RegNet, ShuffleNet)
is one conv per group, concatenated along the channels:

    conv2d(x[N, C, H, W], w[O, C/g, kh, kw], groups g)
    ==> concat([conv2d(x[:, i*C/g:(i+1)*C/g], w[i*O/g:(i+1)*O/g]) for i in range(g)], axis=1)

Each group's conv then runs on the CPU conv kernels (`targets/vnni.py`, `conv_as_pointwise.py`);
grouped convs have none of their own (TVM's default loops). The same sums: bit-identical.
Depthwise convs (groups == channels) keep their own kernels (`targets/depthwise.py`).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .call_rewrite import integer_conv, rewrite_calls

MAX_GROUPS = 64  # beyond this, a kernel per group costs more in calls than it saves


def _rewrite(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    operands = integer_conv(call)
    if operands is None:
        return call
    x, weights, a = operands
    shape, groups = x.ty.shape, int(a.groups)
    if groups == 1 or groups >= int(shape[1]) or groups > MAX_GROUPS:
        return call
    per_in, per_out = int(shape[1]) // groups, weights.shape[0] // groups
    parts = []
    for g in range(groups):
        xg = builder.emit(relax.op.strided_slice(x, axes=[1], begin=[g * per_in], end=[(g + 1) * per_in]))
        parts.append(builder.emit(relax.op.nn.conv2d(
            xg, relax.const(weights[g * per_out:(g + 1) * per_out]), a.strides, a.padding, a.dilation,
            out_dtype="int32")))
    return relax.op.concat(parts, axis=1)


@tvm.transform.module_pass(opt_level=0, name="GroupedConvAsConvs")
def grouped_conv_as_convs(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every integer grouped (not depthwise) NCHW conv with constant weights (see module doc)."""
    return rewrite_calls(mod, "relax.nn.conv2d", _rewrite)
