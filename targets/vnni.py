"""AVX512-VNNI kernels for int8 matmuls and pointwise convolutions (x86, no tuning).

`vpdpbusd` adds, in each of 16 int32 lanes, the dot product of 4 unsigned bytes with 4
signed bytes. Two tensor intrinsics use it, differing in which operand is broadcast:

    lanes over outputs  (BCAST_A): acc[n0:n0+16] += A[r, k:k+4] . Bp[n0/16, k/4, :, :]
        A: uint8 activations [rows, K]; Bp: int8 weights pre-packed [N/16, K/4, 16, 4]
    lanes over pixels   (BCAST_B): acc[p0:p0+16] += Xp[c/4, p0:p0+16, :] . W[o, c:c+4]
        Xp: uint8 activations repacked [C/4, P, 4] at run time; W: int8 weights [O, C]

The broadcast 4 bytes are read as one int32. TVM's registered `dot_16x4_vnni` fails
LLVM 22's verifier (DESIGN.md section 3), hence these. The kernels compute exactly the
int32 sums of the plain matmul/conv (integer sums are order-free): bit-exact.

`*_te` are the compute definitions the Relax rewrite (`vnni_rewrite.py`) calls; `schedule`
tiles them (a register block of accumulators, reduction in steps of 4, tensorized inner
tile, parallel outer loop) with the requantization epilogue fused per tile.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, te
from tvm.script import tirx as T

from .schedule_common import inline_epilogue

BCAST_A = "intq_vnni_16x4_bcast_a"
BCAST_B = "intq_vnni_16x4_bcast_b"
LANES = 16
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def _bcast(buf, dtype: str):
    """4 bytes of `buf` read as one int32, broadcast to 64 bytes."""
    return T.reinterpret(T.broadcast(T.reinterpret(buf.vload([0], f"{dtype}x4"), dtype="int32"), 16),
                         dtype=f"{dtype}x64")


@T.prim_func(s_tir=True)
def _bcast_a_desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                  C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i, k in T.grid(16, 4):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _bcast_a_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                  C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_VPDPBUSD), C.vload([0], dtype="int32x16"),
            _bcast(A, "uint8"), B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


@T.prim_func(s_tir=True)
def _bcast_b_desc(A: T.Buffer((16, 4), "uint8", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
                  C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16, 0:4], B[0:4])
        T.writes(C[0:16])
        for i, k in T.grid(16, 4):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vk], "int32")


@T.prim_func(s_tir=True)
def _bcast_b_impl(A: T.Buffer((16, 4), "uint8", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
                  C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16, 0:4], B[0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_VPDPBUSD), C.vload([0], dtype="int32x16"),
            A.vload([0, 0], dtype="uint8x64"), _bcast(B, "int8"), dtype="int32x16")


def register_intrinsics() -> None:
    """Register both intrinsics once per process (MetaSchedule workers call it too)."""
    for name, desc, impl in ((BCAST_A, _bcast_a_desc, _bcast_a_impl), (BCAST_B, _bcast_b_desc, _bcast_b_impl)):
        if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
            s_tir.TensorIntrin.register(name, desc, impl)


def has_vnni(target: tvm.target.Target) -> bool:
    mattr = target.attrs.get("mattr") or []
    return target.kind.name == "llvm" and "+avx512vnni" in [str(m) for m in mattr]


# -- weight packing (compile time) ------------------------------------------------------

def pack_weights(w_nk: np.ndarray) -> np.ndarray:
    """int8 [N, K] -> [N/16, K/4, 16, 4]: one 64-byte vector per (16 outputs, 4 inputs)."""
    n, k = w_nk.shape
    return np.ascontiguousarray(w_nk.reshape(n // LANES, LANES, k // 4, 4).transpose(0, 2, 1, 3))


# -- compute definitions (block names tell the schedule which kind it is) -----------------

DENSE, CONV_LANES_OUT, CONV_LANES_PIXELS = "vnni_dense", "vnni_conv_lanes_out", "vnni_conv_lanes_pixels"


def _corrected(acc: te.Tensor, corr: te.Tensor | None, channel_axis: int) -> te.Tensor:
    """acc - corr[channel]: takes back the +128 shift of int8 activations (see vnni_rewrite)."""
    if corr is None:
        return acc
    return te.compute(acc.shape, lambda *i: acc[i] - corr[i[channel_axis]], name="vnni_unshift")


def dense_te(a: te.Tensor, bp: te.Tensor, corr: te.Tensor | None = None) -> te.Tensor:
    """out[..., m, n] = sum_k A[..., m, k] * Bp[n/16, k/4, n%16, k%4] - corr[n]  (lanes over n)."""
    k = int(a.shape[-1])
    out_shape = [*a.shape[:-1], bp.shape[0] * LANES]
    r = te.reduce_axis((0, k), name="k")

    def body(*idx):
        *rows, j = idx
        return te.sum(a[(*rows, r)].astype("int32")
                      * bp[j // LANES, r // 4, j % LANES, r % 4].astype("int32"), axis=r)

    return _corrected(te.compute(out_shape, body, name=DENSE), corr, len(out_shape) - 1)


def conv_lanes_out_te(xt: te.Tensor, wp: te.Tensor, h: int, w: int, corr: te.Tensor | None = None) -> te.Tensor:
    """Pointwise conv, lanes over output channels: out[0, o, y, x] = sum_c Xt[y*W+x, c] * Wp[...]."""
    r = te.reduce_axis((0, int(xt.shape[1])), name="c")
    return _corrected(te.compute((1, wp.shape[0] * LANES, h, w), lambda _, j, y, x: te.sum(
        xt[y * w + x, r].astype("int32") * wp[j // LANES, r // 4, j % LANES, r % 4].astype("int32"), axis=r),
        name=CONV_LANES_OUT), corr, 1)


def conv_lanes_pixels_te(xp: te.Tensor, wt: te.Tensor, h: int, w: int, corr: te.Tensor | None = None) -> te.Tensor:
    """Pointwise conv, lanes over pixels: out[0, o, y, x] = sum_c Xp[c/4, y*W+x, c%4] * W[o, c]."""
    r = te.reduce_axis((0, int(wt.shape[1])), name="c")
    return _corrected(te.compute((1, wt.shape[0], h, w), lambda _, j, y, x: te.sum(
        xp[r // 4, y * w + x, r % 4].astype("int32") * wt[j, r].astype("int32"), axis=r),
        name=CONV_LANES_PIXELS), corr, 1)


# -- shape rules shared by the rewrite and the schedule ------------------------------------

# (rows per tile, 16-lane vectors per tile), best first: at most 16 accumulators of 32 zmm.
_DENSE_TILES = ((4, 2), (2, 4), (8, 2), (4, 1), (2, 2), (1, 4), (1, 2), (1, 1))
_PIXEL_LANE_TILES = ((2, 7), (4, 4), (8, 2), (4, 2), (2, 4), (1, 7), (2, 2), (1, 14), (1, 4), (1, 2), (1, 1))
_OUT_LANE_TILES = ((7, 2), (4, 4), (8, 2), (4, 2), (14, 1), (2, 4), (7, 1), (2, 2), (1, 4), (1, 2), (1, 1))


def _rectangular(tile: int, width: int) -> bool:
    """A run of `tile` consecutive pixels is a rectangle: part of one row or whole rows."""
    return width % tile == 0 or tile % width == 0


def dense_tile(rows: int, n: int):
    return next(((r, v) for r, v in _DENSE_TILES if rows % r == 0 and (n // LANES) % v == 0), None)


def conv_tile(kind: str, o: int, h: int, w: int):
    """(rows, vectors) tile for a pointwise conv of this kind, or None if none fits."""
    if kind == CONV_LANES_PIXELS:
        return next(((r, v) for r, v in _PIXEL_LANE_TILES if o % r == 0 and (h * w) % (v * LANES) == 0
                     and _rectangular(v * LANES, w)), None)
    return next(((r, v) for r, v in _OUT_LANE_TILES if (h * w) % r == 0 and (o // LANES) % v == 0
                 and _rectangular(r, w)), None)


# -- the schedule ------------------------------------------------------------------------------

def vnni_block(sch: s_tir.Schedule):
    """(block, kind) of the VNNI compute in a (fused) PrimFunc, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        name = sch.get(block).name_hint
        if name in (DENSE, CONV_LANES_OUT, CONV_LANES_PIXELS):
            return block, name
    return None


