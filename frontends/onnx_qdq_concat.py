"""A Concat of 8-bit tensors read only by DequantizeLinears of one per-tensor grid (through layout ops on the
integers, a Transpose back to NCHW, or not), dequantized part by part:

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
LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")  # move the integers unchanged


def dequantize_before_concat(model: onnx.ModelProto, value) -> int:
    """Rewrite in place; `value(name)` reads a constant. Returns how many Concats were rewritten. Nested
    Concats on the integers (a Keras BiLSTM's per-step outputs through TFLite: Concat of Concats) come
    apart from the outside in, one pass each."""
    total = 0
    while count := _dequantize_outermost(model, value):
        total += count
    return total


def _dequantize_outermost(model: onnx.ModelProto, value) -> int:
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
        layout, dqs, frontier, ok = [], [], [node.output[0]], True
        while frontier and ok:  # layout ops on the integers (a Transpose back to NCHW) may come first
            name = frontier.pop()
            for r in readers.get(name, []):
                if r.op_type in LAYOUT and r.domain in STANDARD and r.input[0] == name and not outputs & set(r.output):
                    layout.append(r)
                    frontier.extend(r.output)
                elif r.op_type == "DequantizeLinear" and r.domain in STANDARD and r.input[0] == name:
                    dqs.append(r)
                else:
                    ok = False
        if not ok or not dqs:
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
        for r in layout:  # the layout ops move the float values instead
            if r.input[0] == node.output[0]:
                r.input[0] = concat.output[0]
        for r in dqs:  # each dequantize passes the float values on
            r.op_type, r.domain = "Identity", ""
            if r.input[0] == node.output[0]:
                r.input[0] = concat.output[0]
            del r.input[1:]
            del r.attribute[:]
    if not inserted:
        return 0
    nodes = [m for n in graph.node for m in inserted.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(inserted)
