"""use_dot_kernels(family): int8 matmuls and pointwise convs with constant weights -> x86
dot-product kernels (`vnni.py`) of the target's kernel family (`kernel_family.py`).

Runs on the integer Relax module before legalization, for LLVM x86 targets.

    matmul(x[..., K], W[K, N]) -> {dot}_dense(x', pack(W^T))                         lanes over N
    matmul(A[..., M, K], B[..., K, N]) -> {dot}_dense(A', pack(B) at run time)   `act_matmul.py`
    conv2d(x[1, C, H, W], W[O, C, 1, 1])               (a batch B, maybe symbolic: [B, ...] repacks)
        -> {dot}_conv_lanes_pixels(interleave(x')[C/k, H*W, k], W[O, C])        big images
        -> {dot}_conv_lanes_out_packed(interleave(x')[C/k, H*W, k], pack(W))    small images
        -> amx_conv(interleave(x)[(B,) C/4, H*W', 4], W)       AMX, rows padded to W' (`_tile_conv`)
    conv2d(x, W[O, C, kh, kw])  -> {dot}_conv_taps / amx_taps (`_conv_taps`); else patches (conv_as_pointwise)
    int4_conv2d (the lowering's 4-bit spatial conv) -> the same taps kernels, W unpacked per call (`int4_taps.py`)
    int4_conv2d 1x1 / int4_matmul, AMX              -> amx_conv / amx_dense, W unpacked per call, where tiles pay

The first of the family's recipes that fits is used: its shape rules (K or C a multiple of
its k, a tile of whole vectors) and, for `vpmaddubsw`, the compile-time proof that no pair
saturates (`maddubs_safe`, activations up to 255). u8 x s8 recipes take an int8 activation
shifted into uint8 (x + 128) and take the shift back exactly with a constant per output
channel: sum_k (x_k + 128) w_k - 128 sum_k w_k = sum_k x_k w_k. The int16 recipe widens x
and W instead (no shift). Shapes no recipe fits keep the generic
lowering, and so does any call it cannot read (tuple results, non-tensor arguments: never an
error).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from frontends.relax_rewrite import drop_unused_bindings
from passes.conv_as_pointwise import OPAQUE, PATCHES_ATTR, patches, pixel_patches_te, window_patches

from . import act_matmul, amx, int4_taps, taps_input, vnni
from .interleave import interleaved
from .kernel_family import MADDUBS, Dot, Family, maddubs_safe
from .schedule_common import static_factor


# Output rows this narrow (by the recipe's lanes) take a dense product over their patches instead of the
# taps kernel, whose tiles run along a row. Measured at 1 thread on a Zen 4, taps -> patches, 3x3 convs:
# 16 lanes (AVX-512 VNNI): 512 ch at 7x7 4.74 -> 0.66 ms, 256 ch at 14x14 2.20 -> 0.80, 256 ch at 16x16
# 2.47 -> 1.10, 128 ch at 16x16 0.61 -> 0.50; 4x4 stride-2 convs at batch 4 (ICLabel) 4.60 -> 0.89 and
# 10.4 -> 2.5 ms; but at 20x20 0.47 -> 0.56, 28x28 0.68 -> 1.31 (taps faster). 8 lanes (x86-64-v3 code,
# the avx2 family's int16 recipe): 7x7 4.89 -> 1.61, 14x14 3.29 -> 1.74, but 128 ch at 16x16 0.69 -> 0.85.
PATCHES_UP_TO = {16: 16, 8: 14}
TILE_TAPS_PADDING = 2.0  # channels a spatial conv on AMX tiles may pad to whole 64-deep steps: up to twice
AVX2_PADDED_BYTES = 1 << 20  # packed activations above which AVX2 keeps lanes over outputs for rows padded


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _shape(expr) -> list | None:
    """Static dims as ints; a symbolic leading dim (a batch: passes/generalize_batch.py) stays an expression."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not shape or not all(isinstance(d, tvm.tirx.IntImm) for d in list(shape)[1:]):
        return None
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in shape]


