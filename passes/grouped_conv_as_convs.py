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
from tvm.relax.expr_functor import PyExprMutator, mutator

MAX_GROUPS = 64  # beyond this, a kernel per group costs more in calls than it saves


@mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d" or len(call.args) != 2:
            return call
        x, w = call.args
        a = call.attrs
        shape = getattr(x.ty, "shape", None)
        groups = int(a.groups)
        if (not isinstance(w, tvm.ir.GenericConst) or shape is None or len(shape) != 4 or groups == 1
                or not isinstance(shape[1], tvm.tirx.IntImm) or groups >= int(shape[1]) or groups > MAX_GROUPS
                or str(x.ty.dtype) not in ("int8", "uint8") or str(call.ty.dtype) != "int32"
                or a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW"):
            return call
        weights = w.value.numpy()
        per_in, per_out = int(shape[1]) // groups, weights.shape[0] // groups
        parts = []
        for g in range(groups):
            xg = self.builder_.emit(relax.op.strided_slice(x, axes=[1], begin=[g * per_in], end=[(g + 1) * per_in]))
            parts.append(self.builder_.emit(relax.op.nn.conv2d(
                xg, relax.const(weights[g * per_out:(g + 1) * per_out]), a.strides, a.padding, a.dilation,
                out_dtype="int32")))
        return relax.op.concat(parts, axis=1)


@tvm.transform.module_pass(opt_level=0, name="GroupedConvAsConvs")
def grouped_conv_as_convs(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every integer grouped (not depthwise) NCHW conv with constant weights (see module doc)."""
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
