"""A DequantizeLinear of a DynamicQuantizeLinear's result with its run-time scale and zero point, possibly
through layout ops on the 8-bit tensor, back to the float tensor it rounds:

    q, s, z = DynamicQuantizeLinear(x); DequantizeLinear(layout(q), s, z)   ->   layout(x)

tf2onnx writes a dynamic-range TFLite model's FULLY_CONNECTED so (TFLite quantizes its float input per
call, `asymmetric_quantize_inputs`): DynamicQuantizeLinear -> Reshape -> DequantizeLinear -> MatMul with the
dequantized int8 weight. The run-time grid covers x's whole range, so the pair only rounds; intq calibrates
the float tensor instead. The layout ops are copied onto the float tensor; the integer ones stay for other
readers and go where none is left.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .onnx_tail import names_read

LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice", "Identity", "MaxPool")
STANDARD = ("", "ai.onnx", "com.microsoft")


def dynamic_pairs_to_float(model: onnx.ModelProto) -> int:
    """Rewrite the pairs above in place, in Loop / If / Scan bodies too (a TFLite WHILE's dynamic-range LSTM
    cell, which tf2onnx writes as a Loop); returns how many DequantizeLinears were replaced."""
    return _in_graph(model.graph)


def _in_graph(graph: onnx.GraphProto) -> int:
    count = sum(_in_graph(a.g) for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    count += sum(_in_graph(g) for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS
                 for g in a.graphs)
    return count + _pairs(graph)


def _pairs(graph: onnx.GraphProto) -> int:
    producers = {o: n for n in graph.node for o in n.output}
    replaced: dict[int, list] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in STANDARD or len(node.input) < 2:
            continue
        chain, name = [], node.input[0]
        while (p := producers.get(name)) is not None and p.op_type in LAYOUT and p.domain in STANDARD \
                and p.input and p.output:
            chain.append(p)
            name = p.input[0]
        quant = producers.get(name)
        if quant is None or quant.op_type != "DynamicQuantizeLinear" or quant.domain not in STANDARD or \
                name != quant.output[0] or node.input[1] != quant.output[1] or \
                (len(node.input) > 2 and node.input[2] and node.input[2] != quant.output[2]):
            continue
        prefix = node.name or node.output[0]
        source, copies = quant.input[0], []
        for i, layer in enumerate(reversed(chain)):  # the same layout ops, on the float tensor
            outs = [f"{prefix}/float{i}/{k}" for k in range(len(layer.output))]
            copy = helper.make_node(layer.op_type, [source, *layer.input[1:]], outs, name=f"{prefix}/float{i}",
                                    domain=layer.domain)
            copy.attribute.extend(layer.attribute)
            wanted = node.input[0] if i == len(chain) - 1 else chain[len(chain) - 2 - i].input[0]
            source = outs[list(layer.output).index(wanted)]
            copies.append(copy)
        copies.append(helper.make_node("Identity", [source], [node.output[0]], name=prefix))
        replaced[id(node)] = copies
    if not replaced:
        return 0
    nodes = [m for n in graph.node for m in replaced.get(id(n), [n])]
    while True:  # the integer layout ops and quantizes nothing reads any more
        used = {i for n in nodes for i in names_read(n)} | {o.name for o in graph.output}
        live = [n for n in nodes if any(o in used for o in n.output) or
                not (n.op_type in LAYOUT or n.op_type == "DynamicQuantizeLinear")]
        if len(live) == len(nodes):
            break
        nodes = live
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)
