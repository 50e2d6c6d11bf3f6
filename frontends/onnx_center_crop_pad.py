"""CenterCropPad (opset 18) with a static input shape and a constant target shape as a Slice and a Pad with
constant bounds (in place, before onnxruntime's basic optimization):

    CenterCropPad(x, shape, axes)  ->  Pad(Slice(x, starts, ends, axes), pads)   (either one only where needed)

per axis a: a crop keeps [floor((in - out) / 2), that + out), a pad adds floor((out - in) / 2) before and the rest
after, as the op's definition (and onnx's reference implementation) centres them. onnxruntime, which has no
kernel for the op, inlined its function body, whose pads are computed from Shape at run time, and TVM's importer
stopped with "Dynamic pads are not supported yet" about a model whose shapes are all static. Not rewritten: a
target shape computed at run time, dynamic input dims.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_rewrite import rewrite_nodes, static_dims


def decompose_center_crop_pads(model: onnx.ModelProto) -> int:
    """Rewrite every CenterCropPad the module doc names; returns how many. Infers shapes itself."""
    if not any(n.op_type == "CenterCropPad" for n in model.graph.node):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = static_dims(inferred)
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def rewrite(node, inits):
        if node.op_type != "CenterCropPad" or node.domain not in ("", "ai.onnx"):
            return None
        shape, target = shapes.get(node.input[0]), constants.get(node.input[1])
        if not shape or min(shape) <= 0 or target is None:
            return None
        rank = len(shape)
        axes = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "axes"), range(rank))
        starts, ends, crop_axes, pads = [], [], [], [0] * (2 * rank)
        for a, out in zip((int(a) % rank for a in axes), (int(t) for t in target.reshape(-1))):
            if out < shape[a]:
                begin = (shape[a] - out) // 2
                starts.append(begin), ends.append(begin + out), crop_axes.append(a)
            elif out > shape[a]:
                pads[a], pads[rank + a] = (out - shape[a]) // 2, out - shape[a] - (out - shape[a]) // 2
        prefix = node.name or node.output[0]
        name = lambda s: f"{prefix}/{s}"
        nodes, current = [], node.input[0]
        padded = any(pads)
        if crop_axes:
            inits += [numpy_helper.from_array(np.array(v, np.int64), name(k))
                      for k, v in (("starts", starts), ("ends", ends), ("axes", crop_axes))]
            target_name = name("cropped") if padded else node.output[0]
            nodes.append(helper.make_node("Slice", [current, name("starts"), name("ends"), name("axes")],
                                          [target_name], name=name("crop")))
            current = target_name
        if padded or not nodes:
            inits.append(numpy_helper.from_array(np.array(pads, np.int64), name("pads")))
            nodes.append(helper.make_node("Pad", [current, name("pads")], list(node.output), name=name("pad")))
        return nodes

    return rewrite_nodes(model, rewrite)
