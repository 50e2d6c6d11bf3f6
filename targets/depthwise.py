"""Depthwise convs over flat rows: stride-1 integer depthwise convs -> one vector loop per channel.

A depthwise conv over small images (EfficientNet's 28x28, 14x14, 7x7 layers) vectorizes
badly along its output rows: 14 or 7 lanes, a tail per row, 25 taps each. Computed over the
padded width instead, the output is one flat row per channel, and every tap a shifted
contiguous slice of the flat padded input:

    xp = pad(x)[c, Hp * Wp (+ kw - 1)]                     flat, zero-padded
    acc[c, y * Wp + x] = sum_{ry, rx} xp[c, (y * Wp + x) + ry * Wp + rx] * w[c, ry, rx]
    out[c, y, x] = acc[c, y * Wp + x]                      for x < Wo (the rest is discarded)

so a vector of 16 outputs takes one unaligned load and one multiply-add per tap, at the price
of computing Wp - Wo extra columns per row (e.g. 18 for 14). The integer sums are those of
the conv itself: bit-exact. Runs before legalization on CPU targets; `cpu_schedules.py`
schedules the `dwflat_conv` block (parallel over channels, 16 lanes, accumulators in
registers, the requantization epilogue per channel).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

BLOCK = "dwflat_conv"
LANES = 16  # int32 lanes of a 512-bit vector
_INT8 = ("int8", "uint8")


def depthwise_flat_te(x: te.Tensor, w: te.Tensor, pads: tuple[int, int, int, int]) -> te.Tensor:
    """out[n, c, y, x] of a stride-1 depthwise conv (weights [C, 1, kh, kw]), via flat rows."""
    n, c, h, wd = x.shape
    kh, kw = int(w.shape[2]), int(w.shape[3])
    top, left, bottom, right = pads
    hp, wp = int(h) + top + bottom, int(wd) + left + right
    ho, wo = hp - kh + 1, wp - kw + 1
    rows = -(-ho * wp // LANES) * LANES  # flat outputs, whole vectors
    flat = -(-(rows + (kh - 1) * wp + kw - 1) // wp) * wp  # the discarded columns read past the image;
    # whole padded rows, so that the schedule splits the flat index into (row, column) without a division

    def padded(b, ch, i):
        y, xx = i // wp - top, i % wp - left
        inside = tirx.all(i < hp * wp, y >= 0, y < int(h), xx >= 0, xx < int(wd))
        return tirx.if_then_else(inside, x[b, ch, y, xx], tirx.const(0, x.dtype))

    xp = te.compute((n, c, flat), padded, name="dwflat_pad")
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    acc = te.compute((n, c, rows), lambda b, ch, o: te.sum(
        xp[b, ch, o + ry * wp + rx].astype("int32") * w[ch, 0, ry, rx].astype("int32"), axis=[ry, rx]), name=BLOCK)
    return te.compute((n, c, ho, wo), lambda b, ch, y, xx: acc[b, ch, y * wp + xx], name="dwflat_out")


@mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d" or len(call.args) != 2:
            return call
        x, w = call.args
        a = call.attrs
        shape = getattr(x.ty, "shape", None)
        if (not isinstance(w, tvm.ir.GenericConst) or shape is None or len(shape) != 4
                or str(x.ty.dtype) not in _INT8 or str(call.ty.dtype) != "int32"
                or not all(isinstance(d, tvm.tirx.IntImm) for d in list(shape)[1:])
                or a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW"):
            return call
        weights = w.value.numpy()
        channels = int(shape[1])
        if (weights.dtype != np.int8 or int(a.groups) != channels or weights.shape[:2] != (channels, 1)
                or weights.shape[2] * weights.shape[3] == 1 or any(int(s) != 1 for s in a.strides)
                or any(int(d) != 1 for d in a.dilation) or int(shape[3]) < 4):
            return call
        pads = tuple(int(p) for p in a.padding)
        return self.builder_.call_te(depthwise_flat_te, x, w, pads, primfunc_name_hint="dwflat_conv2d")


@tvm.transform.module_pass(opt_level=0, name="FlatDepthwise")
def flat_depthwise(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every stride-1 integer depthwise conv with constant weights (see module doc)."""
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
