"""Resize whose source coordinates TVM's `resize2d` cannot reproduce, as gathers and weighted sums with
constant indices and weights computed as onnxruntime computes them (in place, before the import):

    Resize(x, linear)   ->  per resized axis a: Gather(x, i0, a) * w0 + Gather(x, i1, a) * w1
    Resize(x, nearest)  ->  per resized axis a: Gather(x, i, a)

for coordinate_transformation_mode half_pixel_symmetric (opset 19; TVM raises "Unsupported
coordinate_transformation_mode"), align_corners to an axis of one output (TVM divides by zero), and
scales whose output length in * scale is not whole: ONNX maps coordinates with the scale given, TVM with
in / out. Each step lowers to integers (a gather, a constant per-position factor, an add). Not rewritten:
cubic, antialias, tf_crop_and_resize, a keep_aspect_ratio_policy (frontends/resize_layout.py), integer x.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_rewrite import rewrite_nodes

_SCALED_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def static_resize(node: onnx.NodeProto, values: dict, constants: dict) -> tuple | None:
    """(attributes as text, input shape, output shape, scale per axis: the float32 scale given, else None) of a
    Resize of a float input of static shape with constant scales or sizes, no crop and a stretched aspect
    ratio; else None (what is computed at run time stays a shape operand, refused or left to the importer)."""
    if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
        return None
    text = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    text = {k: _text(v) if isinstance(v, (bytes, str)) else v for k, v in text.items()}
    kind = values.get(node.input[0])
    if text.get("coordinate_transformation_mode") == "tf_crop_and_resize" or \
            text.get("keep_aspect_ratio_policy", "stretch") != "stretch" or kind is None or \
            kind.elem_type != TensorProto.FLOAT or any(not d.HasField("dim_value") for d in kind.shape.dim):
        return None
    shape = [d.dim_value for d in kind.shape.dim]
    axes = [a % len(shape) for a in text.get("axes", range(len(shape)))]
    scales, sizes = (constants.get(n) if n else None for n in (list(node.input) + [""])[2:4])
    if (node.input[2] and scales is None) or (len(node.input) > 3 and node.input[3] and sizes is None):
        return None
    out, scale = list(shape), [None] * len(shape)
    for k, a in enumerate(axes):
        if sizes is not None and sizes.size:
            out[a] = int(sizes[k])
        else:
            scale[a] = np.float32(scales[k])
            out[a] = int(np.float32(shape[a]) * scale[a])
    return text, shape, out, scale


def source_coordinates(out: int, size: int, scale: np.float32, mode: str) -> np.ndarray:
    """onnxruntime's float32 source coordinate of each of `out` outputs along an axis of `size` inputs."""
    x, f32 = np.arange(out, dtype=np.float32), np.float32
    if mode == "align_corners":
        return np.zeros(out, f32) if out == 1 else x * f32(size - 1) / f32(out - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + f32(0.5)) / scale
    if mode == "pytorch_half_pixel" and out == 1:
        return np.zeros(out, f32)
    offset = f32(0)
    if mode == "half_pixel_symmetric":  # the output's centre on the input's: out is in * scale, rounded down
        adjustment = f32(out) / (scale * f32(size))
        offset = f32(size) / f32(2) * (f32(1) - adjustment)
    return offset + (x + f32(0.5)) / scale - f32(0.5)


def _nearest(v: np.ndarray, rounding: str, size: int) -> np.ndarray:
    """onnxruntime's nearest pixel (get_nearest_pixel), clamped to the input."""
    if rounding == "round_prefer_floor":
        index = np.where(v == np.floor(v) + np.float32(0.5), np.floor(v), np.sign(v) * np.floor(np.abs(v) + 0.5))
    elif rounding == "floor":
        index = np.floor(v)
    elif rounding == "ceil":
        index = np.ceil(v)
    else:  # round_prefer_ceil: std::round, half away from zero
        index = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(index, 0, size - 1).astype(np.int64)


def _linear(v: np.ndarray, size: int):
    """onnxruntime's (i0, i1, w0, w1): the coordinate clamped to the input, a pixel's own value where both
    taps are one pixel (weights 1/2 each, as onnxruntime)."""
    v = np.clip(v, 0, size - 1).astype(np.float32)
    i0 = np.minimum(v.astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    w1, w0 = np.abs(v - i0.astype(np.float32)), np.abs(v - i1.astype(np.float32))
    same = i0 == i1
    return i0, i1, np.where(same, 0.5, w0).astype(np.float32), np.where(same, 0.5, w1).astype(np.float32)


def resize_coordinates_to_gathers(model: onnx.ModelProto) -> int:
    """Rewrite every such Resize (see the module doc); returns how many. Needs shape inference."""
    values = {v.name: v.type.tensor_type for v in (*model.graph.input, *model.graph.value_info)}
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def rewrite(node, inits):
        read = static_resize(node, values, constants)
        if read is None:
            return None
        attrs, shape, out, scale = read
        mode = attrs.get("coordinate_transformation_mode", "half_pixel")
        method = attrs.get("mode", "nearest")
        if method not in ("linear", "nearest") or attrs.get("antialias", 0):
            return None
        full_scale = np.array([np.float32(o) / np.float32(i) if s is None else s for i, o, s in zip(shape, out, scale)],
                              np.float32)
        resized = [a for a in range(len(shape)) if out[a] != shape[a] or full_scale[a] != 1]
        needed = mode == "half_pixel_symmetric" or any(
            (mode == "align_corners" and out[a] == 1 and shape[a] > 1) or
            (mode in _SCALED_MODES and np.float32(shape[a]) * full_scale[a] != out[a]) for a in resized)
        if not needed or min(shape + out) <= 0:
            return None
        prefix = node.name or node.output[0]
        nodes, current = [], node.input[0]
        for step, a in enumerate(reversed(resized)):  # the last axis first: the other axes' gathers then move less
            name = lambda s, step=step: f"{prefix}/{step}_{s}"
            last = step == len(resized) - 1
            target = node.output[0] if last else name("out")
            v = source_coordinates(out[a], shape[a], full_scale[a], mode)
            if method == "nearest":
                inits.append(numpy_helper.from_array(_nearest(v, attrs.get("nearest_mode", "round_prefer_floor"),
                                                              shape[a]), name("index")))
                nodes.append(helper.make_node("Gather", [current, name("index")], [target], name=name("gather"),
                                              axis=a))
            else:
                view = [out[a]] + [1] * (len(shape) - 1 - a)
                for key, value in zip(("i0", "i1", "w0", "w1"), _linear(v, shape[a])):
                    inits.append(numpy_helper.from_array(value.reshape(view) if key[0] == "w" else value, name(key)))
                nodes += [helper.make_node("Gather", [current, name("i0")], [name("x0")], name=name("x0"), axis=a),
                          helper.make_node("Gather", [current, name("i1")], [name("x1")], name=name("x1"), axis=a),
                          helper.make_node("Mul", [name("x0"), name("w0")], [name("p0")], name=name("p0")),
                          helper.make_node("Mul", [name("x1"), name("w1")], [name("p1")], name=name("p1")),
                          helper.make_node("Add", [name("p0"), name("p1")], [target], name=name("sum"))]
            current = target
        return nodes

    return rewrite_nodes(model, rewrite)
