"""RMSNormalization (opset 23) over any trailing axes, with any scale, as the one form intq lowers to integers
(`nn.rms_norm` over the last axis with a constant gamma; registered in onnx_decompose.py):

    RMSNormalization(x [L..., D...], scale, axis)  ->  Reshape(RMSNormalization(Reshape(x, [prod L, prod D]),
                                                       gamma, axis=-1), x's shape)  [* scale]

gamma is the constant scale broadcast to D and flattened; a scale computed at run time is a Mul after the
norm, gamma ones. TVM's converter passed all the axes to `nn.rms_norm`, whose legalization failed
("shape.size() == indices.size()") when they were all of x's, and `intq` lowers one axis only.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


def rms_normalization(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """See the module doc; None where the node already has that form or shapes are not static."""
    shape = shapes.get(node.input[0])
    if not shape or min(shape) <= 0:
        return None
    axis = int(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)) % len(shape)
    lead, norm = shape[:axis], shape[axis:]
    scale = consts(node.input[1])
    flat = len(norm) > 1 or not lead
    if not flat and scale is not None and scale.shape == tuple(norm):
        return None  # the last axis and a constant [D] gamma: TVM's converter gives the form intq lowers
    prefix = node.name or node.output[0]
    name = lambda s: f"{prefix}/{s}"
    size = int(np.prod(norm))
    gamma = np.ones(size, np.float32) if scale is None else \
        np.broadcast_to(scale, norm).reshape(size).astype(scale.dtype)
    inits.append(numpy_helper.from_array(gamma, name("gamma")))
    normed = name("normed") if scale is None else node.output[0]
    kept = [a for a in node.attribute if a.name != "axis"]
    core = helper.make_node("RMSNormalization", [name("rows") if flat else node.input[0], name("gamma")],
                            [name("rows_normed") if flat else normed], name=name("core"), axis=-1)
    core.attribute.extend(kept)
    nodes = [core]
    if flat:
        inits.extend([numpy_helper.from_array(np.array([int(np.prod(lead)), size], np.int64), name("row_shape")),
                      numpy_helper.from_array(np.array(shape, np.int64), name("shape"))])
        nodes = [helper.make_node("Reshape", [node.input[0], name("row_shape")], [name("rows")], name=name("rows")),
                 core,
                 helper.make_node("Reshape", [name("rows_normed"), name("shape")], [normed], name=name("unflat"))]
    if scale is None:  # the scale broadcasts over the trailing axes, as in RMSNormalization itself
        nodes.append(helper.make_node("Mul", [normed, node.input[1]], list(node.output), name=prefix))
    return nodes
