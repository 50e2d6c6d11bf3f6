"""Max pools of stride 2 as one kernel of loads, shuffles and vector maxima (x86).

TVM's pool (topi) reads a stride-2 window as strided vectors (gathers) from a padded copy whose every
element tests the padding: a 3x3/2 max pool over 64 x 112 x 112 (a ResNet stem's) took 950 us at 1 thread
on an AVX-512 Xeon, onnxruntime about 100. Here each output row is a run of vectors of `PIXELS` outputs:
for every tap, one load of 2 x PIXELS contiguous input bytes and a shuffle that keeps every other one,
then an elementwise max. Padding needs no test: where every window holds at least one input element
(pads smaller than the kernel), a max over the window with out-of-range rows and columns clamped to the
nearest in range is the max over its in-range elements (they are in the window, and max is idempotent);
so rows are clamped per tap and a row's two ends are unrolled with clamped columns. Exact (a max).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from passes.call_rewrite import rewrite_calls, static_shape

from .interleave import OPAQUE

STRIDE = 2
DTYPES = ("int8", "uint8", "int16")


def _lanes(dtype: str) -> int:
    """Outputs per vector: a 256-bit vector of them, from 512-bit loads of the input."""
    return 256 // tvm.DataType(dtype).bits


def pool_func(c: int, h: int, w: int, kh: int, kw: int, top: int, left: int, ho: int, wo: int,
              dtype: str) -> tvm.tirx.PrimFunc:
    """out[0, ch, y, x] = max over the kh x kw window at (2y - top, 2x - left) of x[0, ch] (see above)."""
    lanes = _lanes(dtype)
    span = STRIDE * lanes

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            x = T.arg("x", T.buffer((1, c, h, w), dtype))
            o = T.arg("o", T.buffer((1, c, ho, wo), dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
            with T.sblock("root"):
                src = T.decl_buffer((c * h * w,), dtype, data=x.data)
                dst = T.decl_buffer((c * ho * wo,), dtype, data=o.data)

                def vector(rows, start, picks_of):
                    """The window max of a run of outputs: for each tap, a load of `span` elements from
                    `start(rx)` of each clamped row, shuffled by `picks_of(rx)` (one pick per output)."""
                    best = None
                    for row in rows:
                        for rx in range(kw):
                            v = tvm.tirx.Shuffle([src.vload([row + start(rx)], f"{dtype}x{span}")], picks_of(rx))
                            best = v if best is None else T.max(best, v)
                    return best

                with T.parallel(0, c * ho) as r:
                    ch, y = r // ho, r % ho
                    rows = [ch * (h * w) + T.max(T.min(y * STRIDE + ry - top, h - 1), 0) * w for ry in range(kh)]
                    base = ch * (ho * wo) + y * wo
                    blocks = -(-wo // lanes)
                    inner = [i for i in range(blocks) if (i + 1) * lanes <= wo and i * span - left >= 0
                             and i * span - left + kw - 1 + span <= w]
                    for i in range(blocks):
                        count = min(lanes, wo - i * lanes)
                        if i in inner[1:]:
                            continue
                        if i == (inner[0] if inner else None):  # the inner blocks: a loop, static picks
                            with T.serial(inner[0], inner[-1] + 1) as j:
                                value = vector(rows, lambda rx: j * span - left + rx,
                                               lambda rx: [p * STRIDE for p in range(lanes)])
                                T.buffer_store(dst, value, [T.Ramp(base + j * lanes, 1, lanes)])
                            continue
                        # a row end: columns clamped into the row, loads clamped to stay in it
                        cols = {rx: [min(max((i * lanes + p) * STRIDE - left + rx, 0), w - 1) for p in range(count)]
                                for rx in range(kw)}
                        starts = {rx: min(cols[rx][0], w - span) for rx in range(kw)}
                        value = vector(rows, lambda rx: starts[rx], lambda rx: [col - starts[rx] for col in cols[rx]])
                        T.buffer_store(dst, value, [T.Ramp(base + i * lanes, 1, count)])
    return ib.get()


def _rewrite(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    a = call.attrs
    shape, out = static_shape(call.args[0]), static_shape(call)
    if shape is None or out is None or len(shape) != 4 or shape[0] != 1 or str(call.ty.dtype) not in DTYPES:
        return call
    kh, kw = (int(k) for k in a.pool_size)
    top, left, bottom, right = (int(p) for p in a.padding)
    if (a.layout != "NCHW" or a.out_layout != "NCHW" or [int(s) for s in a.strides] != [STRIDE, STRIDE]
            or any(int(d) != 1 for d in a.dilation) or bool(a.ceil_mode)
            or not (top < kh and bottom < kh and left < kw and right < kw)):  # every window holds an element
        return call
    c, h, w = shape[1:]
    ho, wo = out[2:]
    if w < STRIDE * _lanes(str(call.ty.dtype)) + kw:  # narrower rows: a vector's loads would not fit in one
        return call
    func = pool_func(c, h, w, kh, kw, top, left, ho, wo, str(call.ty.dtype)).without_attr("global_symbol")
    gv = builder.add_func(func, f"max_pool{kh}x{kw}_s2_{c}x{h}x{w}_{call.ty.dtype}")
    return relax.call_tir(gv, [call.args[0]], call.ty)


@tvm.transform.module_pass(opt_level=0, name="StridedMaxPool")
def strided_max_pool(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every static batch-1 integer NCHW max pool of stride 2 whose rows hold a vector's reads."""
    return rewrite_calls(mod, "relax.nn.max_pool2d", _rewrite)


def reference(x: np.ndarray, kh: int, kw: int, pads, ho: int, wo: int) -> np.ndarray:
    """NumPy twin: padding with the dtype's minimum, windows at stride 2."""
    top, left, bottom, right = pads
    low = np.iinfo(x.dtype).min
    xp = np.pad(x, [(0, 0), (0, 0), (top, max(bottom, 0) + kh), (left, max(right, 0) + kw)], constant_values=low)
    out = np.full((*x.shape[:2], ho, wo), low, x.dtype)
    for ry in range(kh):
        for rx in range(kw):
            out = np.maximum(out, xp[:, :, ry:ry + STRIDE * ho:STRIDE, rx:rx + STRIDE * wo:STRIDE])
    return out
