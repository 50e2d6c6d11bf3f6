"""onnxruntime's quantized BERT ops (com.microsoft QAttention, QEmbedLayerNormalization) as their float ops.

`quantize_dynamic` on a model that onnxruntime's transformer optimizer fused (what its BERT guide recommends:
optimize_model, then quantize) writes QAttention and QEmbedLayerNormalization, which intq refused in both modes.
Like the other pre-quantized formats (onnx_qdq.py) they become the float graph they quantize, with the
constants dequantized; the float ops are then rewritten by onnx_contrib.py (onnx_contrib_attention.py):

    QAttention(q, W_q, bias, s_x, s_w, mask?, z_x, z_w, past = "")  where q, s_x, z_x = DynamicQuantizeLinear(x)
        ->  Attention(x, (W_q - z_w) s_w, bias, mask)                 (the same attributes)
    QEmbedLayerNormalization(ids, segments, word_q, position_q, segment_q, gamma_q, beta_q, mask, scales..., zeros...)
        ->  EmbedLayerNormalization(ids, segments, word, position, segment, gamma, beta, mask)

Left as they are, for the op check to name: a QAttention whose input is not a DynamicQuantizeLinear's, or whose
weights, scales or zero points are not constants.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOMAIN = "com.microsoft"


def _float(inits: dict, q: str, scale: str, zero: str, name: str) -> onnx.TensorProto | None:
    """(q - zero) * scale of constant q, scale and (optional) zero, as a float32 initializer `name`."""
    if q not in inits or scale not in inits or (zero and zero not in inits):
        return None
    value = numpy_helper.to_array(inits[q]).astype(np.float64)
    if zero:
        value = value - numpy_helper.to_array(inits[zero]).astype(np.float64)
    value = value * numpy_helper.to_array(inits[scale]).astype(np.float64)
    return numpy_helper.from_array(value.astype(np.float32), name)


def _attention(node, producers: dict, inits: dict, made: list) -> onnx.NodeProto | None:
    ins = list(node.input) + [""] * 9
    quant = producers.get(ins[0])
    if quant is None or quant.op_type != "DynamicQuantizeLinear" or ins[8] or list(quant.output[1:3]) != [ins[3], ins[6]]:
        return None
    weight = _float(inits, ins[1], ins[4], ins[7], f"{node.name or node.output[0]}/weight")
    if weight is None:
        return None
    made.append(weight)
    inputs = [quant.input[0], weight.name, ins[2], ins[5]]
    while inputs and not inputs[-1]:
        inputs.pop()
    return helper.make_node("Attention", inputs, list(node.output), name=node.name, domain=DOMAIN,
                            **{a.name: helper.get_attribute_value(a) for a in node.attribute})


def _embedding(node, inits: dict, made: list) -> onnx.NodeProto | None:
    ins = list(node.input) + [""] * 18
    tables = []
    for k in range(2, 7):  # word, position, segment, gamma, beta: quantized, scale at k + 6, zero point at k + 11
        if not ins[k]:
            tables.append("")
            continue
        table = _float(inits, ins[k], ins[k + 6], ins[k + 11], f"{node.name or node.output[0]}/t{k}")
        if table is None:
            return None
        made.append(table)
        tables.append(table.name)
    return helper.make_node("EmbedLayerNormalization", [ins[0], ins[1], *tables, ins[7]], list(node.output),
                            name=node.name, domain=DOMAIN, **{a.name: helper.get_attribute_value(a) for a in node.attribute})


def quantized_contrib_to_float(model: onnx.ModelProto) -> int:
    """Rewrite every QAttention and QEmbedLayerNormalization this module takes, in place; returns how many."""
    graph = model.graph
    if not any(n.domain == DOMAIN and n.op_type in ("QAttention", "QEmbedLayerNormalization") for n in graph.node):
        return 0
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    made, nodes, count = [], [], 0
    for node in graph.node:
        new = None
        if node.domain == DOMAIN and node.op_type == "QAttention":
            new = _attention(node, producers, inits, made)
        elif node.domain == DOMAIN and node.op_type == "QEmbedLayerNormalization":
            new = _embedding(node, inits, made)
        nodes.append(new or node)
        count += new is not None
    if count:
        read = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
        nodes = [n for n in nodes if n.op_type != "DynamicQuantizeLinear" or any(o in read for o in n.output)]
        read = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
        kept = [i for i in graph.initializer if i.name in read]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend(kept + made)
    return count
