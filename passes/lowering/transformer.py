"""Softmax, GELU and LayerNorm on integers (I-ViT, with DESIGN.md section 2's fixes).

softmax(x [+ m])  -> Shiftmax (masked keys get exactly 0): logits requantized to the power-of-two grid 2^-6 (any
                     1/sqrt(d) already folded into their scale), n = 15 or less so that
                     row length * 64 * 2^n < 2^31; uint8 probabilities at scale 2^-8
gelu(x)           -> ShiftGELU on a 16-bit input: x * sigmoid(1.702 x) at scale S * 2^-7,
                     an Accumulator requantized by its consumer
layer_norm(x)     -> I-LayerNorm: exact isqrt, gamma/beta folded into a per-channel dyadic
                     requantization (sign of gamma applied to the integers: gamma may be 0
                     or negative); output int16 when residuals are 16-bit, else int8
Each asserts its overflow bounds at compile time and fails naming the binding.
"""

from __future__ import annotations

import math

import numpy as np

from ..reference import transformer as ref
from ..reference.kernels import INT_RANGE, dyadic
from . import emit, emit_transformer
from .context import activation_scale
from .registry import lowers
from .values import Accumulator, MaskedLogits, Quantized

LOGIT_SCALE = 2.0**-6  # Shiftmax input grid: x0 = -64
SOFTMAX_N = 15


def _to_int32_at(ctx, value, scale: float):
    q, m, s = ctx.to_int32_at(value, scale)
    return emit.requantize(q, m, s, *INT_RANGE["int32"], "int32")


@lowers("relax.nn.softmax")
def lower_softmax(ctx, call, args):
    x, keep = args[0], None
    if isinstance(x, MaskedLogits):
        x, keep = x.logits, x.keep
    length = int(call.args[0].ty.shape[int(call.attrs.axis)])
    x0 = ref.exp_params(LOGIT_SCALE)
    n = SOFTMAX_N
    while length * -x0 * 2**n >= 2**31 and n > 8:
        n -= 1
    if length * -x0 * 2**n >= 2**31:
        ctx.fail(f"softmax over {length} elements would overflow the int32 row sum (n = {n})")
    if isinstance(x, Accumulator) and x.axis is None and x.clamp == (-math.inf, math.inf):
        m, s = dyadic(float(np.asarray(x.scale)) / LOGIT_SCALE)  # straight from the int32 logits
        logits = emit.requantize(x.expr, m, s, *INT_RANGE["int32"], "int32")
    else:
        logits = _to_int32_at(ctx, x, LOGIT_SCALE)
    probs = emit_transformer.shiftmax(logits, x0, n, 8, mask=keep, axis=int(call.attrs.axis))
    return Quantized(ctx.emit(probs), 2.0**-8, "uint8")


@lowers("relax.nn.gelu")
def lower_gelu(ctx, call, args):
    x = ctx.materialize(args[0], wide=True)
    if x.dtype != "int16":
        x = Quantized(ctx.emit(emit.R.astype(x.expr, "int16")), x.scale, "int16")
    x0 = ref.exp_params(1.702 * x.scale)
    n = ref.gelu_n(x0)
    if n < 1:
        ctx.fail(f"GELU input scale {x.scale:.3g} too fine for ShiftGELU (n = {n})")
    y = ctx.emit(emit.R.astype(emit_transformer.shift_gelu(x.expr, x0, n), "int32"))  # |x * sig| < 2^22
    return Accumulator(y, np.asarray(x.scale * 2.0**-7), None, ctx.out_range())


@lowers("relax.nn.layer_norm")
def lower_layer_norm(ctx, call, args):
    x, gamma, beta = args
    rank = len(call.args[0].ty.shape)
    axes = [int(a) % rank for a in call.attrs.axes]
    if axes != [rank - 1] or not isinstance(gamma, np.ndarray) or not isinstance(beta, np.ndarray):
        ctx.fail("layer_norm over the last axis with constant gamma and beta is supported")
    x = ctx.materialize(x, wide=True)
    channels = int(call.args[0].ty.shape[-1])
    bits = 16 if x.dtype == "int16" else 8
    if channels * 2.0 ** (2 * (bits + 1)) >= 2**62:
        ctx.fail(f"layer_norm over {channels} channels could overflow the int64 variance")
    mean_m, mean_s = dyadic(1.0 / channels)
    z = emit_transformer.layernorm_core(x.expr, int(mean_m), int(mean_s))  # y / std at 2^-30
    dtype = ctx.config.residual_dtype
    scale = activation_scale(*ctx.out_range(), dtype)
    gamma, beta = gamma.astype(np.float64).reshape(-1), beta.astype(np.float64).reshape(-1)
    ratio = math.sqrt(channels) * np.abs(gamma) / (2.0**30 * scale)
    m, s = dyadic(np.where(ratio > 0, ratio, 1.0))
    m = np.where(ratio > 0, m, 0)  # gamma == 0: the channel is beta alone
    signed = emit.R.multiply(z, emit.const(np.sign(gamma).astype(np.int64), "int64"))
    y = emit.requantize(signed, m, s, *INT_RANGE["int32"], "int32")
    beta_q = np.clip(np.round(beta / scale), *INT_RANGE["int32"])
    out = emit.R.add(emit.R.astype(y, "int64"), emit.const(beta_q, "int64"))
    return Quantized(ctx.emit(emit.R.astype(emit.R.clip(out, *INT_RANGE[dtype]), dtype)), scale, dtype)
