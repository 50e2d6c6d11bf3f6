"""The graph boundary's float arithmetic as compiled kernels, shipped beside the model's library.

`runtime.boundary.quantize` (clip(round_half_even(float32(x) * float32(1 / s))), one NumPy pass per step)
took 0.155 ms of EfficientNet-Lite0's 4.5 ms at 1 thread, on one core whatever the threads. These kernels
compute the same integers in one parallel, vectorized pass over flat memory (the same float32 product and
rounding: `vmulps`, `vrndscaleps` in round-to-nearest-even), and `dequantize` (float32(float64(q) * s)) the
same way. `quantize_checked` also returns the input's min, max and sum (not finite where the input holds
NaN / inf): the runtime's input check (NaN / inf refused, saturation warned) in the same pass, where NumPy
read the input twice more; a 224x224 RGB image on an AMX Xeon, 1 thread: 0.110 ms with float64 division
and a count of non-finite values, 0.043 ms now. `dequantize_axis` takes a scale per channel (a classifier's
int32 logits). Quantizing with a scale per channel stays in NumPy. The runtime falls back to NumPy where the
artifact has no such library (older artifacts, plan executors, RPC) or the tensor is not float32 / a listed
integer dtype; tests/test_boundary_kernels.py holds them equal.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm.script import tirx as T

from . import tir_pipeline

FILE = "boundary.so"
VECTOR = 64  # elements per vector step (and per parallel chunk's step)
# runtime/boundary.py's _RANGE (targets does not import the runtime: data flows frontends -> passes -> targets -> runtime)
RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
DEQUANTIZED = ("int8", "uint8", "int16", "int32")
CHECK_CHUNK = 4096  # elements of one parallel chunk of `quantize_checked`: one row of statistics each
STATS = 3  # a row of statistics: min, max, sum (float64; a sum that is not finite flags NaN / inf)


def _quantized(dtype: str):
    """value(x, s): clip(round_half_even(x * float32(1 / s))) as `dtype` in float32 arithmetic, `boundary.quantize`'s
    steps (the reciprocal is loop-invariant: LLVM computes it once)."""
    lo, hi = RANGES[dtype]

    def value(x, s):
        return T.Cast(dtype, T.max(T.min(T.nearbyint(x * T.Cast("float32", T.float64(1) / s)), T.float32(hi)),
                                   T.float32(lo)))

    return value


def _quantize(dtype: str):
    return _elementwise(f"intq_quantize_{dtype}", "float32", dtype, _quantized(dtype))


def _quantize_checked(dtype: str):
    """`_quantize` that also writes the min, max and sum of x to stats[0:STATS] (a sum that is not finite: x may
    hold NaN or inf, which the runtime then counts; the min and max are meaningless there); stats holds STATS
    values per chunk of CHECK_CHUNK elements (each chunk's, summed up in the first after the parallel loop).
    The sum is one add per vector where a count of non-finite values took four."""
    name, value = f"intq_quantize_checked_{dtype}", _quantized(dtype)
    lanes, steps = VECTOR, CHECK_CHUNK // VECTOR

    @T.prim_func
    def kernel(x_handle: T.handle, s: T.float64, out_handle: T.handle, stats_handle: T.handle):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        n, m = T.int64(), T.int64()
        x = T.match_buffer(x_handle, (n,), "float32", align=1)
        out = T.match_buffer(out_handle, (n,), dtype, align=1)
        stats = T.match_buffer(stats_handle, (m,), "float64", align=1)
        for c in T.parallel((n + CHECK_CHUNK - 1) // CHECK_CHUNK):
            low = T.alloc_buffer((lanes,), "float32", scope="local")
            high = T.alloc_buffer((lanes,), "float32", scope="local")
            total = T.alloc_buffer((lanes,), "float32", scope="local")
            for j in T.vectorized(lanes):
                low[j] = T.max_value("float32")
                high[j] = T.min_value("float32")
                total[j] = T.float32(0)
            if c * CHECK_CHUNK + CHECK_CHUNK <= n:
                for v in range(steps):
                    for j in T.vectorized(lanes):
                        out[c * CHECK_CHUNK + v * lanes + j] = value(x[c * CHECK_CHUNK + v * lanes + j], s)
                        low[j] = T.min(low[j], x[c * CHECK_CHUNK + v * lanes + j])
                        high[j] = T.max(high[j], x[c * CHECK_CHUNK + v * lanes + j])
                        total[j] = total[j] + x[c * CHECK_CHUNK + v * lanes + j]
            else:
                for k in range(n - c * CHECK_CHUNK):
                    out[c * CHECK_CHUNK + k] = value(x[c * CHECK_CHUNK + k], s)
                    low[0] = T.min(low[0], x[c * CHECK_CHUNK + k])
                    high[0] = T.max(high[0], x[c * CHECK_CHUNK + k])
                    total[0] = total[0] + x[c * CHECK_CHUNK + k]
            stats[c * STATS] = T.Cast("float64", low[0])
            stats[c * STATS + 1] = T.Cast("float64", high[0])
            stats[c * STATS + 2] = T.Cast("float64", total[0])
            for j in range(1, lanes):
                stats[c * STATS] = T.min(stats[c * STATS], T.Cast("float64", low[j]))
                stats[c * STATS + 1] = T.max(stats[c * STATS + 1], T.Cast("float64", high[j]))
                stats[c * STATS + 2] = stats[c * STATS + 2] + T.Cast("float64", total[j])
        for c in range(1, (n + CHECK_CHUNK - 1) // CHECK_CHUNK):  # the chunks' rows into the first
            stats[0] = T.min(stats[0], stats[c * STATS])
            stats[1] = T.max(stats[1], stats[c * STATS + 1])
            stats[2] = stats[2] + stats[c * STATS + 2]

    return name, kernel


def _dequantize(dtype: str):
    return _elementwise(f"intq_dequantize_{dtype}", dtype, "float32",
                        lambda q, s: T.Cast("float32", T.Cast("float64", q) * s))


def _dequantize_axis(dtype: str):
    """`_dequantize` with a scale per channel: q [a, b, c] (b the channel axis), s [b] (float64)."""
    name = f"intq_dequantize_axis_{dtype}"

    @T.prim_func
    def kernel(q_handle: T.handle, s_handle: T.handle, out_handle: T.handle):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        a, b, c = T.int64(), T.int64(), T.int64()
        q = T.match_buffer(q_handle, (a, b, c), dtype, align=1)
        s = T.match_buffer(s_handle, (b,), "float64", align=1)
        out = T.match_buffer(out_handle, (a, b, c), "float32", align=1)
        for i in T.parallel(a):
            for j, k in T.grid(b, c):
                out[i, j, k] = T.Cast("float32", T.Cast("float64", q[i, j, k]) * s[j])

    return name, kernel


def _elementwise(name: str, source: str, result: str, value):
    """out[i] = value(x[i], s) over flat tensors of any length: whole vectors in parallel chunks,
    the last partial one element by element."""
    @T.prim_func
    def kernel(x_handle: T.handle, s: T.float64, out_handle: T.handle):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_handle, (n,), source, align=1)
        out = T.match_buffer(out_handle, (n,), result, align=1)
        for i in T.parallel((n + VECTOR - 1) // VECTOR):
            if i * VECTOR + VECTOR <= n:
                for j in T.vectorized(VECTOR):
                    out[i * VECTOR + j] = value(x[i * VECTOR + j], s)
            else:
                for j in range(n - i * VECTOR):
                    out[i * VECTOR + j] = value(x[i * VECTOR + j], s)

    return name, kernel


def export(target: tvm.target.Target, path: Path, **export_kwargs) -> dict:
    """Build the boundary kernels for `target` into `path`; the manifest's entry: the kernels'
    names by integer dtype (the file's name and hash are the caller's)."""
    kernels = {"quantize": {dtype: _quantize(dtype) for dtype in RANGES},
               "quantize_checked": {dtype: _quantize_checked(dtype) for dtype in RANGES},
               "dequantize": {dtype: _dequantize(dtype) for dtype in DEQUANTIZED},
               "dequantize_axis": {dtype: _dequantize_axis(dtype) for dtype in DEQUANTIZED}}
    mod = tvm.IRModule({name: func for way in kernels.values() for name, func in way.values()})
    tvm.tirx.build(mod, target=target, pipeline=tir_pipeline.register()).export_library(str(path), **export_kwargs)
    return {**{way: {dtype: name for dtype, (name, _) in by_dtype.items()} for way, by_dtype in kernels.items()},
            "check_chunk": CHECK_CHUNK, "check_stat": "sum"}
