"""The graph boundary: float inputs -> integers, integer outputs -> float (symmetric,
zero point 0; one scale per tensor, or per channel along one axis). The only float arithmetic of an
integer-only model: these NumPy functions define it, so every target receives the same integers. An
artifact for this machine's CPU also ships them as compiled kernels (`targets/boundary_kernels.py`,
the same float steps, bit for bit), which `runtime.model` runs where they apply (one pass instead
of NumPy's five, on every thread). Float inputs that the graph only casts to integers (ids exported
as float) are cast here instead, as ONNX Cast does."""

from __future__ import annotations

import numpy as np

_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def scale_array(quant: dict, rank: int) -> np.ndarray:
    """A manifest entry's scale (`quant`: {"scale": number or list, "axis": int or None}) shaped to
    broadcast against a rank-`rank` tensor."""
    scale = np.asarray(quant["scale"], np.float64)
    if quant.get("axis") is None:
        return scale.reshape(())
    shape = [1] * rank
    shape[quant["axis"]] = scale.size
    return scale.reshape(shape)


def quantize(x, scale, dtype: str) -> np.ndarray:
    """clip(round_half_even(float32(x) * float32(1 / scale))) as `dtype`, in float32 arithmetic (`scale` a number,
    or broadcast against `x`). The reciprocal's product, not a division: the compiled kernels' `vdivpd` was half
    their time; rounding the product rather than the quotient moves a value lying within a float32 rounding
    of a half-integer to the other integer next to it, the same error as the grid's own half step."""
    return quantize_by(np.asarray(x, np.float32), reciprocal(scale), dtype)


def reciprocal(scale) -> np.ndarray:
    """The float32 factor `quantize` multiplies by: float32(1 / scale), the division in float64."""
    return (1.0 / np.asarray(scale, np.float64)).astype(np.float32)


def quantize_by(x: np.ndarray, factor: np.ndarray, dtype: str, peak: bool = False, out=None):
    """`quantize` of float32 `x` with its `reciprocal(scale)` already worked out (a caller that quantizes
    every run with the same scale keeps it), in one float32 temporary; into `out` where given (of `x`'s
    shape and `dtype`). With `peak`: (integers, the largest |x * factor| before rounding and clipping)."""
    lo, hi = _RANGE[dtype]
    y = np.multiply(x, factor, dtype=np.float32)
    top = max(-float(y.min()), float(y.max())) if peak and y.size else 0.0
    np.rint(y, out=y)
    np.clip(y, lo, hi, out=y)
    q = y.astype(dtype) if out is None else out
    if out is not None:
        np.copyto(out, y, casting="unsafe")  # as astype: the values are whole and within dtype
    return (q, top) if peak else q


def grid_edge(scale: float, dtype: str) -> float:
    """The largest magnitude a quantized input keeps: beyond it values saturate."""
    return scale * _RANGE[dtype][1]


def dequantize(q, scale) -> np.ndarray:
    """q * scale as float32 (`scale` broadcast against `q`: per tensor or pre-shaped per channel)."""
    return (np.asarray(q, np.float64) * np.asarray(scale, np.float64)).astype(np.float32)


def to_integer(x, dtype: str) -> np.ndarray:
    """ONNX Cast float -> integer `dtype`: truncation toward zero (as onnxruntime and TVM's astype).
    Raises ValueError for a value outside `dtype` (undefined in ONNX); NaN/inf are the caller's check."""
    t = np.trunc(np.asarray(x, np.float64))
    info = np.iinfo(dtype)
    if t.size and (t.min() < info.min or t.max() >= float(info.max) + 1):
        bad = t[(t < info.min) | (t >= float(info.max) + 1)]
        raise ValueError(f"{bad.size} value(s) outside {dtype}'s range [{info.min}, {info.max}] (e.g. {bad.flat[0]:g}), "
                         f"which the model casts to {dtype}")
    return t.astype(dtype)
