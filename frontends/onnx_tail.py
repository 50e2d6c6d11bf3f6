"""The part of a graph no static compiler can take, run by onnxruntime after the artifact (--allow-float).

A node whose output size its input values decide (NonMaxSuppression, NonZero, Unique, Compress),
one whose shape operand is computed from an input's values, control flow that cannot be unrolled,
an op no converter takes (ai.onnx.ml): with --allow-float, such nodes and every node after them
form the *tail*, an ONNX model of its own; the rest, the *head*, is compiled as usual and also
outputs the tensors the tail reads (the *boundary*). `runtime.Model.run` feeds the head's outputs
to the tail in onnxruntime and returns the model's own outputs, in the model's order. The common
case is a detector's non-maximum suppression after its network: the network runs in integers,
the selection of boxes in float, as float onnxruntime would.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper


@dataclass
class Tail:
    """The tail model and how it joins the head."""

    model: bytes  # serialized ONNX
    boundary: list[str]  # head outputs the tail reads (the head's last outputs)
    inputs: list[dict]  # graph inputs the tail reads ({"name", "shape", "dtype"}: the user's values, passed through)
    outputs: list[str]  # the model's outputs in its own order, each the head's or the tail's
    nodes: list[dict]  # {"node", "op", "reason"}: what runs in onnxruntime, and why


def names_read(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads, its subgraphs' outer-scope references included."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            inner = {o for n in graph.node for o in n.output} | {i.name for i in (*graph.input, *graph.initializer)}
            names |= {x for n in graph.node for x in names_read(n)} - inner
    return names


def split_tail(model: onnx.ModelProto, blockers: dict[int, str]) -> tuple[onnx.ModelProto, Tail]:
    """The head (a copy of `model` without the tail, outputting the boundary too) and the tail that
    starts at the nodes `blockers` names ({node index: why it cannot be compiled})."""
    graph = model.graph
    reads = [names_read(node) for node in graph.node]  # once per node: graphs have thousands
    readers: dict[str, list[int]] = {}
    for index, names in enumerate(reads):
        for name in names:
            readers.setdefault(name, []).append(index)
    tail_idx, made = set(), set()
    for index, node in enumerate(graph.node):  # topological: a consumer comes after its producers
        if index in blockers or reads[index] & made:
            tail_idx.add(index)
            made |= {o for o in node.output if o}
    varying = {i.name for i in graph.input}  # what depends on an input: the rest is constant
    for index, node in enumerate(graph.node):
        if reads[index] & varying:
            varying |= set(node.output)
    outputs_read = {o.name for o in graph.output}
    for index in reversed(range(len(graph.node))):  # constants only the tail reads go with it
        outs = set(graph.node[index].output)
        users = [i for o in outs for i in readers.get(o, [])]
        if index not in tail_idx and not outs & (varying | outputs_read) and users and all(i in tail_idx for i in users):
            tail_idx.add(index)
    head_nodes = [n for i, n in enumerate(graph.node) if i not in tail_idx]
    tail_read = set().union(*(reads[i] for i in tail_idx))
    # a Constant both parts read is copied into the tail rather than passed from the compiled part
    copied = [n for n in head_nodes if n.op_type == "Constant" and set(n.output) & tail_read]
    tail_nodes = copied + [n for i, n in enumerate(graph.node) if i in tail_idx]
    head_made = {o for n in head_nodes for o in n.output if o} - {o for n in copied for o in n.output}
    ordered = (x for i in sorted(tail_idx) for x in [*graph.node[i].input, *sorted(reads[i] - set(graph.node[i].input))])
    boundary = [x for x in dict.fromkeys(ordered) if x in head_made]  # in the order the tail reads them
    graph_inputs = [i for i in graph.input if i.name in tail_read]
    outputs = [o.name for o in graph.output]
    typed = {v.name: v for v in (*graph.value_info, *graph.output, *graph.input)}

    head = onnx.ModelProto()
    head.CopyFrom(model)
    del head.graph.node[:]
    head.graph.node.extend(head_nodes)
    head_outputs = [o for o in graph.output if o.name in head_made]
    del head.graph.output[:]
    head.graph.output.extend(head_outputs + [typed[b] for b in boundary if b not in {o.name for o in head_outputs}])
    used = {x for i in range(len(graph.node)) if i not in tail_idx for x in reads[i]} | {o.name for o in head.graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del head.graph.initializer[:]
    head.graph.initializer.extend(kept)
    head_inputs = [i for i in graph.input if i.name in used]
    del head.graph.input[:]
    head.graph.input.extend(head_inputs)

    tail_graph = helper.make_graph(
        tail_nodes, f"{graph.name}_tail", [typed[b] for b in boundary] + graph_inputs,
        [o for o in graph.output if o.name not in head_made],
        [i for i in graph.initializer if i.name in tail_read])
    tail_model = helper.make_model(tail_graph, opset_imports=list(model.opset_import))
    tail_model.ir_version = model.ir_version
    tail_model.functions.extend(model.functions)
    reasons = [{"node": n.name or n.output[0], "op": n.op_type,
                "reason": blockers.get(i, "after a node that runs in onnxruntime")}
               for i, n in enumerate(graph.node) if i in tail_idx and n.op_type != "Constant"]
    specs = [{"name": i.name, "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                                        for d in i.type.tensor_type.shape.dim],
              "dtype": helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name} for i in graph_inputs]
    return head, Tail(tail_model.SerializeToString(), boundary, specs, outputs, reasons)
