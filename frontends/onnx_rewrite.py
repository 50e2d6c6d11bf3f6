"""Node-by-node rewrites of an ONNX graph, in place (the shared tail of the frontends' rewrites)."""

from __future__ import annotations

from collections.abc import Callable

import onnx


def static_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    """{value name: its dims (-1 where not a number)} of every graph input, output and value_info with a shape."""
    return {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)
            if v.type.tensor_type.HasField("shape")}


def rewrite_nodes(model: onnx.ModelProto, rewrite: Callable[[onnx.NodeProto, list], list | None]) -> int:
    """Replace each node by `rewrite(node, inits)` where that returns nodes (None or []: the node is kept), the
    initializers it appends to `inits` added to the graph; the order of the nodes is kept. Returns how many
    nodes were rewritten."""
    inits, nodes, count = [], [], 0
    for node in model.graph.node:
        replacement = rewrite(node, inits)
        nodes.extend(replacement or [node])
        count += replacement is not None
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
    return count
