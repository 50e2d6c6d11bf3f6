"""The graph boundary's float arithmetic as compiled kernels, shipped beside the model's library.

`runtime.boundary.quantize` (clip(round_half_even(float64(x) / s)), one NumPy pass per step over
float64 temporaries) took 0.155 ms of EfficientNet-Lite0's 4.5 ms at 1 thread, on one core
whatever the threads. These kernels compute the same integers in one parallel, vectorized pass
over flat memory (the division and rounding of the same float64 values: `vdivpd`, `vrndscalepd`
in round-to-nearest-even, no reciprocal; 0.05 ms), and `dequantize` (float32(float64(q) * s)) the
same way. Per-tensor scales only: a scale per channel stays in NumPy. The runtime falls back to
NumPy where the artifact has no such library (older artifacts, plan executors, RPC) or the
tensor is not float32 / a listed integer dtype; tests/test_boundary_kernels.py holds them equal.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm.script import tirx as T

FILE = "boundary.so"
VECTOR = 64  # elements per vector step (and per parallel chunk's step)
# runtime/boundary.py's _RANGE (targets does not import the runtime: data flows frontends -> passes -> targets -> runtime)
RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
DEQUANTIZED = ("int8", "uint8", "int16", "int32")


def _quantize(dtype: str):
    lo, hi = RANGES[dtype]

    def value(x, s):
        return T.Cast(dtype, T.max(T.min(T.nearbyint(T.Cast("float64", x) / s), T.float64(hi)), T.float64(lo)))

    return _elementwise(f"intq_quantize_{dtype}", "float32", dtype, value)


def _dequantize(dtype: str):
    return _elementwise(f"intq_dequantize_{dtype}", dtype, "float32",
                        lambda q, s: T.Cast("float32", T.Cast("float64", q) * s))


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
               "dequantize": {dtype: _dequantize(dtype) for dtype in DEQUANTIZED}}
    mod = tvm.IRModule({name: func for way in kernels.values() for name, func in way.values()})
    tvm.tirx.build(mod, target=target).export_library(str(path), **export_kwargs)
    return {way: {dtype: name for dtype, (name, _) in by_dtype.items()} for way, by_dtype in kernels.items()}
