"""Softmax, GELU and LayerNorm on integers (I-ViT's algorithms, with DESIGN.md section 2's and
this project's measured fixes, see `passes.reference.transformer`).

softmax(x [+ m])  -> (any axis; 8-bit CNN logits are widened to int16 first)
                     softmax_exp2 (masked keys get exactly 0) straight on the logits' integers at
                     their own scale (attention's 1/sqrt(d) folded into it): exponent by a shift,
                     fraction by a cubic, 62-bit row reciprocal; int16 probabilities at 2^-15
                     whose rows sum to <= 2^15 + length / 2 (attention @ V checks its int32 bound
                     with that); requires length * 2^30 < 2^62 and a logit scale < 2^13 (finer
                     than ~3e-8 first coarsened, so that clamping max - x to int32 is exact)
log_softmax(x)    -> any axis: (x - max) - log(sum e), both requantized to S_out / 2^8, rounded once
                     to S_out; e softmax_exp2's exponentials, log2 of their row sum by bit position
                     + a quartic (2e-4)
gelu(x)           -> a table over the 16-bit input's grid (65536 int16 entries, 128 KiB): GELU + 0.171
gelu_tanh(x)         (>= -min GELU) at 15 bits, exact up to that rounding: an Accumulator with that
                     offset, read as uint8 by a constant-weight matmul (which subtracts 0.171 * sum(W)
                     as a bias), removed for any other consumer. One gather per element: the
                     tanh-form integer polynomial (`reference.transformer.gelu_tanh`, one 64-bit
                     division per element) cost ~30% of MiniLM's time and was 1e-3 off GELU
layer_norm(x)     -> I-LayerNorm: exact isqrt of the sum of squares plus epsilon in the integers'
                     units (RWKV's 1e-4 embeddings have a variance of 1e-8 against eps 1e-5), gamma/beta
                     folded into a per-channel dyadic requantization (sign of gamma applied to the
                     integers: gamma may be 0 or negative); output int16 when residuals are 16-bit,
                     else int8
rms_norm(x)       -> the same without the mean (x / isqrt(sum(x^2)), the row's own integers:
                     no grid for the variance)
Each asserts its overflow bounds at compile time and fails naming the binding.
"""

from __future__ import annotations

import math

import numpy as np

from ..reference import binary as ref_binary, transformer as ref, unary as ref_unary
from ..reference.kernels import INT_RANGE, dyadic
from . import emit, emit_binary, emit_transformer
from .context import activation_scale, calibrated_qmax
from .registry import lowers
from .values import Accumulator, MaskedLogits, Quantized

PROB_BITS = 15  # softmax output: int16 at 2^-15
GELU_OFFSET = 0.171  # >= -min gelu_tanh (0.17006): GELU + offset >= 0, read as uint8 by a matmul


def _logits(ctx, x):
    """(int32/int16 logits, their per-tensor scale): an unclamped per-tensor accumulator as it is."""
    if isinstance(x, Accumulator) and x.axis is None and x.clamp == (-math.inf, math.inf):
        return x.expr, float(np.asarray(x.scale))
    q = ctx.materialize(x, wide=True)
    return q.expr, q.scale


def _exp_inputs(ctx, call, x):
    """(logits, m, s, mask, axis, length) for softmax_exp2 / log_softmax on any axis: the logits'
    integers with (m, s) = dyadic(S log2(e) 2^16), coarsened first where S is so fine that clamping
    max - x to int32 would cut into exp2_neg's range."""
    keep, empty_rows = None, None
    if isinstance(x, MaskedLogits):
        x, keep, empty_rows = x.logits, x.keep, x.empty_rows
    axis = int(call.attrs.axis) % len(call.args[0].ty.shape)
    length = int(call.args[0].ty.shape[axis])
    if length * 2**ref.EXP2_OUT_BITS >= 2**62:
        ctx.fail(f"softmax over {length} elements would overflow the int64 row sum")
    logits, scale = _logits(ctx, x)
    if scale * (2**31 - 1) * math.log2(math.e) < 32:  # d = max - x is clamped to 2^31 - 1: keep
        coarse = 64 / ((2**31 - 1) * math.log2(math.e))  # that clamp beyond exp2_neg's underflow
        m, s = dyadic(scale / coarse)
        logits, scale = emit.requantize(logits, m, s, *INT_RANGE["int32"], "int32"), coarse
    m, s = dyadic(scale * math.log2(math.e) * 2**ref.EXP2_IN_BITS)
    if not 1 <= int(s) <= 62:
        ctx.fail(f"softmax logit scale {scale:.3g} too coarse (>= 2^13)")
    return logits, scale, int(m), int(s), (keep, empty_rows), axis, length


