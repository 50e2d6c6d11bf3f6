"""State shared by the per-op lowerings while one function is rewritten."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from tvm import relax

from frontends.errors import CompileError
from frontends.onnx_origins import origin

from ..reference.kernels import INT_RANGE, dyadic
from . import emit
from .values import Accumulator, ChannelQuantized, IntTensor, MaskedLogits, MaskPenalty, Quantized, Value


@dataclass(frozen=True)
class WeightError:
    """A conv's or matmul's weight rounding error as its lowering made it: the layer's float output plus
    `op`(`input`, `error`) is what the integer layer computes (up to the activations' rounding), and
    bias correction subtracts `shift` per output channel. For a matmul the integers stand for
    (input + `offset`) / `per_input`."""

    layer: str  # the conv/matmul binding
    op: str  # "conv2d" (NCHW, OIHW error) or "matmul" ([K, N] error)
    input: str  # the float binding the layer reads
    error: np.ndarray
    shift: np.ndarray  # per output channel
    per_input: np.ndarray | None = None
    offset: float = 0.0


@dataclass(frozen=True)
class QuantConfig:
    """How tensors are quantized. Validated on construction."""

    weight_bits: int = 8
    activation_bits: int = 8  # 16: every float activation carried at 16 bits (W8A16)
    unsigned_activations: bool = True  # uint8 (one more bit) for tensors clamped at >= 0
    allow_float: bool = False  # keep ops without an integer lowering in float (not integer-only)
    residual_bits: int = 8  # 16: residual adds, LayerNorms and model inputs carry int16 (transformers)
    # per-layer weight bits {float Relax binding name: 4 | 8} (mixed precision), overriding
    # weight_bits; given as a Mapping, stored as sorted (name, bits) pairs (hashable)
    layer_bits: Mapping[str, int] | tuple[tuple[str, int], ...] = ()
    # Outlier smoothing (SmoothQuant): a 16/32-bit input of a constant-weight matmul becomes 8 bits
    # with one scale per input channel, amax_c^alpha / wmax_c^(1 - alpha), folded into the weights
    # (measured on DINOv2, benchmarks/op_errors.py). None: one scale per tensor. With smooth_search
    # and calibration's probe, alpha is measured per tensor instead (`smooth_choice.py`).
    smooth_alpha: float | None = 0.5
    smooth_search: bool = True
    # Activations carried at 16 bits instead of 8 (float binding names; any iterable, stored sorted):
    # what the sensitivity measurement found (`sensitivity_tol`), or given by hand.
    wide_tensors: tuple[str, ...] = ()
    # A tensor whose 8-bit grid alone costs the model outputs a relative L2 error above this is
    # carried at 16 bits (passes/sensitivity.py, measured on calibration samples); None: no measurement.
    sensitivity_tol: float | None = 0.03
    # What only layout ops take to a graph output is carried at 16 bits, and so is every tensor of at
    # most 64 elements (False: at the width its op gives it, 8 bits mostly; tests that count errors in
    # 8-bit output steps)
    wide_outputs: bool = True
    # Widths that follow tensor sizes: 16 bits for tensors of at most 64 elements, for small activation x
    # activation products and small concats of very different parts (False where one model is lowered at
    # several lengths, buckets, whose integers must agree wherever a sample runs)
    sized_widths: bool = True
    # The bias after a conv/matmul absorbs the mean error its weights' rounding makes on the calibration
    # data, (W_q - W) @ mean(x) per output channel (bias correction, Nagel et al. 2019): on
    # EfficientNet-Lite0 the weights alone cost cosine 0.9946, corrected 0.9990 (False: tests that
    # compare with uncorrected arithmetic)
    bias_correction: bool = True
    # Conv/matmul bindings whose bias is left uncorrected: where the correction moved the outputs away
    # from float in the probe's measurement (passes/bias_choice.py), or given by hand
    uncorrected: tuple[str, ...] = ()

    def __post_init__(self):
        if self.weight_bits not in (4, 8):
            raise CompileError(f"QuantConfig.weight_bits={self.weight_bits}: allowed 4 or 8")
        pairs = tuple(sorted(dict(self.layer_bits).items()))
        bad = [(n, b) for n, b in pairs if not isinstance(n, str) or b not in (4, 8)]
        if bad:
            raise CompileError(f"QuantConfig.layer_bits: {bad[:3]}: allowed binding name -> 4 or 8")
        object.__setattr__(self, "layer_bits", tuple((n, int(b)) for n, b in pairs))
        if self.activation_bits not in (8, 16):
            raise CompileError(f"QuantConfig.activation_bits={self.activation_bits}: allowed 8 or 16")
        if self.residual_bits not in (8, 16):
            raise CompileError(f"QuantConfig.residual_bits={self.residual_bits}: allowed 8 or 16")
        wide = tuple(sorted(set(self.wide_tensors)))
        if not all(isinstance(n, str) for n in wide):
            raise CompileError(f"QuantConfig.wide_tensors={wide[:3]}: allowed float binding names")
        object.__setattr__(self, "wide_tensors", wide)
        object.__setattr__(self, "uncorrected", tuple(sorted(set(self.uncorrected))))
        if self.sensitivity_tol is not None and not 0.0 < self.sensitivity_tol < 1.0:
            raise CompileError(f"QuantConfig.sensitivity_tol={self.sensitivity_tol}: allowed None or (0, 1)")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise CompileError(f"QuantConfig.smooth_alpha={self.smooth_alpha}: allowed None or [0, 1]")

    @property
    def residual_dtype(self) -> str:
        return "int16" if self.residual_bits == 16 else "int8"

    def bits_for(self, layer: str) -> int:
        """Weight bits of the layer bound to `layer` (layer_bits, else weight_bits)."""
        return dict(self.layer_bits).get(layer, self.weight_bits)


SMOOTH_MIN_ROWS = 256  # per-channel maxima over fewer calibration rows are too noisy to trust (64 rows
# overshot by 1.8x at test time); 4 sentences of 128 tokens are enough (a corpus MiniLM 0.980 -> 0.996)


WIDE_HEADROOM = 2.0  # 16-bit tensors cover 2x their calibrated range: 1 of 16 bits for inputs unlike
# the calibration images (Fashion-MNIST clipped DINOv2's LayerNorm outputs), where 8 bits have none to spare


def calibrated_qmax(dtype: str) -> float | None:
    """`Quantized.qmax` of an activation quantized by `activation_scale` in `dtype`."""
    return INT_RANGE[dtype][1] / WIDE_HEADROOM if dtype == "int16" else None


def activation_scale(lo: float, hi: float, dtype: str) -> float:
    """Symmetric scale covering [lo, hi] in `dtype` (twice that for int16; 1.0 for an all-zero tensor)."""
    amax = max(abs(lo), abs(hi)) * (WIDE_HEADROOM if dtype == "int16" else 1.0)
    return amax / INT_RANGE[dtype][1] if amax > 0 else 1.0


def smoothing_scales(amax: np.ndarray, wmax: np.ndarray, alpha: float, offset: float, dtype: str) -> np.ndarray:
    """SmoothQuant's per-input-channel scales c of a matmul input: s * max(amax / s) / levels with
    s = amax^alpha / wmax^(1 - alpha), amax the input's calibrated max |x + offset| per channel and
    wmax the max |W| per input channel over its matmuls.

    Statistics floored at their medians: only channels above the typical range move scale into the
    weights (or out of them), the others share one scale, which keeps per-channel maxima seen on few
    calibration samples from clipping (measured: 2.8x -> 1.2x overshoot)."""
    amax = amax + offset  # the integers stand for x + offset
    amax = np.maximum(amax, max(float(np.median(amax)), amax.max() * 2.0**-20))
    wmax = np.maximum(wmax, max(float(np.median(wmax)), wmax.max() * 2.0**-20))
    s = amax**alpha / wmax ** (1 - alpha)
    return s * float(np.max(amax / s)) / INT_RANGE[dtype][1]


class LoweringContext:
    """The BlockBuilder, calibrated ranges and config, plus requantization helpers."""

    def __init__(self, bb: relax.BlockBuilder, ranges: dict[str, tuple[float, float]], config: QuantConfig,
                 channel_amax: dict[str, tuple[np.ndarray, int]] | None = None,
                 weight_rowmax: dict[str, np.ndarray] | None = None, bias_after: dict[str, np.ndarray] | None = None,
                 channel_mean: dict[tuple[str, int], np.ndarray] | None = None):
        self.bb, self.ranges, self.config = bb, ranges, config
        self.channel_mean = channel_mean or {}  # (tensor, channel axis): calibrated mean per channel
        self.bias_shift: dict[Accumulator, tuple[np.ndarray, str]] = {}  # what the bias added next subtracts, layer
        self.weight_errors: dict[str, WeightError] = {}  # layer: its weights' rounding error and bias correction
        self.corrected: list[str] = []  # the layers whose bias was corrected
        self.bias_after = bias_after or {}  # conv/matmul binding: max |bias| per output channel added next
        self.channel_amax = channel_amax or {}  # tensor: (calibrated max |x| per last-axis channel, rows seen)
        self.weight_rowmax = weight_rowmax or {}  # max |W| per input channel over a tensor's matmuls
        self.smoothing = None  # chooses `smoothed`'s exponent per tensor (`SmoothingChoice`), else config's
        self.var: relax.Var | None = None  # the float binding being lowered
        self.func: relax.Function | None = None  # the float function (its bindings' ONNX origins)
        self.output_bound: frozenset[str] = frozenset()  # bindings that reach outputs through layout ops only
        self.layers: list[dict] = []  # one row per quantized weight layer
        self._materialized: dict[tuple, Quantized | ChannelQuantized] = {}
        # accumulators of float inputs with a scale per feature (feature_inputs.py), and what a
        # constant bias or factor per feature or a transpose made of them, with each feature's
        # calibrated max |x| (a bound after a bias or factor): a matmul takes them per feature too
        self.features: dict[Accumulator, np.ndarray] = {}
        self._unshifted: dict[Accumulator, Accumulator] = {}
        self._wide_names = frozenset(config.wide_tensors)
        self._wide: set = set()  # values of wide_tensors bindings: materialized at 16 bits

    def wide_output(self) -> bool:
        """Is the binding being lowered one of `QuantConfig.wide_tensors` (its result wanted at 16 bits)?"""
        return self.var is not None and self.var.name in self._wide_names

    def mark_wide(self, value) -> None:
        """Record the value of a wide_tensors binding: `materialize` and `operand` keep it at 16 bits."""
        if isinstance(value, (Quantized, Accumulator)):
            self._wide.add(value)

    def is_wide(self, value) -> bool:
        return isinstance(value, (Quantized, Accumulator)) and value in self._wide

    def corrected_bias(self, acc: Accumulator, bias: np.ndarray) -> np.ndarray:
        """`bias` less the mean error of the weights that made `acc` (`QuantConfig.bias_correction`)."""
        shift, layer = self.bias_shift.pop(acc, (None, None))
        if shift is None or acc.axis is None:
            return bias
        self.corrected.append(layer)
        return bias - emit.channel_shape(shift, len(acc.expr.ty.shape), acc.axis)

    @property
    def origin(self) -> str | None:
        """The ONNX node the binding being lowered came from, where the import recorded it."""
        return origin(self.func, self.var.name) if self.func is not None and self.var is not None else None

    def fail(self, message: str):
        name = self.var.name if self.var is not None else "?"
        where = f" ({self.origin})" if self.origin else ""
        err = CompileError(f"cannot lower binding {name!r}{where}: {message}")
        err.reason = message
        raise err

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
        if isinstance(value, IntTensor):
            return self._exact_operand(value)
        if isinstance(value, np.ndarray):
            self.fail("expected an activation, got a constant")
        if isinstance(value, (MaskPenalty, MaskedLogits)):  # only an addition to logits gives them integers
            self.fail("a mask of -inf (where(c, x, -inf), (1 - m) * -huge) used other than added to attention "
                      "logits (here multiplied or passed on): -inf has no integer value")
        wide = wide or value in self._wide
        value = self.without_offset(value)
        key = (value, wide)
        if key not in self._materialized:
            self._materialized[key] = self._requantize_acc(value, wide)
        return self._materialized[key]

    def _exact_operand(self, value: IntTensor) -> Quantized:
        """Exact integers standing for a float (a one-hot mask, a class index cast to float): 8-bit
        ones at scale 1; wider ones in int16, at scale 1 where their calibrated range fits (class
        ids beside a detector's boxes), else at the int16 scale of that range."""
        dtype = str(value.expr.ty.dtype)
        known = value.range is not None and np.isfinite(value.range).all()
        amax = max(abs(v) for v in value.range) if known else None  # what an 8-bit requantization spans
        if dtype == "bool":
            return Quantized(self.emit(relax.op.astype(value.expr, "uint8")), 1.0, "uint8")
        if dtype in ("int8", "uint8", "int16"):
            return Quantized(value.expr, 1.0, dtype, qmax=max(amax, 1.0) if known and dtype == "int16" else None)
        if not known:
            self.fail(f"an exact {dtype} tensor used as a float activation, with no calibrated range: only "
                      "bool, 8- and 16-bit integers are taken as they are")
        scale = max(1.0, activation_scale(*value.range, "int16"))
        m, s = dyadic(1.0 / scale)
        wide = value.expr if dtype == "int64" else relax.op.astype(value.expr, "int64")
        x = relax.op.clip(wide, *INT_RANGE["int32"])  # beyond its calibrated range it saturates anyway
        expr = self.emit(emit.requantize(x, m, s, *INT_RANGE["int16"], "int16"))
        # qmax: the calibrated range, not the int16 headroom (a one-hot of values {-1, 2} at scale 1 took
        # 2 / 129 of an 8-bit step on its way into a matmul: all zeros)
        return Quantized(expr, scale, "int16", qmax=max(amax / scale, 1.0))

    def materialized_items(self):
        """((value, how), requantized value) for every requantization made so far (tracing)."""
        return list(self._materialized.items())

    def to_8bit(self, value: Value) -> Quantized:
        """An 8-bit operand for a matmul or conv: int16 values are requantized to int8 over their
        calibrated range (the int16 headroom is not kept: values beyond it saturate)."""
        return self._over_range(self.materialize(value), 127, "int8")

    def narrowed(self, value: Value, qmax: int) -> Quantized:
        """`value` as int16 integers within +-qmax over its calibrated range (its headroom dropped: values
        beyond saturate), for a product of two 16-bit operands whose int32 sums must hold."""
        return self._over_range(self.materialize(value, wide=True), qmax, "int16")

    def _over_range(self, q: Quantized, qmax: int, dtype: str) -> Quantized:
        """An int16 `q` requantized so that its calibrated range spans +-qmax of `dtype` (memoized); 8-bit
        values pass through."""
        if q.dtype in ("int8", "uint8"):
            return q
        if (q, (qmax, dtype)) not in self._materialized:
            scale = q.scale * (q.qmax or INT_RANGE[q.dtype][1]) / qmax
            m, s = dyadic(q.scale / scale)
            lo = -qmax - 1 if dtype == "int8" else -qmax
            self._materialized[(q, (qmax, dtype))] = Quantized(
                self.emit(emit.requantize(q.expr, m, s, lo, qmax, dtype)), scale, dtype,
                qmax=qmax if dtype == "int16" else None, bound=qmax if dtype == "int16" else None)
        return self._materialized[(q, (qmax, dtype))]

    def operand(self, value: Value, weight_l1: int, weight_bits: int = 8) -> Quantized:
        """The activation operand of a constant-weight conv/matmul whose quantized weights sum to at
        most `weight_l1` in absolute value per output: 16 bits for a wide_tensors value where the
        int32 accumulator cannot overflow (2^15 * weight_l1 < 2^31: int16 x int8); where it could,
        as many levels as the sums allow, +-(2^31 - 1) // weight_l1 over the calibrated range, when
        that is at least 255 (a wide Gemm, 16896 -> 64 over heavy-tailed features: 8 bits kept 1 in
        11 features off zero, cosine 0.58; 12 bits 0.99); else `to_8bit`."""
        if value in self._wide and weight_bits == 8:
            if 2**15 * weight_l1 < 2**31:
                return self.materialize(self.without_offset(value), wide=True)
            if (2**31 - 1) // weight_l1 >= 255:
                return self.narrowed(self.without_offset(value), (2**31 - 1) // weight_l1)
        return self.to_8bit(value)

    def without_offset(self, value):
        """`value` with an Accumulator's offset subtracted from its integers (anything else as is)."""
        if not isinstance(value, Accumulator) or value.offset == 0.0:
            return value
        if value not in self._unshifted:
            rank = len(value.expr.ty.shape)
            shift = np.round(value.offset / np.asarray(value.scale, np.float64))
            if np.abs(shift).max() >= 2**30:
                self.fail(f"offset {value.offset} does not fit int32 at the accumulator's scale")
            expr = self.emit(emit.R.subtract(value.expr, emit.const(emit.channel_shape(shift, rank, value.axis),
                                                                    "int32")))
            self._unshifted[value] = Accumulator(expr, value.scale, value.axis, value.out_range, value.clamp)
        return self._unshifted[value]

    def smoothed(self, value: Value, var: relax.Expr) -> ChannelQuantized | None:
        """The 8-bit, per-input-channel-scaled form of the matmul input `value` (float tensor
        `var`), or None where it does not apply: smoothing off, an input already 8 bits, a
        clamped accumulator other than ReLU, no per-channel calibration or weight statistics, or
        statistics over fewer than SMOOTH_MIN_ROWS rows (a toy calibration: 4 samples of 16
        rows overshot its per-channel maxima by 1.8x at test time, and smoothing lost to per tensor),
        or weights all zero (a zero-initialized Linear: RT-DETR's deformable-attention offsets and
        weights and its box heads' last layers at init; their scales s = amax^a / 0 were inf, the
        ratios nan, and the node was refused).

        Scales `smoothing_scales` (SmoothQuant; alpha measured per tensor where `smoothing` is set):
        every matmul reading `var` gets the same c (memoized; wmax is over all of them), its weights
        scaled by c.
        """
        alpha = self.config.smooth_alpha
        name = getattr(var, "name", None)
        if alpha is None or name not in self.channel_amax or name not in self.weight_rowmax:
            return None
        if isinstance(value, Quantized) and value.dtype in ("int8", "uint8") or not isinstance(
                value, (Quantized, Accumulator)):
            return None
        rank = len(value.expr.ty.shape)
        if isinstance(value, Accumulator) and (value.clamp not in ((-math.inf, math.inf), (0.0, math.inf))
                                               or value.axis not in (None, rank - 1)):
            return None
        if isinstance(value, Accumulator) and value.offset and not self.config.unsigned_activations:
            value = self.without_offset(value)
        (amax, rows), wmax = self.channel_amax[name], self.weight_rowmax[name]
        if amax.shape != wmax.shape or amax.max(initial=0) <= 0 or wmax.max(initial=0) <= 0 or rows < SMOOTH_MIN_ROWS:
            return None
        key = (value, "smooth")
        if key not in self._materialized:
            offset = value.offset if isinstance(value, Accumulator) else 0.0
            unsigned = isinstance(value, Accumulator) and (value.clamp[0] >= 0 or offset > 0)
            dtype = "uint8" if unsigned and self.config.unsigned_activations else "int8"
            if self.smoothing is not None:  # measured per tensor (`smooth_choice.py`)
                alpha = self.smoothing.alpha(name, amax, wmax, offset, dtype, alpha)
            c = smoothing_scales(amax, wmax, alpha, offset, dtype)
            src_scale = np.broadcast_to(np.asarray(value.scale, np.float64), c.shape)
            m, sh = dyadic(src_scale / c)
            expr = self.emit(emit.requantize(value.expr, m, sh, *INT_RANGE[dtype], dtype))
            self._materialized[key] = ChannelQuantized(expr, c, dtype, offset)
        return self._materialized[key]

    def per_feature(self, value: Accumulator, var: relax.Expr | None = None,
                    dtype: str = "int8") -> ChannelQuantized | None:
        """A matmul input of features with ranges of their own (`features`), on a grid of `dtype` per
        feature (their calibrated max |x|, `var`'s where calibration saw it), the scales to be folded
        into the weights; None where the maxima do not fit the scales."""
        stats = self.channel_amax.get(getattr(var, "name", None))
        amax = stats[0] if stats is not None else self.features[value]
        if amax.size != np.size(value.scale) or amax.max(initial=0) <= 0:
            return None
        key = (value, f"features-{dtype}")
        if key not in self._materialized:
            amax = np.maximum(amax, amax.max() * 2.0**-20)
            c = amax / INT_RANGE[dtype][1]
            rank = len(value.expr.ty.shape)
            m, sh = dyadic(np.asarray(value.scale, np.float64) / c)
            expr = self.emit(emit.requantize(value.expr, emit.channel_shape(m, rank, value.axis),
                                             emit.channel_shape(sh, rank, value.axis), *INT_RANGE[dtype], dtype))
            self._materialized[key] = ChannelQuantized(expr, c, dtype, axis=value.axis)
        return self._materialized[key]

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
        return Quantized(self.emit(emit.requantize(acc.expr, m, s, qlo, qhi, dtype)), scale, dtype,
                         qmax=calibrated_qmax(dtype))

    def to_int32_at(self, value: Value, scale: float) -> tuple[relax.Expr, np.ndarray, np.ndarray]:
        """(int tensor, m, s) that requantize `value` to `scale`: used by adds and concats.

        An unclamped accumulator is requantized straight from int32 (per channel): going
        through 8 bits first would lose a residual branch whose range has outliers.
        """
        value = self.without_offset(value)
        if isinstance(value, Accumulator) and value.clamp == (-math.inf, math.inf):
            rank = len(value.expr.ty.shape)
            m, s = dyadic(np.asarray(value.scale, np.float64) / scale)
            return value.expr, emit.channel_shape(m, rank, value.axis), emit.channel_shape(s, rank, value.axis)
        q = self.materialize(value)
        m, s = dyadic(q.scale / scale)
        return q.expr, m, s