def _sample_rows(x_shape: list, k: int, tiles: bool) -> list | None:
    """[n, r, K] for a matmul input of n * r rows [n * r, K] (a free batch folded into the rows) whose r
    rows a batch-1 kernel takes better than one symbolic row count: rows it pads to whole tiles
    (`vnni.padded_rows`: 257 tokens, 260 rows; as one count tiled by 257's divisors, tiles of one row, a
    DINOv2's matmuls ran at half the static kernel's speed a sample), or, with `tiles`, rows AMX tiles take
    (`_tiles_pay`; as one count the free-batch library ran MiniLM's FFN on the VNNI kernels). None otherwise."""
    if len(x_shape) != 2 or isinstance(x_shape[0], int):
        return None
    per = static_factor(x_shape[0])
    if vnni.padded_rows(per) == per and not (tiles and _tiles_pay(k, per)):
        return None
    return [tvm.sym.Analyzer().simplify(tvm.tirx.floordiv(x_shape[0], per)), per, x_shape[1]]


def _whole_steps(w: np.ndarray, axis: int, dot: Dot) -> np.ndarray:
    """`w` with its reduction `axis` zero-padded to whole dot-product steps."""
    extra = -(-int(w.shape[axis]) // dot.k) * dot.k - int(w.shape[axis])
    widths = [(0, 0)] * w.ndim
    widths[axis] = (0, extra)
    return np.pad(w, widths) if extra else w


U8_MAX = 255  # the bound of (shifted) activations that the saturation proof assumes


def padded_width(o: int, c: int, h: int, wd: int, d: Dot) -> int | None:
    """The width to which a pointwise conv's rows are zero-padded for lanes over pixels where that pays (see
    `_Rewriter._padded_rows`), else None: the narrowest padded width up to whole vectors that a tile of >= 7
    accumulators covers in whole rows or parts of one (52 -> 56: two rows of 56 are the (2, 7) tile's 112
    pixels), where it wastes at most an eighth, or at most half and lanes over outputs would take a tile of
    fewer than 8 accumulators; on AVX2 not for activations above AVX2_PADDED_BYTES."""
    tiles = ((wide, vnni.conv_tile(vnni.CONV_LANES_PIXELS, o, h, wide, d))
             for wide in range(wd + 1, -(-wd // d.lanes) * d.lanes + 1))
    wide = next((wide for wide, tile in tiles if tile is not None and tile[0] * tile[1] >= 7), None)
    if wide is None or (d.registers == 16 and c * h * wide * vnni.DTYPE_BYTES[d.a_dtype] > AVX2_PADDED_BYTES):
        return None
    out = vnni.conv_tile(vnni.CONV_LANES_OUT, o, h, wd, d)
    pays = 8 * (wide - wd) <= wide or (2 * (wide - wd) <= wide and (out is None or out[0] * out[1] < 8))
    return wide if pays else None


def _tiles_pay(k: int, rows) -> bool:
    """A constant-weight matmul of reduction `k` over `rows` rows pays on AMX tiles (not few or symbolic rows)."""
    return amx.reduction(k) is not None and isinstance(rows, int) and rows >= amx.MIN_ROWS


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, family: Family):
        super().__init__(mod)
        self.family, self.mod_ = family, mod
        self._nibbles = False  # the weights of the kernel being built are 4-bit values, stored so (`_weights`)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        spatial4 = int4_taps.spatial_conv(self.mod_, self.lookup_binding, call) if self.family.dots else None
        if spatial4 is not None:  # a 4-bit spatial conv: the taps kernels, the weights unpacked per call
            x, w4, attrs, patched = spatial4
            shape = _shape(x)
            if shape is None or len(shape) != 4 or str(x.ty.dtype) not in ("int8", "uint8"):
                return call
            self._nibbles = True
            try:
                new = self._conv_taps(x, w4, shape, attrs)
                if new is None and patched is not None:  # rows the taps leave to patches: the 8-bit pointwise conv
                    kernel, pw = tuple(w4.shape[2:]), patched  # over the 8-bit convs' patches (flat copies, tagged)
                    cols = self.builder_.emit(patches(self.builder_, x, int(pw.shape[1]), kernel, attrs.strides,
                                                      attrs.padding, attrs.dilation))
                    new = self._conv(self.builder_.normalize(relax.op.nn.conv2d(cols, relax.const(pw), out_dtype="int32")))
            finally:
                self._nibbles = False
            return call if new is None else new
        dense4 = int4_taps.dense(self.mod_, call) if self.family.tiles else None
        if dense4 is not None:  # a 4-bit matmul or pointwise conv: AMX tiles where they pay (else `vnni_int4.py`)
            new = self._tile_dense4(*dense4)
            return call if new is None else new
        # tuples (split, float fallbacks), non-tensor args and unknown shapes keep the generic lowering
        if (not isinstance(call.op, tvm.ir.Op) or not isinstance(call.ty, relax.TensorType)
                or str(call.ty.dtype) != "int32" or len(call.args) != 2
                or not all(isinstance(a.ty, relax.TensorType) for a in call.args)):
            return call
        rewrite = {"relax.matmul": self._matmul, "relax.nn.conv2d": self._conv}.get(call.op.name)
        new = rewrite(call) if rewrite else None
        return call if new is None else new

    def _dot(self, x: relax.Expr, w_nk: np.ndarray, k: int, fits) -> Dot | None:
        """The family's first recipe for `x`'s dtype that `fits(dot)` and (maddubs) is proven safe;
        a reduction length `k` its step does not divide is zero-padded by the caller (`_padded`)."""
        return next((d for d in self.family.recipes(str(x.ty.dtype)) if fits(d)
                     and (d is not MADDUBS or maddubs_safe(w_nk, U8_MAX))), None)

    def _padded(self, x: relax.Expr, w: np.ndarray, axis: int, w_axis: int, dot: Dot):
        """(x, w) with the reduction axis zero-padded to whole dot-product steps: a pruned net's 486
        channels ran TVM's generic loops (zero weights there: the sums are unchanged)."""
        k = int(w.shape[w_axis])
        extra = -(-k // dot.k) * dot.k - k
        if not extra:
            return x, w
        widths = [0] * (2 * len(x.ty.shape))
        widths[2 * axis + 1] = extra
        return self.builder_.emit(relax.op.nn.pad(x, widths)), _whole_steps(w, w_axis, dot)

    def _prepared(self, x: relax.Expr, dot: Dot) -> relax.Expr:
        return vnni.prepare_activation(self.builder_, x, dot)

    def _kernel(self, compute, dot: Dot, x: relax.Expr, activations: relax.Expr, weights: np.ndarray,
                w_sum: np.ndarray | None, *shape_args, **te_args) -> relax.Expr:
        """call_te of `compute`, with the +128 correction for shifted int8 activations."""
        args = [self.builder_.emit(activations), self._weights(weights, x), *shape_args]
        if dot.shift and str(x.ty.dtype) != "uint8":
            args.append(relax.const((128 * w_sum).astype("int32")))
        return self.builder_.call_te(compute, *args, dot=dot.name, **te_args,
                                     primfunc_name_hint=f"{dot.name}_{compute.__name__.removesuffix('_te')}")

    def _weights(self, weights: np.ndarray, x: relax.Expr) -> relax.Expr:
        """The kernel's weight operand: a constant, or for 4-bit weights their unpacking (`int4_taps.stored`)."""
        return int4_taps.stored(self.builder_, weights, x) if self._nibbles else relax.const(weights)

    def _matmul(self, call: relax.Call):
        x, w = call.args
        if _const(x) is None and _const(w) is None:  # two activations: the right one packed at run time
            return act_matmul.rewrite(self.builder_, call, self.family)
        w_np, x_shape = _const(w), _shape(x)
        if w_np is None or x_shape is None or len(x_shape) < 2 or w_np.ndim != 2:
            return None
        if w_np.dtype != np.int8:
            return None
        groups = _sample_rows(x_shape, int(w_np.shape[0]), self.family.tiles)
        if groups is not None:  # [n * 257, K]: each sample's rows padded to whole tiles, as at batch 1; AMX tiles
            grouped = self.builder_.emit(relax.op.reshape(x, groups))
            out = self._matmul(relax.Call(call.op, [grouped, w], call.attrs))
            if out is None:
                return None
            return relax.op.reshape(self.builder_.emit(out), [x_shape[0], w_np.shape[1]])
        if self.family.tiles:
            tiled = functools.partial(self._tile_matmul, w_np=w_np, x_shape=x_shape)
            tiled = self._byte_planes(x, tiled) if str(x.ty.dtype) == "int16" else tiled(x)
            if tiled is not None:
                return tiled
        k, n = w_np.shape
        rows = vnni.padded_rows(x_shape[-2])  # 257 tokens: 260 (zero rows, sliced off below)
        whole = lambda d: -(-n // d.lanes) * d.lanes  # columns padded to whole vectors (1000 classes: 1008)
        # n * 16 rows of a batch: tiles of its static factor
        dot = self._dot(x, w_np.T, k, lambda d: vnni.dense_tile(static_factor(rows), whole(d), d) is not None)
        if dot is None:
            return None
        x, w_np = self._padded(x, w_np, len(x_shape) - 1, 0, dot)
        w_pad = np.pad(w_np, [(0, 0), (0, whole(dot) - n)])  # zero columns, sliced off below
        a = self._prepared(x, dot)
        if rows != x_shape[-2]:
            a = self.builder_.emit(vnni.pad_rows(a, rows - x_shape[-2]))
        out = self._kernel(vnni.dense_te, dot, x, a, vnni.pack_weights(w_pad.T, dot), w_pad.astype(np.int64).sum(0))
        return vnni.slice_back(self.builder_, out, x_shape[-2], rows, n, whole(dot))

    def _tile_matmul(self, x: relax.Expr, w_np: np.ndarray, x_shape: list):
        """The matmul on AMX tiles (`amx.py`), rows, columns and reduction zero-padded to whole
        tiles and sliced back; None where the shapes do not pay (few or symbolic rows)."""
        dot, (k, n), rows = amx.recipe(str(x.ty.dtype)), w_np.shape, x_shape[-2]
        if dot is None or not _tiles_pay(k, rows):
            return None
        kp = amx.reduction(k)
        whole = lambda extent, tile: -(-extent // tile) * tile  # noqa: E731
        padded = whole(rows, amx.BLOCK_ROWS if rows > amx.BLOCK_ROWS else amx.ROWS)
        cols = whole(n, amx.ROWS)
        a = x
        if kp != k:
            a = self.builder_.emit(relax.op.nn.pad(a, [0, 0] * (len(x_shape) - 1) + [0, kp - k]))
        if padded != rows:
            a = self.builder_.emit(vnni.pad_rows(a, padded - rows))
        w_pad = np.pad(w_np, [(0, kp - k), (0, cols - n)])
        # no +128 shift to take back: tdpbssd takes int8 activations as they are, tdpbusd uint8 ones
        out = self._kernel(vnni.dense_te, dot, x, a, vnni.pack_weights(w_pad.T, dot), None)
        return vnni.slice_back(self.builder_, out, rows, padded, n, cols)

    def _byte_planes(self, x: relax.Expr, tiled) -> relax.Expr | None:
        """`tiled` (a tile kernel of an 8-bit activation, or None) of a 16-bit activation: AMX tiles multiply
        bytes, so x = 256 hi + lo with hi = x >> 8 (int8) and lo = x & 255 (uint8), x . W = (hi . W << 8) +
        lo . W, two tile products and a shift-add the second one's epilogue takes. Exact: both sums are the
        int32 sum's parts (the lowering keeps 16 bits only where 2^15 sum|W| < 2^31, so neither overflows)."""
        hi = self.builder_.emit(relax.op.astype(relax.op.right_shift(x, relax.const(8, "int16")), "int8"))
        high = tiled(hi)
        if high is None:
            return None
        lo = self.builder_.emit(relax.op.astype(relax.op.bitwise_and(x, relax.const(255, "int16")), "uint8"))
        return relax.op.add(relax.op.left_shift(self.builder_.emit(high), relax.const(8, "int32")), tiled(lo))

    def _conv(self, call: relax.Call):
        x, w = call.args
        w_np, x_shape, a = _const(w), _shape(x), call.attrs
        if (w_np is None or x_shape is None or len(x_shape) != 4
                or w_np.dtype != np.int8 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW"
                or a.out_layout != "NCHW" or int(a.groups) != 1):
            return None
        if (list(w_np.shape[2:]) != [1, 1] or any(int(s) != 1 for s in a.strides)
                or any(int(p) != 0 for p in a.padding)):
            return self._conv_taps(x, w_np, x_shape, a)
        n, c, h, wd = x_shape
        o = w_np.shape[0]
        lead = [] if isinstance(n, int) and n == 1 else [n]  # a batch keeps its own axis
        w2 = w_np.reshape(o, c)
        if self.family.tiles:
            tiled = functools.partial(self._tile_conv, w2=w2, h=h, wd=wd)
            tiled = self._byte_planes(x, tiled) if str(x.ty.dtype) == "int16" else tiled(x)
            if tiled is not None:
                return tiled
        w_sum = w2.astype(np.int64).sum(1)
        dot = self._dot(x, w2, c, lambda d: vnni.conv_tile(vnni.CONV_LANES_PIXELS, o, h, wd, d) is not None)
        if dot is not None:
            # one kernel of loads and shuffles, which zero-pads the channels itself (a batch too)
            w2 = _whole_steps(w2, 1, dot)
            xp = self._repacked(x, dot.k, int(w2.shape[1]), wd, dot)
            return self._kernel(vnni.conv_lanes_pixels_te, dot, x, xp, w2.astype(dot.w_dtype), w_sum, h, wd)
        padded = self._padded_rows(x, w2, w_sum, h, wd)
        if padded is not None:
            return padded
        dot = self._dot(x, w2, c, lambda d: vnni.conv_tile(vnni.CONV_LANES_OUT, o, h, wd, d) is not None)
        if dot is not None:
            direct = None if lead or c % dot.k else self._direct_patches(x, w2, dot)
            if direct is not None:
                return self._kernel(vnni.conv_lanes_out_te, dot, x, direct[0], vnni.pack_weights(direct[1], dot),
                                    w_sum, h, wd)
            # the interleaved repack (a batch too), not a transpose to [H*W, C] (a gather)
            w2 = _whole_steps(w2, 1, dot)
            xp = self._repacked(x, dot.k, int(w2.shape[1]), wd, dot)
            return self._kernel(vnni.conv_lanes_out_packed_te, dot, x, xp, vnni.pack_weights(w2, dot), w_sum, h, wd)
        # no tile divides the pixels (an STFT's 97 frames): a matmul over [(N,) H*W, C], whose rows are
        # padded (a batch of 4 STFTs of 5 frames each ran TVM's plain loops, 0.19 ms)
        last = [len(lead) + 1, len(lead)]
        rows = self.builder_.emit(relax.op.permute_dims(relax.op.reshape(x, [*lead, c, h * wd]),
                                                        [*range(len(lead)), *last]))
        dense = self._matmul(self.builder_.normalize(relax.op.matmul(rows, relax.const(np.ascontiguousarray(w2.T)),
                                                                     out_dtype="int32")))
        if dense is None:
            return None
        return relax.op.reshape(relax.op.permute_dims(self.builder_.emit(dense), [*range(len(lead)), *last]),
                                [*lead, o, h, wd] if lead else [1, o, h, wd])


    def _padded_rows(self, x: relax.Expr, w2: np.ndarray, w_sum: np.ndarray, h: int, wd: int):
        """A pointwise conv whose rows are not whole vectors on lanes over pixels all the same: each row
        zero-padded by the repack to the narrowest width a good tile covers (`padded_width`), the padded columns
        computed and sliced off. Where that wastes at most an eighth (14 -> 16, 52 -> 56, 76 -> 80), or at
        most half and lanes over outputs would take a tile of fewer than 8 accumulators (19 x 19). Lanes over
        outputs store each pixel's channels to their rows one by one: 1 thread, Zen 4, 80 -> 480 at 14x14
        0.067 -> 0.056 ms, 112 -> 672 0.110 -> 0.098, 128 -> 128 at 100x76 1.17 -> 0.89, 96 -> 96 at 52x52
        0.242 -> 0.179 (padded to 64 instead: 0.246), 64 -> 64 at 38x38 0.073 -> 0.048; not 192 -> 1152 at 7x7
        (to 16: 0.068 -> 0.119). AVX2 code (timed on the Zen 4) gains at 52x52, 38x38, 14x14 and 7x7 (0.68 ->
        0.47, 0.27 -> 0.16, 0.23 -> 0.19, 0.26 -> 0.21 ms) but lost at 128 -> 128 over 100x76 (its int16
        activations 2 MB: 1.9 -> 4.4 ms), so not above 1 MB there."""
        o, c = w2.shape
        dot = self._dot(x, w2, c, lambda d: padded_width(o, c, h, wd, d) is not None)
        if dot is None:
            return None
        wide = padded_width(o, c, h, wd, dot)
        w2 = _whole_steps(w2, 1, dot)
        xp = self._repacked(x, dot.k, int(w2.shape[1]), wide, dot)
        out = self._kernel(vnni.conv_lanes_pixels_te, dot, x, xp, w2.astype(dot.w_dtype), w_sum, h, wide)
        return relax.op.strided_slice(self.builder_.emit(out), axes=[3], begin=[0], end=[wd])

    def _tile_conv(self, x: relax.Expr, w2: np.ndarray, h: int, wd: int):
        """A pointwise conv on AMX tiles (`amx.conv_te`): the weights [O, C] the left tile, the activations
        packed [(N,) C/4, H * W', 4] the right one (W' the width in whole tiles), so that the sums come out
        per output channel and image row: NCHW, no transposes. A batch N (static or symbolic) is the
        kernel's outer loop, each sample's sums its own. Channels, the width and the reduction are
        zero-padded (sliced off in the kernel). None where the tiles do not pay."""
        dot, (o, c) = amx.recipe(str(x.ty.dtype), conv=True), w2.shape
        kp = amx.reduction(c)
        if dot is None or kp is None or o < amx.MIN_ROWS:
            return None
        rows, width = -(-o // amx.ROWS) * amx.ROWS, -(-wd // amx.ROWS) * amx.ROWS  # whole tiles
        # rows of one block (W' of 16 or 32) take the epilogue per block, wider ones per row (`amx.schedule`);
        # narrower images pad too much (W = 7 takes 16 columns a row, W = 6 would too)
        if width > 2.5 * wd:
            return None
        xp = self._repacked(x, 4, kp, width, None)
        w_pad = np.pad(w2, [(0, rows - o), (0, kp - c)]).astype(np.int8)
        return self.builder_.call_te(amx.conv_te, self.builder_.emit(xp), self._weights(w_pad, x), h, o, wd,
                                     dot=dot.name, primfunc_name_hint=f"{dot.name}_conv")

    def _tile_dense4(self, x: relax.Expr, w: np.ndarray):
        """A 4-bit matmul (w [K, N]) or pointwise conv (w [O, C]) on the 8-bit AMX tile kernels, the weights unpacked
        per call (`int4_taps.stored`); None where the tiles do not take it (`vnni_int4.py`'s 4-bit kernels then do).
        The 4-bit dot-product kernels unpack in registers but run at VNNI's rate, a small share of the tiles'."""
        shape = _shape(x)
        if shape is None or str(x.ty.dtype) not in ("int8", "uint8"):
            return None
        self._nibbles = True
        try:
            if len(shape) == 4:
                return self._tile_conv(x, w, shape[2], shape[3]) if all(isinstance(d, int) for d in shape[1:]) else None
            return self._tile_matmul(x, w, shape) if len(shape) >= 2 else None
        finally:
            self._nibbles = False

    def _patch_geometry(self, x: relax.Expr):
        """(image, rows, kernel, strides, pads, dilation) where `x` is the output of a spatial conv's [1, rows, H, W]
        patches kernel over `image` (`passes/conv_as_pointwise.py`); else None."""
        value = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")):
            return None
        func = self.builder_.get()[value.args[0]]
        spec = func.attrs.get(PATCHES_ATTR) if func.attrs is not None else None
        if spec is None:
            return None
        rows, kernel, strides, pads, dilation, *padded = json.loads(str(spec))
        (source,) = value.args[1].fields
        if padded:  # the kernel read the padded image (`window_patches`): the image is the pad's input
            source = self.lookup_binding(source).args[0]
        shape = _shape(source)
        if shape is None or shape[0] != 1:
            return None
        return source, rows, tuple(kernel), tuple(strides), tuple(pads), tuple(dilation)

    def _repacked(self, x: relax.Expr, step: int, channels: int, width: int, dot: Dot | None) -> relax.Expr:
        """x [(N,) C, H, W] as the dot kernels read it, [(N,) channels / step, H * width, step] (zero channels past C,
        each image row padded to `width`), prepared for `dot` (None: as it is, AMX tiles): where x is the patches of
        a spatial conv that does not keep its image's size, gathered straight from the image in one pass of vector
        copies (`window_patches`; the patches, their preparation and the repack were up to three passes over a
        tensor kh kw times the image: a 3x3/2 conv 256 -> 512 at 14x14 on tiles, 100 -> 52 us); else the repack
        (`interleaved`)."""
        geometry = self._patch_geometry(x)
        if geometry is not None:
            source, rows, kernel, strides, pads, dilation = geometry
            same = strides == (1, 1) and _shape(source)[2:] == _shape(x)[2:]
            # a `same` conv's patches are flat copies (`same_patches_func`), which the repack reads 64 bytes a
            # channel at a time: faster than interleaving rows of 7-16 pixels (512 -> 512 at 7x7 on tiles: 31 us
            # against 89; 128 -> 128 at 16x16 on VNNI 26 against 48)
            if rows <= channels and channels % step == 0 and not same:
                shifted = dot is not None and dot.shift and str(source.ty.dtype) == "int8"
                image = self._prepared(source, dot) if dot is not None else source
                return window_patches(self.builder_, image, channels, kernel, strides, pads, dilation, step,
                                      128 if shifted else 0, width=width)  # fill: the image's zeros, prepared
        return interleaved(self.builder_, self._prepared(x, dot) if dot is not None else x, step, channels, width)

    def _direct_patches(self, x: relax.Expr, w2: np.ndarray, dot: Dot):
        """(patches [H*W, rows], weights [O, rows] in their row order) for lanes over output channels, gathered
        straight from a spatial conv's image made channels-last (`pixel_patches_te`), prepared for `dot`, where
        `x` is that conv's patches (written channel-major and then repacked, two passes over a tensor K times
        the input); None: not patches."""
        geometry = self._patch_geometry(x)
        if geometry is None:
            return None
        source, rows, kernel, strides, pads, dilation = geometry
        c = int(source.ty.shape[1])
        taps = c * kernel[0] * kernel[1]
        if rows != int(w2.shape[1]):
            return None
        fill = 128 if dot.shift and str(source.ty.dtype) == "int8" else 0  # the image's zeros, prepared
        image = self.builder_.emit(relax.op.permute_dims(self._prepared(source, dot), [0, 2, 3, 1]))
        xt = self.builder_.call_te(pixel_patches_te, image, rows, kernel, strides, pads, dilation, fill,
                                   primfunc_name_hint="conv_pixel_patches", primfunc_attrs={"op_pattern": OPAQUE})
        order = w2[:, :taps].reshape(-1, c, kernel[0] * kernel[1]).transpose(0, 2, 1).reshape(-1, taps)
        return xt, np.concatenate([order, w2[:, taps:]], axis=1)

    def _conv_taps(self, x: relax.Expr, w_np: np.ndarray, x_shape: list, a) -> relax.Expr | None:
        """A spatial conv (stride 1 or 2; dilated: stride 1) as one kernel summing its taps over the packed input:
        tap (i, j) reads it shifted by (i dh) Wq + j dw (a dilated conv's patches were kh kw copies of the input)."""
        strides, dilation = {int(s) for s in a.strides}, tuple(int(d) for d in a.dilation)
        if len(strides) != 1 or not strides <= ({1, 2} if dilation == (1, 1) else {1}):
            return None
        stride, pads = strides.pop(), tuple(int(p) for p in a.padding)
        n, c, h, wd = x_shape
        o, _, kh, kw = w_np.shape
        span_h, span_w = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1  # the pixels a dilated kernel spans
        if self.family.tiles:
            tiled = functools.partial(self._tile_taps, w_np=w_np, x_shape=x_shape, stride=stride, pads=pads,
                                      dilation=dilation)
            tiled = self._byte_planes(x, tiled) if str(x.ty.dtype) == "int16" else tiled(x)
            if tiled is not None:
                return tiled
        for dot in self.family.recipes(str(x.ty.dtype)):
            steps = -(-c // dot.k) * dot.k
            wt = np.pad(w_np, [(0, 0), (0, steps - c), (0, 0), (0, 0)]).transpose(0, 2, 3, 1)
            ho, wo, wq, rows, run, hq = vnni.taps_geometry(h, wd, span_h, span_w, stride, pads, dot, o)
            if vnni.taps_tile(o, run, dot) is not None and (dot is not MADDUBS or maddubs_safe(wt.reshape(o, -1), U8_MAX)):
                break
        else:
            return None
        if wo <= PATCHES_UP_TO.get(dot.lanes, 0) or 2 * c <= dot.k:
            return None  # a pointwise conv over its patches (conv_as_pointwise.py) runs it faster; so it does
            # where the taps kernel would pad the channels to k, twice or more (one channel: musicnn's 7 x 38
            # filters over a spectrogram, 28.5 ms as taps, 6 ms as patches): patches pad c * kh * kw once
        xp = taps_input.packed_input(self.builder_, x, pads[:2], stride, hq, wq, dot.k, dot.a_dtype)
        if xp is None:  # 16-bit inputs, rows narrower than one vector's reads
            xp = self.builder_.call_te(vnni.taps_input_te, x, pads, stride, hq, wq, dot.name,
                                       primfunc_name_hint=f"{dot.name}_taps_input")
        return self._kernel(vnni.conv_taps_te, dot, x, xp, np.ascontiguousarray(wt.astype(dot.w_dtype)),
                            w_np.astype(np.int64).sum((1, 2, 3)), stride, (ho, wo, wq, rows, run), dilation=dilation)

    def _tile_taps(self, x: relax.Expr, w_np: np.ndarray, x_shape: list, stride: int, pads: tuple, dilation: tuple):
        """A spatial conv (stride 1 or 2) on AMX tiles (`amx.taps_te`): each tap's weights [O, C] the left tile,
        the packed input at the tap's shift the right one, the output tiles kept over all taps and channels; a
        batch (static or symbolic) the outer loop, each sample read from its own packed input. None where the
        tiles do not pay: fewer than 16 output channels, channels not whole 64-deep steps, images whose rows the
        patches kernels take (`PATCHES_UP_TO`)."""
        dot, (o, c, kh, kw), (_, _, h, wd) = amx.recipe(str(x.ty.dtype), conv=True), w_np.shape, x_shape
        steps = -(-c // amx.STEP) * amx.STEP  # channels zero-padded to whole 64-deep steps
        if dot is None or steps > TILE_TAPS_PADDING * c or o < amx.MIN_ROWS or kh * kw == 1:
            return None
        ho, wo, wq, cols, hq = amx.taps_geometry(h, wd, (kh, kw), stride, pads, dilation)
        if wo <= PATCHES_UP_TO[16]:
            return None
        xp = taps_input.packed_input(self.builder_, x, pads[:2], stride, hq, wq, 4, dot.a_dtype, steps // 4)
        if xp is None:
            return None
        rows = -(-o // amx.ROWS) * amx.ROWS
        wt = np.pad(w_np, [(0, rows - o), (0, steps - c), (0, 0), (0, 0)]).transpose(2, 3, 0, 1)
        return self.builder_.call_te(amx.taps_te, self.builder_.emit(xp), self._weights(np.ascontiguousarray(wt), x),
                                     stride, (ho, wo, wq, cols, o), dot=dot.name, dilation=dilation,
                                     primfunc_name_hint=f"{dot.name}_taps")


def use_dot_kernels(family: Family):
    """A pass that rewrites every eligible int8 matmul/pointwise conv into a kernel of `family`."""

    @tvm.transform.module_pass(opt_level=0, name="UseDotKernels")
    def rewrite(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if family.tiles:
            amx.enable()  # the compiler runs the artifact (its check) in this process
        rewriter = _Rewriter(mod, family)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        # a 16-bit activation's byte planes emitted for tiles that then did not take the shape
        return drop_unused_bindings(rewriter.builder_.get())

    return rewrite
