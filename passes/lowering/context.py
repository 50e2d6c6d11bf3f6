"""State shared by the per-op lowerings while one function is rewritten."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax

from frontends.errors import CompileError

from ..reference.kernels import INT_RANGE, dyadic
from . import emit
from .values import Accumulator, Quantized, Value


@dataclass(frozen=True)
class QuantConfig:
    """How tensors are quantized. Validated on construction."""

    weight_bits: int = 8
    activation_bits: int = 8
    unsigned_activations: bool = True  # uint8 (one more bit) for tensors clamped at >= 0
    allow_float: bool = False  # keep ops without an integer lowering in float (not integer-only)
    residual_bits: int = 8  # 16: residual adds, LayerNorms and model inputs carry int16 (transformers)

    def __post_init__(self):
        if self.weight_bits not in (4, 8):
            raise CompileError(f"QuantConfig.weight_bits={self.weight_bits}: allowed 4 or 8")
        if self.activation_bits != 8:
            raise CompileError(f"QuantConfig.activation_bits={self.activation_bits}: allowed 8")
        if self.residual_bits not in (8, 16):
            raise CompileError(f"QuantConfig.residual_bits={self.residual_bits}: allowed 8 or 16")

    @property
    def residual_dtype(self) -> str:
        return "int16" if self.residual_bits == 16 else "int8"


def activation_scale(lo: float, hi: float, dtype: str) -> float:
    """Symmetric scale covering [lo, hi] in `dtype` (1.0 for an all-zero tensor)."""
    amax = max(abs(lo), abs(hi))
    return amax / INT_RANGE[dtype][1] if amax > 0 else 1.0


class LoweringContext:
    """The BlockBuilder, calibrated ranges and config, plus requantization helpers."""

    def __init__(self, bb: relax.BlockBuilder, ranges: dict[str, tuple[float, float]], config: QuantConfig):
        self.bb, self.ranges, self.config = bb, ranges, config
        self.var: relax.Var | None = None  # the float binding being lowered
        self.layers: list[dict] = []  # one row per quantized weight layer
        self._materialized: dict[tuple, Quantized] = {}

    def fail(self, message: str):
        name = self.var.name if self.var is not None else "?"
        raise CompileError(f"cannot lower binding {name!r}: {message}")

    def range_of(self, var: relax.Var) -> tuple[float, float]:
        if var.name not in self.ranges:
            self.fail(f"no calibrated range for tensor {var.name!r}")
        return self.ranges[var.name]

    def out_range(self) -> tuple[float, float]:
        return self.range_of(self.var)

    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.bb.emit(expr, name_hint=self.var.name if self.var is not None else "v")

    def materialize(self, value: Value, wide: bool = False) -> Quantized:
        """Requantize an accumulator to 8 bits, or 16 with `wide` (memoized); quantized
        values pass through."""
        if isinstance(value, Quantized):
            return value
        if isinstance(value, np.ndarray):
            self.fail("expected an activation, got a constant")
        key = (value, wide)
        if key not in self._materialized:
            self._materialized[key] = self._requantize_acc(value, wide)
        return self._materialized[key]

    def to_8bit(self, value: Value) -> Quantized:
        """An 8-bit operand for a matmul or conv: int16 values are requantized to int8."""
        q = self.materialize(value)
        if q.dtype in ("int8", "uint8"):
            return q
        if (q, "8bit") not in self._materialized:
            scale = q.scale * INT_RANGE[q.dtype][1] / 127
            m, s = dyadic(q.scale / scale)
            self._materialized[(q, "8bit")] = Quantized(self.emit(emit.requantize(q.expr, m, s, -128, 127, "int8")),
                                                        scale, "int8")
        return self._materialized[(q, "8bit")]

    def _requantize_acc(self, acc: Accumulator, wide: bool) -> Quantized:
        lo, hi = acc.out_range
        lo, hi = max(lo, acc.clamp[0]), min(hi, acc.clamp[1])
        dtype = "uint8" if self.config.unsigned_activations and acc.clamp[0] >= 0 else "int8"
        dtype = "int16" if wide else dtype
        scale = activation_scale(lo, hi, dtype)
        qlo, qhi = INT_RANGE[dtype]
        if math.isfinite(acc.clamp[0]):
            qlo = max(qlo, int(round(acc.clamp[0] / scale)))
        if math.isfinite(acc.clamp[1]):
            qhi = min(qhi, int(round(acc.clamp[1] / scale)))
        rank = len(acc.expr.ty.shape)
        m, s = dyadic(np.asarray(acc.scale, np.float64) / scale)
        m, s = emit.channel_shape(m, rank, acc.axis), emit.channel_shape(s, rank, acc.axis)
        return Quantized(self.emit(emit.requantize(acc.expr, m, s, qlo, qhi, dtype)), scale, dtype)

    def to_int32_at(self, value: Value, scale: float) -> tuple[relax.Expr, np.ndarray, np.ndarray]:
        """(int tensor, m, s) that requantize `value` to `scale`: used by adds and concats.

        An unclamped accumulator is requantized straight from int32 (per channel): going
        through 8 bits first would lose a residual branch whose range has outliers.
        """
        if isinstance(value, Accumulator) and value.clamp == (-math.inf, math.inf):
            rank = len(value.expr.ty.shape)
            m, s = dyadic(np.asarray(value.scale, np.float64) / scale)
            return value.expr, emit.channel_shape(m, rank, value.axis), emit.channel_shape(s, rank, value.axis)
        q = self.materialize(value)
        m, s = dyadic(q.scale / scale)
        return q.expr, m, s
