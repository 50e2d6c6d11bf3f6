"""A Concat of 8-bit tensors read only by DequantizeLinears of one per-tensor grid, dequantized part by part:

    DequantizeLinear(Concat(q_1, ..., q_n), s, z)   ->   Concat(DequantizeLinear(q_1, s, z), ..., DequantizeLinear(q_n, s, z))

Exact (the dequantize is elementwise with one scale and zero point). TFLite concatenates quantized tensors on
their integers where they share a grid (its converter makes them share one), and tf2onnx writes that as
QuantizeLinear -> ... -> Concat on the int8 tensors -> DequantizeLinear; PP-OCR's DB detector concatenates
its four resized feature maps so. Each part's QuantizeLinear then meets its own DequantizeLinear, the pair
`strip_qdq` takes as a clamp.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

STANDARD = ("", "ai.onnx", "com.microsoft")


def dequantize_before_concat(model: onnx.ModelProto, value) -> int:
    """Rewrite in place; `value(name)` reads a constant. Returns how many Concats were rewritten."""
    graph = model.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def grid(dq):
        scale = value(dq.input[1])
        zero = value(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        return scale, zero

    inserted: dict[int, list] = {}
    for node in graph.node:
        if node.op_type != "Concat" or node.domain not in STANDARD or node.output[0] in outputs:
            continue
        dqs = readers.get(node.output[0], [])
        if not dqs or not all(r.op_type == "DequantizeLinear" and r.domain in STANDARD and r.input[0] == node.output[0]
                              for r in dqs):
            continue
        grids = [grid(r) for r in dqs]
        scale, zero = grids[0]
        if scale is None or scale.size != 1 or (len(dqs[0].input) > 2 and dqs[0].input[2] and zero is None) or \
                any(not np.array_equal(s, scale) or not np.array_equal(z, zero) for s, z in grids[1:]):
            continue
        prefix = node.name or node.output[0]
        parts = []
        for k, part in enumerate(node.input):
            parts.append(helper.make_node("DequantizeLinear", [part, *dqs[0].input[1:]], [f"{prefix}/dequantized{k}"],
                                          name=f"{prefix}/dequantized{k}"))
        concat = helper.make_node("Concat", [p.output[0] for p in parts], [f"{prefix}/float"], name=prefix)
        concat.attribute.extend(node.attribute)
        inserted[id(node)] = parts + [concat]
        for r in dqs:  # each reader passes the float concatenation on
            r.op_type, r.domain = "Identity", ""
            r.input[0] = concat.output[0]
            del r.input[1:]
            del r.attribute[:]
    if not inserted:
        return 0
    nodes = [m for n in graph.node for m in inserted.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(inserted)
