"""ONNX ops that neither TVM's importer converts nor ONNX defines as a function, rewritten into ops
that TVM imports and intq lowers (in place, before the import):

    LpNormalization(x, axis, p)  ->  Div(x, ReduceL{p}(x, [axis], keepdims=1))   (face and sentence embeddings)
    DFT(x [..., N, c], axis)     ->  Reshape(MatMul(Reshape(x, [..., N c]), W), [..., K, 2])
    STFT(signal, step, window)   ->  the same MatMul on frames gathered with constant indices, the window in W
                                     (a real signal as [B, L, 1] or, as torch's TorchScript exporter writes it, [B, L])
    ConvTranspose(output_shape)  ->  ConvTranspose(pads, output_padding) giving that shape (TVM's converter
                                     ignores output_shape: the output came out at the default size)
    Compress(x, constant cond)   ->  Gather(x, the kept indices)   (TVM's converter needs dynamic shapes)
    Max/Min(x, scalar constant)  ->  Clip(x, min/max)   (TVM's converter: a reduction over a stack)
    ReverseSequence(x, lens)     ->  GatherElements(x, indices from lens) along the time axis (onnx_along_axis.py)
    CumProd(x, axis)             ->  ReduceProd of a masked Where (onnx_along_axis.py)
    OneHot(i, depth, values)     ->  Cast(Equal(Unsqueeze(i), arange(depth))) (constant depth and values)
    Col2Im(x, image, block)      ->  ConvTranspose(Reshape(x), one-hot weights, group = channels)   (nn.Fold)
    DeformConv(x, w, offset)     ->  a grouped 1x1 Conv of GridSample's taps (onnx_deform_conv.py)
    Pad(x, negative pads)        ->  Pad(Slice(x), the pads >= 0)   (RWKV's time shift; onnx_negative_pads.py)
    Average/MaxPool(window longer than the input, ceil_mode)  ->  the window clipped to the input
    MaxPool's Indices, MaxUnpool ->  ArgMax over gathered windows, a ScatterElements (onnx_pool_indices.py)
    MaxPool(auto_pad SAME_*)     ->  MaxPool(explicit pads)  (onnx_pool_indices.py)
    RMSNormalization(any axis)   ->  one over the flattened trailing axes, constant gamma (onnx_rms_norm.py)
    NonZero(constant)            ->  the constant indices   (jax2onnx's scatter filters its indices with one)
    EyeLike(x, dtype)            ->  the constant identity of x's shape in that dtype
    AffineGrid(theta, size)      ->  MatMul(theta, the constant base grid), transposed and reshaped (spatial transformers)
    Hardmax(x, axis)             ->  Cast(Equal(ArgMax(x, axis), arange along axis))   (opset >= 13)
    Mod(x, float constant b)     ->  x - trunc(x / b) * b   (fmod 1, C's fmod: tf2onnx's, Paddle's remainder)
    ai.onnx.ml Scaler, Binarizer, LinearRegressor, Normalizer (scikit-learn pipelines)
                                 ->  Sub/Mul, Greater/Cast, MatMul/Add, x / ReduceMax|L1|L2(x)

W is the constant DFT matrix (cos and sin of 2 pi k n / N, signs and 1 / N as forward or inverse asks, rows
for c = 1 real or 2 complex inputs, columns interleaving each bin's real and imaginary part): an audio
front end becomes one constant-weight matmul, which lowers to integers like any linear layer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_along_axis import cum_prod, reverse_sequence
from .onnx_deform_conv import deform_conv
from .onnx_negative_pads import negative_pads
from .onnx_pool_indices import max_pool_explicit_pads, max_pool_indices, max_unpool
from .onnx_rewrite import rewrite_nodes, static_dims
from .onnx_rms_norm import rms_normalization


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _lp_normalization(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    p, axis = int(attrs.get("p", 2)), int(attrs.get("axis", -1))
    if p not in (1, 2):
        return None
    prefix = node.name or node.output[0]
    norm = f"{prefix}/norm"
    reduce = f"ReduceL{p}"
    if opset >= 18:  # axes became an input
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), f"{prefix}/axes"))
        first = helper.make_node(reduce, [node.input[0], inits[-1].name], [norm], name=norm, keepdims=1)
    else:
        first = helper.make_node(reduce, [node.input[0]], [norm], name=norm, axes=[axis], keepdims=1)
    return [first, helper.make_node("Div", [node.input[0], norm], list(node.output), name=prefix)]


def _dft_matrix(n_in: int, complex_in: bool, n_fft: int, bins: int, inverse: bool, window=None) -> np.ndarray:
    """[n_in * c, 2 * bins]: row n * c + j (j: real, imaginary part of input sample n), column 2 k + (0 real,
    1 imaginary) of output bin k; input samples past n_fft are dropped (dft_length truncates), missing ones
    are zeros (it pads)."""
    n = np.arange(min(n_in, n_fft))[:, None]
    theta = 2 * np.pi * n * np.arange(bins)[None] / n_fft
    cos, sin = np.cos(theta), np.sin(theta) * (1 if inverse else -1)  # e^{-i theta} forward, e^{+i theta} inverse
    if window is not None:
        cos, sin = cos * window[:len(n), None], sin * window[:len(n), None]
    c = 2 if complex_in else 1
    w = np.zeros((n_in * c, 2 * bins))
    w[0:len(n) * c:c, 0::2], w[0:len(n) * c:c, 1::2] = cos, sin  # real input part: (cos, sin)
    if complex_in:  # imaginary input part: (-sin, cos)
        w[1:len(n) * c:c, 0::2], w[1:len(n) * c:c, 1::2] = -sin, cos
    return (w / n_fft if inverse else w).astype(np.float32)


def _irfft_matrix(bins: int, n_fft: int) -> np.ndarray:
    """[2 bins, n_fft]: the real signal of a one-sided spectrum (Hermitian: the other bins are conjugates)."""
    k, n = np.arange(bins)[:, None], np.arange(n_fft)[None]
    theta = 2 * np.pi * k * n / n_fft
    weight = np.where((k == 0) | (2 * k == n_fft), 1.0, 2.0)  # bins 0 and N/2 appear once, the others twice
    w = np.zeros((2 * bins, n_fft))
    w[0::2], w[1::2] = weight * np.cos(theta), -weight * np.sin(theta)
    return (w / n_fft).astype(np.float32)


def _as_matmul(x: str, w: np.ndarray, lead: int, bins: int, out: str, prefix: str, inits: list, parts: int = 2) -> list:
    """Reshape(MatMul(Reshape(x, [lead dims kept, -1]), w), [lead dims kept, bins, parts]) -> out."""
    names = [f"{prefix}/{k}" for k in ("flat_shape", "dft_matrix", "out_shape")]
    for name, value in zip(names, (np.array([0] * lead + [-1], np.int64), w,
                                   np.array([0] * lead + [bins, parts], np.int64))):
        inits.append(numpy_helper.from_array(value, name))
    return [helper.make_node("Reshape", [x, names[0]], [f"{prefix}/flat"], name=f"{prefix}/flat"),
            helper.make_node("MatMul", [f"{prefix}/flat", names[1]], [f"{prefix}/spectrum"], name=f"{prefix}/dft"),
            helper.make_node("Reshape", [f"{prefix}/spectrum", names[2]], [out], name=prefix)]


def _dft(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shape = shapes.get(node.input[0])
    ins = list(node.input) + [""] * 3
    if shape is None or shape[-1] not in (1, 2):
        return None
    if (opset >= 20 and ins[2] and consts(ins[2]) is None) or (ins[1] and consts(ins[1]) is None):
        return None  # a transform axis or length known only at run time
    axis = attrs.get("axis", 1) if opset < 20 else (int(consts(ins[2]).reshape(())) if ins[2] else -2)
    rank, axis = len(shape), axis % len(shape)
    n_in = shape[axis]
    onesided, inverse = bool(attrs.get("onesided", 0)), bool(attrs.get("inverse", 0))
    if onesided and inverse:  # a one-sided spectrum of n_in bins back to a real signal
        if shape[-1] != 2:
            return None
        n_fft = int(consts(ins[1]).reshape(())) if ins[1] else 2 * (n_in - 1)
        if n_fft // 2 + 1 != n_in:
            return None
        bins, parts, w = n_fft, 1, _irfft_matrix(n_in, n_fft)
    else:
        n_fft = int(consts(ins[1]).reshape(())) if ins[1] else n_in
        bins = n_fft // 2 + 1 if onesided else n_fft
        parts, w = 2, _dft_matrix(n_in, shape[-1] == 2, n_fft, bins, inverse)
    prefix, x, out = node.name or node.output[0], node.input[0], node.output[0]
    if axis == rank - 2:
        return _as_matmul(x, w, rank - 2, bins, out, prefix, inits, parts)
    # move the transform axis next to the complex axis, and back
    perm = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    back = [perm.index(d) for d in range(rank)]
    return [helper.make_node("Transpose", [x], [f"{prefix}/moved"], name=f"{prefix}/moved", perm=perm),
            *_as_matmul(f"{prefix}/moved", w, rank - 2, bins, f"{prefix}/moved_out", prefix, inits, parts),
            helper.make_node("Transpose", [f"{prefix}/moved_out"], [out], name=f"{prefix}/back", perm=back)]


def _stft(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shape = shapes.get(node.input[0])
    ins = list(node.input) + [""] * 4
    step = consts(ins[1])
    window = consts(ins[2]) if ins[2] else None
    length = consts(ins[3]) if ins[3] else None
    if shape is None or len(shape) not in (2, 3) or step is None or (ins[2] and window is None) or (
            ins[3] and length is None):
        return None
    frame = int(length.reshape(())) if length is not None else len(window)
    step, signal = int(step.reshape(())), shape[1]
    frames = (signal - frame) // step + 1
    prefix = node.name or node.output[0]
    nodes, source = [], node.input[0]
    if len(shape) == 2:  # a real signal as [B, L] (torch's TorchScript exporter; onnxruntime takes it): [B, L, 1]
        axes = numpy_helper.from_array(np.array([2], np.int64), f"{prefix}/channel_axis")
        inits.append(axes)
        source, shape = f"{prefix}/signal", [*shape, 1]
        nodes.append(helper.make_node("Unsqueeze", [node.input[0], axes.name], [source], name=source))
    index = numpy_helper.from_array(np.arange(frames)[:, None] * step + np.arange(frame)[None], f"{prefix}/frame_index")
    inits.append(index)
    gather = helper.make_node("Gather", [source, index.name], [f"{prefix}/frames"], name=f"{prefix}/frames",
                              axis=1)  # [B, frames, frame, c]
    bins = frame // 2 + 1 if attrs.get("onesided", 1) else frame
    w = _dft_matrix(frame, shape[-1] == 2, frame, bins, False, None if window is None else window.astype(np.float64))
    return nodes + [gather] + _as_matmul(f"{prefix}/frames", w, 2, bins, node.output[0], prefix, inits)


def _conv_transpose_output_shape(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """Explicit pads and output padding for an output_shape, as onnxruntime computes them."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1]) or (
        list(consts(node.input[1]).shape) if consts(node.input[1]) is not None else None)
    if "output_shape" not in attrs or x is None or w is None:
        return None
    spatial = len(x) - 2
    out = list(attrs["output_shape"])[-spatial:]
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    adjust = list(attrs.get("output_padding", [0] * spatial))
    kernel = list(attrs.get("kernel_shape", w[2:]))
    upper = attrs.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", "SAME_UPPER")
    heads, tails, extra = [], [], []
    for i in range(spatial):
        size = (x[2 + i] - 1) * strides[i] + adjust[i] + (kernel[i] - 1) * dilations[i] + 1
        total = max(0, size - out[i])
        head, tail = (total // 2, total - total // 2) if upper else (total - total // 2, total // 2)
        heads.append(head)
        tails.append(tail)
        extra.append(adjust[i] + out[i] - (size - total))  # rows past the default output: zeros plus bias
    kept = [a for a in node.attribute if a.name not in ("output_shape", "pads", "auto_pad", "output_padding")]
    new = helper.make_node("ConvTranspose", list(node.input), list(node.output), name=node.name,
                           pads=heads + tails, output_padding=extra)
    new.attribute.extend(kept)
    return [new]


def _compress(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """Compress with a constant condition: a Gather of the kept indices (static shape)."""
    cond = consts(node.input[1])
    if cond is None:
        return None  # value-dependent shape: refused as a shape operand
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    prefix = node.name or node.output[0]
    inits.append(numpy_helper.from_array(np.nonzero(cond.astype(bool).ravel())[0].astype(np.int64), f"{prefix}/kept"))
    if "axis" in attrs:
        return [helper.make_node("Gather", [node.input[0], inits[-1].name], list(node.output), name=prefix,
                                 axis=int(attrs["axis"]))]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/flat_shape"))
    return [helper.make_node("Reshape", [node.input[0], inits[-1].name], [f"{prefix}/flat"], name=f"{prefix}/flat"),
            helper.make_node("Gather", [f"{prefix}/flat", inits[-2].name], list(node.output), name=prefix, axis=0)]


def _bound_as_clip(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """Max/Min of a tensor and a scalar constant (a log's floor, max(x, 1e-12)): a Clip, one op of a
    unary chain, where TVM imports Max/Min as a reduction over a stack of broadcasts."""
    if len(node.input) != 2:
        return None
    (x, c), (cx, cc) = node.input, (consts(v) for v in node.input)
    if cc is None:
        (x, c), cc, cx = (c, x), cx, cc
    shape = shapes.get(x)
    if cc is None or cx is not None or cc.size != 1 or cc.dtype.kind != "f" or not shape or cc.ndim > len(shape):
        return None
    prefix = node.name or node.output[0]
    value = float(cc.reshape(()))
    if opset < 11:  # Clip-6: bounds as attributes
        bound = {"min": value} if node.op_type == "Max" else {"max": value}
        return [helper.make_node("Clip", [x], list(node.output), name=prefix, **bound)]
    inits.append(numpy_helper.from_array(cc.reshape(()).astype(cc.dtype), f"{prefix}/bound"))
    bounds = [inits[-1].name] if node.op_type == "Max" else ["", inits[-1].name]
    return [helper.make_node("Clip", [x, *bounds], list(node.output), name=prefix)]


def _one_hot(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """OneHot with a constant depth and values (a decoder feeding back its last token: SLANet): the
    indices (negative ones counted from depth) compared with a constant arange along `axis`, the
    comparison cast to the values' type, scaled and shifted where they are not (0, 1). TVM's converter
    made float64 whatever the values' type (its matmul with float32 weights failed to import)."""
    depth, values, shape = consts(node.input[1]), consts(node.input[2]), shapes.get(node.input[0])
    if depth is None or values is None or values.size != 2 or shape is None or min(shape, default=1) <= 0:
        return None
    depth, (off, on) = int(depth.reshape(-1)[0]), values.reshape(-1).tolist()
    axis = int(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)) % (len(shape) + 1)
    prefix = node.name or node.output[0]
    view = [1] * (len(shape) + 1)
    view[axis] = depth
    inits.extend([numpy_helper.from_array(np.arange(depth, dtype=np.int64).reshape(view), f"{prefix}/classes"),
                  numpy_helper.from_array(np.array(0, np.int64), f"{prefix}/zero"),
                  numpy_helper.from_array(np.array(depth, np.int64), f"{prefix}/depth")])
    step = lambda op, ins, out, **kw: helper.make_node(op, ins, [f"{prefix}/{out}"], name=f"{prefix}/{out}", **kw)
    nodes = [step("Cast", [node.input[0]], "ids", to=onnx.TensorProto.INT64),
             step("Less", [f"{prefix}/ids", f"{prefix}/zero"], "negative"),
             step("Add", [f"{prefix}/ids", f"{prefix}/depth"], "wrapped"),
             step("Where", [f"{prefix}/negative", f"{prefix}/wrapped", f"{prefix}/ids"], "index")]
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), f"{prefix}/axis"))
        nodes.append(step("Unsqueeze", [f"{prefix}/index", f"{prefix}/axis"], "column"))
    else:
        nodes.append(step("Unsqueeze", [f"{prefix}/index"], "column", axes=[axis]))
    nodes.append(step("Equal", [f"{prefix}/column", f"{prefix}/classes"], "hot"))
    dtype = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    if (off, on) == (0, 1):
        return nodes + [helper.make_node("Cast", [f"{prefix}/hot"], list(node.output), name=prefix, to=dtype)]
    inits.extend([numpy_helper.from_array(np.array(on - off, values.dtype), f"{prefix}/span"),
                  numpy_helper.from_array(np.array(off, values.dtype), f"{prefix}/off")])
    return nodes + [step("Cast", [f"{prefix}/hot"], "unit", to=dtype),
                    step("Mul", [f"{prefix}/unit", f"{prefix}/span"], "scaled"),
                    helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/off"], list(node.output), name=prefix)]


def _hardmax(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """Hardmax(x, axis) of a static shape -> Cast(Equal(ArgMax(x, axis, keepdims), arange along axis), float):
    1 at each row's first largest value, as ONNX defines it (opset < 13: over the flattened trailing axes,
    left to TVM). ArgMax, the comparison and the cast are on the integer path."""
    shape = shapes.get(node.input[0])
    if opset < 13 or not shape or min(shape) <= 0:
        return None
    axis = int(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)) % len(shape)
    prefix = node.name or node.output[0]
    view = [1] * len(shape)
    view[axis] = shape[axis]
    inits.append(numpy_helper.from_array(np.arange(shape[axis], dtype=np.int64).reshape(view), f"{prefix}/classes"))
    return [helper.make_node("ArgMax", [node.input[0]], [f"{prefix}/first"], name=f"{prefix}/first", axis=axis,
                             keepdims=1),
            helper.make_node("Equal", [f"{prefix}/first", f"{prefix}/classes"], [f"{prefix}/hot"], name=f"{prefix}/hot"),
            helper.make_node("Cast", [f"{prefix}/hot"], list(node.output), name=prefix, to=onnx.TensorProto.FLOAT)]


def _float_mod(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """Mod of floats (fmod 1, the only float form ONNX allows: C's fmod, tf2onnx's and Paddle's remainder) by a
    float constant -> a - trunc(a / b) * b, trunc(q) = Where(q < 0, Ceil(q), Floor(q)): Div by a constant, the
    two roundings as tables, Where and Sub all lower to integers. Integer Mod stays TVM's (exact)."""
    divisor = consts(node.input[1])
    fmod = int(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "fmod"), 0))
    if divisor is None or divisor.dtype.kind != "f" or not fmod:
        return None
    prefix = node.name or node.output[0]
    name = lambda s: f"{prefix}/{s}"  # noqa: E731
    inits.append(numpy_helper.from_array(np.array(0, divisor.dtype), name("zero")))
    step = lambda op, ins, out: helper.make_node(op, ins, [name(out)], name=name(out))  # noqa: E731
    return [step("Div", [node.input[0], node.input[1]], "quotient"), step("Floor", [name("quotient")], "floor"),
            step("Ceil", [name("quotient")], "ceil"), step("Less", [name("quotient"), name("zero")], "negative"),
            step("Where", [name("negative"), name("ceil"), name("floor")], "whole"),
            step("Mul", [name("whole"), node.input[1]], "multiple"),
            helper.make_node("Sub", [node.input[0], name("multiple")], list(node.output), name=prefix)]


