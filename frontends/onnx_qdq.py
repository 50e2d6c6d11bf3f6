"""Pre-quantized ONNX models (QDQ format: onnxruntime's quantize_static default, TensorRT and
Olive exports) back to the float graph they quantize, which intq then calibrates and lowers itself.

    DequantizeLinear(constant q, s, zp)         -> the constant (q - zp) * s (weights, int32 biases)
    DequantizeLinear(QuantizeLinear(x, s, zp))  -> Clip(x, (qmin - zp) s, (qmax - zp) s): the pair's clamp
                                                   (quantizers drop a ReLU there), without its rounding
    DequantizeLinear(integer tensor x, s, zp)   -> (float(x) - zp) * s   (a quantized graph input)

The scales in the file are not reused: intq's own calibration (with the data given by --calib)
chooses every scale, so the result does not depend on how the file was quantized. A QuantizeLinear
whose output is read by anything but a DequantizeLinear stays (and is named by the op check).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

STANDARD = ("", "ai.onnx", "com.microsoft")  # onnxruntime's contrib Q/DQ take the same inputs


def _is(node, op: str) -> bool:
    return node.op_type == op and node.domain in STANDARD


def _dequantized(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    q = q.astype(np.float64)
    scale, zero = scale.astype(np.float64), (zero.astype(np.float64) if zero is not None else 0.0)
    if scale.ndim == 1 and scale.size > 1 or block:
        axis = axis % q.ndim
        if block:  # blocked quantization (opset 21): one scale per `block` elements along `axis`
            scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            zero = zero if np.isscalar(zero) else np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = zero if np.isscalar(zero) else zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _clamp(quantize, value, out: str, prefix: str, inits: list) -> list:
    """What a QuantizeLinear -> DequantizeLinear pair does besides rounding: clamp x to the range its integer
    type holds, [(qmin - zp) s, (qmax - zp) s]. Quantizers drop a ReLU (or ReLU6) before a pair whose range
    starts (ends) there, so the clamp is part of the model."""
    scale = value(quantize.input[1])
    zero = value(quantize.input[2]) if len(quantize.input) > 2 and quantize.input[2] else None
    attrs = {a.name: helper.get_attribute_value(a) for a in quantize.attribute}
    elem = attrs.get("output_dtype") or (helper.np_dtype_to_tensor_dtype(zero.dtype) if zero is not None
                                          else onnx.TensorProto.UINT8)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    if scale is None or attrs.get("block_size") or not np.issubdtype(dtype, np.integer):
        return [helper.make_node("Identity", [quantize.input[0]], [out], name=f"{prefix}/unquantized")]
    bits = {onnx.TensorProto.INT4: (-8, 7), onnx.TensorProto.UINT4: (0, 15)}
    qmin, qmax = bits.get(elem, (np.iinfo(dtype).min, np.iinfo(dtype).max))
    zero = np.zeros_like(scale, np.float64) if zero is None else zero.astype(np.float64)
    lo, hi = ((q - zero) * scale.astype(np.float64) for q in (qmin, qmax))
    if scale.size > 1:  # per axis: shaped to broadcast along it (rank from the scale's axis is unknown here)
        return [helper.make_node("Identity", [quantize.input[0]], [out], name=f"{prefix}/unquantized")]
    names = []
    for tag, v in (("min", lo), ("max", hi)):
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32).reshape(()), f"{prefix}/{tag}"))
        names.append(inits[-1].name)
    return [helper.make_node("Clip", [quantize.input[0], *names], [out], name=f"{prefix}/clamp")]


def strip_qdq(model: onnx.ModelProto) -> int:
    """Rewrite the model's Q/DQ nodes as above, in place; returns how many nodes were removed or replaced."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t) if consts[name].attribute[0].HasField("t") \
                else None
        return None

    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    new_inits, nodes, changed = [], [], 0
    for node in graph.node:
        if not _is(node, "DequantizeLinear"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
        src = node.input[0]
        scale = value(node.input[1])
        zero = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        q = value(src)
        producer = producers.get(src)
        if q is not None and scale is not None:  # a constant: fold it
            new_inits.append(numpy_helper.from_array(_dequantized(q, scale, zero, axis, block), node.output[0]))
            changed += 1
        elif producer is not None and _is(producer, "QuantizeLinear") and src not in outputs and \
                all(_is(r, "DequantizeLinear") for r in readers.get(src, [])):
            nodes.extend(_clamp(producer, value, node.output[0], node.name or node.output[0], new_inits))
            changed += 1
        elif scale is not None and scale.size == 1 and (zero is None or zero.size == 1):
            prefix = node.name or node.output[0]
            x = f"{prefix}/float"
            nodes.append(helper.make_node("Cast", [src], [x], name=f"{prefix}/cast", to=onnx.TensorProto.FLOAT))
            if zero is not None and np.any(zero):
                z = numpy_helper.from_array(zero.astype(np.float32).reshape(()), f"{prefix}/zero")
                new_inits.append(z)
                nodes.append(helper.make_node("Sub", [x, z.name], [f"{prefix}/centered"], name=f"{prefix}/sub"))
                x = f"{prefix}/centered"
            s = numpy_helper.from_array(scale.astype(np.float32).reshape(()), f"{prefix}/scale")
            new_inits.append(s)
            nodes.append(helper.make_node("Mul", [x, s.name], [node.output[0]], name=f"{prefix}/scale"))
            changed += 1
        else:
            nodes.append(node)
    if not changed:
        return 0
    used = {name for n in nodes for name in n.input} | outputs
    nodes = [n for n in nodes if not (_is(n, "QuantizeLinear") and not any(o in used for o in n.output))]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.initializer if i.name in used or i.name in {v.name for v in graph.input}]
    del graph.initializer[:]
    graph.initializer.extend(kept + [i for i in new_inits if i.name in used])
    return changed
