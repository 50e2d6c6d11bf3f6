"""4-bit weight matmuls and pointwise convs on x86 dot products: the kernels (the 4-bit twin of
`vnni.py`; `vnni_int4.py` puts them in the Relax module, in place of the lowering's plain
`int4_*` kernels).

    {dot}_dense4(x, tiles4)              x [..., K], tiles4 [N/L, K/2k, L, k]           lanes over N
    {dot}_conv_lanes_out4(xt, tiles4)    xt [(B,) H*W, C]                        lanes over outputs
    {dot}_conv_lanes_pixels4(xp, w4)     xp [(B,) C/k, H*W, k], w4 [O, C/2k, k]   lanes over pixels

The weights stay at 4 bits in the dot-product tile layout (`passes.reference.int4.pack_int4_tiles`):
one vector of bytes holds two k-steps' tiles, the first in the low nibbles. Byte operations make
both int8 tiles, each value times 16:

    lo = int8(p << 4)   (vpsllw + vpand)        hi = int8(p & 0xF0)   (vpand)
    acc += dot(x[k0:k0+k], lo);  acc += dot(x[k0+k:k0+2k], hi)        (vpdpbusd, vpmaddwd, ...)

and the kernel returns (acc >> 4) - corr (corr: 128 * sum_k W, the +128 shift of int8
activations, as in `vnni_rewrite.py`). Exact: acc is 16 times the true sum, a multiple of 16,
while 16 * K * max|x'| * 8 < 2^31 (the rewrite checks it). Two forms:

- in registers (`*4_te`): the tensorized step loads one packed vector and unpacks it; for a
  weight block that one row tile uses (a batch-1 matmul, a one-pixel conv);
- staged (`*4_staged_te`): the block of weights a tile loop shares is unpacked once into an
  int8 stage (16 * w) in L1, and the 8-bit kernel (`vnni.py`) runs on it with the weight
  blocks as the outer, parallel loop (convs, matmuls over several rows).

Depthwise convs and RGB stems (`flat_conv4_te`) unpack the flat nibbles into an int8 weight
stage before the flat-row taps of `depthwise.py`.
"""


from __future__ import annotations

import tvm
from tvm import s_tir, te
from tvm.script import tirx as T

from . import vnni
from .kernel_family import DOTS, Dot
from .schedule_common import inline_epilogue, parallel, static_factor

DENSE4, LANES_OUT4, LANES_PIXELS4 = "dense4", "conv_lanes_out4", "conv_lanes_pixels4"
_KINDS = (DENSE4, LANES_OUT4, LANES_PIXELS4)


# -- the unpacked weight (the TE computes and the intrinsic descriptions share it) ---------------

def w16(byte, half: int):
    """16 * the 4-bit value in the low (half 0) or high (half 1) nibble of uint8 `byte`, int32:
    int8(byte << 4) or int8(byte & 0xF0)."""
    v = byte.astype("int32")
    v = ((v << 4) if half == 0 else v) & 240
    return (v ^ 128) - 128


def _pair(x_lo, x_hi, byte):
    """x_lo * (16 * low nibble) + x_hi * (16 * high nibble): two k-steps from one weight byte."""
    return x_lo.astype("int32") * w16(byte, 0) + x_hi.astype("int32") * w16(byte, 1)


def _nibbles(p, n: int):
    """(lo, hi) int8 vectors of 16 * value from the uint8 vector `p` of n bytes."""
    lo = T.reinterpret(T.shift_left(p, T.broadcast(T.uint8(4), n)), dtype=f"int8x{n}")
    hi = T.reinterpret(T.bitwise_and(p, T.broadcast(T.uint8(0xF0), n)), dtype=f"int8x{n}")
    return lo, hi


def _bcast_word(vals, dtype: str, k: int, lanes: int):
    """k int8 weights (widened to int16 pairs when the recipe wants int16) as one int32,
    broadcast to lanes * k elements."""
    if dtype == "int16":
        vals = T.Cast("int16x2", vals)
    word = T.reinterpret(vals, dtype="int32")
    return T.reinterpret(T.broadcast(word, lanes), dtype=f"{dtype}x{lanes * k}")