def schedule(sch: s_tir.Schedule, block, kind: str) -> None:
    """Tile, cache the accumulators in registers, tensorize and parallelize one VNNI block;
    the fused requantization epilogue after it is computed tile by tile."""
    register_intrinsics()
    epilogue = inline_epilogue(sch, kind)
    shape = [int(sch.get(loop).extent) for loop in sch.get_loops(block)]
    if kind == DENSE:
        loops = sch.get_loops(block)
        outer, (row, lane, k) = list(loops[:-3]), loops[-3:]
        tile, intrin, local_map = dense_tile(shape[-3], shape[-2]), BCAST_A, None
    else:
        _, o_n, h, w, _ = shape
        # one pixel axis p = y*W + x: the 16 lanes of a tile are consecutive pixels
        sch.transform_block_layout(block, lambda n, j, y, x, c: (n, j, y * w + x, c))
        b, o, pixels, k = sch.get_loops(block)
        outer, tile = [b], conv_tile(kind, o_n, h, w)
        if kind == CONV_LANES_OUT:
            row, lane, intrin = pixels, o, BCAST_A
            local_map = lambda n, j, yy, xx: (yy * w + xx, j)
        else:
            row, lane, intrin = o, pixels, BCAST_B
            local_map = lambda n, j, yy, xx: (j, yy * w + xx)
    rows, vectors = tile
    ro, ri = sch.split(row, [None, rows])
    lo, lt, ll = sch.split(lane, [None, vectors, LANES])
    ko, kl = sch.split(k, [None, 4])
    sch.reorder(ro, lo, ko, ri, lt, ll, kl)
    par = sch.fuse(*outer, ro, lo)
    sch.parallel(par)
    acc = sch.cache_write(block, 0, "local")
    if local_map is not None:
        sch.transform_layout(block, ("write", 0), local_map)
    sch.reverse_compute_at(acc, par)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, par)
    init = sch.decompose_reduction(block, ko)
    sch.unroll(ri)
    sch.unroll(lt)
    sch.tensorize(ll, intrin)
    sch.vectorize(sch.get_loops(init)[-1])
    for stage in [acc, *epilogue]:
        inner = sch.get_loops(stage)[-1]
        if int(sch.get(inner).extent) % LANES == 0:
            sch.vectorize(inner)
