"""ONNX ops that neither TVM's importer converts nor ONNX defines as a function, rewritten into ops
that TVM imports and intq lowers (in place, before the import):

    LpNormalization(x, axis, p)  ->  Div(x, ReduceL{p}(x, [axis], keepdims=1))   (face and sentence embeddings)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _lp_normalization(node, opset: int, inits: list) -> list | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    p, axis = int(attrs.get("p", 2)), int(attrs.get("axis", -1))
    if p not in (1, 2):
        return None
    prefix = node.name or node.output[0]
    norm = f"{prefix}/norm"
    reduce = f"ReduceL{p}"
    if opset >= 18:  # axes became an input
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), f"{prefix}/axes"))
        first = helper.make_node(reduce, [node.input[0], inits[-1].name], [norm], name=norm, keepdims=1)
    else:
        first = helper.make_node(reduce, [node.input[0]], [norm], name=norm, axes=[axis], keepdims=1)
    return [first, helper.make_node("Div", [node.input[0], norm], list(node.output), name=prefix)]


_DECOMPOSITIONS = {"LpNormalization": _lp_normalization}


def decompose_ops(model: onnx.ModelProto) -> int:
    """Rewrite every node of an op in `_DECOMPOSITIONS` (that its rewriter accepts); returns how many."""
    opset, inits, nodes, count = _opset(model), [], [], 0
    for node in model.graph.node:
        rewrite = _DECOMPOSITIONS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        replacement = rewrite(node, opset, inits) if rewrite else None
        nodes.extend(replacement or [node])
        count += replacement is not None
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
    return count