def _as_float(node, inits: list) -> tuple[str, list]:
    """The node's first input cast to float (ai.onnx.ml ops also take double and integers)."""
    prefix = node.name or node.output[0]
    return f"{prefix}/float", [helper.make_node("Cast", [node.input[0]], [f"{prefix}/float"], name=f"{prefix}/float",
                                                to=onnx.TensorProto.FLOAT)]


def _const(inits: list, value, name: str) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name


def _scaler(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """ai.onnx.ml Scaler (scikit-learn's StandardScaler/MinMaxScaler): (x - offset) * scale."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    prefix = node.name or node.output[0]
    x, nodes = _as_float(node, inits)
    offset = _const(inits, attrs.get("offset", [0.0]), f"{prefix}/offset")
    scale = _const(inits, attrs.get("scale", [1.0]), f"{prefix}/scale")
    return nodes + [helper.make_node("Sub", [x, offset], [f"{prefix}/centred"], name=f"{prefix}/sub"),
                    helper.make_node("Mul", [f"{prefix}/centred", scale], list(node.output), name=prefix)]


def _binarizer(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """ai.onnx.ml Binarizer: 1 where x > threshold, else 0 (float x)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    prefix = node.name or node.output[0]
    x, nodes = _as_float(node, inits)
    threshold = _const(inits, float(attrs.get("threshold", 0.0)), f"{prefix}/threshold")
    return nodes + [helper.make_node("Greater", [x, threshold], [f"{prefix}/above"], name=f"{prefix}/greater"),
                    helper.make_node("Cast", [f"{prefix}/above"], list(node.output), name=prefix,
                                     to=onnx.TensorProto.FLOAT)]


def _linear_regressor(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """ai.onnx.ml LinearRegressor without a post transform: x @ W^T + intercepts."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("post_transform", b"NONE") not in (b"NONE", "NONE"):
        return None
    targets = int(attrs.get("targets", 1))
    weights = np.asarray(attrs.get("coefficients", []), np.float32).reshape(targets, -1).T
    intercepts = np.asarray(attrs.get("intercepts", [0.0] * targets), np.float32)
    prefix = node.name or node.output[0]
    x, nodes = _as_float(node, inits)
    w, b = _const(inits, weights, f"{prefix}/weights"), _const(inits, intercepts, f"{prefix}/intercepts")
    return nodes + [helper.make_node("MatMul", [x, w], [f"{prefix}/product"], name=f"{prefix}/matmul"),
                    helper.make_node("Add", [f"{prefix}/product", b], list(node.output), name=prefix)]


def _normalizer(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """ai.onnx.ml Normalizer: each row divided by its max, L1 or L2 norm."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    norm = attrs.get("norm", b"MAX")
    reduce = {"MAX": "ReduceMax", "L1": "ReduceL1", "L2": "ReduceL2"}.get(norm.decode() if isinstance(norm, bytes)
                                                                        else norm)
    if reduce is None:
        return None
    prefix = node.name or node.output[0]
    x, nodes = _as_float(node, inits)
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/axes"))
        first = helper.make_node(reduce, [x, inits[-1].name], [f"{prefix}/norm"], name=f"{prefix}/norm", keepdims=1)
    else:
        first = helper.make_node(reduce, [x], [f"{prefix}/norm"], name=f"{prefix}/norm", axes=[-1], keepdims=1)
    return nodes + [first, helper.make_node("Div", [x, f"{prefix}/norm"], list(node.output), name=prefix)]


def _array_feature_extractor(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """ai.onnx.ml ArrayFeatureExtractor (a scikit-learn classifier's label: its classes at the argmax):
    X[..., Y] with Y flattened; a 1-D X gives [1, len(Y)] (as onnxruntime). String classes stay."""
    x = consts(node.input[0])
    rank = x.ndim if x is not None else len(shapes.get(node.input[0], []))
    if rank == 0 or (x is not None and x.dtype.kind not in "biuf"):
        return None
    prefix = node.name or node.output[0]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/flat"))
    nodes = [helper.make_node("Reshape", [node.input[1], inits[-1].name], [f"{prefix}/indices"], name=f"{prefix}/flat"),
             helper.make_node("Gather", [node.input[0], f"{prefix}/indices"],
                              [f"{prefix}/gathered"] if rank == 1 else list(node.output), name=prefix, axis=rank - 1)]
    if rank == 1 and opset >= 13:
        inits.append(numpy_helper.from_array(np.array([0], np.int64), f"{prefix}/axis0"))
        nodes.append(helper.make_node("Unsqueeze", [f"{prefix}/gathered", inits[-1].name], list(node.output),
                                      name=f"{prefix}/row"))
    elif rank == 1:
        nodes.append(helper.make_node("Unsqueeze", [f"{prefix}/gathered"], list(node.output), name=f"{prefix}/row",
                                      axes=[0]))
    return nodes


def _col2im(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """Col2Im (torch's nn.Fold: MobileViTV2 folding patches back into a map) over 2-D images ->
    Reshape([N, C k, blocks_h, blocks_w]) and a grouped ConvTranspose whose one-hot weights put each of a
    channel's k = kh kw columns at its kernel offset: the sum over overlapping blocks is the transposed
    conv's own sum, with Col2Im's strides, dilations and pads (output_padding for a remainder row)."""
    image, block, x = consts(node.input[1]), consts(node.input[2]), shapes.get(node.input[0])
    if image is None or block is None or x is None or len(image) != 2 or len(x) != 3 or x[1] <= 0:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    k = int(np.prod(block))
    if x[1] % k:
        return None
    channels = x[1] // k
    blocks, extra = [], []
    for i in range(2):
        span = dilations[i] * (int(block[i]) - 1) + 1
        n = (int(image[i]) + pads[i] + pads[i + 2] - span) // strides[i] + 1
        blocks.append(n)
        extra.append(int(image[i]) - ((n - 1) * strides[i] + span - pads[i] - pads[i + 2]))
    if x[2] > 0 and x[2] != blocks[0] * blocks[1]:
        return None
    w = np.zeros((channels * k, 1, int(block[0]), int(block[1])), np.float32)
    for c in range(channels):
        for t in range(k):
            w[c * k + t, 0, t // int(block[1]), t % int(block[1])] = 1.0
    prefix = node.name or node.output[0]
    inits.append(numpy_helper.from_array(np.array([0, 0, *blocks], np.int64), f"{prefix}/grid"))
    inits.append(numpy_helper.from_array(w, f"{prefix}/one_hot"))
    return [helper.make_node("Reshape", [node.input[0], f"{prefix}/grid"], [f"{prefix}/blocks"], name=f"{prefix}/grid"),
            helper.make_node("ConvTranspose", [f"{prefix}/blocks", f"{prefix}/one_hot"], list(node.output), name=prefix,
                             group=channels, strides=strides, dilations=dilations, pads=pads,
                             kernel_shape=[int(b) for b in block], output_padding=extra)]


def _pool_window_past_input(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """AveragePool / MaxPool whose window, along some axis, is longer than the unpadded input, with
    ceil_mode giving that axis its one output (HF EfficientNet's pooler: AvgPool2d(1280, ceil_mode=True)
    on a 2 x 2 map): the window clipped to the input. The same output (the window's part past the
    input counts neither as values nor in the average's divisor, as onnxruntime computes it), where
    the 1280 x 1280 window made the average's int32 sum bound refuse it and its float runs
    (calibration, sensitivity) take seconds each."""
    x = shapes.get(node.input[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if x is None or len(node.output) > 1 or "kernel_shape" not in attrs:
        return None
    kernel = list(attrs["kernel_shape"])
    spatial = x[2:]
    if len(spatial) != len(kernel) or any(d <= 0 for d in spatial):
        return None
    if any(attrs.get("pads", [0] * 2 * len(kernel))) or any(d != 1 for d in attrs.get("dilations", [1] * len(kernel))) \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return None
    clipped = [min(k, d) for k, d in zip(kernel, spatial)]
    strides, ceil = list(attrs.get("strides", [1] * len(kernel))), bool(attrs.get("ceil_mode", 0))

    def outputs(window):  # ONNX's output length per axis, no pads
        return [(-(-(d - k) // s) if ceil else (d - k) // s) + 1 for d, k, s in zip(spatial, window, strides)]

    # the same outputs only where ceil_mode gives the long window its one output: without it (or a window
    # a whole stride past the input) the pool's output is empty, which clipping would hide
    if clipped == kernel or outputs(clipped) != outputs(kernel):
        return None
    kept = [a for a in node.attribute if a.name != "kernel_shape"]
    new = helper.make_node(node.op_type, list(node.input), list(node.output), name=node.name, kernel_shape=clipped)
    new.attribute.extend(kept)
    return [new]


def _constant_nonzero(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """NonZero of a constant: the constant indices (onnxruntime's constant folding leaves NonZero, whose output
    size its values decide; jax2onnx's scatter for `x.at[i].set(v)` filters its constant indices with one, and
    the Reshape it feeds had no static shape: 'Reshape requires the input new shape to be Shape')."""
    x = consts(node.input[0])
    if x is None:
        return None
    value = np.array(np.nonzero(x), np.int64).reshape(max(x.ndim, 1), -1)
    return [helper.make_node("Constant", [], list(node.output), name=node.name or node.output[0],
                             value=numpy_helper.from_array(value, node.output[0]))]


def _first(*rewriters):
    """One op's rewriters tried in order: the first that applies rewrites the node."""
    return lambda *args: next((nodes for nodes in (r(*args) for r in rewriters) if nodes is not None), None)


def _eye_like(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """EyeLike with a dtype attribute (TVM's converter refused any dtype but the input's): the constant
    it is, ones on diagonal k, for the input's static 2-D shape (without the attribute, TVM converts it)."""
    shape, attrs = shapes.get(node.input[0]), {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "dtype" not in attrs or shape is None or len(shape) != 2 or min(shape) < 0:
        return None
    value = np.eye(*shape, k=int(attrs.get("k", 0)), dtype=helper.tensor_dtype_to_np_dtype(attrs["dtype"]))
    return [helper.make_node("Constant", [], list(node.output), name=node.name or node.output[0],
                             value=numpy_helper.from_array(value, node.output[0]))]


def _affine_grid(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """AffineGrid(theta [N, r, r + 1], constant size [N, C, *S]) -> Reshape(Transpose(MatMul(theta, B)), [N, *S, r]):
    B [r + 1, prod S] holds each output point's normalized coordinates (x first, then y, z) and a 1, as
    ONNX defines the base grid; a spatial transformer's sampling grid becomes a constant-weight matmul (TVM's
    converter makes `image.affine_grid`, which has no integer lowering)."""
    size = consts(node.input[1]) if len(node.input) > 1 else None
    if size is None or size.ndim != 1 or len(size) not in (4, 5) or np.any(size[2:] < 1):
        return None
    align = int({a.name: helper.get_attribute_value(a) for a in node.attribute}.get("align_corners", 0))
    spatial = [int(v) for v in size[2:]]
    axes = [(np.linspace(-1.0, 1.0, n) if n > 1 else np.ones(1)) if align else (2 * np.arange(n) + 1) / n - 1
            for n in spatial]  # one point with align_corners: at 1, as onnxruntime puts it (torch: 0)
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per spatial axis, outermost first
    base = np.stack([m.ravel() for m in reversed(mesh)] + [np.ones(mesh[0].size)]).astype(np.float32)
    prefix = node.name or node.output[0]
    name = lambda part: f"{prefix}/{part}"  # noqa: E731
    inits.append(numpy_helper.from_array(base, name("base")))
    inits.append(numpy_helper.from_array(np.array([int(size[0]), *spatial, len(spatial)], np.int64), name("shape")))
    return [helper.make_node("MatMul", [node.input[0], name("base")], [name("points")], name=name("points")),
            helper.make_node("Transpose", [name("points")], [name("rows")], name=name("rows"), perm=[0, 2, 1]),
            helper.make_node("Reshape", [name("rows"), name("shape")], list(node.output[:1]), name=prefix)]


_ML = {"Scaler": _scaler, "Binarizer": _binarizer, "LinearRegressor": _linear_regressor, "Normalizer": _normalizer,
       "ArrayFeatureExtractor": _array_feature_extractor}

_DECOMPOSITIONS = {"LpNormalization": _lp_normalization, "DFT": _dft, "STFT": _stft,
                   "ConvTranspose": _conv_transpose_output_shape, "Compress": _compress,
                   "Max": _bound_as_clip, "Min": _bound_as_clip, "ReverseSequence": reverse_sequence,
                   "OneHot": _one_hot, "Col2Im": _col2im,
                   "AveragePool": _pool_window_past_input,
                   "MaxPool": _first(_pool_window_past_input, max_pool_indices, max_pool_explicit_pads),
                   "MaxUnpool": max_unpool,
                   "NonZero": _constant_nonzero, "RMSNormalization": rms_normalization, "EyeLike": _eye_like,
                   "CumProd": cum_prod, "DeformConv": deform_conv, "Pad": negative_pads,
                   "AffineGrid": _affine_grid, "Hardmax": _hardmax, "Mod": _float_mod}


def decompose_ops(model: onnx.ModelProto) -> int:
    """Rewrite every node of an op in `_DECOMPOSITIONS` (that its rewriter accepts); returns how many.
    Needs the shapes of shape inference."""
    opset = _opset(model)
    shapes = static_dims(model)
    constants = {i.name: i for i in model.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t")})

    def consts(name):
        return numpy_helper.to_array(constants[name]) if name in constants else None

    def rewrite(node, inits):
        op = (_DECOMPOSITIONS.get(node.op_type) if node.domain in ("", "ai.onnx")
              else _ML.get(node.op_type) if node.domain == "ai.onnx.ml" else None)
        return op(node, opset, inits, shapes, consts) if op else None

    return rewrite_nodes(model, rewrite)
