"""TFLite builtin ops that tf2onnx (1.17) leaves unconverted, as their standard ONNX forms. tf2onnx writes an
op it has no handler for as a node named `TFL_<BUILTIN>` in the default domain (its parsed builtin options
as attributes), which neither onnx's checker nor onnxruntime accepts; TFLiteConverter emits some of these
for ordinary Keras layers since TensorFlow 2.13 (RELU_0_TO_1 for a clamp to [0, 1], a hard sigmoid's tail;
GELU for keras.activations.gelu). One line of data per op:

    TFL_RELU_0_TO_1(x)   -> Clip(x, 0, 1)
    TFL_RELU_N1_TO_1(x)  -> Clip(x, -1, 1)
    TFL_GELU(x)          -> x * 0.5 * (1 + Erf(x / sqrt 2))            (approximate=0)
                            x * 0.5 * (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (approximate=1)

Others (a model's own custom ops such as MediaPipe's Convolution2DTransposeBias, whose options tf2onnx
cannot parse) stay, and the checker's message names them.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _clip(lo: float, hi: float):
    def build(node, prefix, inits):
        names = []
        for tag, v in (("min", lo), ("max", hi)):
            inits.append(numpy_helper.from_array(np.array(v, np.float32), f"{prefix}/{tag}"))
            names.append(inits[-1].name)
        return [helper.make_node("Clip", [node.input[0], *names], [node.output[0]], name=prefix)]
    return build


def _gelu(node, prefix, inits):
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x, y = node.input[0], node.output[0]

    def const(tag, v):
        inits.append(numpy_helper.from_array(np.array(v, np.float32), f"{prefix}/{tag}"))
        return inits[-1].name

    def op(kind, ins, tag):
        nodes.append(helper.make_node(kind, ins, [f"{prefix}/{tag}"], name=f"{prefix}/{tag}"))
        return f"{prefix}/{tag}"

    nodes: list = []
    if attrs.get("approximate"):
        cube = op("Mul", [op("Mul", [x, x], "square"), x], "cube")
        inner = op("Add", [x, op("Mul", [cube, const("c", 0.044715)], "scaled_cube")], "inner")
        gate = op("Tanh", [op("Mul", [inner, const("k", math.sqrt(2 / math.pi))], "tanh_in")], "tanh")
    else:
        gate = op("Erf", [op("Mul", [x, const("k", 1 / math.sqrt(2))], "erf_in")], "erf")
    half = op("Mul", [op("Add", [gate, const("one", 1.0)], "one_plus"), const("point_five", 0.5)], "half")
    nodes.append(helper.make_node("Mul", [x, half], [y], name=prefix))
    return nodes


RULES = {
    "TFL_RELU_0_TO_1": _clip(0.0, 1.0),
    "TFL_RELU_N1_TO_1": _clip(-1.0, 1.0),
    "TFL_GELU": _gelu,
}


def tflite_ops_to_standard(model: onnx.ModelProto) -> int:
    """Replace the unconverted TFLite builtins above in place (subgraphs are not searched: tf2onnx writes
    these in the main graph); returns how many."""
    graph, nodes, inits, count = model.graph, [], [], 0
    for node in graph.node:
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None or len(node.input) < 1 or len(node.output) != 1:
            nodes.append(node)
            continue
        nodes.extend(rule(node, node.name or node.output[0], inits))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
    return count
