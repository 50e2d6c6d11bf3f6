"""int8 matmuls and pointwise convs with constant weights on Intel AMX tiles (Sapphire Rapids and later).

One AMX instruction multiplies a 16 x 64 byte tile of activations by a 64 x 16 tile of int8
weights into a 16 x 16 int32 tile: `tdpbusd` for uint8 activations, `tdpbssd` for int8 ones
(no +128 shift, no correction). A kernel block computes a 32 x 32 output block (four int32
tiles kept in tile registers over the whole reduction, two activation tiles and two weight
tiles per 64-deep step), stores it to a 4 KiB accumulator and runs the fused requantization
epilogue on it. Sums are exact int32 sums modulo 2^32 (AMX wraps like vpdpbusd): bit-exact with
the plain loop and with every other kernel family.

The weights are packed as the AVX512-VNNI kernels pack them, [N/16, K/4, 16, 4]: with K a
multiple of 64 that is already one 1 KiB weight tile per (16 columns, 64-deep step), 64 bytes a
row. K off a multiple of 64 is zero-padded to one, rows and columns to whole tiles (by the
rewrite, sliced off after). A pointwise conv (`conv_te`) swaps the roles: its weights [O, K] are
the left tile as they are, and its activations, packed [K/4, H * W', 4] as the pixel-lane VNNI
kernels read them (each image row zero-padded to W', whole tiles), the right one (`tdpbsud` for
uint8 activations): the sums come out per output channel and image row, NCHW, with no transpose
on either side (EfficientNet-Lite0's 14x14 and 7x7 stages, 1 thread: 0.05-0.13 -> 0.04-0.11 ms a
layer; most of what is left is the per-block epilogue). A batch (static, or a free batch's symbolic n) is
the convs' outermost loop, in parallel with the output blocks: each sample's sums are the ones it gets alone.

Every worker thread has its own tile state: a block loads the tile registers' shapes (the
"palette", `ldtilecfg`) where the thread's differ from its kernel's (its first block). Linux
hands AMX to a process only after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`): that first block
asks too, so the artifact runs under any loader (an RPC server, a C++ host); intq's compiler and
runtime ask first (`enable`) to refuse clearly where Linux does not grant it.
"""

from __future__ import annotations

from tvm import s_tir, te
from tvm.script import tirx as T

from frontends.host_cpu import ARCH_REQ_XCOMP_PERM as _ARCH_REQ_XCOMP_PERM
from frontends.host_cpu import SYS_ARCH_PRCTL as _SYS_ARCH_PRCTL
from frontends.host_cpu import XFEATURE_XTILEDATA as _XFEATURE_XTILEDATA
from frontends.host_cpu import enable_amx

from .kernel_family import Dot

STEP = 64  # bytes of one activation tile row: the reduction depth of one instruction
ROWS = 16  # rows of a tile
BLOCK_ROWS = 32  # output rows of a block (two activation tiles)
MIN_ROWS = 16  # fewer rows pad too much: the VNNI kernels stay
TAPS = "intq.taps"  # a taps block's annotation: [Wq (the flat shift of one input row), stride, kh, kw, dh, dw]

# the AMX recipes (lanes, k and the packing as VNNI's; `combine` unused: the block is tensorized whole)
AMXU = Dot("amxu", 16, 4, "uint8", "int8", 32, None)  # tdpbusd
AMXS = Dot("amxs", 16, 4, "int8", "int8", 32, None)  # tdpbssd
# pointwise convs: the weights are the left tile (rows: output channels), the activations packed as
# the pixel-lane kernels read them ([C/4, H*W, 4]) the right one: NCHW in and out, no transposes
CONVU = Dot("amxcu", 16, 4, "uint8", "int8", 32, None)  # tdpbsud (signed weights x unsigned activations)
CONVS = Dot("amxcs", 16, 4, "int8", "int8", 32, None)  # tdpbssd
_OPS = {"amxu": "llvm.x86.tdpbusd", "amxs": "llvm.x86.tdpbssd", "amxcu": "llvm.x86.tdpbsud",
        "amxcs": "llvm.x86.tdpbssd"}
