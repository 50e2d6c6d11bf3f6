"""Conv2d and MatMul with constant weights -> int8 weights, int32 accumulation.

conv2d(x, W)  -> Accumulator(conv2d(q_x, q_W, out_dtype=int32), scale = S_x * S_W[o], axis 1)
matmul(x, W)  -> Accumulator(matmul(q_x, q_W, out_dtype=int32), scale = S_x * S_W[n], last axis)
matmul(a, b)  -> Accumulator(matmul(q_a, q_b, out_dtype=int32), scale = S_a * S_b)   (activations)
matmul(x, W)  -> Accumulator(matmul(x / c, q(c W)), scale = S_cW[n])   (x 16/32-bit: outlier smoothing)
conv2d_transpose(x, W[I, O/g, kh, kw]) -> Accumulator(conv2d_transpose(q_x, q_W, out_dtype=int32),
                 scale = S_x * S_W[o], axis 1)   (grouped too; per output channel o = g * O/g + j)

Weights are symmetric per output channel, 8 bits or, per layer (`QuantConfig.bits_for`),
4 bits stored packed two per byte and unpacked inside the kernel (`int4.py`). Bias, ReLU
and clamps fold into the accumulator later; the dyadic requantization happens where a
consumer needs 8 bits. Each layer is recorded in `ctx.layers` with its bits and workload.
Overflow bound: |acc| <= K * 255 * 2^(b-1) < 2^31 for K < 2^23 / 2^(b-1), checked.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from ..reference.kernels import INT_RANGE, quantize_weights
from . import emit, int4
from .context import WeightError
from .registry import lowers
from .rounded_weights import rounded, scaled, weight_l1
from .values import Accumulator, Quantized


BIAS_BITS = 28  # a bias at the accumulator scale stays below 2^28: int32 with headroom


def _bias_fitting(ctx, w: np.ndarray, w_q: np.ndarray, w_scale: np.ndarray, bits: int, axis: int, x_scale):
    """The weights again, each channel's scale raised to where the bias added next fits int32 at
    the accumulator scale (near-dead channels: tiny weights and a large folded bias). Coarsening
    the accumulator instead (`elementwise._add_bias`) costs a rounding shift per output element;
    this costs nothing at run time, and the weight error it adds (<= scale / 2 per weight) stays
    below reduction * 127 * |bias| / 2^29 at the output, a small part of one output step."""
    bias = ctx.bias_after.get(ctx.var.name)
    if bias is None or bias.size not in (1, w_scale.size):
        return w_q, w_scale
    floor = bias / (np.asarray(x_scale, np.float64) * 2.0**BIAS_BITS)
    if not np.any(w_scale < floor):
        return w_q, w_scale
    return quantize_weights(w, bits, axis=axis, min_scale=floor)


def _bias_correction(ctx, acc: Accumulator, x: relax.Expr, axis: int, error: np.ndarray, groups: int = 1,
                     share: np.ndarray | None = None, per_input: np.ndarray | None = None,
                     offset: float = 0.0, op: str | None = None) -> Accumulator:
    """Record for the bias added next (`LoweringContext.corrected_bias`) the mean error that the
    weights' rounding, `error` = dequantized minus float weights (OIHW, or [K, N] for a matmul),
    makes on the calibration data: error @ mean(x) per output channel. The integers the weights
    multiply stand for (x + `offset`) / `per_input` (outlier smoothing's per-channel scales); a
    conv's taps count by their `share` of the output positions at which they read the image.
    With `op` ("conv2d", "matmul"), `ctx.weight_errors` keeps the error for the probe that decides
    where the correction stays (`passes/bias_choice.py`)."""
    mean = ctx.channel_mean.get((x.name, axis)) if isinstance(x, relax.Var) else None
    if not ctx.config.bias_correction or mean is None or acc.axis is None:
        return acc
    mean = (mean + offset) / (1.0 if per_input is None else per_input)
    if error.ndim == 2 and mean.size == error.shape[0]:
        shift = mean @ error
    elif error.ndim == 4 and mean.size == error.shape[1] * groups:
        o, cg = error.shape[:2]
        taps = (error * share).reshape(groups, o // groups, cg, -1).sum(-1)
        shift = np.einsum("goc,gc->go", taps, mean.reshape(groups, cg)).reshape(o)
    else:
        return acc
    if op is not None:
        ctx.weight_errors[ctx.var.name] = WeightError(ctx.var.name, op, x.name, error, shift, per_input, offset)
    if ctx.var.name not in ctx.config.uncorrected:
        ctx.bias_shift[acc] = shift, ctx.var.name
    return acc


def _tap_share(x: relax.Expr, out: relax.Expr, attrs, kernel, transposed: bool = False) -> np.ndarray:
    """[kh, kw]: the share of a conv's output positions at which each tap reads the image, not its
    zero padding (a 3x3 conv over 7x7: the corner taps read padding at 13 of 49); for a transposed
    conv, the share of output positions each tap writes from an input pixel."""
    sizes = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in list(x.ty.shape)[2:]]
    outs = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in list(out.ty.shape)[2:]]
    if None in sizes + outs:  # a free height or width: every tap counts
        return np.ones(kernel)
    pads = [int(v) for v in attrs.padding]  # top, left, bottom, right
    share = []
    for i, (size, n, k) in enumerate(zip(sizes, outs, kernel)):
        stride, dilation = int(attrs.strides[i]), int(attrs.dilation[i])
        taps = np.arange(k)[None, :] * dilation - pads[i]
        if transposed:  # input pixel h writes output h * stride + tap
            rows = np.arange(size)[:, None] * stride + taps
            share.append(((rows >= 0) & (rows < n)).sum(axis=0) / n)
        else:  # output pixel h reads input h * stride + tap
            rows = np.arange(n)[:, None] * stride + taps
            share.append(((rows >= 0) & (rows < size)).mean(axis=0))
    return share[0][:, None] * share[1][None, :]


def _check_accumulator_bound(ctx, l1: int, x):
    most = x.bound if getattr(x, "bound", None) is not None else max(abs(v) for v in INT_RANGE[x.dtype])
    bound = l1 * most
    if bound >= 2**31:
        ctx.fail(f"int32 accumulator could overflow: |x| <= {most} times weights summing to {l1} (bound {bound} >= 2^31)")


def _record(ctx, op: str, w: np.ndarray, bits: int, x, **attrs):
    """One `ctx.layers` row: the layer's bits and its workload (what a latency table times)."""
    ctx.layers.append({"name": ctx.var.name, "op": op, "weight_bits": bits, "params": int(w.size),
                       "shape": list(w.shape), "weight_bytes": (w.size * bits + 7) // 8,
                       "input_shape": [int(d) for d in x.expr.ty.shape], "input_dtype": x.dtype, **attrs})


@lowers("relax.nn.conv2d")
def lower_conv2d(ctx, call, args):
    x, w = args
    attrs = call.attrs
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        ctx.fail(f"conv2d layout {attrs.data_layout}/{attrs.kernel_layout}: only NCHW/OIHW is supported")
    if isinstance(x, np.ndarray):
        ctx.fail("conv2d of a constant input by activation weights: no integer form")
    if not isinstance(w, np.ndarray):
        return _activation_conv2d(ctx, call, x, w)
    bits = ctx.config.bits_for(ctx.var.name)
    w_q, w_scale = quantize_weights(w, bits, axis=0)
    l1 = weight_l1(w_q, 0)
    x = ctx.operand(x, l1, bits)  # 8 bits, or 16 for a measured-sensitive input
    w_q, w_scale = _bias_fitting(ctx, w, w_q, w_scale, bits, 0, x.scale)  # only lowers l1
    _check_accumulator_bound(ctx, l1, x)
    _record(ctx, "conv2d", w, bits, x, strides=[int(v) for v in attrs.strides],
            padding=[int(v) for v in attrs.padding], dilation=[int(v) for v in attrs.dilation],
            groups=int(attrs.groups))
    expr = ctx.emit(int4.conv2d_int4(ctx.bb, x.expr, w_q, attrs) if bits == 4 else
                    emit.conv2d_acc(x.expr, w_q, attrs))
    acc = Accumulator(expr, x.scale * w_scale, 1, ctx.out_range())
    return _bias_correction(ctx, acc, call.args[0], 1, w_q * w_scale[:, None, None, None] - w, int(attrs.groups),
                            _tap_share(call.args[0], call, attrs, w.shape[2:]), op="conv2d")


def _activation_conv2d(ctx, call, x, w):
    """A conv whose weights are an activation (Siamese trackers' cross-correlation of search features by
    template features, per channel or dense; dynamic filters): both operands 8-bit, their offsets taken
    out, int32 sums at scale S_x S_w, each bounded by the taps per output times 255 * 128."""
    a = call.attrs
    x, w = ctx.to_8bit(ctx.without_offset(x)), ctx.to_8bit(ctx.without_offset(w))
    if np.size(x.scale) != 1 or np.size(w.scale) != 1:
        ctx.fail("conv2d of activations on per-channel grids")
    taps = int(np.prod([int(d) for d in list(call.args[1].ty.shape)[1:]]))
    bound = taps * max(abs(v) for v in INT_RANGE[x.dtype]) * max(abs(v) for v in INT_RANGE[w.dtype])
    if bound >= 2**31:
        ctx.fail(f"int32 accumulator could overflow: {taps} taps per output of two 8-bit operands")
    expr = ctx.emit(relax.op.nn.conv2d(x.expr, w.expr, a.strides, a.padding, a.dilation, a.groups, "NCHW", "OIHW",
                                       out_dtype="int32"))
    return Accumulator(expr, np.asarray(x.scale * w.scale), None, ctx.out_range())


@lowers("relax.matmul")
def lower_matmul(ctx, call, args):
    x, w = args
    if isinstance(x, np.ndarray):
        return _constant_first_matmul(ctx, call, x, w)
    if not isinstance(w, np.ndarray):
        return _activation_matmul(ctx, call, x, w)
    if w.ndim > 2 and all(d == 1 for d in w.shape[:-2]) and len(call.args[0].ty.shape) >= w.ndim:
        w = w.reshape(w.shape[-2:])  # a torch parameter of shape (1, K, N): the same product
    if w.ndim != 2:
        return _stacked_weight_matmul(ctx, call, x, w)
    bits = ctx.config.bits_for(ctx.var.name)
    if x in ctx.features:  # features of their own ranges: a grid each (16 bits where kept wide and the sums fit)
        wide = ctx.is_wide(x) and w.shape[0] * 2**7 * 2**15 < 2**31
        smooth = ctx.per_feature(x, call.args[0], "int16" if wide else "int8")
    else:
        smooth = None if ctx.is_wide(x) else ctx.smoothed(x, call.args[0])  # a wide input stays 16-bit
    correction = None
    if smooth is not None:  # per-input-channel scales c fold into the weights: x @ W = (x / c) @ (c W)
        if smooth.offset:  # the integers stand for x + offset: subtract offset * sum_c W[c, n]
            correction = -smooth.offset * w.astype(np.float64).sum(axis=0)
        x, x_scale, w = smooth, 1.0, scaled(w, smooth.scale)
    r = rounded(w, bits, axis=1)  # an unrolled recurrence's steps share one (rounded_weights.py)
    w_q, w_scale, l1 = r.q, r.scale, r.l1
    if smooth is None:
        x = ctx.operand(x, l1, bits)
        x_scale = x.scale
    w_q, w_scale = _bias_fitting(ctx, w, w_q, w_scale, bits, 1, x_scale)  # only lowers l1
    _check_accumulator_bound(ctx, l1, x)
    _record(ctx, "matmul", w, bits, x)
    expr = ctx.emit(int4.matmul_int4(ctx.bb, x.expr, w_q) if bits == 4 else emit.matmul_acc(x.expr, w_q))
    if correction is not None:
        corr_q = np.round(correction / (x_scale * w_scale))
        if w.shape[0] * 255 * 2 ** (bits - 1) + np.abs(corr_q).max(initial=0) >= 2**31:
            ctx.fail("int32 accumulator plus its offset correction could overflow")
        expr = ctx.emit(relax.op.add(expr, emit.const(corr_q, "int32")))
    acc = Accumulator(expr, x_scale * w_scale, len(call.ty.shape) - 1, ctx.out_range())
    error = r.error if w_q is r.q else w_q * w_scale[None, :] - w
    return _bias_correction(ctx, acc, call.args[0], -1, error,
                            per_input=None if smooth is None else np.asarray(smooth.scale, np.float64),
                            offset=smooth.offset if smooth is not None else 0.0, op="matmul")


def _stacked_weight_matmul(ctx, call, x, w):
    """x @ W with W a constant stack of matrices [..., K, N] (one per head: DeBERTa's position keys and
    queries, projected from the relative embeddings and folded to constants; a per-group weight): W at
    8 bits with one scale per output column over the whole stack (not a layer of the bit choice), x an
    8-bit operand (16 where kept wide and the sums fit), int32 accumulation broadcast as the float
    matmul broadcasts; the column scales along the output's last axis. A vector w[K] is one column whose
    axis the product drops (numpy's rule)."""
    vector = w.ndim == 1  # x @ w[K] as x @ w[K, 1]
    w_q, w_scale = quantize_weights(w[:, None] if vector else w, 8, axis=1 if vector else w.ndim - 1)
    l1 = int(np.abs(w_q.astype(np.int64)).sum(axis=-2).max(initial=0))  # per matrix and column
    x = ctx.operand(x, l1, 8)
    _check_accumulator_bound(ctx, l1, x)
    expr = ctx.emit(emit.matmul_acc(x.expr, w_q))
    if vector:
        expr = ctx.emit(relax.op.reshape(expr, call.ty.shape))
        return Accumulator(expr, np.asarray(x.scale * w_scale[0]), None, ctx.out_range())
    return Accumulator(expr, x.scale * w_scale, len(call.ty.shape) - 1, ctx.out_range())


def _constant_first_matmul(ctx, call, c, x):
    """C @ x with C constant (learned queries: DETR, SVTRv2's decoder): C per row at 8 bits (one
    scale per row over its batch copies), x an 8-bit operand (features of their own ranges: 16 bits
    each where the sums fit int32, their scales folded into C's columns); int32 accumulation, the row scales along the
    output's second-to-last axis."""
    if isinstance(x, np.ndarray):
        ctx.fail("matmul of two constants should have been folded")
    if c.ndim == 1:  # c[K] @ x (numpy's rule: the product drops the vector's axis), as c[1, K] @ x
        c_q, c_scale = quantize_weights(c[None, :], 8, axis=0)
        x = ctx.operand(x, int(np.abs(c_q.astype(np.int64)).sum()), 8)
        _check_accumulator_bound(ctx, int(np.abs(c_q.astype(np.int64)).sum()), x)
        expr = ctx.emit(relax.op.matmul(emit.const(c_q, "int8"), x.expr, out_dtype="int32"))
        return Accumulator(ctx.emit(relax.op.reshape(expr, call.ty.shape)), np.asarray(x.scale * c_scale[0]), None,
                           ctx.out_range())
    reduction = int(c.shape[-1])
    wide = reduction * 2**7 * 2**15 < 2**31  # 16-bit features where the int32 sums allow
    features = (ctx.per_feature(x, dtype="int16" if wide else "int8") if x in ctx.features and c.ndim == 2
                and x.axis == len(call.args[1].ty.shape) - 2 else None)
    if features is not None:  # x's features on the reduction axis: their scales fold into C's columns
        x, c = features, c.astype(np.float64) * features.scale[None, :]
    else:
        x = ctx.operand(x, reduction * 2**7, 8)
    _check_accumulator_bound(ctx, reduction * 2**7, x)
    c_q, c_scale = quantize_weights(c, 8, axis=c.ndim - 2)  # not a layer of the bit choice: 8 bits always
    if len(call.args[1].ty.shape) == 2:  # (x^T @ C^T)^T: the constant on the right, where the dense kernels are
        expr = _transposed_product(ctx, x.expr, c_q)
    else:
        expr = ctx.emit(relax.op.matmul(emit.const(c_q, "int8"), x.expr, out_dtype="int32"))
    x_scale = 1.0 if features is not None else x.scale
    return Accumulator(expr, x_scale * c_scale, len(call.ty.shape) - 2, ctx.out_range())


def _transposed_product(ctx, x: relax.Expr, c_q: np.ndarray) -> relax.Var:
    """C @ x for x[K, N] as x^T @ C^T, C's stack of [M, K] matrices side by side ([K, stack * M]), back to
    [..., M, N]: the same int32 sums, on the x86 / ARM dense kernels of an activation times a constant
    (tf2onnx's rfft, a DFT matrix [2, 257, 512] times framed samples, ran as a generic int16 matmul: 1.34 of a
    speech embedding's 2.35 ms)."""
    lead, (m, k) = c_q.shape[:-2], c_q.shape[-2:]
    y = ctx.emit(emit.matmul_acc(ctx.emit(relax.op.permute_dims(x, [1, 0])), c_q.reshape(-1, k).T.copy()))
    y = ctx.emit(relax.op.reshape(y, [y.ty.shape[0], *lead, m]))  # [N, stack * M] -> [N, ..., M]
    return ctx.emit(relax.op.permute_dims(y, [*range(1, len(lead) + 2), 0]))


def _activation_matmul(ctx, call, a, b):
    """Q @ K^T: both operands 8-bit. attention @ V: the 15-bit probabilities, whose rows sum to
    at most `row_sum`, times V at 16 bits where row_sum * 2^15 < 2^31 (else 8). int32
    accumulation, scale S_a * S_b."""
    a, b = ctx.without_offset(a), ctx.without_offset(b)
    if isinstance(a, Quantized) and a.row_sum is not None:
        b = ctx.materialize(b, wide=a.row_sum * 2**15 < 2**31)
        bound = a.row_sum * max(abs(v) for v in INT_RANGE[b.dtype])
    else:
        a, b, bound = _small_product_operands(ctx, call, a, b)
    if bound >= 2**31:
        ctx.fail(f"int32 accumulator could overflow: reduction length {int(call.args[0].ty.shape[-1])}, "
                 f"operands {a.dtype} x {b.dtype} (bound {bound} >= 2^31)")
    expr = ctx.emit(relax.op.matmul(a.expr, b.expr, out_dtype="int32"))
    return Accumulator(expr, np.asarray(a.scale * b.scale), None, ctx.out_range())


SMALL_PRODUCT = 1 << 16  # multiply-adds of an activation x activation matmul that keeps 16-bit operands


def _small_product_operands(ctx, call, a, b):
    """(a, b, bound on |sum|): 8-bit operands, but a small product (at most SMALL_PRODUCT multiply-adds:
    a 4 x 4 transform composed with another, points [x, y, 1] times a 3 x 3 rotation) takes 16-bit ones,
    narrowed to the most bits whose products the int32 sums hold. Through one 8-bit grid a face mesh's
    crop transform (rotation and scale near 0.06-1.4 beside translations near 30) lost 10% of its
    scale, and the homogeneous 1 beside coordinates near 35 read 1.11."""
    k = int(call.args[0].ty.shape[-1])
    out = 1
    for d in call.ty.shape:
        out *= int(d) if isinstance(d, tvm.tirx.IntImm) else SMALL_PRODUCT
    bits = min(16, (32 - math.ceil(math.log2(k))) // 2) if k > 1 else 16  # k * (2^(bits-1))^2 <= 2^31 / 2
    if out * k > SMALL_PRODUCT or bits <= 8 or not ctx.config.sized_widths:
        return ctx.to_8bit(a), ctx.to_8bit(b), k * 255 * 128
    qmax = 2 ** (bits - 1) - 1
    return ctx.narrowed(a, qmax), ctx.narrowed(b, qmax), k * qmax * qmax


@lowers("relax.nn.conv2d_transpose")
def lower_conv2d_transpose(ctx, call, args):
    x, w = args
    a = call.attrs
    if not isinstance(w, np.ndarray):
        ctx.fail("conv2d_transpose with a non-constant weight is not supported")
    if a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or a.out_layout != "NCHW":
        ctx.fail(f"conv2d_transpose layout {a.data_layout}/{a.kernel_layout}: only NCHW/IOHW is supported")
    # 8-bit weights only (no 4-bit kernel): kept at 8 under --bits 4, recorded as such in ctx.layers
    bits, groups = 8, int(a.groups)
    if dict(ctx.config.layer_bits).get(ctx.var.name, 8) != 8:
        ctx.fail("conv2d_transpose has 8-bit weights only; it cannot take the 4 bits layer_bits asks for")
    c_in, o_g, kh, kw = w.shape
    # per output channel: group g's input rows, column j -> output channel g * O/g + j
    grouped = w.reshape(groups, c_in // groups, o_g, kh, kw).transpose(0, 2, 1, 3, 4)  # [g, O/g, I/g, kh, kw]
    q, w_scale = quantize_weights(grouped.reshape(groups * o_g, c_in // groups, kh, kw), bits, axis=0)
    # each output pixel sums a subset of its channel's taps: all of them bound it
    l1 = weight_l1(q, 0)
    x = ctx.operand(x, l1)
    _check_accumulator_bound(ctx, l1, x)
    w_q = q.reshape(groups, o_g, c_in // groups, kh, kw).transpose(0, 2, 1, 3, 4).reshape(w.shape)
    _record(ctx, "conv2d_transpose", w, bits, x, strides=[int(v) for v in a.strides],
            padding=[int(v) for v in a.padding], groups=groups)
    expr = relax.op.nn.conv2d_transpose(x.expr, emit.const(w_q, "int8"), a.strides, a.padding, a.output_padding,
                                        a.dilation, groups, "NCHW", "IOHW", "NCHW", out_dtype="int32")
    acc = Accumulator(ctx.emit(expr), x.scale * w_scale, 1, ctx.out_range())
    error = q * w_scale[:, None, None, None] - grouped.reshape(q.shape)  # per output channel, as quantized
    return _bias_correction(ctx, acc, call.args[0], 1, error, groups,
                            _tap_share(call.args[0], call, a, (kh, kw), transposed=True))
