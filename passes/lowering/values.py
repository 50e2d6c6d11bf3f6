"""What the integer lowering knows about each float tensor it has replaced."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax


@dataclass(frozen=True, eq=False)
class Quantized:
    """An int8/uint8 (or int16) tensor `q` standing for the real tensor `q * scale` (per tensor).

    `row_sum` (softmax probabilities): a proven bound on the sum of `q` along the last axis,
    which a matmul consuming it may use instead of length * max.
    `qmax`: the largest |q| the calibrated range reaches, where it is not the dtype's limit
    (16-bit activations keep headroom above it; an int8 value widened to int16 stays within 127).
    `bound`: a hard bound on |q| below the dtype's limit (a value clipped to +-bound for a product
    whose int32 sums must hold), which the accumulator check may use.
    """

    expr: relax.Expr
    scale: float
    dtype: str
    row_sum: int | None = None
    qmax: float | None = None
    bound: int | None = None


@dataclass(frozen=True, eq=False)
class ChannelQuantized:
    """An int8/uint8 matmul input `q` standing for `q * scale[c] - offset`, one scale per channel
    of the last axis (the reduction axis): the matmul folds `scale` into its constant weights
    and `offset` into a bias."""

    expr: relax.Expr
    scale: np.ndarray
    dtype: str
    offset: float = 0.0
    axis: int = -1  # the channels' axis: the last (a feature input transposed for C @ x: the second-to-last)


@dataclass(frozen=True, eq=False)
class Accumulator:
    """An int32 tensor `acc` standing for `acc * scale` (per channel along `axis`), not yet
    requantized: consumers that need 8 bits requantize it to `out_range` within `clamp`.

    Deferring the requantization is what lets bias adds and ReLU/ReLU6/Clip fold into it.

    `offset` > 0 (GELU outputs): the integers stand for the real tensor + offset, which is >= 0 by
    the op's math, so a constant-weight matmul can read them as uint8 and subtract offset * sum(W)
    as a bias. Only layout ops and such matmuls see it; every other consumer gets
    `LoweringContext.without_offset` (`out_range` and `clamp` always describe the real tensor).
    """

    expr: relax.Expr
    scale: np.ndarray
    axis: int | None
    out_range: tuple[float, float]
    clamp: tuple[float, float] = (-math.inf, math.inf)
    offset: float = 0.0
    product: bool = False  # a * b of two activations (a gate product: its sum is a recurrent state)

    def with_clamp(self, lo: float = -math.inf, hi: float = math.inf, out_range=None) -> "Accumulator":
        assert self.offset == 0.0, "clamp of an offset accumulator: remove the offset first"
        clamp = (max(self.clamp[0], lo), min(self.clamp[1], hi))
        return Accumulator(self.expr, self.scale, self.axis, out_range or self.out_range, clamp)


@dataclass(frozen=True, eq=False)
class IntTensor:
    """An integer or bool tensor that is exact as it is (token ids, attention masks): ops on
    such values are kept unchanged; they were never float. `range`: the calibrated range of the
    float tensor it stands for, where the graph computes one (float arithmetic on integers)."""

    expr: relax.Expr
    range: tuple[float, float] | None = None


@dataclass(frozen=True, eq=False)
class MaskPenalty:
    """where(keep, 0, -huge): an additive attention mask, as the bool tensor `keep`; with `bias`,
    where(keep, bias, -huge): a constant additive bias on the kept positions (T5's relative position
    bias, folded into the mask by transformers' SDPA path)."""

    keep: relax.Expr
    bias: np.ndarray | None = None
    fill: float | None = None  # the additive penalty, where one scalar (BERT's -10000): whether it absorbs the logits


@dataclass(frozen=True, eq=False)
class MaskedLogits:
    """Logits plus a MaskPenalty: Shiftmax gives masked keys exactly zero probability. A row with every
    key masked (a padded query under DeBERTa's query x key mask) gets what float gives it: `uniform`
    where the fill replaces or absorbs the logits (where(keep, x, min), x + finfo.min: every value
    equal), `logits` where a moderate penalty (x - 10000) only shifts them (softmax of the logits)."""

    logits: "Quantized | Accumulator"
    keep: relax.Expr
    empty_rows: str = "uniform"


Value = Quantized | Accumulator | IntTensor | MaskPenalty | MaskedLogits | np.ndarray  # ndarray: float constant
