"""int8 dot-product kernels for matmuls and pointwise convolutions on x86 (no tuning).

One dot-product recipe (`kernel_family.Dot`: AVX512-VNNI, AVX-VNNI, AVX2 `vpmaddubsw` or AVX2
int16 `vpmaddwd`) adds, in each of `lanes` int32 lanes, the dot product of `k` activations
with `k` weights (k = 4 bytes or 2 int16: one 32-bit word). Two tensor intrinsics per recipe,
differing in which operand is broadcast:

    lanes over outputs  (bcast_a): acc[n0:n0+L] += A[r, k0:k0+k] . Bp[n0/L, k0/k, :, :]
        A: activations [rows, K]; Bp: weights pre-packed [N/L, K/k, L, k]
    lanes over pixels   (bcast_b): acc[p0:p0+L] += Xp[c0/k, p0:p0+L, :] . W[o, c0:c0+k]
        Xp: activations repacked [C/k, P, k] at run time; W: weights [O, C]

The broadcast word is read as one int32. TVM's registered `dot_16x4_vnni` fails LLVM 22's
verifier (DESIGN.md section 3), hence these. The kernels compute exactly the int32 sums of
the plain matmul/conv (integer sums are order-free, no recipe saturates where it is used):
bit-exact.

`*_te` are the compute definitions the Relax rewrite (`vnni_rewrite.py`) calls; `schedule`
tiles them (a register block of accumulators, reduction in steps of k, tensorized inner
tile, parallel outer loop) with the requantization epilogue fused per tile.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, te
from tvm.script import tirx as T

from .kernel_family import DOTS, VNNI, Dot
from .schedule_common import at_most, inline_epilogue, inline_producers, parallel, static_factor

LANES = VNNI.lanes  # AVX512-VNNI's, kept for callers that assume it
STACK_BYTES = 1024  # TVM's kMaxStackAlloca: smaller constant-size "global" buffers are stack arrays


def _bcast(buf, dtype: str, k: int, lanes: int):
    """k elements of `buf` read as one int32 (int8 pairs widened to int16 first), broadcast to
    lanes * k elements."""
    vals = buf.vload([0], f"{dtype}x{k}")
    if k == 2 and dtype == "int8":
        vals, dtype = T.Cast("int16x2", vals), "int16"
    word = T.reinterpret(vals, dtype="int32")
    return T.reinterpret(T.broadcast(word, lanes), dtype=f"{dtype}x{lanes * k}")


def _intrinsics(dot: Dot, scope: str = "local"):
    """(bcast_a, bcast_b) descriptions and implementations of `dot` as TVMScript, accumulating
    into a buffer of `scope`."""
    L, K, ad, wd, combine = dot.lanes, dot.k, dot.a_dtype, dot.w_dtype, dot.combine
    acc_t, a_vec, w_vec = f"int32x{L}", f"{ad}x{L * K}", f"{wd}x{L * K}"

    @T.prim_func(s_tir=True)
    def a_desc(A: T.Buffer((K,), ad, offset_factor=1), B: T.Buffer((L, K), wd, offset_factor=1),
               C: T.Buffer((L,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:K], B[0:L, 0:K])
            T.writes(C[0:L])
            for i, k in T.grid(L, K):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def a_impl(A: T.Buffer((K,), ad, offset_factor=1), B: T.Buffer((L, K), wd, offset_factor=1),
               C: T.Buffer((L,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:K], B[0:L, 0:K])
            T.writes(C[0:L])
            C[T.ramp(T.int32(0), 1, L)] = combine(C.vload([0], dtype=acc_t), _bcast(A, ad, K, L),
                                                  B.vload([0, 0], dtype=w_vec))

    @T.prim_func(s_tir=True)
    def b_desc(A: T.Buffer((L, K), ad, offset_factor=1), B: T.Buffer((K,), wd, offset_factor=1),
               C: T.Buffer((L,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:L, 0:K], B[0:K])
            T.writes(C[0:L])
            for i, k in T.grid(L, K):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vk], "int32")

    @T.prim_func(s_tir=True)
    def b_impl(A: T.Buffer((L, K), ad, offset_factor=1), B: T.Buffer((K,), wd, offset_factor=1),
               C: T.Buffer((L,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:L, 0:K], B[0:K])
            T.writes(C[0:L])
            C[T.ramp(T.int32(0), 1, L)] = combine(C.vload([0], dtype=acc_t), A.vload([0, 0], dtype=a_vec),
                                                  _bcast(B, wd, K, L))

    return (a_desc, a_impl), (b_desc, b_impl)


def intrinsic_names(dot: Dot, scope: str = "local") -> tuple[str, str]:
    """Register `dot`'s two intrinsics (accumulators in `scope`) once per process (MetaSchedule
    workers call it too)."""
    suffix = "" if scope == "local" else f"_{scope}"
    names = tuple(f"intq_{dot.name}_{dot.lanes}x{dot.k}_bcast_{side}{suffix}" for side in "ab")
    if s_tir.TensorIntrin.get(names[0], allow_missing=True) is None:
        for name, (desc, impl) in zip(names, _intrinsics(dot, scope)):
            s_tir.TensorIntrin.register(name, desc, impl)
    return names


def register_intrinsics() -> None:
    for dot in DOTS.values():
        intrinsic_names(dot)


# -- weight packing (compile time) ------------------------------------------------------

def pack_weights(w_nk: np.ndarray, dot: Dot = VNNI) -> np.ndarray:
    """[N, K] -> [N/L, K/k, L, k] of dot.w_dtype: one vector per (L outputs, k inputs)."""
    n, k = w_nk.shape
    packed = w_nk.reshape(n // dot.lanes, dot.lanes, k // dot.k, dot.k).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed.astype(dot.w_dtype))


# -- compute definitions (block names tell the schedule the recipe and the kind) -------------

DENSE, CONV_LANES_OUT, CONV_LANES_PIXELS = "dense", "conv_lanes_out", "conv_lanes_pixels"
CONV_TAPS = "conv_taps"  # a spatial conv over its stride phases (`conv_taps_te`)
TAPS_INPUT = "tapsinput"  # its input, padded and packed (`taps_input_te`)
TAPS_ROWS = "taps_rows"  # the outputs picked from its runs of rows
COLSUM = "colsum"  # the shift correction of a run-time packed operand
PACK = "pack"  # a right operand packed at run time (act_matmul.pack_te; "packtail": its K tail)


def _corrected(acc: te.Tensor, corr: te.Tensor | None, channel_axis: int) -> te.Tensor:
    """acc - corr[channel]: takes back the +128 shift of int8 activations (see vnni_rewrite)."""
    if corr is None:
        return acc
    return te.compute(acc.shape, lambda *i: acc[i] - corr[i[channel_axis]], name="vnni_unshift")


def dense_te(a: te.Tensor, bp: te.Tensor, corr: te.Tensor | None = None, dot: str = "vnni",
             tail: te.Tensor | None = None, shift: int = 0) -> te.Tensor:
    """out[..., m, n] = sum_k A[..., m, k] * Bp[..., n/L, k/kk, n%L, k%kk] - corr[n]  (lanes over n).

    Bp may carry batch dims (a right operand packed at run time, `act_matmul.py`): they match
    the last batch dims of A, and the correction then is `colsum_te(Bp)` [..., N/L, L]. `tail`
    [..., t, N] holds the last t rows of B (K = kk * (K/kk) + t): they add
    sum_t (A[..., m, K - t + i] - shift) * tail[..., i, n] (A holds x + shift)."""
    lanes, kk = int(bp.shape[-2]), int(bp.shape[-1])
    batch, k_main = len(bp.shape) - 4, int(bp.shape[-3]) * kk
    out_shape = [*a.shape[:-1], bp.shape[-4] * lanes]
    r = te.reduce_axis((0, k_main), name="k")
    outer = lambda rows: tuple(rows[len(rows) - 1 - batch:len(rows) - 1])  # Bp's batch indices

    def body(*idx):
        *rows, j = idx
        return te.sum(a[(*rows, r)].astype("int32")
                      * bp[(*outer(rows), j // lanes, r // kk, j % lanes, r % kk)].astype("int32"), axis=r)

    acc = te.compute(out_shape, body, name=f"{dot}_{DENSE}")
    if corr is None or len(corr.shape) == 1:
        acc = _corrected(acc, corr, len(out_shape) - 1)
        if tail is None:
            return acc
        return te.compute(out_shape, lambda *i: acc[i] + _tail_sum(a, tail, i, outer, k_main, shift),
                          name="vnni_tail")
    return te.compute(out_shape, lambda *i: acc[i] - corr[(*outer(i[:-1]), i[-1] // lanes, i[-1] % lanes)]
                      + _tail_sum(a, tail, i, outer, k_main, shift), name="vnni_unshift")


def colsum_te(bp: te.Tensor, shift: int, dot: str) -> te.Tensor:
    """shift * sum_k Bp[..., v, k/kk, l, k%kk] -> [..., v, l]: the correction of A + shift."""
    kk, k_main = int(bp.shape[-1]), int(bp.shape[-3]) * int(bp.shape[-1])
    r = te.reduce_axis((0, k_main), name="k")
    return te.compute([*bp.shape[:-3], bp.shape[-2]], lambda *i: te.sum(
        bp[(*i[:-1], r // kk, i[-1], r % kk)].astype("int32") * shift, axis=r), name=f"{dot}_{COLSUM}")


def _tail_sum(a, tail, i, outer, k_main, shift):
    """sum_t (A[..., m, k_main + t] - shift) * tail[..., t, n]: the rows of K past the last whole step."""
    if tail is None:
        return 0
    *rows, j = i
    return sum((a[(*rows, k_main + t)].astype("int32") - shift) * tail[(*outer(rows), t, j)].astype("int32")
               for t in range(int(tail.shape[-2])))


def conv_lanes_out_te(xt: te.Tensor, wp: te.Tensor, h: int, w: int, corr: te.Tensor | None = None,
                      dot: str = "vnni") -> te.Tensor:
    """Pointwise conv, lanes over output channels: out[b, o, y, x] = sum_c Xt[b, y*W+x, c] * Wp[...]
    (Xt [H*W, C] for batch 1, [B, H*W, C] for a batch)."""
    c = int(xt.shape[-1])
    x_at = (lambda b, p, r: xt[b, p, r]) if len(xt.shape) == 3 else (lambda b, p, r: xt[p, r])
    return _lanes_out(x_at, c, _batch(xt, 3), wp, h, w, corr, dot)


def conv_lanes_out_packed_te(xp: te.Tensor, wp: te.Tensor, h: int, w: int, corr: te.Tensor | None = None,
                             dot: str = "vnni") -> te.Tensor:
    """`conv_lanes_out_te` over the activations as the lanes-over-pixels kernel takes them, Xp
    [C/kk, H*W, kk] ([B, C/kk, H*W, kk] for a batch; `interleave.py`): the k channels each product
    broadcasts are as contiguous as in [H*W, C], and that repack is loads and shuffles, where a
    transpose to [H*W, C] is a gather."""
    kk, batched = int(xp.shape[-1]), len(xp.shape) == 4
    x_at = (lambda b, p, r: xp[b, r // kk, p, r % kk]) if batched else (lambda b, p, r: xp[r // kk, p, r % kk])
    return _lanes_out(x_at, int(xp.shape[-3]) * kk, _batch(xp, 4), wp, h, w, corr, dot)


def _lanes_out(x_at, c: int, batch, wp: te.Tensor, h: int, w: int, corr, dot: str) -> te.Tensor:
    lanes, kk = int(wp.shape[2]), int(wp.shape[3])
    r = te.reduce_axis((0, c), name="c")
    return _corrected(te.compute((batch, wp.shape[0] * lanes, h, w), lambda b, j, y, x: te.sum(
        x_at(b, y * w + x, r).astype("int32") * wp[j // lanes, r // kk, j % lanes, r % kk].astype("int32"), axis=r),
        name=f"{dot}_{CONV_LANES_OUT}"), corr, 1)


def conv_lanes_pixels_te(xp: te.Tensor, wt: te.Tensor, h: int, w: int, corr: te.Tensor | None = None,
                         dot: str = "vnni") -> te.Tensor:
    """Pointwise conv, lanes over pixels: out[b, o, y, x] = sum_c Xp[b, c/kk, y*W+x, c%kk] * W[o, c]
    (Xp [C/kk, H*W, kk] for batch 1, [B, C/kk, H*W, kk] for a batch)."""
    kk = int(xp.shape[-1])
    r = te.reduce_axis((0, int(wt.shape[1])), name="c")
    x_at = (lambda b, p: xp[b, r // kk, p, r % kk]) if len(xp.shape) == 4 else (lambda b, p: xp[r // kk, p, r % kk])
    return _corrected(te.compute((_batch(xp, 4), wt.shape[0], h, w), lambda b, j, y, x: te.sum(
        x_at(b, y * w + x).astype("int32") * wt[j, r].astype("int32"), axis=r),
        name=f"{dot}_{CONV_LANES_PIXELS}"), corr, 1)


def conv_taps_te(xp: te.Tensor, wt: te.Tensor, stride: int, out: tuple, corr: te.Tensor | None = None,
                 dot: str = "vnni", dilation=(1, 1)) -> te.Tensor:
    """Spatial conv, lanes over pixels, every tap a shifted read of the same repacked input:
    out[b, o, y, x] = sum_{i, j, c} Xp[b, a%s, e%s, c/kk, (y + a//s) Wq + x + e//s, c%kk] * W[o, i, j, c]
    with (a, e) = (i dh, j dw) the tap's offset
    (Xp [S, S, C/kk, Hq * Wq, kk], `taps_input_te`, with a leading batch dim for a batch: the padded
    input split into its stride phases, each phase's rows flat; W [O, kh, kw, C]). `out` is
    (Ho, Wo, Wq, R, L) (`taps_geometry`): the sums run over groups of R output rows as one flat run of L
    positions of the phase's rows (each row's Wq - Wo last columns and the run's rounding up are computed
    from the next row's pixels and dropped), a stage of its own picking the outputs from them."""
    kk, batched = int(xp.shape[-1]), len(xp.shape) == 6
    o, kh, kw, c = (int(d) for d in wt.shape)
    ho, wo, wq, rows, run = out
    ri, rj, rc = (te.reduce_axis((0, n), name=name) for n, name in ((kh, "ri"), (kw, "rj"), (c, "c")))

    def tap(b, g, x):
        a, e = (r * d if d != 1 else r for r, d in ((ri, dilation[0]), (rj, dilation[1])))
        at = (a % stride, e % stride, rc // kk, g * (rows * wq) + x + (a // stride) * wq + e // stride, rc % kk)
        return xp[(b, *at)] if batched else xp[at]

    flat = _corrected(te.compute((_batch(xp, 6), o, -(-ho // rows), run), lambda b, j, g, x: te.sum(
        tap(b, g, x).astype("int32") * wt[j, ri, rj, rc].astype("int32"), axis=[ri, rj, rc]),
        name=f"{dot}_{CONV_TAPS}"), corr, 1)
    if rows == 1 and run == wo:
        return flat
    return te.compute((flat.shape[0], o, ho, wo), lambda b, j, y, x: flat[b, j, y // rows, y % rows * wq + x],
                      name=TAPS_ROWS)


def taps_input_te(x: te.Tensor, pads, stride: int, hq: int, wq: int, dot: str) -> te.Tensor:
    """x [B, C, H, W] zero-padded, split into its stride phases and packed for `dot`:
    [(B,) S, S, C'/kk, Hq * Wq, kk] (each phase's rows flat) of the recipe's activation dtype (int8 shifted to uint8:
    the padding too, 128), C' = C rounded up to whole k-steps (the extra channels meet zero weights)."""
    d = DOTS[dot]
    n, c, h, w = x.shape
    batched = not (isinstance(n, tvm.tirx.IntImm) and int(n) == 1)
    kk, top, left = d.k, int(pads[0]), int(pads[1])
    steps = -(-int(c) // kk)
    shifted = d.shift and str(x.dtype) == "int8"

    def value(b, a, bb, kb, flat, kl):
        yq, xq = flat // wq, flat % wq
        ch, y, xx = kb * kk + kl, yq * stride + a - top, xq * stride + bb - left
        inside = tvm.tirx.all(ch < c, y >= 0, y < h, xx >= 0, xx < w)
        v = x[b, tvm.tirx.min(ch, c - 1), y, xx]
        v = (v.astype("int16") + 128).astype("uint8") if shifted else v.astype(d.a_dtype)
        return tvm.tirx.if_then_else(inside, v, tvm.tirx.const(128 if shifted else 0, d.a_dtype))

    shape = (stride, stride, steps, hq * wq, kk)
    if batched:
        return te.compute((n, *shape), value, name=f"{dot}_{TAPS_INPUT}")
    return te.compute(shape, lambda *i: value(0, *i), name=f"{dot}_{TAPS_INPUT}")


def taps_geometry(h: int, w: int, kh: int, kw: int, stride: int, pads, dot: Dot, o: int):
    """(Ho, Wo, Wq, R, L, Hq) of a taps conv: its output size; the width of one stride phase of the padded
    input; the output rows summed as one flat run (R) and the run's length L in whole vectors; and the
    phase's rows Hq, enough for the last run's reads. One row a run (R = 1) is the row in whole vectors (up
    to an eighth more where that admits a better tile: `taps_vectors`), Wq that plus (kw - 1) / s: a 56-pixel
    row computes 64 outputs and drops 8, a 52- or 20-pixel one a fifth or more. R rows a run, Wq = Wo +
    (kw - 1) / s, drop the (R - 1) (Wq - Wo) columns that read the next row and less than a vector: taken
    where that saves work (3x3 at 56x56: R = 4, 240 outputs for 4 x 56)."""
    top, left, bottom, right = pads
    ho, wo = (h + top + bottom - kh) // stride + 1, (w + left + right - kw) // stride + 1
    wq = wo + (kw - 1) // stride
    run = taps_vectors(o, -(-wo // dot.lanes), dot) * dot.lanes  # one row in whole vectors
    best = (ho * run, 1, run)
    for rows in range(2, ho + 1):  # R dividing Ho: a last run part padding was slower (AVX2: 52 rows, R = 3)
        need = -(-((rows - 1) * wq + wo) // dot.lanes)
        if need * dot.lanes > MAX_TAPS_RUN:
            break
        if ho % rows:
            continue
        # whole vectors, or up to an eighth more, that a tile good for runs covers
        vectors = next((v for v in range(need, need + need // 8 + 1) if taps_tile(o, v * dot.lanes, dot)
                        in RUN_TILES[dot.registers]), None)
        work = vectors and -(-ho // rows) * vectors * dot.lanes
        if vectors and work < best[0] * 0.97:  # more rows only for a real saving
            best = (work, rows, vectors * dot.lanes)
    _, rows, run = best
    if rows == 1:
        wq = run + (kw - 1) // stride
    reach = (-(-ho // rows) - 1) * rows * wq + run + (kh - 1) // stride * wq + (kw - 1) // stride
    return ho, wo, wq, rows, run, -(-reach // wq)


# Tiles runs of rows take, by register count: on AVX-512 those of >= 8 accumulators; AVX2 code (timed on the
# Zen 4) ran runs on (4, 3) and (8, 1) tiles slower than one row a run: 3x3 96 -> 96 at 52x52 3.71 -> 4.44 ms
# (R = 4), 64 -> 64 at 20x20 0.31 -> 0.45; on (2, 5) faster: 128 -> 128 at 28x28 3.12 -> 1.83
RUN_TILES = {32: ((2, 7), (4, 4), (8, 2), (4, 2), (2, 4), (4, 3), (2, 5)), 16: ((2, 5),)}
MAX_TAPS_RUN = 512  # output positions of one run of rows, at most (bounds the search; longer runs were not timed)


def taps_vectors(o: int, vectors: int, dot: Dot) -> int:
    """The vectors per output row a taps conv computes: `vectors` (the row in whole vectors), or up
    to an eighth more where the better tile needs them. A row of 13 vectors (196 pixels) admitted
    only the one-accumulator tile, whose dot products wait on each other: a 3x3 conv 32 -> 64 over
    196x196 ran at 35 GMAC/s; padded to 14, the (2, 7) tile runs it at 150 (onnxruntime fp32: 52)."""
    most = vectors + max(vectors // 8, 1 if vectors > 8 else 0)
    for rows, run in _TAPS_TILES[dot.registers]:
        if o % rows == 0:
            fits = [v for v in range(vectors, most + 1) if v % run == 0]
            if fits:
                return fits[0]
    return vectors


def _batch(x: te.Tensor, batched_rank: int):
    """The batch of a conv's repacked activations: their leading dim (maybe symbolic) or 1."""
    return x.shape[0] if len(x.shape) == batched_rank else 1


# -- shape rules shared by the rewrite and the schedule ------------------------------------

# (rows per tile, vectors per tile), best first, by register count: at most 16 accumulators
# of 32 zmm, 8 of 16 ymm (the rest hold the broadcast word, weights and temporaries). Lanes
# over pixels keep the 14-16 accumulator tiles on ymm too: measured on EfficientNet-Lite0
# (x86-64-v3), 4.3 -> 3.6 ms (AVX-VNNI) and 5.9-8.7 -> 4.3-4.6 ms (AVX2) for those convs,
# while the wider lanes-over-outputs tiles were slower (3.4 -> 4.1 ms).
_PIXEL_TILES = ((2, 7), (4, 4), (8, 2), (4, 2), (2, 4), (1, 7), (2, 2), (1, 14), (1, 4), (1, 2), (1, 1))
_DENSE_TILES = {32: ((4, 2), (2, 4), (8, 2), (4, 1), (2, 2), (1, 4), (1, 2), (1, 1)),
                16: ((4, 2), (2, 4), (8, 1), (2, 2), (4, 1), (1, 4), (1, 2), (1, 1))}
# AVX2's 16 ymm: at most 12 accumulators for lanes over pixels (pointwise and taps convs). Measured
# on Zen 1 at 1 thread against the tiles above, 3x3 convs: 64 ch 40x40 (1, 1) -> (2, 5) 13.8 -> 19.0
# GMAC/s, 128 ch 20x20 (1, 1) -> (4, 3) 11.9 -> 16.1, 32 ch 80x80 (8, 2) -> (2, 5) 12.2 -> 18.2, 96 ch
# 52x52 (2, 7) -> (1, 7) 14.5 -> 17.5; pointwise: EfficientNet's 16->96 at 112x112 12.9 -> 15.9,
# 24->144 at 56x56 15.3 -> 19.1, 40->240 at 28x28 16.4 -> 18.9, 128->64 at 20x20 10.6 -> 16.3.
_AVX2_PIXEL_TILES = ((2, 5), (4, 3), (2, 4), (1, 7), (4, 2), (8, 1), (2, 3), (2, 2), (4, 1), (1, 5), (1, 4),
                     (1, 3), (1, 2), (1, 1))
_PIXEL_LANE_TILES = {32: _PIXEL_TILES[:-1] + ((4, 3), (2, 5), (2, 3), (1, 1)), 16: _AVX2_PIXEL_TILES}
_OUT_LANE_TILES = {
    32: ((7, 2), (4, 4), (8, 2), (4, 2), (14, 1), (2, 4), (7, 1), (2, 2), (1, 4), (1, 2), (1, 1)),
    16: ((4, 2), (7, 1), (2, 4), (8, 1), (2, 2), (4, 1), (1, 4), (1, 2), (1, 1))}


def _rectangular(tile: int, width: int) -> bool:
    """A run of `tile` consecutive pixels is a rectangle: part of one row or whole rows."""
    return width % tile == 0 or tile % width == 0


def prepare_activation(builder: relax.BlockBuilder, x: relax.Expr, dot: Dot) -> relax.Expr:
    """x as the recipe's activation dtype: uint8 (int8 shifted by +128) or int16."""
    if not dot.shift:
        return builder.emit(relax.op.astype(x, dot.a_dtype))
    if str(x.ty.dtype) == "uint8":
        return x
    shifted = relax.op.add(relax.op.astype(x, "int16"), relax.const(128, "int16"))
    return builder.emit(relax.op.astype(shifted, "uint8"))


def padded_rows(rows) -> int:
    """The rows a dense kernel computes for `rows` (static) rows: a count that allows no tile of
    several rows (257 tokens: a prime) is padded with zero rows to a multiple of 4, which the
    caller slices off: the (1, v) tile loads every weight vector once per row, the (4, 2) tile
    once per 4 rows (DINOv2's 257-token matmuls ran at ~1/4 of MiniLM's 128-token rate)."""
    if isinstance(rows, int) and rows >= 16 and rows % 4:
        return -(-rows // 4) * 4
    return rows


def pad_rows(x: relax.Expr, extra: int) -> relax.Expr:
    """`x` [..., M, K] with `extra` zero rows appended (see `padded_rows`)."""
    rank = len(x.ty.shape)
    return relax.op.nn.pad(x, [0, 0] * (rank - 2) + [0, extra, 0, 0])


def slice_back(builder: relax.BlockBuilder, out: relax.Expr, rows, padded_rows, n: int, padded_n: int) -> relax.Expr:
    """The kernel output [..., padded_rows, padded_n] cut back to [..., rows, n]."""
    if padded_rows == rows and padded_n == n:
        return out
    out = builder.emit(out)
    rank = len(out.ty.shape)
    axes, ends = [], []
    if padded_rows != rows:
        axes, ends = [rank - 2], [rows]
    if padded_n != n:
        axes, ends = axes + [rank - 1], ends + [n]
    return relax.op.strided_slice(out, axes=axes, begin=[0] * len(axes), end=ends)


def dense_tile(rows: int, n: int, dot: Dot = VNNI):
    return next(((r, v) for r, v in _DENSE_TILES[dot.registers]
                 if rows % r == 0 and n % dot.lanes == 0 and (n // dot.lanes) % v == 0), None)


def conv_tile(kind: str, o: int, h: int, w: int, dot: Dot = VNNI):
    """(rows, vectors) tile for a pointwise conv of this kind, or None if none fits."""
    lanes = dot.lanes
    if kind == CONV_LANES_PIXELS:
        return next(((r, v) for r, v in _PIXEL_LANE_TILES[dot.registers] if o % r == 0
                     and (h * w) % (v * lanes) == 0 and _rectangular(v * lanes, w)), None)
    return next(((r, v) for r, v in _OUT_LANE_TILES[dot.registers] if (h * w) % r == 0 and o % lanes == 0
                 and (o // lanes) % v == 0 and _rectangular(r, w)), None)


# -- the schedule ------------------------------------------------------------------------------

def vnni_block(sch: s_tir.Schedule):
    """(block, recipe, kind) of the dot-product compute in a (fused) PrimFunc, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        prefix, _, kind = sch.get(block).name_hint.partition("_")
        if prefix in DOTS and kind in (DENSE, CONV_LANES_OUT, CONV_LANES_PIXELS, CONV_TAPS, TAPS_INPUT, COLSUM, PACK):
            return block, DOTS[prefix], kind
    return None


def schedule_pack(sch: s_tir.Schedule, block) -> None:
    """A run-time pack [..., N/L, K/k, L, k] (and its K tail [..., t, N]) with its producer
    (requantization, transpose) inlined, parallel over tiles. Vectorized along what is
    contiguous in the producer: B's rows (K^T of attention: (K/k, k) innermost, 4-byte
    stores) or its columns (V: one L * k vector store per tile)."""
    name = sch.get(block).name_hint
    packs = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint.startswith(name)]
    inline_producers(sch, lambda other: sch.get(other).name_hint.startswith(name))
    for pack in packs:
        loops = sch.get_loops(pack)
        if sch.get(pack).name_hint != name:  # the tail: columns innermost
            outer, inner = loops[:-1], loops[-1]
        elif _reads_rows_contiguously(sch.get(pack)):
            *lead, jo, ko, jl, kl = loops
            sch.reorder(*lead, jo, jl, ko, kl)
            outer, inner = [*lead, jo, jl], sch.fuse(ko, kl)
        else:
            outer, inner = loops[:-2], sch.fuse(*loops[-2:])
        if outer:
            parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
        sch.vectorize(inner)


def _reads_rows_contiguously(block) -> bool:
    """The pack's source is contiguous along B's rows: its last read index uses the k-in-step var."""
    used = tvm.tirx.analysis.undefined_vars(block.reads[0].region[-1].min, [])
    return any(v.same_as(block.iter_vars[-1].var) for v in used)


def _schedule_colsum(sch: s_tir.Schedule, block) -> None:
    """The shift correction of a run-time packed operand: parallel over its vectors, the
    reduction outside, lanes vectorized."""
    *outer, lane, k = sch.get_loops(block)
    sch.reorder(*outer, k, lane)
    parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
    sch.vectorize(lane)
    init = sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(init)[-1])


def schedule(sch: s_tir.Schedule, block, dot: Dot, kind: str) -> None:
    """Tile, cache the accumulators in registers, tensorize and parallelize one dot-product
    block; the fused requantization epilogue after it is computed tile by tile."""
    if kind == COLSUM:
        _schedule_colsum(sch, block)
        return
    if kind == PACK:
        schedule_pack(sch, block)
        return
    if kind == TAPS_INPUT:
        _schedule_taps_input(sch, block)
        return
    if kind == CONV_TAPS:
        _schedule_taps(sch, block, dot)
        return
    epilogue = inline_epilogue(sch, f"{dot.name}_{kind}")
    shape = [static_factor(sch.get(loop).extent) for loop in sch.get_loops(block)]  # symbolic batch: its factor
    if kind == DENSE:
        loops = sch.get_loops(block)
        outer, (row, lane, k) = list(loops[:-3]), loops[-3:]
        tile, side, local_map = dense_tile(shape[-3], shape[-2], dot), "a", None
    else:
        _, o_n, h, w, _ = shape
        # one pixel axis p = y*W + x: the lanes of a tile are consecutive pixels
        sch.transform_block_layout(block, lambda n, j, y, x, c: (n, j, y * w + x, c))
        b, o, pixels, k = sch.get_loops(block)
        outer, tile = [b], conv_tile(kind, o_n, h, w, dot)
        single = isinstance(sch.get(b).extent, tvm.tirx.IntImm) and int(sch.get(b).extent) == 1
        keep = (lambda n: ()) if single else (lambda n: (n,))
        if kind == CONV_LANES_OUT:  # a batch (maybe symbolic) keeps its axis in the accumulators
            row, lane, side = pixels, o, "a"  # the broadcast operand: activations
            local_map = lambda n, j, yy, xx: (*keep(n), yy * w + xx, j)
        else:
            row, lane, side = o, pixels, "b"  # weights
            local_map = lambda n, j, yy, xx: (*keep(n), j, yy * w + xx)
    rows, vectors = tile
    # TVM lowers a "local" buffer to a workspace-pool call per parallel iteration (per tile: 5376 in
    # EfficientNet's 112x112 expand conv); a "global" one under 1 KiB is a stack array, whose
    # accumulators LLVM keeps in registers too: that conv alone 417 -> 336 us at 1 thread. Not for
    # the vpdpwssd recipes: LLVM then splits x86-64-v4's vpdpwssd into vpmaddwd + vpaddd (unmeasured)
    scope = _accumulator_scope(rows * vectors, dot)
    bcast_a, bcast_b = intrinsic_names(dot, scope)
    intrin = bcast_a if side == "a" else bcast_b
    ro, ri = sch.split(row, [None, rows])
    lo, lt, ll = sch.split(lane, [None, vectors, dot.lanes])
    ko, kl = sch.split(k, [None, dot.k])
    # lanes over pixels on a big image: a tile's run of pixels outside the output channels, its activations
    # read from L1 by each channel block's tile instead of the whole image again per channel block
    big = kind == CONV_LANES_PIXELS and shape[2] * shape[3] * shape[4] * DTYPE_BYTES[dot.a_dtype] > PIXELS_OUTER_BYTES
    # lanes over outputs: channel blocks outermost, so that each thread writes its own channels' planes (pixel
    # blocks outermost, two threads wrote the halves of the same 7x7 or 14x14 planes, sharing their cache lines)
    order = (lo, ro) if big or kind == CONV_LANES_OUT else (ro, lo)
    sch.reorder(*order, ko, ri, lt, ll, kl)
    par = sch.fuse(*outer, *order)
    parallel(sch, par)
    acc = sch.cache_write(block, 0, scope)
    if local_map is not None:
        sch.transform_layout(block, ("write", 0), local_map)
    sch.reverse_compute_at(acc, par)
    for i, consumer in enumerate(epilogue):
        try:  # tried on a copy: a failed primitive may leave the schedule half changed
            sch.copy().reverse_compute_at(consumer, par)
        except (s_tir.schedule.ScheduleError, tvm.error.InternalError):
            # a broadcast TVM cannot bound per tile (OWL-ViT's one-column matmul, its padded columns
            # sliced off, added to a wider tensor): it and what follows stay after the tiles, whole
            epilogue = epilogue[:i]
            break
        sch.reverse_compute_at(consumer, par)
    init = sch.decompose_reduction(block, ko)
    sch.unroll(ri)
    sch.unroll(lt)
    sch.tensorize(ll, intrin)
    sch.vectorize(sch.get_loops(init)[-1])
    if kind == CONV_LANES_OUT and _epilogue_over_channels(sch, par, acc, epilogue, vectors * dot.lanes, dot):
        return
    for stage in [acc, *epilogue]:
        inner = sch.get_loops(stage)[-1]
        extent = sch.get(inner).extent
        # a tile's run of pixels (7 or 14: lanes over outputs) too, one vector LLVM widens: the
        # requantization was scalar int64 there (7x7 192->1152 79 -> 72 us, 14x14 146 -> 122)
        # so is a row of 56 (3.5 vectors; LLVM's own vectorizer, of the serial loop, kept the 64-bit
        # multiply's widening: 56x56 24 -> 144 0.122 -> 0.114 ms with `tir_pipeline`'s rewrites, Zen 4)
        if _vectors_of_tile(sch, inner, dot):
            continue
        if static_factor(extent) % dot.lanes == 0 or (isinstance(extent, tvm.tirx.IntImm) and (
                int(extent) <= 16 or int(extent) % 8 == 0)):
            _vectorize_if_it_can(sch, inner)


PIXELS_OUTER_BYTES = 512 * 1024  # a pointwise conv's packed activations above which its pixel runs go outermost
DTYPE_BYTES = {"uint8": 1, "int8": 1, "int16": 2}


def _epilogue_over_channels(sch: s_tir.Schedule, par, acc, epilogue: list, channels: int, dot: Dot) -> bool:
    """Lanes over outputs: the accumulators hold [pixel, channel] and the output is NCHW. Run the
    epilogue (or the accumulators' write-back where nothing follows) in the accumulators' order,
    vectors over the tile's output channels with the requantization's per-channel constants as
    vector loads, each result stored to its channel's row; the accumulators' copy in NCHW order is
    inlined away. In NCHW order each stage moved the tile's int32 sums one lane at a time into
    vectors of 7 or 14 pixels (1 thread on a Zen 4, kernel alone: 80->480 at 14x14 81 -> 77 us,
    112->672 131 -> 125). False (nothing changed) where the loops are not (tile, channel, pixels...)."""
    def tile_loops(stage) -> list:
        loops = sch.get_loops(stage)
        at = next((i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(par))), None)
        return [] if at is None else loops[at + 1:]

    stages = list(epilogue) or [acc]
    for stage in stages:
        inner = tile_loops(stage)
        if len(inner) < 2 or static_factor(sch.get(inner[0]).extent) != channels:
            return False
    if epilogue:
        try:  # checks before it changes anything (a copy of the schedule fails it: InternalError)
            sch.compute_inline(acc)
        except s_tir.schedule.ScheduleError:
            return False
    for stage in stages:
        channel, *pixels = tile_loops(stage)
        sch.reorder(*pixels, channel)
        if not _vectors_of_tile(sch, channel, dot):
            _vectorize_if_it_can(sch, channel)
    return True


def _vectors_of_tile(sch: s_tir.Schedule, inner, dot: Dot) -> bool:
    """An epilogue stage's loop over a tile's run of whole vectors, as that many vectors unrolled
    (True), not one long vector (False: not a static multiple of `lanes` above one vector). LLVM
    keeps a tile's accumulators in registers only where the epilogue reads them vector by vector as
    the dot products wrote them; read as one 112-lane vector, the 14 accumulators went through the
    stack (EfficientNet-Lite0's 112x112 16 -> 96 conv 0.267 -> 0.243 ms, 128 -> 128 at 96x80 0.770
    -> 0.726; Zen 4, 1 thread). Not for the vpdpwssd recipes, whose accumulators LLVM then also keeps in
    registers and splits each vpdpwssd into vpmaddwd + vpaddd (as with `_accumulator_scope`'s stack arrays)."""
    lanes = dot.lanes
    if dot.a_dtype == "int16" and "vnni" in dot.name:
        return False
    extent = sch.get(inner).extent
    if not isinstance(extent, tvm.tirx.IntImm) or int(extent) % lanes or int(extent) <= lanes:
        return False
    vo, vi = sch.split(inner, [None, lanes])
    sch.unroll(vo)
    _vectorize_if_it_can(sch, vi)
    return True


def _vectorize_if_it_can(sch: s_tir.Schedule, loop) -> None:
    """Vectorize an epilogue stage's inner loop where TVM can: one that writes fewer outputs than its
    tile computes (a 1-wide conv row or a 1-column dense, padded to a vector and sliced back) stays
    scalar. Failing, it had failed the whole schedule: such kernels ran TVM's scalar loops (0.7 ms).
    A loop longer than MAX_CUT_RUN (a cut row of 32768 pixels: TVM refuses vectors that long) is
    vectorized in runs (`schedule_common.at_most`)."""
    loop = at_most(sch, loop, MAX_CUT_RUN)
    try:
        sch.vectorize(loop)
    except s_tir.schedule.ScheduleError:
        pass


def _accumulator_scope(vectors: int, dot: Dot) -> str:
    """Where a tile's accumulators live: a stack array ("global" under 1 KiB), which LLVM keeps in
    registers, except for the vpdpwssd recipes (see `schedule`); else a "local" workspace buffer."""
    small = vectors * dot.lanes * 4 < STACK_BYTES
    return "global" if small and not (dot.a_dtype == "int16" and "vnni" in dot.name) else "local"


# Taps convs: on AVX-512 the pixel tiles, then 3 and 5 vectors (a 48- or 80-pixel row: unmeasured)
# rather than a single accumulator; on AVX2 the pixel tiles.
_TAPS_TILES = {32: _PIXEL_TILES[:-1] + ((4, 3), (2, 5), (1, 1)), 16: _AVX2_PIXEL_TILES}


def taps_tile(o: int, wx: int, dot: Dot):
    """(rows, vectors) tile of a taps conv: rows over output channels, vectors along a row."""
    return next(((r, v) for r, v in _TAPS_TILES[dot.registers] if o % r == 0 and wx % (v * dot.lanes) == 0), None)


def _schedule_taps_input(sch: s_tir.Schedule, block) -> None:
    """The taps conv's input pack with its producers (a requantization) inlined: parallel over runs
    of a phase's flat rows, each a loop over the k-step slots with the pixels innermost (contiguous reads)."""
    inline_producers(sch, lambda other: sch.get(other).same_as(sch.get(block)))
    *outer, flat, kl = sch.get_loops(block)
    run, pixels = sch.split(flat, [None, 16])
    sch.reorder(*outer, run, kl, pixels)
    parallel(sch, sch.fuse(*outer, run))


MAX_CUT_RUN = 64  # int32 lanes of a cut row's epilogue handed to LLVM as one vector, at most


def _schedule_taps(sch: s_tir.Schedule, block, dot: Dot) -> None:
    """Tile (output channels x a run of vectors along one output row), accumulators in registers
    across all taps and channels, tensorized with the weight word broadcast."""
    epilogue = inline_epilogue(sch, f"{dot.name}_{CONV_TAPS}")
    b, o, y, x, ri, rj, c = sch.get_loops(block)
    rows, vectors = taps_tile(int(sch.get(o).extent), int(sch.get(x).extent), dot)
    cut = bool(epilogue) and int(sch.get(epilogue[-1]).writes[0].source.shape[-1]) < int(sch.get(x).extent)
    scope = _accumulator_scope(rows * vectors, dot)
    _, bcast_b = intrinsic_names(dot, scope)
    ro, rr = sch.split(o, [None, rows])
    xo, xt, xl = sch.split(x, [None, vectors, dot.lanes])
    ko, kl = sch.split(c, [None, dot.k])
    sch.reorder(b, y, ro, xo, ri, rj, ko, rr, xt, xl, kl)
    # a row cut back to fewer pixels than its tiles cover (196 of 224): the epilogue runs once per
    # row of the tiles, over the row's true width, instead of in each tile with a predicate, which
    # TVM cannot vectorize (LLVM made 4-lane loops of gathers of it: two thirds of a 3x3 conv's time)
    # runs of R > 1 rows (`taps_geometry`): a run's outputs are not one index range of the epilogue's (TVM
    # cannot place it under the tiles), so it runs after the whole conv, parallel over rows: 3x3 convs over
    # 52-56 pixels 12-17% faster than rows in whole vectors (the R = 1 path), over 20 pixels 26-31%
    whole = []
    if cut and static_factor(sch.get(y).extent) != int(sch.get(epilogue[-1]).writes[0].source.shape[-2]):
        cut, whole, epilogue = False, epilogue, []
    par = sch.fuse(b, y, ro) if cut else sch.fuse(b, y, ro, xo)
    parallel(sch, par)
    acc = sch.cache_write(block, 0, scope)
    sch.reverse_compute_at(acc, xo if cut else par)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, par)
    for stage in whole:
        *rows_of, inner = sch.get_loops(stage)
        parallel(sch, sch.fuse(*rows_of))
        vectorize_row(sch, inner, dot.lanes)
    init = sch.decompose_reduction(block, ri)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(rr)
    sch.unroll(xt)
    sch.tensorize(xl, bcast_b)
    for stage in [acc, *epilogue]:
        inner = sch.get_loops(stage)[-1]
        extent = static_factor(sch.get(inner).extent)
        if extent % dot.lanes == 0:
            if not _vectors_of_tile(sch, inner, dot):
                _vectorize_if_it_can(sch, inner)
        elif cut and stage in epilogue:  # a true row (196)
            vectorize_row(sch, inner, dot.lanes)


def vectorize_row(sch: s_tir.Schedule, inner, lanes: int) -> None:
    """A row of outputs fewer than its tiles cover (196 of 224): vectorized in runs that divide it, else whole."""
    extent = static_factor(sch.get(inner).extent)
    run = max((d for d in range(lanes, MAX_CUT_RUN + 1) if extent % d == 0), default=None)
    if run is not None or extent <= MAX_CUT_RUN:
        _vectorize_if_it_can(sch, sch.split(inner, [None, run])[1] if run and run < extent else inner)
