"""Convs over flat rows: integer depthwise convs (stride 1 or 2) and RGB stems -> vector loops.

A depthwise conv over small images (EfficientNet's 28x28, 14x14, 7x7 layers) vectorizes
badly along its output rows: 14 or 7 lanes, a tail per row, 25 taps each. Computed over the
padded width instead, the output is one flat row per channel, and every tap a shifted
contiguous slice of the flat padded input:

    xp = pad(x)[c, Hp * Wp (+ a tail)]                     flat, zero-padded
    acc[c, y * Wp + x] = sum_{ry, rx} xp[c, (y * Wp + x) + ry * Wp + rx] * w[c, ry, rx]
    out[c, y, x] = acc[c, y * Wp + x]                      for x < Wo (the rest is discarded)

so a vector of 16 outputs takes one unaligned load and one multiply-add per tap, at the price
of computing Wp - Wo extra columns per row (e.g. 18 for 14). Stride 2 first splits the padded
input into its 4 phases (even/odd rows and columns), each a stride-1 problem of half the
width. A stem (a conv over <= 4 input channels, x86 only: on aarch64 LLVM makes `sdot` of its
default loops) sums its few input channels the same way. The integer sums are those of the
conv itself: bit-exact. Runs before legalization on CPU targets; `cpu_schedules.py` schedules
the `dwflat_conv` block (parallel over channels, 16 lanes, accumulators in registers).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

BLOCK = "dwflat_conv"
WIDTH = "dwflat_width"  # the pad block's annotation: the phase width the schedule splits rows by
STEM_CHANNELS = 4  # a conv over this few input channels (an RGB(A) or gray stem) runs over flat rows too
LANES = 16  # int32 lanes of a 512-bit vector
_INT8 = ("int8", "uint8")


def depthwise_flat_te(x: te.Tensor, w: te.Tensor, pads: tuple[int, int, int, int], stride: int = 1,
                      groups: int | None = None, corr: te.Tensor | None = None) -> te.Tensor:
    """out[n, f, y, x] of a conv (weights [O, C/groups, kh, kw]) over flat rows. Stride 2 splits
    the padded input into its 4 phases (even/odd rows and columns), each a stride-1 image of
    half the size: tap (ry, rx) reads phase (ry % 2, rx % 2) at offset (ry // 2, rx // 2).
    With `corr` (128 * the sum of each output channel's weights), int8 inputs are padded as
    uint8 x + 128 and the correction subtracted from the sums: LLVM multiplies zero-extended
    bytes with `vpmaddwd`, sign-extended ones with `vpmulld` (2 uops, 10 cycles)."""
    n, c, h, wd = x.shape
    o_ch, per_group, kh, kw = (int(d) for d in w.shape)
    groups = groups or int(c)
    top, left, bottom, right = pads
    hp, wp = int(h) + top + bottom, int(wd) + left + right
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    hq, wq = -(-hp // stride), -(-wp // stride)  # one phase: the padded image, every stride-th pixel
    rows = -(-ho * wq // LANES) * LANES  # flat outputs, whole vectors
    reach = ((kh - 1) // stride) * wq + (kw - 1) // stride
    flat = -(-(rows + reach) // wq) * wq  # whole phase rows, so that the schedule splits the flat
    # index into (row, column) without a division; the discarded columns read past the image

    def padded(b, ch, y, xx):
        y, xx = y - top, xx - left
        inside = tirx.all(y >= 0, y < int(h), xx >= 0, xx < int(wd))
        if corr is not None:
            return tirx.if_then_else(inside, (x[b, ch, y, xx].astype("int16") + 128).astype("uint8"),
                                     tirx.const(128, "uint8"))
        return tirx.if_then_else(inside, x[b, ch, y, xx], tirx.const(0, x.dtype))

    if stride == 1:
        xp = te.compute((n, c, 1, 1, flat), lambda b, ch, py, px, i: padded(b, ch, i // wq, i % wq),
                        name="dwflat_pad", attrs={WIDTH: wq})
    else:  # the zero-padded image first (rows of contiguous loads), then its phases: a gather
        # without conditions, which LLVM vectorizes (a strided gather with the bounds checks
        # did not: 2.6 ns per output, 4x the stride-1 convs, in EfficientNet-Lite0)
        image = te.compute((n, c, stride * (flat // wq), stride * wq), padded, name="dwflat_image")
        xp = te.compute((n, c, stride, stride, flat), lambda b, ch, py, px, i: image[
            b, ch, stride * (i // wq) + py, stride * (i % wq) + px], name="dwflat_pad", attrs={WIDTH: wq})
    rc = te.reduce_axis((0, per_group), name="rc")
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    outs_per_group = o_ch // groups

    def conv(b, f, o):
        ch = (f // outs_per_group) * per_group + rc
        tap = xp[b, ch, ry % stride, rx % stride, o + (ry // stride) * wq + rx // stride]
        return te.sum(tap.astype("int32") * w[f, rc, ry, rx].astype("int32"), axis=[rc, ry, rx])

    acc = te.compute((n, o_ch, rows), conv, name=BLOCK)
    if corr is not None:
        return te.compute((n, o_ch, ho, wo), lambda b, f, y, xx: acc[b, f, y * wq + xx] - corr[f], name="dwflat_out")
    return te.compute((n, o_ch, ho, wo), lambda b, f, y, xx: acc[b, f, y * wq + xx], name="dwflat_out")


def _x86() -> bool:
    target = tvm.target.Target.current(allow_none=True)
    triple = str(target.attrs.get("mtriple", "") or "") if target is not None else ""
    return target is not None and target.kind.name == "llvm" and (not triple or triple.startswith("x86_64"))


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
        channels, groups = int(shape[1]), int(a.groups)
        strides = {int(v) for v in a.strides}
        depthwise = groups == channels and weights.shape[:2] == (channels, 1)
        stem = groups == 1 and channels <= STEM_CHANNELS and _x86()  # aarch64: LLVM makes sdot of its loops
        if (weights.dtype != np.int8 or not (depthwise or stem) or weights.shape[2] * weights.shape[3] == 1
                or len(strides) != 1 or strides - {1, 2} or any(int(d) != 1 for d in a.dilation)
                or int(shape[3]) < 4):
            return call
        pads = tuple(int(p) for p in a.padding)
        corr = None
        if str(x.ty.dtype) == "int8":  # shifted to uint8 (see depthwise_flat_te)
            sums = weights.astype(np.int64).reshape(weights.shape[0], -1).sum(1)
            corr = relax.const((128 * sums).astype("int32"), "int32")
        return self.builder_.call_te(depthwise_flat_te, x, w, pads, strides.pop(), groups, corr,
                                     primfunc_name_hint="dwflat_conv2d")


@tvm.transform.module_pass(opt_level=0, name="FlatDepthwise")
def flat_depthwise(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every stride-1 integer depthwise conv with constant weights (see module doc)."""
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
