"""use_int4_dot_kernels(family): the lowering's 4-bit matmuls and convs -> the x86 kernels of
`vnni_int4_kernels.py` (the 4-bit twin of `vnni_rewrite.py`; `schedule_int4_dot_kernels`, the
pass that schedules them, comes from there). Runs on the integer Relax module before
legalization, for LLVM x86 targets with a dot-product kernel family, after `vnni_rewrite.py`, which
gives AMX tiles the 4-bit pointwise convs and many-row matmuls they take (their weights unpacked per
call: `int4_taps.dense`).

    call_tir(int4_matmul, [x, packed W[K, N]])     -> {dot}_dense4[_staged](x', tiles4(W^T))
    call_tir(int4_conv2d, [x, packed W[O,C,1,1]])  -> {dot}_conv_lanes_pixels4[_staged](interleaved(x'), W4)
                                                      (rows padded where that pays: vnni_rewrite.padded_width)
                                                   -> {dot}_conv_lanes_out4_packed_staged(interleaved(x'), tiles4(W))
                                                   -> {dot}_conv_lanes_out4(transpose(x'), tiles4(W))  (one tile)
    call_tir(int4_conv2d, [x, packed W[C,1,kh,kw]]) -> dwflat_conv2d_int4(x, packed)    (and RGB stems)

The lowering (`passes/lowering/int4.py`) marks its kernels with the `intq.int4` PrimFunc
attribute (the op and its geometry); this pass reads the flat packed constant back and stores
the weights again at 4 bits in the layout of the kernel it picks (the flat-row convs keep the
lowering's). The recipe, the tiles and the int8 -> uint8 shift are those of `vnni_rewrite.py`,
plus: K a multiple of two k-steps, the x16 accumulator exact (`x16_safe`), and `vpmaddubsw`
only where `maddubs_safe` proves it for the x16 weights. Anything else keeps the lowering's
plain `int4_*` kernel, which every other target uses too.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from passes.reference.int4 import pack_int4_tiles, unpack_int4

from . import vnni
from .interleave import interleaved
from .kernel_family import MADDUBS, Dot, Family, maddubs_safe
from .schedule_common import static_factor
from .vnni_rewrite import padded_width
from .vnni_int4_kernels import (  # noqa: F401 (schedule_int4_dot_kernels: for cpu_pipeline.py)
    conv_lanes_out4_packed_staged_te,
    conv_lanes_out4_te,
    conv_lanes_pixels4_staged_te,
    conv_lanes_pixels4_te,
    dense4_staged_te,
    dense4_te,
    flat_conv4_te,
    schedule_int4_dot_kernels,
)

ATTR = "intq.int4"  # the lowering's PrimFunc attribute: {"op": "matmul"|"conv2d", "weight_shape", ...}
_INT8 = ("int8", "uint8")

def x16_safe(k: int, a_max: int) -> bool:
    """The x16 accumulator of a reduction of length k over activations up to a_max fits int32."""
    return k * a_max * 8 * 16 < 2**31


def staged(uses, per_tile) -> bool:
    """Unpack into an int8 stage when a weight block serves several tiles (`uses` rows or pixels,
    `per_tile` of them per tile; a symbolic batch counts as several), else in registers."""
    return not isinstance(uses, int) or uses > per_tile


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, family: Family):
        super().__init__(mod)
        self.family, self.mod_ = family, mod

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op != tvm.ir.Op.get("relax.call_tir") or not isinstance(call.args[0], tvm.ir.GlobalVar):
            return call
        func = self.mod_.functions.get(call.args[0]) if call.args[0] in self.mod_.functions else None
        geometry = func.attrs.get(ATTR) if isinstance(func, tvm.tirx.PrimFunc) and func.attrs else None
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        if geometry is None or len(args) != 2 or not isinstance(args[1], tvm.ir.GenericConst):
            return call
        x = args[0]
        shape = getattr(x.ty, "shape", None)
        if (str(getattr(x.ty, "dtype", "")) not in _INT8 or shape is None or not shape
                or not all(isinstance(d, tvm.tirx.IntImm) for d in list(shape)[1:])):
            return call
        x_shape = [int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in shape]
        w_shape = [int(d) for d in geometry["weight_shape"]]
        w_q = unpack_int4(args[1].value.numpy(), w_shape)
        if str(geometry["op"]) == "matmul":
            new = self._matmul(x, x_shape, w_q)
        else:
            new = self._conv(x, x_shape, w_q, geometry)
            if new is None:
                new = self._flat_conv(x, x_shape, w_q, geometry, args[1])
        return call if new is None else new

    def _dot(self, w_nk: np.ndarray, fits) -> Dot | None:
        """The family's first recipe whose 2k divides K, that fits, and whose x16 sums are exact."""
        k = w_nk.shape[1]
        return next((d for d in self.family.dots if k % (2 * d.k) == 0 and fits(d) and x16_safe(k, 255)
                     and (d is not MADDUBS or maddubs_safe(16 * w_nk.astype(np.int64), 255))), None)

    def _prepared(self, x: relax.Expr, dot: Dot) -> relax.Expr:
        return vnni.prepare_activation(self.builder_, x, dot)

    def _kernel(self, compute, dot: Dot, x, activations, weights: np.ndarray, w_sum: np.ndarray, *shape_args):
        args = [self.builder_.emit(activations), relax.const(weights, "uint8"), *shape_args]
        if dot.shift and str(x.ty.dtype) != "uint8":
            args.append(relax.const((128 * w_sum).astype("int32")))
        return self.builder_.call_te(compute, *args, dot=dot.name,
                                     primfunc_name_hint=f"{dot.name}_{compute.__name__.removesuffix('_te')}")

    def _matmul(self, x, x_shape, w_q: np.ndarray):
        if len(x_shape) < 2 or w_q.ndim != 2:
            return None
        k, n = w_q.shape
        rows = vnni.padded_rows(x_shape[-2])
        whole = lambda d: -(-n // d.lanes) * d.lanes
        dot = self._dot(w_q.T, lambda d: vnni.dense_tile(static_factor(rows), whole(d), d) is not None)
        if dot is None:
            return None
        w_pad = np.pad(w_q, [(0, 0), (0, whole(dot) - n)])
        a = self._prepared(x, dot)
        if rows != x_shape[-2]:
            a = self.builder_.emit(vnni.pad_rows(a, rows - x_shape[-2]))
        tile = vnni.dense_tile(static_factor(rows), whole(dot), dot)
        compute = dense4_staged_te if staged(rows, tile[0]) else dense4_te
        out = self._kernel(compute, dot, x, a, pack_int4_tiles(w_pad.T, dot.lanes, dot.k),
                           w_pad.astype(np.int64).sum(0))
        return vnni.slice_back(self.builder_, out, x_shape[-2], rows, n, whole(dot))

    def _flat_conv(self, x, x_shape, w_q: np.ndarray, g, packed: relax.Expr):
        """A depthwise conv or RGB stem -> the flat-row kernel on the unpacked weights, or None."""
        from .depthwise import STEM_CHANNELS

        ints = lambda key: [int(v) for v in g[key]]
        channels, groups, strides = x_shape[1], int(g["groups"]), set(ints("strides"))
        depthwise = groups == channels and w_q.shape[:2] == (channels, 1)
        stem = groups == 1 and channels <= STEM_CHANNELS
        if (len(x_shape) != 4 or not (depthwise or stem) or w_q.shape[2] * w_q.shape[3] == 1 or len(strides) != 1
                or strides - {1, 2} or any(v != 1 for v in ints("dilation")) or x_shape[3] < 4):
            return None
        corr = None
        if str(x.ty.dtype) == "int8":  # padded as uint8 x + 128 (depthwise_flat_te)
            corr = relax.const((128 * w_q.astype(np.int64).reshape(w_q.shape[0], -1).sum(1)).astype("int32"))
        return self.builder_.call_te(flat_conv4_te, x, packed, tuple(w_q.shape), tuple(ints("padding")),
                                     strides.pop(), groups, corr, primfunc_name_hint="dwflat_conv2d_int4")

    def _conv(self, x, x_shape, w_q: np.ndarray, g):
        ints = lambda key: [int(v) for v in g[key]]
        if (len(x_shape) != 4 or int(g["groups"]) != 1 or list(w_q.shape[2:]) != [1, 1] or any(ints("padding"))
                or any(v != 1 for v in ints("strides")) or any(v != 1 for v in ints("dilation"))):
            return None
        n, c, h, wd = x_shape
        o = w_q.shape[0]
        lead = [] if isinstance(n, int) and n == 1 else [n]
        w2 = w_q.reshape(o, c)
        w_sum = w2.astype(np.int64).sum(1)
        dot = self._dot(w2, lambda d: vnni.conv_tile(vnni.CONV_LANES_PIXELS, o, h, wd, d) is not None)
        if dot is not None:
            return self._lanes_pixels(x, w2, w_sum, dot, h, wd, wd)
        dot = self._dot(w2, lambda d: padded_width(o, c, h, wd, d) is not None)
        if dot is not None:  # rows zero-padded to whole tiles, the padded columns sliced off (as at 8 bits)
            out = self._lanes_pixels(x, w2, w_sum, dot, h, wd, padded_width(o, c, h, wd, dot))
            return relax.op.strided_slice(self.builder_.emit(out), axes=[3], begin=[0], end=[wd])
        dot = self._dot(w2, lambda d: vnni.conv_tile(vnni.CONV_LANES_OUT, o, h, wd, d) is not None)
        if dot is None:
            return None
        tiles = pack_int4_tiles(w2, dot.lanes, dot.k)
        if staged(h * wd, vnni.conv_tile(vnni.CONV_LANES_OUT, o, h, wd, dot)[0]):
            # the 8-bit kernel's interleaved input, a repack of loads and shuffles (a transpose is a gather)
            xp = interleaved(self.builder_, self._prepared(x, dot), dot.k, c, wd)
            return self._kernel(conv_lanes_out4_packed_staged_te, dot, x, xp, tiles, w_sum, h, wd)
        xt = relax.op.permute_dims(relax.op.reshape(self._prepared(x, dot), [*lead, c, h * wd]),
                                   [*range(len(lead)), len(lead) + 1, len(lead)])
        return self._kernel(conv_lanes_out4_te, dot, x, xt, tiles, w_sum, h, wd)

    def _lanes_pixels(self, x, w2: np.ndarray, w_sum: np.ndarray, dot: Dot, h: int, wd: int, width: int):
        """The conv on lanes over pixels, its activations interleaved ([(B,) C/k, H * width, k]: `interleave.py`)
        with each row zero-padded to `width`."""
        o, c = w2.shape
        kk = dot.k
        xp = interleaved(self.builder_, self._prepared(x, dot), kk, c, width)
        w4 = pack_int4_tiles(w2, 1, kk).reshape(o, c // (2 * kk), kk)
        lanes = vnni.conv_tile(vnni.CONV_LANES_PIXELS, o, h, width, dot)[1] * dot.lanes
        compute = conv_lanes_pixels4_staged_te if staged(h * width, lanes) else conv_lanes_pixels4_te
        return self._kernel(compute, dot, x, xp, w4, w_sum, h, width)


def use_int4_dot_kernels(family: Family):
    """A pass that rewrites every eligible 4-bit matmul/pointwise conv into a kernel of `family`."""

    @tvm.transform.module_pass(opt_level=0, name="UseInt4DotKernels")
    def rewrite(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not any(isinstance(f, tvm.tirx.PrimFunc) and f.attrs and ATTR in f.attrs for f in mod.functions.values()):
            return mod
        rewriter = _Rewriter(mod, family)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return rewrite
