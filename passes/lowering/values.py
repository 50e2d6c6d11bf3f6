"""What the integer lowering knows about each float tensor it has replaced."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax


@dataclass(frozen=True, eq=False)
class Quantized:
    """An int8/uint8 tensor `q` standing for the real tensor `q * scale` (per tensor)."""

    expr: relax.Expr
    scale: float
    dtype: str


@dataclass(frozen=True, eq=False)
class Accumulator:
    """An int32 tensor `acc` standing for `acc * scale` (per channel along `axis`), not yet
    requantized: consumers that need 8 bits requantize it to `out_range` within `clamp`.

    Deferring the requantization is what lets bias adds and ReLU/ReLU6/Clip fold into it.
    """

    expr: relax.Expr
    scale: np.ndarray
    axis: int | None
    out_range: tuple[float, float]
    clamp: tuple[float, float] = (-math.inf, math.inf)

    def with_clamp(self, lo: float = -math.inf, hi: float = math.inf, out_range=None) -> "Accumulator":
        clamp = (max(self.clamp[0], lo), min(self.clamp[1], hi))
        return Accumulator(self.expr, self.scale, self.axis, out_range or self.out_range, clamp)


Value = Quantized | Accumulator | np.ndarray  # np.ndarray: a float constant (weights, bias)
