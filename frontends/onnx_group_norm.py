"""GroupNormalization (opset 18, per-channel scale and bias from opset 21) as the form torch's exporters write
below opset 18, which intq lowers to integers (an InstanceNormalization over each group's row, fused into a
LayerNorm by passes/fuse_layernorm.py), in place, before onnxruntime's basic optimization:

    GroupNormalization(x [N, C, S...], scale, bias, num_groups G, epsilon)
        ->  Reshape(InstanceNormalization(Reshape(x, [N, G, C / G * prod S]), ones[G], zeros[G], epsilon),
                    [N, C, S...]) * scale[C, 1...] + bias[C, 1...]

(opset 18-20: scale and bias hold one value per group, repeated C / G times). torch's dynamo exporter writes
every nn.GroupNorm as this op from opset 21 on. onnxruntime, which has no kernel for it, inlined the op's
function body, whose Shape -> Reshape chain TVM's importer refused ("Node cannot handle ShapeExpr inputs");
TVM's own converter gives `nn.group_norm`, which has no integer lowering. Not rewritten: dynamic shapes, a
per-group scale or bias computed at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_rewrite import rewrite_nodes, static_dims


def decompose_group_norms(model: onnx.ModelProto) -> int:
    """Rewrite every GroupNormalization the module doc names; returns how many. Infers shapes itself."""
    if not any(n.op_type == "GroupNormalization" for n in model.graph.node):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = static_dims(inferred)
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    def rewrite(node, inits):
        if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx"):
            return None
        return group_normalization(node, opset, inits, shapes, constants.get)

    return rewrite_nodes(model, rewrite)


def group_normalization(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """See the module doc; None where the shape is not static or the groups do not divide the channels."""
    shape = shapes.get(node.input[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    groups, epsilon = int(attrs.get("num_groups", 0)), float(attrs.get("epsilon", 1e-5))
    if not shape or len(shape) < 2 or min(shape) <= 0 or groups <= 0 or shape[1] % groups:
        return None
    n, c, spatial = shape[0], shape[1], shape[2:]
    per_group = opset < 21  # GroupNormalization-18: one scale and bias per group
    prefix = node.name or node.output[0]
    name = lambda s: f"{prefix}/{s}"
    view = [c] + [1] * len(spatial)
    affine = []
    for operand, key in ((node.input[1], "scale"), (node.input[2], "bias")):
        value = consts(operand)
        if value is not None:
            value = np.repeat(value.reshape(-1), c // groups) if per_group else value.reshape(-1)
            inits.append(numpy_helper.from_array(value.reshape(view).astype(np.float32), name(key)))
            affine.append((name(key), []))
        elif per_group:
            return None
        else:  # a per-channel scale computed at run time: reshaped to broadcast over the spatial axes
            inits.append(numpy_helper.from_array(np.array(view, np.int64), name(f"{key}_view")))
            affine.append((name(f"{key}_c"), [helper.make_node("Reshape", [operand, name(f"{key}_view")],
                                                                 [name(f"{key}_c")], name=name(f"{key}_c"))]))
    inits += [numpy_helper.from_array(np.array([n, groups, -1], np.int64), name("rows_shape")),
              numpy_helper.from_array(np.array(shape, np.int64), name("shape")),
              numpy_helper.from_array(np.ones(groups, np.float32), name("ones")),
              numpy_helper.from_array(np.zeros(groups, np.float32), name("zeros"))]
    (scale, scale_nodes), (bias, bias_nodes) = affine
    return [*scale_nodes, *bias_nodes,
            helper.make_node("Reshape", [node.input[0], name("rows_shape")], [name("rows")], name=name("rows")),
            helper.make_node("InstanceNormalization", [name("rows"), name("ones"), name("zeros")], [name("normed")],
                             name=name("normed"), epsilon=epsilon),
            helper.make_node("Reshape", [name("normed"), name("shape")], [name("back")], name=name("back")),
            helper.make_node("Mul", [name("back"), scale], [name("scaled")], name=name("scaled")),
            helper.make_node("Add", [name("scaled"), bias], list(node.output), name=prefix)]
