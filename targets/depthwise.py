"""Convs over flat rows: integer depthwise convs (stride 1 or 2) -> vector loops.

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
width. The kernel also sums a few input channels (a 4-bit RGB stem, `vnni_int4.py`); 8-bit stems
run on the taps kernels (`vnni_rewrite.py`), 1.7-3.8x faster on an AVX-512 Xeon (EfficientNet's
3x3/2 stem 0.45 -> 0.26 ms, a 7x7/2 64-channel one 3.8 -> 1.0 ms) and 1.6-2x with AVX2. The
integer sums are those of the conv itself: bit-exact. Runs before legalization on CPU targets; `cpu_schedules.py` schedules
the `dwflat_conv` block (parallel over channels, 16 lanes, accumulators in registers).

With AVX512-VNNI, a depthwise conv of 5 or more taps per row over a small image (<= 14x14
outputs) sums 4 taps per instruction instead (`depthwise_quad_te`, block `dwflat_quad`): quad
rows X4[i, 0:4] = xp[i:i + 4] built by one shuffle per 16 words, then `vpdpbusd` of 16 quads
with a broadcast word of 4 weights (zero-padded to whole quads). With AVX512-VBMI too, the
quads of any depthwise conv (3x3 too, images of any size) are permuted from the padded row in a
register (`vpermb`) instead, where that does not lengthen the padded rows much (`_windows_pay`), and
a stride-2 conv to a small image reads every other byte of the unsplit padded image (no phases,
`depthwise_strided_te`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from passes.call_rewrite import integer_conv, rewrite_calls

BLOCK = "dwflat_conv"
PAD = "dwflat_pad"  # the padded rows (per phase)
WIDTH = "dwflat_width"  # the pad block's annotation: the phase width the schedule splits rows by
STEM_CHANNELS = 4  # a 4-bit conv over this few input channels (an RGB(A) or gray stem) runs over flat rows too
LANES = 16  # int32 lanes of a 512-bit vector
MULTIPLIER_TAPS = 160  # taps per output of a depthwise conv with a channel multiplier over flat rows, at most


def _padder(x: te.Tensor, top: int, left: int, shifted: bool):
    """padded(b, ch, y, x) of `x` zero-padded by `top` and `left` (and anything at the far sides);
    `shifted`: int8 read as the uint8 x + 128, padded with 128. The load reads a clamped row and the
    column as it is, and a select keeps it or the padding: LLVM vectorizes a select of contiguous
    loads, but neither `if_then_else`'s branch around a load (a byte at a time: half of a 112x112
    depthwise conv's time on AVX2) nor clamped columns (a gather: 2x the time). The row clamp is
    written so that TVM's simplifier cannot drop it under the select's condition, as it did with
    `0 <= y < h`: the select, evaluated whole, then loaded whole rows before and after the input (a
    free-batch ResNet stem segfaulted). What is left reads at most `left` bytes before the tensor's
    first row and the far-side padding's width after its last: memory malloc maps with every block
    (its header before; its 16-byte granule, or a large block's last page, after)."""
    h, wd = int(x.shape[2]), int(x.shape[3])

    def padded(b, ch, y, xx):
        y, xx = y - top, xx - left
        cy = tirx.max(tirx.min(y, h - 1), 0)
        inside = tirx.all(cy == y, xx >= 0, xx < wd)
        value = x[b, ch, cy, xx]
        if shifted:
            return tirx.Select(inside, (value.astype("int16") + 128).astype("uint8"), tirx.const(128, "uint8"))
        return tirx.Select(inside, value, tirx.const(0, x.dtype))

    return padded


PHASE_SLACK = 0.15  # a stride-2 phase row widened to whole vectors by at most this share of it


def phase_width(wp: int, stride: int) -> int:
    """Elements of one phase row of the padded input: every stride-th of its wp columns; for stride 2
    rounded up to whole vectors of 16 on x86 where that widens it by at most PHASE_SLACK, so that the
    phase split runs as one 32-byte load and two shuffles per 16 columns (`phase_pairs_intrinsic`)."""
    wq = -(-wp // stride)
    whole = -(-wq // LANES) * LANES
    return whole if stride == 2 and whole - wq <= PHASE_SLACK * wq and _x86() else wq


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
    wq = phase_width(wp, stride)  # one phase: the padded image, every stride-th pixel
    rows = -(-ho * wq // LANES) * LANES  # flat outputs, whole vectors
    reach = ((kh - 1) // stride) * wq + (kw - 1) // stride
    flat = -(-(rows + reach) // wq) * wq  # whole phase rows, so that the schedule splits the flat
    # index into (row, column) without a division; the discarded columns read past the image

    padded = _padder(x, top, left, corr is not None)
    if stride == 1:
        xp = te.compute((n, c, 1, 1, flat), lambda b, ch, py, px, i: padded(b, ch, i // wq, i % wq),
                        name=PAD, attrs={WIDTH: wq})
    else:  # the zero-padded image first (rows of contiguous loads), then its phases: a gather
        # without conditions, which LLVM vectorizes (a strided gather with the bounds checks
        # did not: 2.6 ns per output, 4x the stride-1 convs, in EfficientNet-Lite0)
        image = te.compute((n, c, stride * (flat // wq), stride * wq), padded, name="dwflat_image")
        xp = te.compute((n, c, stride, stride, flat), lambda b, ch, py, px, i: image[
            b, ch, stride * (i // wq) + py, stride * (i % wq) + px], name=PAD, attrs={WIDTH: wq})
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


QUAD_BLOCK = "dwflat_quad"  # the quad-tap conv (dot products of 4 taps: vpdpbusd)
QUADS = "dwflat_quads"  # the quad rows: X4[i, j] = xp[i + j]
QUAD = 4  # taps per dot product (bytes per int32 lane)
# Where quads won, kernel alone at 1 thread (flat -> quads): 5x5 over 7x7 97 -> 67 us, 14x14 176 -> 148,
# stride 2 to 7x7 92 -> 87; they lost on 3x3 kernels (14x14: 60 -> 79 us) and on images of 28x28 and
# up (5x5: 205 -> 275 us), whose quad rows no longer fit a stack array (a workspace call per channel)
QUAD_MIN_WIDTH = 5
QUAD_MAX_OUTPUTS = 14 * 14


def quad_weights(weights: np.ndarray, stride: int, k: int = QUAD, dtype: str = "int8") -> np.ndarray:
    """[C, 1, kh, kw] -> [C, kh, s, Q, k]: tap (ry, rx) at (ry, rx % s, q, j) with k q + j = rx // s,
    zeros in the unused slots (they meet bytes of the neighbouring pixels: they add nothing)."""
    c, _, kh, kw = weights.shape
    taps = -(-kw // stride)
    quads = -(-taps // k)
    out = np.zeros((c, kh, stride, quads * k), dtype)
    for rx in range(kw):
        out[:, :, rx % stride, rx // stride] = weights[:, 0, :, rx]
    return out.reshape(c, kh, stride, quads, k)


def depthwise_quad_te(x: te.Tensor, wq: te.Tensor, pads: tuple[int, int, int, int], stride: int, kw: int,
                      corr: te.Tensor | None = None, windows: bool = False) -> te.Tensor:
    """A depthwise conv over flat rows (as `depthwise_flat_te`) whose taps along x are summed four at
    a time: each flat row is widened into quad rows X4[i, 0:4] = xp[i:i + 4] (one shuffle per 16
    words), and acc[o:o + 16] += X4[o + off:o + off + 16, :] . wq[ry, px, q, :] is one `vpdpbusd`
    (u8 x s8, exact: no saturation), 2 instead of 5 multiply-adds per row of a 5x5 kernel.
    `wq` is `quad_weights(w, stride)` [C, kh, s, Q, 4]; the int32 sums equal the conv's.
    `windows` (AVX512-VBMI): no quad rows in memory; each dot product's 16 quads are one byte
    permutation of a 64-byte load of the padded row (`window_quads_intrinsic`), so the padded rows
    reach one load past the last window. int16 inputs (windows only) take pairs of taps (`wq`'s
    last dim 2, int16 weights): one word permutation and `vpdpwssd` or `vpmaddwd` per dot product."""
    n, c, h, wd = x.shape
    _, kh, _, quads, k = (int(d) for d in wq.shape)
    top, left, bottom, right = pads
    hp, wp = int(h) + top + bottom, int(wd) + left + right
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    wq_ = phase_width(wp, stride)
    rows = -(-ho * wq_ // LANES) * LANES
    span = -(-(rows + ((kh - 1) // stride) * wq_ + k * (quads - 1)) // LANES) * LANES  # quad rows read
    reach = span - LANES + _window(x.dtype) if windows else span + k - 1  # the last window's load, or quad
    flat = -(-reach // wq_) * wq_  # whole phase rows, covering the last bytes read

    padded = _padder(x, top, left, corr is not None)
    if stride == 1:
        xp = te.compute((n, c, 1, 1, flat), lambda b, ch, py, px, i: padded(b, ch, i // wq_, i % wq_),
                        name=PAD, attrs={WIDTH: wq_})
    else:
        image = te.compute((n, c, stride * (flat // wq_), stride * wq_), padded, name="dwflat_image")
        xp = te.compute((n, c, stride, stride, flat), lambda b, ch, py, px, i: image[
            b, ch, stride * (i // wq_) + py, stride * (i % wq_) + px], name=PAD, attrs={WIDTH: wq_})
    if windows:
        def quad_byte(b, f, py, px, i, j):
            return xp[b, f, py, px, i + j]
    else:
        x4 = te.compute((n, c, stride, stride, span, QUAD), lambda b, ch, py, px, i, j: xp[b, ch, py, px, i + j],
                        name=QUADS)

        def quad_byte(b, f, py, px, i, j):
            return x4[b, f, py, px, i, j]
    ry, px = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, stride), name="px")
    q, j = te.reduce_axis((0, quads), name="q"), te.reduce_axis((0, k), name="j")
    acc = te.compute((n, c, rows), lambda b, f, o: te.sum(
        quad_byte(b, f, ry % stride, px, o + (ry // stride) * wq_ + k * q, j).astype("int32")
        * wq[f, ry, px, q, j].astype("int32"), axis=[ry, px, q, j]), name=QUAD_BLOCK)
    if corr is not None:
        return te.compute((n, c, ho, wo), lambda b, f, y, xx: acc[b, f, y * wq_ + xx] - corr[f], name="dwflat_out")
    return te.compute((n, c, ho, wo), lambda b, f, y, xx: acc[b, f, y * wq_ + xx], name="dwflat_out")


STRIDE = "dwflat_stride"  # the quad block's annotation: how far apart its outputs' windows start
# a stride-2 depthwise conv this small runs over the unsplit image: EfficientNet-Lite0's (Zen 4, 1 thread,
# kernel alone) 14x14 -> 7x7 5x5 0.079 -> 0.057 ms; it lost at 28x28 -> 14x14 5x5 (0.043 -> 0.046) and
# 56x56 -> 28x28 3x3 (0.087 -> 0.128), where twice the dot products outweigh the phase split
STRIDED_MAX_OUTPUTS = 8 * 8


def depthwise_strided_te(x: te.Tensor, wq: te.Tensor, pads: tuple[int, int, int, int], kw: int,
                         corr: te.Tensor | None = None) -> te.Tensor:
    """A stride-2 depthwise conv over the flat padded image itself, no phases: output (y, x) at flat
    index o = y Wp + x reads the image at 2 o + ry Wp + rx (row 2y + ry, column 2x + rx), so the 16
    outputs of a vector read every other byte of one 64-byte window, and each dot product's quads are
    one `vpermb` of it (`window_quads_intrinsic(stride=2)`). The flat output rows are Wp long, about
    half of each discarded: kh x ceil(kw / 4) dot products per 16 flat outputs, twice the phases'
    per output kept, but no phase split and no quad rows (a 14x14 -> 7x7 5x5 conv had spent most of
    its time copying bytes into phases): for small outputs (`STRIDED_MAX_OUTPUTS`). `wq` is
    `quad_weights(w, 1)` [C, kh, 1, Q, 4]."""
    n, c, h, wd = x.shape
    _, kh, _, quads, k = (int(d) for d in wq.shape)
    top, left, bottom, right = pads
    hp, wp = int(h) + top + bottom, int(wd) + left + right
    ho, wo = (hp - kh) // 2 + 1, (wp - kw) // 2 + 1
    rows = -(-((ho - 1) * wp + wo) // LANES) * LANES  # flat outputs, output rows wp apart
    reach = 2 * (rows - LANES) + (kh - 1) * wp + k * (quads - 1) + WINDOW_BYTES  # past the last load
    flat = -(-reach // wp) * wp
    padded = _padder(x, top, left, corr is not None)
    xp = te.compute((n, c, 1, 1, flat), lambda b, ch, py, px, i: padded(b, ch, i // wp, i % wp),
                    name=PAD, attrs={WIDTH: wp})
    ry, q, j = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, quads), name="q"), te.reduce_axis((0, k), name="j")
    acc = te.compute((n, c, rows), lambda b, f, o: te.sum(
        xp[b, f, 0, 0, 2 * o + ry * wp + k * q + j].astype("int32") * wq[f, ry, 0, q, j].astype("int32"),
        axis=[ry, q, j]), name=QUAD_BLOCK, attrs={STRIDE: 2})
    if corr is not None:
        return te.compute((n, c, ho, wo), lambda b, f, y, xx: acc[b, f, y * wp + xx] - corr[f], name="dwflat_out")
    return te.compute((n, c, ho, wo), lambda b, f, y, xx: acc[b, f, y * wp + xx], name="dwflat_out")


def quad_rows_intrinsic() -> str:
    """X4[i, 0:4] = xp[i:i + 4] for 16 words: four overlapping 16-byte loads interleaved (one
    shuffle), registered once per process."""
    from tvm import s_tir
    from tvm.script import tirx as T

    name = "intq_dwflat_quad_rows"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    L, K = LANES, QUAD

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((L + K - 1,), "uint8", offset_factor=1),
             b: T.Buffer((L, K), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(a[0:L + K - 1])
            T.writes(b[0:L, 0:K])
            for i, j in T.grid(L, K):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    b[vi, vj] = a[vi + vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((L + K - 1,), "uint8", offset_factor=1),
             b: T.Buffer((L, K), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(a[0:L + K - 1])
            T.writes(b[0:L, 0:K])
            flat = T.decl_buffer((L * K,), "uint8", data=b.data, elem_offset=b.elem_offset)
            flat[T.ramp(T.int32(0), 1, L * K)] = T.Shuffle(
                [a.vload([j], f"uint8x{L}") for j in range(K)], [j * L + i for i in range(L) for j in range(K)])

    s_tir.TensorIntrin.register(name, desc, impl)
    return name


def phase_pairs_intrinsic(dtype: str) -> str:
    """b[px, i] = a[2 i + px] for 16 columns of both column phases: one load of 32 elements and two
    shuffles (even, odd); registered once per process for each dtype."""
    from tvm import s_tir
    from tvm.script import tirx as T

    name = f"intq_dwflat_phase_pairs_{dtype}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    L = LANES
    plane = tvm.tirx.Var("plane", "int64")

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((2 * L,), dtype, offset_factor=1),
             b: T.Buffer((2, L), dtype, strides=(plane, 1), offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(a[0:2 * L])
            T.writes(b[0:2, 0:L])
            for i, j in T.grid(L, 2):
                with T.sblock("update"):
                    vj, vi = T.axis.remap("SS", [j, i])  # the phase block's order: (px, column)
                    b[vj, vi] = a[2 * vi + vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2 * L,), dtype, offset_factor=1),
             b: T.Buffer((2, L), dtype, strides=(plane, 1), offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(a[0:2 * L])
            T.writes(b[0:2, 0:L])
            row = a.vload([0], f"{dtype}x{2 * L}")
            b[0, T.ramp(T.int32(0), 1, L)] = T.Shuffle([row], [2 * i for i in range(L)])
            b[1, T.ramp(T.int32(0), 1, L)] = T.Shuffle([row], [2 * i + 1 for i in range(L)])

    s_tir.TensorIntrin.register(name, desc, impl)
    return name


WINDOW_BYTES = 64  # one load per dot product (vpermb reads a whole register from memory)


def _window(dtype) -> int:
    """Elements of one window load: 64 bytes (16 quads of bytes i..i+3 take the first 19)."""
    return WINDOW_BYTES // tvm.DataType(str(dtype)).bits * 8


def window_dot(dtype: str):
    """(the dot product, taps per dot) of quads in registers over `dtype` inputs on the current
    target: VNNI's u8 x s8 quads, or int16 pairs on the family's 16-lane word product (vpdpwssd,
    or AVX512-BW's vpmaddwd); None where the target has neither (or no 512-bit permutation)."""
    from tvm.target import codegen

    from .kernel_family import VNNI, kernel_family

    target = tvm.target.Target.current(allow_none=True)
    if target is None or not _x86():
        return None
    family = kernel_family(target)
    if dtype == "uint8":
        return (VNNI, QUAD) if VNNI in family.dots and codegen.target_has_features(["avx512vbmi"], target) else None
    word = family.word
    return (word, 2) if dtype == "int16" and word is not None and word.lanes == LANES else None


def window_quads_intrinsic(scope: str, dtype: str = "uint8", stride: int = 1) -> str:
    """acc[0:16] += X[0:16, 0:k] . w[0:k] with X[i, j] = a[stride * i + j] built in a register: one
    64-byte load of the padded row and one permutation (`vpermb` with AVX512-VBMI, `vpermw` for
    int16), then the dot product (`vpdpbusd` of u8 quads, `vpdpwssd` / `vpmaddwd` of int16 pairs)
    with the k weights broadcast. Registered once per process for each accumulator scope, dtype and
    stride (2: every other column of the padded image, `depthwise_strided_te`)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    dot, k = window_dot(dtype)
    name = f"intq_dwflat_window_{dot.name}_{scope}" + ("" if stride == 1 else f"_s{stride}")
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    L, W, wd = LANES, _window(dtype), dot.w_dtype
    span = stride * (L - 1) + k
    assert span <= W, "the window load holds every byte the dot products read"
    order = [stride * i + j for i in range(L) for j in range(k)]

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((span,), dtype, offset_factor=1), w: T.Buffer((k,), wd, offset_factor=1),
             acc: T.Buffer((L,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(acc[0:L], a[0:span], w[0:k])
            T.writes(acc[0:L])
            for i, j in T.grid(L, k):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    acc[vi] = acc[vi] + T.cast(a[stride * vi + vj], "int32") * T.cast(w[vj], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((span,), dtype, offset_factor=1), w: T.Buffer((k,), wd, offset_factor=1),
             acc: T.Buffer((L,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(acc[0:L], a[0:span], w[0:k])
            T.writes(acc[0:L])
            words = T.Broadcast(T.reinterpret("int32", w.vload([0], f"{wd}x{k}")), L)
            acc[T.ramp(T.int32(0), 1, L)] = dot.combine(
                acc.vload([0], f"int32x{L}"), T.Shuffle([a.vload([0], f"{dtype}x{W}")], order),
                T.reinterpret(f"{wd}x{L * k}", words))

    s_tir.TensorIntrin.register(name, desc, impl)
    return name


def _windows_pay(shape, pads: tuple[int, int, int, int], stride: int, kh: int, kw: int, k: int, window: int) -> bool:
    """Whether the quads in registers beat quad rows in memory and the flat taps: where the padded
    rows their last load reaches past (WINDOW_BYTES) are few against the padded rows the flat
    taps read. Measured on EfficientNet-Lite0 (AVX512-VBMI Xeon, 1 thread): 112x112 to 14x14
    outputs won (56x56 3x3 0.22 -> 0.12 ms, 28x28 5x5 stride 2 0.17 -> 0.10; 14x14 5x5 0.13 ->
    0.11 a call), 7x7 outputs and a 3x3 stride-2 conv to 14x14 lost (a 7x7 5x5: 0.19 -> 0.22), their
    padded rows 25-50 % longer."""
    hp, wp = int(shape[2]) + pads[0] + pads[2], int(shape[3]) + pads[1] + pads[3]
    wq = -(-wp // stride)
    rows = -(-((hp - kh) // stride + 1) * wq // LANES) * LANES
    reach = ((kh - 1) // stride) * wq
    flat = -(-(rows + reach + (kw - 1) // stride) // wq)  # padded rows of the flat taps
    quads = -(-(-(-kw // stride)) // k)  # of the taps per phase row
    span = -(-(rows + reach + k * (quads - 1)) // LANES) * LANES
    windows = -(-(span - LANES + window) // wq)
    return windows <= flat * (1 + WINDOW_SLACK)


WINDOW_SLACK = 0.2  # padded rows added for the windows' last load, at most (a share of the flat taps' rows)


def _quad_taps() -> bool:
    """Whether the target's dot product is AVX512-VNNI's (16 lanes of 4 u8 x s8 taps, no saturation)."""
    from .kernel_family import VNNI, kernel_family

    target = tvm.target.Target.current(allow_none=True)
    return target is not None and _x86() and VNNI in kernel_family(target).dots


def _x86() -> bool:
    from .kernel_family import is_x86

    return is_x86(tvm.target.Target.current(allow_none=True))


def _rewrite(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    operands = integer_conv(call, dtypes=("int8", "uint8", "int16"))  # int16: sensitivity-kept tensors
    if operands is None:
        return call
    x, weights, a = operands
    shape = x.ty.shape
    channels, groups = int(shape[1]), int(a.groups)
    strides = {int(v) for v in a.strides}
    depthwise = groups == channels and weights.shape[1] == 1  # a channel multiplier too (O = m * C)
    multiplier = weights.shape[0] // channels
    taps = weights.shape[1] * weights.shape[2] * weights.shape[3]
    if taps > MULTIPLIER_TAPS and multiplier > 1:  # many outputs per channel, many taps each (musicnn's 204
        return call  # filters of 7 x 38 over one channel: 57 ms): a dense product over patches does better
    if (weights.dtype != np.int8 or not depthwise or weights.shape[2] * weights.shape[3] == 1
            or len(strides) != 1 or strides - {1, 2} or any(int(d) != 1 for d in a.dilation)
            or int(shape[3]) < 4):
        return call
    pads = tuple(int(p) for p in a.padding)
    corr = None
    if str(x.ty.dtype) == "int8":  # shifted to uint8 (see depthwise_flat_te)
        sums = weights.astype(np.int64).reshape(weights.shape[0], -1).sum(1)
        corr = relax.const((128 * sums).astype("int32"), "int32")
    stride = strides.pop()
    kh, kw = weights.shape[2:]
    wide = int(shape[3]) + pads[1] + pads[3]
    columns = (wide - kw) // stride + 1
    if 2 * columns < -(-wide // stride) and multiplier > 1:  # most of each flat row discarded: a kernel
        return call  # as wide as the input (TF's conv1d over features, 1 output column of 561) computed 561x its outputs
    outputs = ((int(shape[2]) + pads[0] + pads[2] - kh) // stride + 1) * columns
    dtype = "int16" if str(x.ty.dtype) == "int16" else "uint8"  # int8 runs shifted (corr)
    dot = window_dot(dtype) if depthwise and multiplier == 1 and kh > 1 else None
    if (dot is not None and stride == 2 and dtype == "uint8" and outputs <= STRIDED_MAX_OUTPUTS
            and 2 * (LANES - 1) + QUAD * -(-kw // QUAD) <= _window(dtype)):
        return builder.call_te(depthwise_strided_te, x, relax.const(quad_weights(weights, 1)), pads, int(kw), corr,
                               primfunc_name_hint="dwflat_conv2d")
    windows = dot is not None and _windows_pay(shape, pads, stride, kh, kw, dot[1], _window(dtype))
    quads = depthwise and multiplier == 1 and kh > 1 and dtype == "uint8" and _quad_taps()
    if windows or (quads and kw >= QUAD_MIN_WIDTH and outputs <= QUAD_MAX_OUTPUTS):
        k = dot[1] if windows else QUAD
        wq = quad_weights(weights, stride, k, "int16" if dot and dot[0].w_dtype == "int16" and windows else "int8")
        return builder.call_te(depthwise_quad_te, x, relax.const(wq), pads, stride, int(weights.shape[3]), corr,
                               windows, primfunc_name_hint="dwflat_conv2d")
    return builder.call_te(depthwise_flat_te, x, call.args[1], pads, stride, groups, corr, primfunc_name_hint="dwflat_conv2d")


@tvm.transform.module_pass(opt_level=0, name="FlatDepthwise")
def flat_depthwise(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every stride-1 integer depthwise conv with constant weights (see module doc)."""
    return rewrite_calls(mod, "relax.nn.conv2d", _rewrite)