def _bcast_act(buf, offset: int, dtype: str, k: int, lanes: int):
    """k activations of `buf` from `offset`, read as one int32 and broadcast."""
    word = T.reinterpret(buf.vload([offset], f"{dtype}x{k}"), dtype="int32")
    return T.reinterpret(T.broadcast(word, lanes), dtype=f"{dtype}x{lanes * k}")


def _intrinsics(dot: Dot):
    """(bcast_a, bcast_b) descriptions and implementations of `dot` over two k-steps of 4-bit
    weights (lanes x 2k products per lane group)."""
    L, K, ad, combine = dot.lanes, dot.k, dot.a_dtype, dot.combine
    acc_t, a_vec = f"int32x{L}", f"{ad}x{L * K}"
    w_dtype = "int16" if ad == "int16" else "int8"  # a broadcast weight word: the activations' width

    @T.prim_func(s_tir=True)
    def a_desc(A: T.Buffer((2 * K,), ad, offset_factor=1), B: T.Buffer((L, K), "uint8", offset_factor=1),
               C: T.Buffer((L,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:2 * K], B[0:L, 0:K])
            T.writes(C[0:L])
            for i, k in T.grid(L, K):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + _pair(A[vk], A[vk + K], B[vi, vk])

    @T.prim_func(s_tir=True)
    def a_impl(A: T.Buffer((2 * K,), ad, offset_factor=1), B: T.Buffer((L, K), "uint8", offset_factor=1),
               C: T.Buffer((L,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:2 * K], B[0:L, 0:K])
            T.writes(C[0:L])
            lo, hi = _nibbles(B.vload([0, 0], dtype=f"uint8x{L * K}"), L * K)
            C[T.ramp(T.int32(0), 1, L)] = combine(combine(C.vload([0], dtype=acc_t), _bcast_act(A, 0, ad, K, L), lo),
                                                  _bcast_act(A, K, ad, K, L), hi)

    @T.prim_func(s_tir=True)
    def b_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        A = T.match_buffer(a, (2, L, K), ad, offset_factor=1, strides=[s0, K, 1])
        B = T.match_buffer(b, (K,), "uint8", offset_factor=1)
        C = T.match_buffer(c, (L,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:L], A[0:2, 0:L, 0:K], B[0:K])
            T.writes(C[0:L])
            for i, k in T.grid(L, K):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + _pair(A[0, vi, vk], A[1, vi, vk], B[vk])

    @T.prim_func(s_tir=True)
    def b_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        A = T.match_buffer(a, (2, L, K), ad, offset_factor=1, strides=[s0, K, 1])
        B = T.match_buffer(b, (K,), "uint8", offset_factor=1)
        C = T.match_buffer(c, (L,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:L], A[0:2, 0:L, 0:K], B[0:K])
            T.writes(C[0:L])
            lo, hi = _nibbles(B.vload([0], dtype=f"uint8x{K}"), K)
            C[T.ramp(T.int32(0), 1, L)] = combine(
                combine(C.vload([0], dtype=acc_t), A.vload([0, 0, 0], dtype=a_vec), _bcast_word(lo, w_dtype, K, L)),
                A.vload([1, 0, 0], dtype=a_vec), _bcast_word(hi, w_dtype, K, L))

    return (a_desc, a_impl), (b_desc, b_impl)


def intrinsic_names(dot: Dot) -> tuple[str, str]:
    """Register `dot`'s two 4-bit intrinsics once per process."""
    names = tuple(f"intq_{dot.name}_{dot.lanes}x{dot.k}_int4_bcast_{side}" for side in "ab")
    if s_tir.TensorIntrin.get(names[0], allow_missing=True) is None:
        for name, (desc, impl) in zip(names, _intrinsics(dot)):
            s_tir.TensorIntrin.register(name, desc, impl)
    return names


# -- compute definitions ------------------------------------------------------------------------

def _unpacked(acc: te.Tensor, corr: te.Tensor | None, channel_axis: int, dot: str) -> te.Tensor:
    """acc >> 4 (the x16 weights), minus corr[channel] (the +128 shift of int8 activations)."""
    if corr is None:
        return te.compute(acc.shape, lambda *i: acc[i] >> 4, name=f"{dot}_x16")
    return te.compute(acc.shape, lambda *i: (acc[i] >> 4) - corr[i[channel_axis]], name=f"{dot}_x16")


def _axes(steps: int, kk: int):
    return te.reduce_axis((0, steps), "t"), te.reduce_axis((0, kk), "k")


def dense4_te(a: te.Tensor, tiles: te.Tensor, corr: te.Tensor | None = None, dot: str = "vnni") -> te.Tensor:
    """out[..., m, n] = sum_k A[..., m, k] * W[k, n], W from tiles [N/L, K/2k, L, k] (lanes over n)."""
    _, steps, lanes, kk = (int(d) for d in tiles.shape)
    t, k = _axes(steps, kk)
    out_shape = [*a.shape[:-1], tiles.shape[0] * lanes]
    acc = te.compute(out_shape, lambda *i: te.sum(_pair(
        a[(*i[:-1], t * 2 * kk + k)], a[(*i[:-1], t * 2 * kk + kk + k)],
        tiles[i[-1] // lanes, t, i[-1] % lanes, k]), axis=[t, k]), name=f"{dot}_{DENSE4}")
    return _unpacked(acc, corr, len(out_shape) - 1, dot)


def conv_lanes_out4_te(xt: te.Tensor, tiles: te.Tensor, h: int, w: int, corr: te.Tensor | None = None,
                       dot: str = "vnni") -> te.Tensor:
    """Pointwise conv, lanes over output channels: Xt [(B,) H*W, C], tiles [O/L, C/2k, L, k]."""
    _, steps, lanes, kk = (int(d) for d in tiles.shape)
    t, k = _axes(steps, kk)
    x_at = (lambda b, p, c: xt[b, p, c]) if len(xt.shape) == 3 else (lambda b, p, c: xt[p, c])
    acc = te.compute((vnni._batch(xt, 3), tiles.shape[0] * lanes, h, w), lambda b, j, y, x: te.sum(_pair(
        x_at(b, y * w + x, t * 2 * kk + k), x_at(b, y * w + x, t * 2 * kk + kk + k),
        tiles[j // lanes, t, j % lanes, k]), axis=[t, k]), name=f"{dot}_{LANES_OUT4}")
    return _unpacked(acc, corr, 1, dot)


def conv_lanes_pixels4_te(xp: te.Tensor, w4: te.Tensor, h: int, w: int, corr: te.Tensor | None = None,
                          dot: str = "vnni") -> te.Tensor:
    """Pointwise conv, lanes over pixels: Xp [(B,) C/k, H*W, k], w4 [O, C/2k, k] (`pack_int4_tiles`
    with one lane: byte (o, t, j) holds W[o, 2tk + j] and W[o, (2t+1)k + j])."""
    _, steps, kk = (int(d) for d in w4.shape)
    t, k = _axes(steps, kk)
    x_at = (lambda b, c, p, j: xp[b, c, p, j]) if len(xp.shape) == 4 else (lambda b, c, p, j: xp[c, p, j])
    acc = te.compute((vnni._batch(xp, 4), w4.shape[0], h, w), lambda b, o, y, x: te.sum(_pair(
        x_at(b, 2 * t, y * w + x, k), x_at(b, 2 * t + 1, y * w + x, k), w4[o, t, k]), axis=[t, k]),
        name=f"{dot}_{LANES_PIXELS4}")
    return _unpacked(acc, corr, 1, dot)


# Staged form: where one weight block serves several row tiles (a conv's pixels, a matmul's rows),
# the 4-bit block is unpacked once into an int8 buffer of 16 * w that stays in L1 (a stage of the
# kernel, computed per weight block), and the 8-bit kernel (vnni.py) runs on it: the unpacking
# costs once per block instead of once per row tile.
UNPACK = "unpack4"


def _w16_int8(byte, high):
    """int8(byte << 4) (low nibble) or int8(byte & 0xF0) (high nibble: `high` true)."""
    four, mask = tvm.tirx.const(4, "uint8"), tvm.tirx.const(0xF0, "uint8")
    return tvm.tirx.Select(high, byte & mask, byte << four).astype("int8")


def unpack_te(tiles: te.Tensor, dot: str) -> te.Tensor:
    """[N/L, K/2k, L, k] 4-bit tiles -> [N/L, K/k, L, k] int8 (16 * w): the 8-bit kernels' layout."""
    v, steps, lanes, kk = (int(d) for d in tiles.shape)
    return te.compute((v, 2 * steps, lanes, kk), lambda i, s, l, j: _w16_int8(tiles[i, s // 2, l, j], s % 2 == 1),
                      name=f"{dot}_{UNPACK}")


def unpack_rows_te(w4: te.Tensor, dot: str) -> te.Tensor:
    """[O, C/2k, k] 4-bit weight rows -> [O, C] int8 (16 * w)."""
    o, steps, kk = (int(d) for d in w4.shape)
    return te.compute((o, 2 * steps * kk), lambda i, c: _w16_int8(w4[i, c // (2 * kk), c % kk], c // kk % 2 == 1),
                      name=f"{dot}_{UNPACK}")


def dense4_staged_te(a, tiles, corr=None, dot: str = "vnni"):
    return _unpacked(vnni.dense_te(a, unpack_te(tiles, dot), None, dot), corr, len(a.shape) - 1, dot)


def conv_lanes_out4_packed_staged_te(xp, tiles, h: int, w: int, corr=None, dot: str = "vnni"):
    """Staged lanes over outputs on the interleaved activations Xp [(B,) C/k, H*W, k] (`interleave.py`)."""
    return _unpacked(vnni.conv_lanes_out_packed_te(xp, unpack_te(tiles, dot), h, w, None, dot), corr, 1, dot)


def conv_lanes_pixels4_staged_te(xp, w4, h: int, w: int, corr=None, dot: str = "vnni"):
    return _unpacked(vnni.conv_lanes_pixels_te(xp, unpack_rows_te(w4, dot), h, w, None, dot), corr, 1, dot)


def flat_conv4_te(x: te.Tensor, packed: te.Tensor, w_shape, pads, stride: int, groups: int,
                  corr: te.Tensor | None = None) -> te.Tensor:
    """A 4-bit depthwise conv or RGB stem over flat rows (`depthwise.depthwise_flat_te`): the
    lowering's flat nibbles (`pack_int4`) unpacked into an int8 weight stage, which the flat-row
    schedule (`cpu_schedules.py`) computes per channel (kh * kw values) before its taps."""
    from .depthwise import depthwise_flat_te

    o, cg, kh, kw = w_shape

    def nibble(f, c, y, xx):
        j = ((f * cg + c) * kh + y) * kw + xx
        v = (packed[j // 2].astype("int32") >> (j % 2 * 4).astype("int32")) & 15
        return ((v ^ 8) - 8).astype("int8")

    w = te.compute((o, cg, kh, kw), nibble, name="int4_unpack")
    return depthwise_flat_te(x, w, pads, stride, groups, corr)


# -- the schedule (vnni.schedule with the reduction split as steps x 2 halves x k) -----------------

def int4_block(sch: s_tir.Schedule):
    """(block, recipe, kind) of a 4-bit dot-product compute in a (fused) PrimFunc, or None; a
    staged one's kind is the 8-bit kernel's, its block the unpack stage."""
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except s_tir.schedule.ScheduleError:  # no root block (sort, top-k: hand-written TIR)
        return None
    for i, block in enumerate(blocks):
        prefix, _, kind = sch.get(block).name_hint.partition("_")
        if prefix in DOTS and kind in _KINDS:
            return block, DOTS[prefix], kind
        if prefix in DOTS and kind == UNPACK and i + 1 < len(blocks):
            main = sch.get(blocks[i + 1]).name_hint.partition("_")[2]
            if main in (vnni.DENSE, vnni.CONV_LANES_OUT, vnni.CONV_LANES_PIXELS):
                return block, DOTS[prefix], main
    return None


def schedule(sch: s_tir.Schedule, block, dot: Dot, kind: str) -> None:
    """Tile, cache the accumulators in registers, tensorize two k-steps at a time, parallelize;
    the fused epilogue (>> 4, requantization) computed tile by tile."""
    if kind not in _KINDS:
        _schedule_staged(sch, block, dot, kind)
        return
    bcast_a, bcast_b = intrinsic_names(dot)
    epilogue = inline_epilogue(sch, f"{dot.name}_{kind}")
    shape = [static_factor(sch.get(loop).extent) for loop in sch.get_loops(block)]
    if kind == DENSE4:
        loops = sch.get_loops(block)
        outer, (row, lane, t, k) = list(loops[:-4]), loops[-4:]
        tile, intrin, local_map = vnni.dense_tile(shape[-4], shape[-3], dot), bcast_a, None
        if tile[0] == 1:  # one row: up to 8 vectors of accumulators (zmm or ymm), so that the dependent
            # dot-product chains of the two k-steps overlap. 1x384 @ 384x1536, 4-bit / 8-bit: AVX-512
            # VNNI 1.15 -> 1.01, AVX-VNNI 1.27 -> 0.96, AVX2 vpmaddwd 1.35 -> 1.26 (4 vectors before)
            tile = (1, next(v for v in range(8, 0, -1) if (shape[-3] // dot.lanes) % v == 0))
    else:
        _, o_n, h, w, *_ = shape
        sch.transform_block_layout(block, lambda n, j, y, x, t, c: (n, j, y * w + x, t, c))
        b, o, pixels, t, k = sch.get_loops(block)
        kind8 = vnni.CONV_LANES_OUT if kind == LANES_OUT4 else vnni.CONV_LANES_PIXELS
        outer, tile = [b], vnni.conv_tile(kind8, o_n, h, w, dot)
        single = isinstance(sch.get(b).extent, tvm.tirx.IntImm) and int(sch.get(b).extent) == 1
        keep = (lambda n: ()) if single else (lambda n: (n,))
        if kind == LANES_OUT4:
            row, lane, intrin = pixels, o, bcast_a
            local_map = lambda n, j, yy, xx: (*keep(n), yy * w + xx, j)
        else:
            row, lane, intrin = o, pixels, bcast_b
            local_map = lambda n, j, yy, xx: (*keep(n), j, yy * w + xx)
    rows, vectors = tile
    ro, ri = sch.split(row, [None, rows])
    lo, lt, ll = sch.split(lane, [None, vectors, dot.lanes])
    sch.reorder(ro, lo, t, ri, lt, ll, k)
    par = sch.fuse(*outer, ro, lo)
    parallel(sch, par)
    acc = sch.cache_write(block, 0, "local")
    if local_map is not None:
        sch.transform_layout(block, ("write", 0), local_map)
    sch.reverse_compute_at(acc, par)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, par)
    init = sch.decompose_reduction(block, t)
    sch.unroll(ri)
    sch.unroll(lt)
    sch.tensorize(ll, intrin)
    sch.vectorize(sch.get_loops(init)[-1])
    _vectorize_rows(sch, [acc, *epilogue], dot)


def _schedule_staged(sch: s_tir.Schedule, unpack, dot: Dot, kind: str) -> None:
    """The 8-bit kernel's tiles (vnni.schedule), with the loop over weight blocks outermost and
    parallel, the block's unpack stage computed at it (int8 in L1), the row tiles inside."""
    block = sch.get_consumers(unpack)[0]
    epilogue = inline_epilogue(sch, f"{dot.name}_{kind}")
    shape = [static_factor(sch.get(loop).extent) for loop in sch.get_loops(block)]
    if kind == vnni.DENSE:
        loops = sch.get_loops(block)
        outer, (row, lane, k) = list(loops[:-3]), loops[-3:]
        tile, intrin, local_map = vnni.dense_tile(shape[-3], shape[-2], dot), "a", None
    else:
        _, o_n, h, w, _ = shape
        sch.transform_block_layout(block, lambda n, j, y, x, c: (n, j, y * w + x, c))
        b, o, pixels, k = sch.get_loops(block)
        outer, tile = [b], vnni.conv_tile(kind, o_n, h, w, dot)
        single = isinstance(sch.get(b).extent, tvm.tirx.IntImm) and int(sch.get(b).extent) == 1
        keep = (lambda n: ()) if single else (lambda n: (n,))
        if kind == vnni.CONV_LANES_OUT:
            row, lane, intrin = pixels, o, "a"
            local_map = lambda n, j, yy, xx: (*keep(n), yy * w + xx, j)
        else:
            row, lane, intrin = o, pixels, "b"
            local_map = lambda n, j, yy, xx: (*keep(n), j, yy * w + xx)
    rows, vectors = tile
    scope = vnni._accumulator_scope(rows * vectors, dot)  # as at 8 bits: registers, not a workspace buffer
    bcast_a, bcast_b = vnni.intrinsic_names(dot, scope)
    intrin = bcast_a if intrin == "a" else bcast_b
    ro, ri = sch.split(row, [None, rows])
    lo, lt, ll = sch.split(lane, [None, vectors, dot.lanes])
    ko, kl = sch.split(k, [None, dot.k])
    if kind == vnni.CONV_LANES_PIXELS:  # the weights follow the rows (output channels)
        sch.reorder(ro, lo, ko, ri, lt, ll, kl)
        weights, tiles = sch.fuse(*outer, ro), lo
    else:  # the weights follow the lanes
        sch.reorder(lo, ro, ko, ri, lt, ll, kl)
        weights, tiles = sch.fuse(*outer, lo), ro
    parallel(sch, weights)
    acc = sch.cache_write(block, 0, scope)
    if local_map is not None:
        sch.transform_layout(block, ("write", 0), local_map)
    sch.reverse_compute_at(acc, tiles)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, tiles)
    sch.compute_at(unpack, weights)
    init = sch.decompose_reduction(block, ko)
    sch.unroll(ri)
    sch.unroll(lt)
    sch.tensorize(ll, intrin)
    sch.vectorize(sch.get_loops(init)[-1])
    _schedule_unpack(sch, unpack, dot, kind == vnni.CONV_LANES_PIXELS)
    # the 8-bit kernel's epilogue: over the tile's channels where lanes are outputs, else vector by vector
    channels = vectors * dot.lanes
    if kind == vnni.CONV_LANES_OUT and vnni._epilogue_over_channels(sch, tiles, acc, epilogue, channels, dot):
        return
    _vectorize_rows(sch, [stage for stage in [acc, *epilogue]
                          if not vnni._vectors_of_tile(sch, sch.get_loops(stage)[-1], dot)], dot)


def _vectorize_rows(sch: s_tir.Schedule, stages, dot: Dot) -> None:
    """The accumulator write-back and the epilogue vectorized along their inner loop: whole vectors,
    or a short static row (an image row of 28 or 14 pixels: left to LLVM, it made gathers and
    scatters of it, 2.1x the 8-bit kernel's time for 240 x 40 channels at 28 x 28; rows of 56
    LLVM vectorizes better itself)."""
    for stage in stages:
        inner = sch.get_loops(stage)[-1]
        extent = sch.get(inner).extent
        if static_factor(extent) % dot.lanes == 0 or (isinstance(extent, tvm.tirx.IntImm) and int(extent) <= 32):
            sch.vectorize(inner)


def _schedule_unpack(sch: s_tir.Schedule, unpack, dot: Dot, rows: bool) -> None:
    """The unpack stage: the two halves of a byte unrolled (no select), the bytes vectorized."""
    if rows:  # [O, C]: c = (t, half, j)
        *_, c = sch.get_loops(unpack)
        _, half, j = sch.split(c, [None, 2, dot.k])
        sch.unroll(half)
        sch.vectorize(j)
        return
    *_, s, lane, j = sch.get_loops(unpack)  # [V, 2T, L, k]
    _, half = sch.split(s, [None, 2])
    sch.vectorize(sch.fuse(lane, j))
    sch.unroll(half)


@tvm.transform.module_pass(opt_level=0, name="ScheduleInt4DotKernels")
def schedule_int4_dot_kernels(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Schedule every (fused) PrimFunc that holds a 4-bit dot-product block; runs before the
    default CPU schedules (`cpu_schedules.py`), which leave scheduled functions alone."""
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
            continue
        sch = s_tir.Schedule(func)
        found = int4_block(sch)
        if found is None:
            continue
        try:
            schedule(sch, *found)
        except s_tir.schedule.ScheduleError:
            continue  # a fusion this schedule does not cover: the default lowering (slow, exact)
        mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod
