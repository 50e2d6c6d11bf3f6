"""The taps convs' input pack as one kernel of vector loads and shuffles.

A spatial conv on the dot-product kernels (`vnni.conv_taps_te`) reads its input zero-padded, split into
its stride phases and with k channels interleaved per pixel (`vnni.taps_input_te`):

    out[a, b, q, yq, xq, j] = x[0, q k + j, yq s + a - top, xq s + b - left]      0 outside x

(int8 moves to uint8 by +128, its padding too; 16-bit recipes widen to int16). TVM computed it an element
at a time (a bounds test, a byte load and a byte store each): 1.35 GB/s, 28 ms of one audio CNN's 126
(`benchmarks/results/corpus_speed.md`, cause 4) and a tenth of a millisecond of EfficientNet-Lite0's stem.
Here a vector of 16 output pixels is k loads of 16 s contiguous elements (one per channel of the group) and
one shuffle that picks every s-th element of each and interleaves them: in a loop over a row's inner pixels,
with the row's ends (where the padding starts) unrolled with loads clamped into the row and the padding
picked from a zero vector, and rows of padding stored as constants (8- and 16-bit inputs). Pure data movement: bit-exact with
`taps_input_te` by construction, and tested against it.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .interleave import OPAQUE

PIXELS = 16  # output pixels per stored vector (64 bytes of uint8 quads, of int16 pairs)


def takes(c: int, h: int, w: int, stride: int, in_dtype: str, out_dtype: str) -> bool:
    """Whether `pack_func` handles this input: 8-bit to uint8 quads or int16 pairs, or 16-bit to int16
    pairs (a tensor kept at 16 bits), a row holding a whole vector's reads."""
    pairs = {("int8", "uint8"), ("uint8", "uint8"), ("int8", "int16"), ("uint8", "int16"), ("int16", "int16"),
             ("int8", "int8")}  # int8 as it is: AMX tiles multiply int8 x int8 (tdpbssd)
    return (in_dtype, out_dtype) in pairs and w >= PIXELS * stride


def pack_func(c: int, h: int, w: int, pads: tuple[int, int], stride: int, hq: int, wq: int, k: int,
              in_dtype: str, out_dtype: str, batch: bool = False, groups: int | None = None) -> tvm.tirx.PrimFunc:
    """The PrimFunc of the pack: x [n, C, H, W] -> [(n,) s, s, G, Hq * Wq, k] of `out_dtype` (`taps_input_te`'s
    layout), n symbolic where `batch`; G = `groups`, ceil(C / k) or more (zero groups: AMX's whole 64-deep steps)."""
    top, left = pads
    real_groups, span = -(-c // k), PIXELS * stride  # channel groups; input elements one output vector reads
    groups = groups or real_groups
    shifted = in_dtype == "int8" and out_dtype == "uint8"
    n = tvm.tirx.Var("n", "int64") if batch else 1
    image, plane = c * h * w, groups * hq * wq * k  # elements of a sample; of one phase's output
    packed = stride * stride * plane

    def convert(v, lanes: int):
        """The shuffled input elements as the recipe's activations (int8 + 128: a flipped top bit)."""
        if shifted:
            return T.reinterpret(f"uint8x{lanes}", v) ^ T.Broadcast(T.uint8(128), lanes)
        return v if out_dtype == in_dtype else T.Cast(f"{out_dtype}x{lanes}", v)

    def pad_vector(lanes: int):
        return convert(T.Broadcast(tvm.tirx.const(0, in_dtype), lanes), lanes)

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            x = T.arg("x", T.buffer((n, c, h, w), in_dtype))
            shape = (stride, stride, groups, hq * wq, k)
            o = T.arg("o", T.buffer((n, *shape) if batch else shape, out_dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
            with T.sblock("root"):
                src = T.decl_buffer((n * image,), in_dtype, data=x.data)
                dst = T.decl_buffer((n * packed,), out_dtype, data=o.data)

                def row(sample, a: int, b: int, q, real: int, yq):
                    """Output row (phase a, b; channel group q with `real` channels; phase row yq)."""
                    y = yq * stride + a - top
                    base = sample * packed + ((a * stride + b) * plane) + (q * hq + yq) * (wq * k)
                    channel = sample * image + q * k * h * w

                    def store(xq0, count: int, start, picks: list):
                        """`count` pixels from xq0: loads of `span` elements from column `start` of each
                        channel's row y, `picks` their indices (>= real * span: the zero vector)."""
                        lanes = count * k
                        zeros = max(1, -(-lanes // span) - real)  # a shuffle reads at least the lanes it makes
                        vectors = [src.vload([channel + j * h * w + y * w + start], f"{in_dtype}x{span}")
                                   for j in range(real)] + [T.Broadcast(tvm.tirx.const(0, in_dtype), span)] * zeros
                        T.buffer_store(dst, convert(tvm.tirx.Shuffle(vectors, picks), lanes),
                                       [T.Ramp(base + xq0 * k, 1, lanes)])

                    def picks(cols: list, start: int | None) -> list:
                        """Shuffle indices of pixels at input columns `cols` (None: padding), loads from `start`."""
                        zero = real * span
                        return [zero if col is None or j >= real else j * span + col - start
                                for col in cols for j in range(k)]

                    def edge(xq0: int, count: int):  # static columns: clamped loads, padding picked as zeros
                        cols = [xq * stride + b - left for xq in range(xq0, xq0 + count)]
                        cols = [col if 0 <= col < w else None for col in cols]
                        inside = [col for col in cols if col is not None]
                        start = min(max(inside[0], 0), w - span) if inside else 0
                        store(xq0, count, start, picks(cols, start))

                    blocks = -(-wq // PIXELS)
                    inner = [i for i in range(blocks) if (i + 1) * PIXELS <= wq and i * span + b - left >= 0
                             and i * span + b - left + span <= w]
                    first, last = (inner[0], inner[-1] + 1) if inner else (blocks, blocks)
                    with T.If(tvm.tirx.all(y >= 0, y < h)):
                        with T.Then():
                            for i in range(first):
                                edge(i * PIXELS, min(PIXELS, wq - i * PIXELS))
                            if last > first:
                                with T.serial(first, last) as i:
                                    store(i * PIXELS, PIXELS, i * span + (b - left),
                                          picks([p * stride for p in range(PIXELS)], 0))
                            for i in range(last, blocks):
                                edge(i * PIXELS, min(PIXELS, wq - i * PIXELS))
                        with T.Else():
                            for i in range(blocks):
                                lanes = min(PIXELS, wq - i * PIXELS) * k
                                T.buffer_store(dst, pad_vector(lanes), [T.Ramp(base + i * PIXELS * k, 1, lanes)])

                full = c // k
                for a in range(stride):
                    for b in range(stride):
                        if full:
                            with T.parallel(0, n * full * hq) as r:
                                row(r // (full * hq), a, b, r // hq % full, k, r % hq)
                        if full < real_groups:
                            with T.parallel(0, n * hq) as r:
                                row(r // hq, a, b, full, c - full * k, r % hq)
                        for q in range(real_groups, groups):  # no channels: zeros
                            with T.parallel(0, n * hq) as r:
                                row(r // hq, a, b, q, 0, r % hq)
    return ib.get()


def packed_input(builder: relax.BlockBuilder, x: relax.Expr, pads: tuple[int, int], stride: int, hq: int,
                 wq: int, k: int, out_dtype: str, groups: int | None = None) -> relax.Expr | None:
    """x [1 | n, C, H, W] packed by `pack_func` (None where `takes` says no)."""
    n, c, h, w = x.ty.shape
    c, h, w = int(c), int(h), int(w)
    in_dtype = str(x.ty.dtype)
    if not takes(c, h, w, stride, in_dtype, out_dtype):
        return None
    batch = not (isinstance(n, tvm.tirx.IntImm) and int(n) == 1)
    func = pack_func(c, h, w, pads, stride, hq, wq, k, in_dtype, out_dtype, batch, groups)
    gv = builder.add_func(func.without_attr("global_symbol"),
                          f"taps_input{k}_{'n' if batch else ''}{c}x{h}x{w}_s{stride}_{out_dtype}")
    shape = [stride, stride, groups or -(-c // k), hq * wq, k]
    return relax.call_tir(gv, [x], relax.TensorType([n, *shape] if batch else shape, out_dtype))
