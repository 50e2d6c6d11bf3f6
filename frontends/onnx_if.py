"""Data-dependent `If` nodes as a select between both branches, computed.

    If(c) {then: ... -> t_i} {else: ... -> e_i}   ->   then nodes; else nodes; y_i = Where(c, t_i, e_i)

onnxruntime's clean-up folds an `If` whose condition is a constant (Silero's sample-rate switch,
once the shapes are bound); what is left branches on data, e.g. openWakeWord's detectors, which
run a second "verifier" MLP only when the first score is >= 0.5. A static graph cannot skip work,
but it can do both and keep one: the outputs are those of the `If` exactly (the untaken branch's
values are discarded, NaN or inf included), at the cost of always computing both branches.

Applied only where that is safe and static: each branch is a plain graph (no nested control
flow), the condition has one element, and every output has the same static shape and element
type in both branches. Any other `If` stays and is refused by the op check, naming the node.
"""

from __future__ import annotations

import onnx
from onnx import helper


def select_ifs(model: onnx.ModelProto) -> int:
    """Inline every eligible top-level `If` of `model` (in place); returns how many were rewritten."""
    graph, done, taken = model.graph, 0, graph_names(model.graph)
    nodes = []
    for index, node in enumerate(graph.node):
        branches = _branches(node)
        if branches is None or not _eligible(branches):
            nodes.append(node)
            continue
        prefix = fresh_prefix(f"{node.name or 'If_' + str(index)}/", taken)
        cond = f"{prefix}cond"
        shape = f"{prefix}scalar_shape"
        nodes.append(helper.make_node("Constant", [], [shape], name=shape,
                                      value=helper.make_tensor(shape, onnx.TensorProto.INT64, [0], [])))
        nodes.append(helper.make_node("Reshape", [node.input[0], shape], [cond], name=cond))
        outs = []
        for tag, branch in zip(("then", "else"), branches):
            renamed, branch_outs = inline_graph(branch, f"{prefix}{tag}/", graph)
            nodes.extend(renamed)
            outs.append(branch_outs)
        for k, name in enumerate(node.output):
            nodes.append(helper.make_node("Where", [cond, outs[0][k], outs[1][k]], [name], name=f"{prefix}select{k}"))
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def _branches(node: onnx.NodeProto):
    if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
        return None
    found = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    if set(found) != {"then_branch", "else_branch"}:
        return None
    return found["then_branch"], found["else_branch"]


def _eligible(branches) -> bool:
    then, other = branches
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for g in branches for n in g.node for a in n.attribute):
        return False  # nested control flow
    if len(then.output) != len(other.output):
        return False
    return all(_static_type(a) is not None and _static_type(a) == _static_type(b)
               for a, b in zip(then.output, other.output))


def _static_type(value: onnx.ValueInfoProto):
    t = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
    return None if None in dims else (t.elem_type, dims)


def inline_graph(branch: onnx.GraphProto, prefix: str, graph: onnx.GraphProto, bind: dict | None = None):
    """The branch's nodes with every name it defines prefixed (its initializers move to `graph`);
    names from the enclosing scope stay as they are, the subgraph's inputs become `bind`'s values
    (a loop body's). Returns (nodes, output names)."""
    local = {i.name for i in branch.initializer} | {o for n in branch.node for o in n.output if o}
    rename = {name: prefix + name for name in local}
    rename.update(bind or {})
    for init in branch.initializer:
        moved = onnx.TensorProto()
        moved.CopyFrom(init)
        moved.name = rename[init.name]
        graph.initializer.append(moved)
    nodes = []
    for k, node in enumerate(branch.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + (node.name or f"{node.op_type}_{k}")
        copy.input[:] = [rename.get(i, i) for i in node.input]
        copy.output[:] = [rename.get(o, o) for o in node.output]
        for attr in copy.attribute:  # a nested If / Loop reads values of this branch by name: renamed too
            for sub in (attr.g,) if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _rename_outer(sub, rename)
        nodes.append(copy)
    outs = []
    for k, value in enumerate(branch.output):
        name = rename.get(value.name, value.name)
        if name == value.name:  # an outer value passed straight through: give it its own name
            alias = f"{prefix}out{k}"
            nodes.append(helper.make_node("Identity", [name], [alias], name=alias))
            name = alias
        outs.append(name)
    return nodes, outs


def _rename_outer(graph: onnx.GraphProto, rename: dict) -> None:
    """Rename, in place, the names `graph` reads from its enclosing scopes (a node input or a graph
    output it does not define itself, at any depth), as `rename` says; its own names shadow them."""
    rename = {k: v for k, v in rename.items()
              if k not in {i.name for i in graph.input} | {i.name for i in graph.initializer}
              | {o for n in graph.node for o in n.output}}
    if not rename:
        return
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        for attr in node.attribute:
            for sub in (attr.g,) if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _rename_outer(sub, rename)
    for value in graph.output:
        value.name = rename.get(value.name, value.name)


def graph_names(graph: onnx.GraphProto) -> set:
    return ({n.name for n in graph.node} | {o for n in graph.node for o in n.output}
            | {i.name for i in graph.initializer} | {v.name for v in graph.input})


def fresh_prefix(prefix: str, taken: set) -> str:
    k, name = 0, prefix
    while any(t.startswith(name) for t in taken):
        k += 1
        name = f"{prefix[:-1]}_{k}/"
    taken.add(name)
    return name