_RECIPES = {d.name: d for d in (AMXU, AMXS, CONVU, CONVS)}
_CONV = frozenset({"amxcu", "amxcs"})

enable = enable_amx  # (frontends/host_cpu.py: the runtime asks for it without the compiler)


def recipe(activation_dtype: str, conv: bool = False) -> Dot | None:
    """The tile recipe for activations of this dtype (8-bit only: AMX-INT8 has no int16 form), for a
    matmul (activations on the left) or a pointwise conv (`conv_te`: weights on the left)."""
    return ({"uint8": CONVU, "int8": CONVS} if conv else {"uint8": AMXU, "int8": AMXS}).get(activation_dtype)


def conv_te(xp: te.Tensor, w: te.Tensor, height: int, channels: int, width: int, dot: str) -> te.Tensor:
    """out[b, o, y, x] = sum_k w[o, k] * xp[b, k / 4, y * W' + x, k % 4] for o < `channels`, x < `width`:
    a pointwise conv's int32 sums, weights [O, K] as they are (O, K whole tiles), the activations
    packed [(B,) K/4, H * W', 4] with each image row zero-padded to W', whole tiles: a block of output
    columns is then a piece of one image row, and its epilogue a box of the output. A batch (a leading
    dim on xp, static or symbolic) is the outermost axis of the sums: each sample's are its own."""
    k = te.reduce_axis((0, int(w.shape[1])), name="k")
    row = int(xp.shape[-2]) // height
    if len(xp.shape) == 4:
        acc = te.compute((xp.shape[0], height, int(w.shape[0]), row), lambda b, y, o, x: te.sum(
            w[o, k].astype("int32") * xp[b, k // 4, y * row + x, k % 4].astype("int32"), axis=k), name=f"{dot}_dense")
        return te.compute((xp.shape[0], channels, height, width), lambda b, o, y, x: acc[b, y, o, x],
                          name="amx_conv_out")
    acc = te.compute((height, int(w.shape[0]), row), lambda y, o, x: te.sum(
        w[o, k].astype("int32") * xp[k // 4, y * row + x, k % 4].astype("int32"), axis=k), name=f"{dot}_dense")
    return te.compute((1, channels, height, width), lambda b, o, y, x: acc[y, o, x], name="amx_conv_out")


def taps_te(xp: te.Tensor, wt: te.Tensor, stride: int, out: tuple, dot: str, dilation=(1, 1)) -> te.Tensor:
    """A spatial conv's int32 sums on tiles: sums[o, y, x] = sum_{i, j, c} W[i, j, o, c] * Xp[a % s, b % s, c / 4,
    y Wq + x + (a / s) Wq + b / s, c % 4] with (a, b) = (i dh, j dw) the tap's offset (Xp [S, S, C/4, Hq * Wq, 4]
    the padded input split into its stride phases, `taps_input`; W [kh, kw, O, C], O whole tiles, C whole 64-deep
    steps) for x < X, each output row's Wo in whole tiles (`taps_geometry`: the columns past Wo read the next row
    and are dropped); out[0, o, y, x] = sums[o, y, x] for o < `out`'s channels, x < Wo. A batch (Xp [B, S, S, ...],
    B static or symbolic) is the sums' outermost axis, each sample's read from its own packed input."""
    kh, kw, rows, c = (int(d) for d in wt.shape)
    ho, wo, wq, cols, channels = out
    batched = len(xp.shape) == 6
    # one axis over the taps (i = t / kw, j = t % kw): a 1 x k kernel's axis of extent 1 would vanish from the block
    rt, rc = te.reduce_axis((0, kh * kw), name="rt"), te.reduce_axis((0, c), name="rc")
    ri, rj = rt // kw, rt % kw
    a, b = _dilated(ri, dilation[0]), _dilated(rj, dilation[1])

    def product(s, o, y, x):
        at = (a % stride, b % stride, rc // 4, y * wq + x + a // stride * wq + b // stride, rc % 4)
        return wt[ri, rj, o, rc].astype("int32") * xp[(s, *at) if batched else at].astype("int32")

    attrs = {TAPS: [wq, stride, kh, kw, *dilation]}
    if batched:
        sums = te.compute((xp.shape[0], rows, ho, cols), lambda s, o, y, x: te.sum(product(s, o, y, x), axis=[rt, rc]),
                          name=f"{dot}_taps", attrs=attrs)
        return te.compute((xp.shape[0], channels, ho, wo), lambda s, o, y, x: sums[s, o, y, x], name="amx_taps_out")
    sums = te.compute((rows, ho, cols), lambda o, y, x: te.sum(product(0, o, y, x), axis=[rt, rc]),
                      name=f"{dot}_taps", attrs=attrs)
    return te.compute((1, channels, ho, wo), lambda s, o, y, x: sums[o, y, x], name="amx_taps_out")


def _dilated(tap, d: int):
    """A tap's offset in input pixels along one axis (the same expression in the compute and the intrinsic)."""
    return tap * d if d != 1 else tap


def taps_geometry(h: int, w: int, kernel: tuple[int, int], stride: int, pads, dilation=(1, 1)) -> tuple[int, ...]:
    """(Ho, Wo, Wq, X, Hq) of a spatial conv on tiles: its output size; the width of a stride phase of the padded
    input (the flat shift of one row); the columns computed per output row, Wo in whole tiles; the phase rows
    the last row's reads reach. A dilated kernel spans (k - 1) d + 1 pixels."""
    (kh, kw), (top, left, bottom, right) = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)], pads
    ho, wo = (h + top + bottom - kh) // stride + 1, (w + left + right - kw) // stride + 1
    wq, cols = wo + (kw - 1) // stride, -(-wo // ROWS) * ROWS
    reach = (ho - 1 + (kh - 1) // stride) * wq + cols + (kw - 1) // stride
    return ho, wo, wq, cols, -(-reach // wq)


def reduction(k: int) -> int | None:
    """The reduction length the kernel runs for K: K zero-padded to a multiple of 64, or None
    where that wastes more than a quarter, or K < 64 (measured: at K = 24-40 a block's fixed
    costs, its accumulator stored and read back, made it 1.5-2.3x the VNNI kernel)."""
    padded = -(-k // STEP) * STEP
    return padded if k >= STEP and padded <= 1.25 * k else None


def block_shape(rows: int, n: int) -> tuple[int, int] | None:
    """(rows, columns) of one kernel block for [rows, n] outputs (rows and n whole tiles)."""
    if rows % ROWS or n % ROWS:
        return None
    return (BLOCK_ROWS if rows % BLOCK_ROWS == 0 else ROWS), (2 * ROWS if n % (2 * ROWS) == 0 else ROWS)


def _config_words() -> list[int]:
    """Palette 1's 64-byte config as 8 little-endian int64 words: all 8 tiles 16 rows x 64 bytes
    (0-3 int32 outputs, 4-5 activations, 6-7 weights, 4 bytes of 4 k's per column)."""
    cfg = bytearray(64)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = STEP
        cfg[48 + t] = ROWS
    return [int.from_bytes(cfg[8 * i:8 * i + 8], "little", signed=True) for i in range(8)]


def _call(name: str, *args):
    return T.evaluate(T.call_llvm_intrin("void", name, *args))


@T.macro
def _configure(w):
    # ldtilecfg costs ~0.5 us (a 32 x 32 x 384 block's whole work): loaded only where this
    # thread's tiles are configured otherwise (its first block of this kernel); sttilecfg is cheap
    want = T.decl_buffer((8,), "int64", scope="local")
    have = T.decl_buffer((8,), "int64", scope="local")
    want[0] = T.int64(w[0])
    want[1] = T.int64(w[1])
    want[2] = T.int64(w[2])
    want[3] = T.int64(w[3])
    want[4] = T.int64(w[4])
    want[5] = T.int64(w[5])
    want[6] = T.int64(w[6])
    want[7] = T.int64(w[7])
    _call("llvm.x86.sttilecfg", T.address_of(have[0]))
    if ((have[0] ^ want[0]) | (have[1] ^ want[1]) | (have[2] ^ want[2]) | (have[3] ^ want[3])
            | (have[4] ^ want[4]) | (have[5] ^ want[5]) | (have[6] ^ want[6]) | (have[7] ^ want[7])) != 0:
        # the process's tile permission, asked once per thread's first block: the artifact runs
        # under any loader (an RPC server, a C++ host), not only intq's runtime (`enable`)
        T.evaluate(T.call_extern("int64", "syscall", T.int64(_SYS_ARCH_PRCTL), T.int64(_ARCH_REQ_XCOMP_PERM),
                                 T.int64(_XFEATURE_XTILEDATA)))
        _call("llvm.x86.ldtilecfg", T.address_of(want[0]))


@T.macro
def _zero_outputs(two_rows, two_cols):
    # outputs: tile 0 (rows 0-15, cols 0-15), 1 (cols 16-31), 2 (rows 16-31), 3
    _call("llvm.x86.tilezero", T.int8(0))
    if two_cols:
        _call("llvm.x86.tilezero", T.int8(1))
    if two_rows:
        _call("llvm.x86.tilezero", T.int8(2))
        if two_cols:
            _call("llvm.x86.tilezero", T.int8(3))


@T.macro
def _store_outputs(c00, c01, c10, c11, sc, two_rows, two_cols):
    """The output tiles stored from c00 (rows 0-15, columns 0-15), c01, c10, c11; rows sc int32 apart."""
    _call("llvm.x86.tilestored64", T.int8(0), c00, T.int64(sc * 4))
    if two_cols:
        _call("llvm.x86.tilestored64", T.int8(1), c01, T.int64(sc * 4))
    if two_rows:
        _call("llvm.x86.tilestored64", T.int8(2), c10, T.int64(sc * 4))
        if two_cols:
            _call("llvm.x86.tilestored64", T.int8(3), c11, T.int64(sc * 4))


@T.macro
def _step(op, a0, a1, b0, b1, sa, sb, two_rows, two_cols):
    """One 64-deep step of a block: tiles 4-5 A's rows 0-15, 16-31 (from a0, a1; row stride sa bytes),
    6-7 B's columns 0-15, 16-31 (from b0, b1; stride sb)."""
    _call("llvm.x86.tileloadd64", T.int8(4), a0, T.int64(sa))
    _call("llvm.x86.tileloadd64", T.int8(6), b0, T.int64(sb))
    _call(op, T.int8(0), T.int8(4), T.int8(6))
    if two_cols:
        _call("llvm.x86.tileloadd64", T.int8(7), b1, T.int64(sb))
        _call(op, T.int8(1), T.int8(4), T.int8(7))
    if two_rows:
        _call("llvm.x86.tileloadd64", T.int8(5), a1, T.int64(sa))
        _call(op, T.int8(2), T.int8(5), T.int8(6))
        if two_cols:
            _call(op, T.int8(3), T.int8(5), T.int8(7))


def _intrinsic(dot: Dot, rows: int, cols: int, k: int, scope: str):
    """(description, implementation) of C[rows, cols] = A[rows, k] . B (the reduction's init included:
    the tiles start at zero). A matmul: A the activations, B the weights packed [cols/16, k/4, 16, 4].
    A pointwise conv (`conv_te`): A the weights, B the activations packed [k/4, cols, 4]."""
    conv, op, nb, kt = dot.name in _CONV, _OPS[dot.name], cols // ROWS, k // 4
    ad, bd = ("int8", dot.a_dtype) if conv else (dot.a_dtype, "int8")
    b_shape = (kt, cols, 4) if conv else (nb, kt, 16, 4)
    two_rows, two_cols = rows == 2 * ROWS, nb == 2
    w = _config_words()

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb0, sb1, sc = T.int64(), T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (rows, k), ad, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, b_shape, bd, offset_factor=1, strides=[sb0, 4, 1] if conv else [sb0, sb1, 4, 1])
        C = T.match_buffer(c, (rows, cols), "int32", offset_factor=1, strides=[sc, 1], scope=scope)
        with T.sblock("root"):
            T.reads(A[0:rows, 0:k], B[0:kt, 0:cols, 0:4] if conv else B[0:nb, 0:kt, 0:16, 0:4])
            T.writes(C[0:rows, 0:cols])
            for i, j, r in T.grid(rows, cols, k):
                with T.sblock("update"):
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    if conv:
                        T.reads(C[vi, vj], A[vi, vr], B[vr // 4, vj, vr % 4])
                        T.writes(C[vi, vj])
                        with T.init():
                            C[vi, vj] = 0
                        C[vi, vj] = C[vi, vj] + T.cast(A[vi, vr], "int32") * T.cast(B[vr // 4, vj, vr % 4], "int32")
                    else:
                        T.reads(C[vi, vj], A[vi, vr], B[vj // 16, vr // 4, vj % 16, vr % 4])
                        T.writes(C[vi, vj])
                        with T.init():
                            C[vi, vj] = 0
                        C[vi, vj] = C[vi, vj] + T.cast(A[vi, vr], "int32") * T.cast(
                            B[vj // 16, vr // 4, vj % 16, vr % 4], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb0, sb1, sc = T.int64(), T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (rows, k), ad, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, b_shape, bd, offset_factor=1, strides=[sb0, 4, 1] if conv else [sb0, sb1, 4, 1])
        C = T.match_buffer(c, (rows, cols), "int32", offset_factor=1, strides=[sc, 1], scope=scope)
        with T.sblock("root"):
            T.reads(A[0:rows, 0:k], B[0:kt, 0:cols, 0:4] if conv else B[0:nb, 0:kt, 0:16, 0:4])
            T.writes(C[0:rows, 0:cols])
            _configure(w)
            _zero_outputs(two_rows, two_cols)
            for s in range(k // STEP):
                if conv:
                    _step(op, T.address_of(A[0, s * STEP]), T.address_of(A[16 % rows, s * STEP]),
                          T.address_of(B[s * (STEP // 4), 0, 0]), T.address_of(B[s * (STEP // 4), 16 % cols, 0]),
                          sa, sb0, two_rows, two_cols)
                else:
                    _step(op, T.address_of(A[0, s * STEP]), T.address_of(A[16 % rows, s * STEP]),
                          T.address_of(B[0, s * (STEP // 4), 0, 0]), T.address_of(B[1 % nb, s * (STEP // 4), 0, 0]),
                          sa, 64, two_rows, two_cols)
            _store_outputs(T.address_of(C[0, 0]), T.address_of(C[0, 16 % cols]), T.address_of(C[16 % rows, 0]),
                           T.address_of(C[16 % rows, 16 % cols]), sc, two_rows, two_cols)

    return desc, impl


def _taps_intrinsic(dot: Dot, rows: int, cols: int, c: int, kernel: tuple[int, int], stride: int, wq: int,
                    dilation=(1, 1)):
    """(description, implementation) of a spatial conv's block (`taps_te`): C[rows, cols] = the sums over
    every tap (i, j) and channel of A[i, j] (the tap's weights [rows, c]) times B at the tap's shift
    (with (a, b) = (i dh, j dw): the packed input phase (a % s, b % s), flat positions shifted by
    (a / s) Wq + b / s). The output tiles stay in tile registers over all taps and channels."""
    op, kt, (kh, kw), s, (dh, dw) = _OPS[dot.name], c // 4, kernel, stride, dilation
    span = cols + (kh - 1) * dh // s * wq + (kw - 1) * dw // s  # flat positions a block reads
    # of the input's stride phases, those the taps read (one along a 1-wide axis)
    phases = (min((kh - 1) * dh + 1, s), min((kw - 1) * dw + 1, s))
    two_rows, two_cols = rows == 2 * ROWS, cols == 2 * ROWS
    w = _config_words()

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, cc: T.handle) -> None:
        sa0, sa1, sa, sb0, sb1, sb2 = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        sc, sc1 = T.int64(), T.int64()
        A = T.match_buffer(a, (kh, kw, rows, c), "int8", offset_factor=1, strides=[sa0, sa1, sa, 1])
        B = T.match_buffer(b, (*phases, kt, span, 4), dot.a_dtype, offset_factor=1, strides=[sb0, sb1, sb2, 4, 1])
        C = T.match_buffer(cc, (rows, 1, cols), "int32", offset_factor=1, strides=[sc, sc1, 1])
        with T.sblock("root"):
            T.reads(A[0:kh, 0:kw, 0:rows, 0:c], B[0:phases[0], 0:phases[1], 0:kt, 0:span, 0:4])
            T.writes(C[0:rows, 0, 0:cols])
            for i, j, t, r in T.grid(rows, cols, kh * kw, c):
                with T.sblock("update"):
                    vi, vj, vt, vr = T.axis.remap("SSRR", [i, j, t, r])
                    T.reads(C[vi, 0, vj], A[vt // kw, vt % kw, vi, vr],
                            B[_dilated(vt // kw, dh) % s, _dilated(vt % kw, dw) % s, vr // 4,
                              vj + _dilated(vt // kw, dh) // s * wq + _dilated(vt % kw, dw) // s, vr % 4])
                    T.writes(C[vi, 0, vj])
                    with T.init():
                        C[vi, 0, vj] = 0
                    C[vi, 0, vj] = C[vi, 0, vj] + T.cast(A[vt // kw, vt % kw, vi, vr], "int32") * T.cast(
                        B[_dilated(vt // kw, dh) % s, _dilated(vt % kw, dw) % s, vr // 4,
                          vj + _dilated(vt // kw, dh) // s * wq + _dilated(vt % kw, dw) // s, vr % 4], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, cc: T.handle) -> None:
        sa0, sa1, sa, sb0, sb1, sb2 = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        sc, sc1 = T.int64(), T.int64()
        A = T.match_buffer(a, (kh, kw, rows, c), "int8", offset_factor=1, strides=[sa0, sa1, sa, 1])
        B = T.match_buffer(b, (*phases, kt, span, 4), dot.a_dtype, offset_factor=1, strides=[sb0, sb1, sb2, 4, 1])
        C = T.match_buffer(cc, (rows, 1, cols), "int32", offset_factor=1, strides=[sc, sc1, 1])
        with T.sblock("root"):
            T.reads(A[0:kh, 0:kw, 0:rows, 0:c], B[0:phases[0], 0:phases[1], 0:kt, 0:span, 0:4])
            T.writes(C[0:rows, 0, 0:cols])
            _configure(w)
            _zero_outputs(two_rows, two_cols)
            for ti, tj, st in T.grid(kh, kw, c // STEP):
                _step(op, T.address_of(A[ti, tj, 0, st * STEP]), T.address_of(A[ti, tj, 16 % rows, st * STEP]),
                      T.address_of(B[ti * dh % s, tj * dw % s, st * (STEP // 4), ti * dh // s * wq + tj * dw // s, 0]),
                      T.address_of(B[ti * dh % s, tj * dw % s, st * (STEP // 4),
                                     ti * dh // s * wq + tj * dw // s + 16 % cols, 0]),
                      sa, sb2, two_rows, two_cols)
            _store_outputs(T.address_of(C[0, 0, 0]), T.address_of(C[0, 0, 16 % cols]), T.address_of(C[16 % rows, 0, 0]),
                           T.address_of(C[16 % rows, 0, 16 % cols]), sc, two_rows, two_cols)

    return desc, impl


def intrinsic_name(dot: Dot, rows: int, cols: int, k: int, scope: str) -> str:
    """Register the block intrinsic for this shape once per process; its name."""
    name = f"intq_{dot.name}_{rows}x{cols}x{k}_{scope}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, *_intrinsic(dot, rows, cols, k, scope))
    return name


def taps_intrinsic_name(dot: Dot, rows: int, cols: int, c: int, kernel: tuple[int, int], stride: int,
                        wq: int, dilation=(1, 1)) -> str:
    """Register the spatial conv's block intrinsic for this shape once per process; its name."""
    name = f"intq_{dot.name}_taps_{rows}x{cols}x{c}_{kernel[0]}x{kernel[1]}s{stride}d{dilation[0]}x{dilation[1]}w{wq}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, *_taps_intrinsic(dot, rows, cols, c, kernel, stride, wq, dilation))
    return name


def tile_block(sch: s_tir.Schedule):
    """(block, recipe) of an AMX dense or taps compute in a (fused) PrimFunc, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        prefix, _, kind = sch.get(block).name_hint.partition("_")
        if prefix in _OPS and kind in ("dense", "taps"):
            return block, _RECIPES[prefix]
    return None


def schedule(sch: s_tir.Schedule, block, dot: Dot) -> None:
    """Blocks of [32 | 16 rows, 32 | 16 columns] in parallel, each one tensorized over the whole
    reduction, with the fused requantization epilogue run on its accumulator right after it (a pointwise
    conv over rows wider than a block: per image row; a spatial conv: `_schedule_taps`)."""
    from .schedule_common import inline_epilogue, parallel

    if sch.get(block).name_hint.endswith("_taps"):
        return _schedule_taps(sch, block, dot)
    epilogue = inline_epilogue(sch, f"{dot.name}_dense")
    *outer, row, lane, k = sch.get_loops(block)
    rows, n, kdim = (int(sch.get(loop).extent) for loop in (row, lane, k))
    block_rows, block_cols = block_shape(rows, n)
    ro, ri = sch.split(row, [None, block_rows])
    lo, li = sch.split(lane, [None, block_cols])
    # a pointwise conv's `outer`: a batch's samples (if any), then the image rows; the samples outermost
    samples, image = (outer[:-1], outer[-1:]) if dot.name in _CONV else ([], outer)
    if dot.name in _CONV and n > 2 * ROWS:
        # an image row wider than a block: the row's blocks, then its epilogue over the row's true width,
        # vectorized (a block's own epilogue would cut its last columns off with a test per element)
        sch.reorder(*samples, ro, *image, lo, ri, li, k)
        _rows_in_parallel(sch, [*samples, ro, *image], epilogue)
        sch.tensorize(ri, intrinsic_name(dot, block_rows, block_cols, kdim, "global"))
        return
    if dot.name in _CONV:
        # a pointwise conv's rows are output channels and `image` its image rows: channel blocks outermost (under
        # the samples), so that each thread writes its own channels' planes (image rows outermost, two threads
        # wrote the halves of the same 7x7 planes, sharing every cache line: 2 threads were slower than 1)
        sch.reorder(*samples, ro, *image, lo, ri, li, k)
        par = sch.fuse(*samples, ro, *image, lo)
    else:
        sch.reorder(ro, lo, ri, li, k)
        par = sch.fuse(*outer, ro, lo)
    parallel(sch, par)
    acc = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(acc, par)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, par)
    sch.tensorize(ri, intrinsic_name(dot, block_rows, block_cols, kdim, "global"))
    for stage in [acc, *epilogue]:
        try:
            sch.vectorize(sch.get_loops(stage)[-1])
        except s_tir.schedule.ScheduleError:
            pass


def _schedule_taps(sch: s_tir.Schedule, block, dot: Dot) -> None:
    """In parallel over (a sample of a batch, 32 | 16 output channels, an output row): the row's blocks of 32 |
    16 columns, each tensorized over all taps and channels, then the epilogue (the requantization) over the
    row's true width, vectorized, while the row's sums are in cache."""
    from .schedule_common import inline_epilogue

    name = sch.get(block).name_hint
    epilogue = inline_epilogue(sch, name)
    *samples, o, y, x, rt, rc = sch.get_loops(block)  # a batch: its samples outermost
    rows, cols, c = int(sch.get(o).extent), int(sch.get(x).extent), int(sch.get(rc).extent)
    block_rows, block_cols = block_shape(rows, cols)
    wq, stride, kh, kw, *dilation = (int(v) for v in sch.get(block).annotations[TAPS])
    oo, oi = sch.split(o, [None, block_rows])
    xo, xi = sch.split(x, [None, block_cols])
    sch.reorder(*samples, oo, y, xo, oi, xi, rt, rc)
    _rows_in_parallel(sch, [*samples, oo, y], epilogue)
    sch.tensorize(oi, taps_intrinsic_name(dot, block_rows, block_cols, c, (kh, kw), stride, wq,
                                          tuple(dilation) or (1, 1)))


def _rows_in_parallel(sch: s_tir.Schedule, loops: list, epilogue: list) -> None:
    """`loops` (a channel block, an image row) fused into the parallel loop, the epilogue computed under it
    over the row's true width, vectorized."""
    from .schedule_common import parallel
    from .vnni import vectorize_row

    par = sch.fuse(*loops)
    parallel(sch, par)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, par)
        vectorize_row(sch, sch.get_loops(consumer)[-1], ROWS)

