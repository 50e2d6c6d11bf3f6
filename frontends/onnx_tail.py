"""The part of a graph no static compiler can take, run by onnxruntime after the artifact (--allow-float).

A node whose output size its input values decide (NonMaxSuppression, NonZero, Unique, Compress),
one whose shape operand is computed from an input's values, control flow that cannot be unrolled,
an op no converter takes (ai.onnx.ml): with --allow-float, such nodes and every node after them
form the *tail*, an ONNX model of its own; the rest, the *head*, is compiled as usual and also
outputs the tensors the tail reads (the *boundary*). `runtime.Model.run` feeds the head's outputs
to the tail in onnxruntime and returns the model's own outputs, in the model's order. The common
case is a detector's non-maximum suppression after its network: the network runs in integers,
the selection of boxes in float, as float onnxruntime would.

Where the tail's first nodes give tensors of static shapes (an op no converter takes in the middle of a
network), only they run in onnxruntime: the nodes after them, the *rest*, are an ONNX model of their own
that the compiler compiles again (recursively: the rest may have a tail of its own), calibrated on the
tensors it reads, which the *probe* (the whole model outputting them) gives on the calibration samples.
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
    rest: Rest | None = None  # the tail cut after its first nodes, where it can be (`split_rest`)


@dataclass
class Rest:
    """The tail as its first nodes, run by onnxruntime, and the nodes after them, compiled again."""

    first: bytes  # the tail model of the first nodes alone
    nodes: list[dict]  # Tail.nodes of those
    model: bytes  # the rest: an ONNX model whose inputs are tensors of the head, the first nodes or the user
    probe: bytes  # the whole model, outputting the rest's inputs: its calibration data


def names_read(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads, its subgraphs' outer-scope references included."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            inner = {o for n in graph.node for o in n.output} | {i.name for i in (*graph.input, *graph.initializer)}
            names |= {x for n in graph.node for x in names_read(n)} - inner
    return names


OPAQUE = "an op no converter takes"  # a blocker whose output shapes follow from its inputs' alone


def split_tail(model: onnx.ModelProto, blockers: dict[int, str], segments: bool = False
               ) -> tuple[onnx.ModelProto, Tail]:
    """The head (a copy of `model` without the tail, outputting the boundary too) and the tail that
    starts at the nodes `blockers` names ({node index: why it cannot be compiled}); with `segments`, the
    tail split again where it can be (`split_rest`)."""
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
    tail = Tail(tail_model.SerializeToString(), boundary, specs, outputs, reasons)
    if segments:
        split_rest(model, tail, blockers, sorted(tail_idx), reads)
    return head, tail


def split_rest(model: onnx.ModelProto, tail: Tail, blockers: dict[int, str], tail_idx: list[int],
               reads: list[set[str]]) -> None:
    """Set `tail.rest`: the tail cut after its first nodes (the blockers that read no other tail node's
    output). Left unset where those nodes' outputs lack static shapes (a value-sized NMS), nothing would
    follow them, or onnxruntime cannot run the probe."""
    nodes, made = model.graph.node, set()
    first = []
    for index in tail_idx:
        if index in blockers and not reads[index] & made:
            first.append(index)
        if nodes[index].op_type != "Constant":
            made |= {o for o in nodes[index].output if o}
    rest = [i for i in tail_idx if i not in first and nodes[i].op_type != "Constant"]
    if not first or not rest:
        return
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (no shapes: the tail stays whole)
        return
    types = {v.name: v for v in (*typed.graph.value_info, *typed.graph.output, *typed.graph.input)}
    consts = {o: nodes[i] for i in range(len(nodes)) if nodes[i].op_type == "Constant" for o in nodes[i].output}
    inits = {i.name: i for i in model.graph.initializer}
    first_made = {o for i in first for o in nodes[i].output if o}
    rest_made = {o for i in rest for o in nodes[i].output if o}
    rest_reads = set().union(*(reads[i] for i in rest))
    outside = (rest_reads - rest_made) - set(inits) - set(consts) - {""}
    needed = [x for x in dict.fromkeys(x for i in rest for x in (*nodes[i].input, *sorted(reads[i]))) if x in outside]
    unknown = [name for name in needed if not _static(types.get(name))]
    if unknown and all(blockers[i] == OPAQUE for i in first):  # ops onnx cannot infer: onnxruntime runs them once
        types.update(_run_shapes(model, unknown))
    if not all(_static(types.get(name)) for name in needed):
        return
    outputs = {o.name for o in model.graph.output}
    rest_graph = helper.make_graph(
        [consts[c] for c in sorted(rest_reads & set(consts))] + [nodes[i] for i in rest], f"{model.graph.name}_rest",
        [types[n] for n in needed], [o for o in model.graph.output if o.name in rest_made],
        [inits[n] for n in sorted(rest_reads & set(inits))])
    first_reads = set().union(*(reads[i] for i in first))
    first_graph = onnx.load_from_string(tail.model).graph
    kept_inputs = [v for v in first_graph.input if v.name in first_reads]
    first_model = helper.make_model(helper.make_graph(
        [consts[c] for c in sorted(first_reads & set(consts))] + [nodes[i] for i in first], f"{model.graph.name}_tail",
        kept_inputs, [types[o] for o in sorted(first_made) if o in outputs or o in rest_reads],
        [inits[n] for n in sorted(first_reads & set(inits))]), opset_imports=list(model.opset_import))
    first_model.ir_version = model.ir_version
    first_model.functions.extend(model.functions)
    rest_model = helper.make_model(rest_graph, opset_imports=list(model.opset_import))
    rest_model.ir_version = model.ir_version
    rest_model.functions.extend(model.functions)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(types[n] for n in needed if n not in {i.name for i in model.graph.input})
    try:  # the frontend's rewrites may have left forms onnxruntime does not take
        import onnxruntime as ort

        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return
    first_names = {nodes[i].name or nodes[i].output[0] for i in first}
    tail.rest = Rest(first_model.SerializeToString(), [n for n in tail.nodes if n["node"] in first_names],
                     rest_model.SerializeToString(), probe.SerializeToString())


def _run_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, onnx.ValueInfoProto]:
    """The types of tensors `names` as onnxruntime gives them on zero inputs ({} where it cannot run the model
    so): an op without a shape function still has the shapes of its inputs' and attributes' making."""
    import numpy as np
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    feed = {}
    for v in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        if not all(dims):
            return {}
        feed[v.name] = np.zeros(dims, helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(names, feed)
    except Exception:  # noqa: BLE001  (then the tail stays whole)
        return {}
    return {n: helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for n, v in zip(names, values) if v.size}


def _static(value: onnx.ValueInfoProto | None) -> bool:
    """A tensor of a known element type and positive fixed dims."""
    if value is None or not value.type.HasField("tensor_type") or not value.type.tensor_type.elem_type:
        return False
    shape = value.type.tensor_type.shape
    return value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") and d.dim_value > 0
                                                            for d in shape.dim)