@lowers("relax.nn.softmax")
def lower_softmax(ctx, call, args):
    logits, _, m, s, (keep, empty_rows), axis, length = _exp_inputs(ctx, call, args[0])
    probs = emit_transformer.softmax_exp2(logits, m, s, PROB_BITS, mask=keep, axis=axis - len(call.ty.shape),
                                          empty_rows=empty_rows)
    return Quantized(ctx.emit(probs), 2.0**-PROB_BITS, "int16", row_sum=2**PROB_BITS + (length + 1) // 2)


@lowers("relax.nn.log_softmax")
def lower_log_softmax(ctx, call, args):
    """(x - max) minus log(sum exp(x - max)) at the output scale (see `reference.binary.log_softmax`)."""
    logits, scale, m, s, (keep, _), axis, _ = _exp_inputs(ctx, call, args[0])
    if keep is not None:
        ctx.fail("log_softmax with an attention mask")
    dtype = ctx.config.residual_dtype
    out = activation_scale(*ctx.out_range(), dtype)
    fine = out * 2.0**-ref_binary.LOGSM_EXTRA_BITS  # both terms meet at a finer scale, then round once
    (m_out, s_out), (m_log, s_log) = dyadic(scale / fine), dyadic(math.log(2) * 2.0**-ref_binary.LOG2_BITS / fine)
    y = emit_binary.log_softmax(logits, m, s, m_out, s_out, m_log, s_log, *INT_RANGE[dtype], dtype, axis=axis)
    return Quantized(ctx.emit(y), out, dtype, qmax=calibrated_qmax(dtype))


@lowers("relax.nn.gelu", "relax.nn.gelu_tanh")
def lower_gelu(ctx, call, args):
    """GELU (erf form, or its tanh approximation for `gelu_tanh`) plus GELU_OFFSET from a table
    over the input's integer grid: int16 entries at the finest scale that holds the table's
    largest value (15 bits; the consumer requantizes to 8). An Accumulator with that offset."""
    x = ctx.materialize(args[0], wide=True)
    if x.dtype not in ("int8", "uint8", "int16"):
        ctx.fail(f"GELU of a {x.dtype} tensor (8 or 16 bits expected)")
    f = ref_unary.gelu_tanh if call.op.name == "relax.nn.gelu_tanh" else ref_unary.gelu
    image = f(ref_unary.grid(x.dtype) * x.scale) + GELU_OFFSET  # >= 0.171 - 0.17006 > 0
    scale = float(image.max()) / INT_RANGE["int16"][1]
    table = ref_unary.build_table(image, scale, "int16")
    qmin = INT_RANGE[x.dtype][0]
    index = emit.R.astype(x.expr, "int32")
    if qmin != 0:
        index = emit.R.subtract(index, emit.const(qmin, "int32"))
    y = emit.R.astype(emit.R.take(emit.const(table, "int16"), index, axis=0, mode="clip"), "int32")
    shift = round(GELU_OFFSET / scale)  # the integers stand for GELU + shift * scale, exactly
    return Accumulator(ctx.emit(y), np.asarray(scale), None, ctx.out_range(), offset=shift * scale)


@lowers("relax.nn.layer_norm")
def lower_layer_norm(ctx, call, args):
    x, gamma, beta = args
    return _normalize(ctx, call, x, gamma, beta, center=True)


@lowers("relax.nn.rms_norm")
def lower_rms_norm(ctx, call, args):
    x, gamma = args
    beta = np.zeros_like(gamma) if isinstance(gamma, np.ndarray) else None
    return _normalize(ctx, call, x, gamma, beta, center=False)


def mean_multiplier(channels: int, total_bound: int) -> tuple[int, int]:
    """(m, s) with m / 2^s ~ 1 / channels and total * m + 2^(s-1) within int64 for |total| <= total_bound:
    dyadic(1 / C) has 31 bits, and an int32 stream's row total (rows of one sign: an InstanceNorm over
    12288 positions of a conv's output on a photo, whose mean is most of each value) times it overflowed
    int64, wrapping the mean (relative error 0.74). Fewer bits where needed: the mean still rounds within half a unit
    (C b^2 < 2^60 by `stream_shift`)."""
    m, s = (int(v) for v in dyadic(1.0 / channels))
    while total_bound * m + 2 ** (s - 1) >= 2**63 and s > 1:
        m, s = (m + 1) >> 1, s - 1
    return m, s


def _normalize(ctx, call, x, gamma, beta, center: bool):
    """I-LayerNorm (center) or its RMSNorm form, gamma and beta constants."""
    name = call.op.name.split(".")[-1]
    rank = len(call.args[0].ty.shape)
    axes = [int(a) % rank for a in call.attrs.axes]
    if axes != [rank - 1] or not isinstance(gamma, np.ndarray) or not isinstance(beta, np.ndarray):
        ctx.fail(f"{name} over the last axis with constant gamma and beta is supported")
    channels = int(call.args[0].ty.shape[-1])
    epsilon = float(call.attrs.epsilon)  # inside the square root: matters where a row's variance is near it
    x = ctx.without_offset(x)
    if isinstance(x, Accumulator) and x.axis is None and x.clamp == (-math.inf, math.inf):
        # an int32 input (the residual stream of `elementwise.lower_add`, a matmul's output) is
        # normalized from its own integers, shifted just enough for the int64 sum of squares: a
        # 16-bit grid set by T5's outlier tokens left ordinary tokens a few steps
        amax = max(abs(v) for v in x.out_range) / float(np.max(x.scale))
        bound = int(min(2**31 - 1, max(4 * amax, 1)))  # 4x the calibrated range: no overflow beyond it
        k = ref.stream_shift(channels, bound.bit_length() + 1)  # + 1: centred values span twice
        shifted = emit.rounding_shift(emit.R.clip(x.expr, -bound, bound), np.asarray(k))
        mean_m, mean_s = mean_multiplier(channels, channels * ((bound >> k) + 1))
        eps = ref.layernorm_eps(epsilon, channels, float(np.max(x.scale)) * 2.0**k,
                                channels * (2 * (bound >> k) + 2) ** 2)
        z = emit_transformer.layernorm_core(shifted, int(mean_m), int(mean_s), center=center, precise=True, eps=eps)
    else:
        x = ctx.materialize(x, wide=True)
        bits = 16 if x.dtype == "int16" else 8
        if channels * 2.0 ** (2 * (bits + 1)) >= 2**62:
            ctx.fail(f"{name} over {channels} channels could overflow the int64 variance")
        eps = ref.layernorm_eps(epsilon, channels, float(x.scale), channels * 4 ** (bits + 1))
        mean_m, mean_s = mean_multiplier(channels, channels * 2 ** (bits + 1))
        z = emit_transformer.layernorm_core(x.expr, int(mean_m), int(mean_s), center=center,  # y / std at 2^-30
                                            precise=eps >= ref.PRECISE_EPS, eps=eps)
    dtype = "int16" if ctx.wide_output() else ctx.config.residual_dtype  # measured sensitive: 16 bits
    scale = activation_scale(*ctx.out_range(), dtype)
    gamma, beta = gamma.astype(np.float64).reshape(-1), beta.astype(np.float64).reshape(-1)
    ratio = math.sqrt(channels) * np.abs(gamma) / (2.0**30 * scale)
    m, s = dyadic(np.where(ratio > 0, ratio, 1.0))
    m = np.where(ratio > 0, m, 0)  # gamma == 0: the channel is beta alone
    signed = emit.R.multiply(z, emit.const(np.sign(gamma).astype(np.int64), "int64"))
    y = emit.requantize(signed, m, s, *INT_RANGE["int32"], "int32")
    beta_q = np.clip(np.round(beta / scale), *INT_RANGE["int32"])
    out = emit.R.add(emit.R.astype(y, "int64"), emit.const(beta_q, "int64"))
    return Quantized(ctx.emit(emit.R.astype(emit.R.clip(out, *INT_RANGE[dtype]), dtype)), scale, dtype,
                     qmax=calibrated_qmax(dtype))
