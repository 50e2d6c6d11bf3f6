"""RoiAlign with half-pixel coordinates (the default from opset 16 on) -> the rois TVM 0.27's converter reads
right.

onnxruntime maps a roi corner r to r * spatial_scale - 1/2; TVM's converter subtracts the 1/2 from r before the
scale, so every box moved by (1 / spatial_scale - 1) / 2 feature pixels: a detector's second stage at scale
1/16 (Mask R-CNN's, Faster R-CNN's) pooled from 7.5 pixels off, and `--allow-float` gave cosine 0.97 to
onnxruntime on a 2-box toy at scale 1/2. Each such node reads its rois plus 1/2 - 1/(2 spatial_scale) instead,
which the converter's own shift brings back to onnxruntime's. Max mode still differs (onnxruntime takes the
largest of the four weighted corners per sample, TVM the largest interpolated sample): left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def shift_half_pixel_rois(model: onnx.ModelProto) -> int:
    """Insert the shift the module doc describes before every half-pixel RoiAlign; returns how many."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    nodes, changed = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("coordinate_transformation_mode", b"half_pixel" if opset >= 16 else b"output_half_pixel")
        scale = float(attrs.get("spatial_scale", 1.0))
        if (node.op_type == "RoiAlign" and node.domain in ("", "ai.onnx") and mode in (b"half_pixel", "half_pixel")
                and scale != 1.0 and len(node.input) > 1):
            shift = f"{node.output[0]}/roi_shift"
            model.graph.initializer.append(numpy_helper.from_array(np.array(0.5 - 0.5 / scale, np.float32), shift))
            nodes.append(helper.make_node("Add", [node.input[1], shift], [f"{shift}ed"], name=f"{shift}ed"))
            node.input[1] = f"{shift}ed"
            changed += 1
        nodes.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed
