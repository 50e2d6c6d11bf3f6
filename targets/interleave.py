"""The dot-product kernels' activation repack, [1, C, H, W] -> [K/k, H * W', k] (a batch: [n, C, H, W]
-> [n, K/k, H * W', k]), as one kernel of vector loads and shuffles.

A pointwise conv on the dot-product kernels (`vnni.conv_lanes_pixels_te`, `vnni.conv_lanes_out_packed_te`,
AMX tiles `amx.conv_te`) reads its activations with k channels interleaved per pixel, the reduction
padded to K channels (zeros) and, for AMX, each image row to W' columns (zeros):

    out[q, y * W' + x, j] = x[0, q k + j, y, x]        0 where q k + j >= C or x >= W

Written as reshape -> pad -> transpose and left to TVM, every element was a scalar load, a padding
test and a byte store (the index of a transposed reshape is a division and a modulo TVM cannot
vectorize): EfficientNet-Lite0's repacks were 0.7 ms of its 4.5 on an AVX-512 Xeon at 1 thread.
Here each output vector (64 bytes) is k contiguous loads and one shuffle: per image row where
rows are padded (a load of a power-of-two width from the row's start; it reads past the row into
the next one, never past the tensor: a channel group whose last row could is written with exact
loads), over the flat pixels where they are not. Pure data movement: bit-exact by construction.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

OPAQUE = 8  # FuseOps' kOpaque: the producers (a requantization) stay kernels of their own
VECTOR_BYTES = 64


def reference(x: np.ndarray, step: int, channels: int, width: int) -> np.ndarray:
    """NumPy twin: x [1, C, H, W] -> [channels / step, H * width, step]."""
    _, c, h, w = x.shape
    padded = np.zeros((channels, h, width), x.dtype)
    padded[:c, :, :w] = x[0]
    return padded.reshape(channels // step, step, h * width).transpose(0, 2, 1)


def interleave_func(c: int, h: int, w: int, step: int, channels: int, width: int, dtype: str,
                    batch: bool = False) -> tvm.tirx.PrimFunc:
    """The PrimFunc of the repack (see the module docstring); `channels` a multiple of `step`
    and >= c, `width` >= w. `batch`: over [n, C, H, W] -> [n, channels / step, H * width, step] for
    a symbolic n, in parallel over the samples."""
    groups, row = channels // step, width * step
    zero = lambda lanes: T.Broadcast(tvm.tirx.const(0, dtype), lanes) if lanes > 1 else tvm.tirx.const(0, dtype)  # noqa: E731
    n = tvm.tirx.Var("n", "int64") if batch else 1
    image, packed = c * h * w, groups * h * width * step  # elements of one sample

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            a = T.arg("a", T.buffer((n, c, h, w), dtype))
            o = T.arg("o", T.buffer((n, groups, h * width, step) if batch else (groups, h * width, step), dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
            with T.sblock("root"):
                src = T.decl_buffer((n * image,), dtype, data=a.data)
                dst = T.decl_buffer((n * packed,), dtype, data=o.data)

                def group(q, real: int, lanes: int, sample=0):
                    """Store channel group q (its first `real` channels read, `lanes`-wide loads)."""
                    def write(start, first, count, pick, out_lanes):
                        # vectors of the group's channels from pixel `first`, then the zero vector
                        vectors = [src.vload([sample * image + (q * step + j) * (h * w) + first], f"{dtype}x{count}")
                                   for j in range(real)]
                        vectors += [zero(count)] * (step - real) + [zero(max(16, out_lanes))]
                        T.buffer_store(dst, tvm.tirx.Shuffle(vectors, pick), [T.Ramp(sample * packed + start, 1, out_lanes)])

                    if width == w:  # flat pixels, `lanes` at a time and a tail
                        full, tail = divmod(h * w, lanes)
                        base = q * (h * w * step)
                        order = lambda n: [j * n + i for i in range(n) for j in range(step)]  # noqa: E731
                        if full:
                            with T.serial(0, full) as t:
                                write(base + t * (lanes * step), t * lanes, lanes, order(lanes), lanes * step)
                        if tail:
                            write(base + full * lanes * step, full * lanes, tail, order(tail), tail * step)
                        return
                    pick = [j * lanes + i if i < w else step * lanes for i in range(width) for j in range(step)]
                    with T.serial(0, h) as y:
                        write(q * (h * row) + y * row, y * w, lanes, pick, row)

                bits = tvm.DataType(dtype).bits
                if width == w:
                    # 4 vectors out per step: LLVM's shuffles of 64-byte loads (5 shuffles per output vector,
                    # 11 for 16-byte loads): a 144 x 56 x 56 repack 35 -> 24 us on the AMX Xeon
                    fast, lanes = c // step, max(1, 4 * VECTOR_BYTES * 8 // bits // step)
                else:
                    # loads of a power of two >= W elements read up to `lanes - w` past a row, into the
                    # next rows: the leading groups whose reads all stay inside the tensor take them,
                    # the rest (the last channel's at least) read exactly
                    lanes = max(16, 1 << (w - 1).bit_length())
                    fast = sum(1 for q in range(c // step)
                               if ((q + 1) * step - 1) * h * w + (h - 1) * w + lanes <= c * h * w)

                def exact(b):  # the groups that read exactly, in turn
                    for q in range(fast, groups):
                        group(q, min(step, max(0, c - q * step)), w if width != w else lanes, b)

                if batch:  # (sample, group) pairs in parallel: one sample of a free batch uses every thread too
                    if fast:
                        with T.parallel(0, n * fast) as i:
                            group(i % fast, step, lanes, i // fast)
                    if fast < groups:
                        with T.parallel(0, n) as b:
                            exact(b)
                else:
                    if fast:
                        with T.parallel(0, fast) as q:
                            group(q, step, lanes)
                    exact(0)
    return ib.get()


def interleaved(builder: relax.BlockBuilder, x: relax.Expr, step: int, channels: int, width: int) -> relax.Expr:
    """x [1, C, H, W] repacked to [channels / step, H * width, step] by `interleave_func`; x [n, C, H, W]
    with a symbolic n (a free batch) to [n, channels / step, H * width, step]."""
    n, c, h, w = x.ty.shape
    c, h, w = int(c), int(h), int(w)
    batch = not (isinstance(n, tvm.tirx.IntImm) and int(n) == 1)
    dtype = str(x.ty.dtype)
    func = interleave_func(c, h, w, step, channels, width, dtype, batch).without_attr("global_symbol")
    gv = builder.add_func(func, f"interleave{step}_{'n' if batch else ''}{c}x{h}x{w}_{channels}x{width}_{dtype}")
    shape = [channels // step, h * width, step]
    return relax.call_tir(gv, [x], relax.TensorType([n, *shape] if batch else shape, dtype))
