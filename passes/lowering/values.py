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


@dataclass(frozen=True, eq=False)
class IntTensor:
    """An integer or bool tensor that is exact as it is (token ids, attention masks): ops on
    such values are kept unchanged; they were never float."""

    expr: relax.Expr


@dataclass(frozen=True, eq=False)
class MaskPenalty:
    """where(keep, 0, -huge): an additive attention mask, as the bool tensor `keep`."""

    keep: relax.Expr


@dataclass(frozen=True, eq=False)
class MaskedLogits:
    """Logits plus a MaskPenalty: Shiftmax gives masked keys exactly zero probability."""

    logits: "Quantized | Accumulator"
    keep: relax.Expr


Value = Quantized | Accumulator | IntTensor | MaskPenalty | MaskedLogits | np.ndarray  # ndarray: float constant
