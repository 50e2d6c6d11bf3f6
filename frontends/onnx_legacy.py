"""ONNX op forms of old (or middle) opsets -> the form TVM 0.27's converter reads.

    Slice-1     (starts, ends, axes attributes)   -> Slice-10 inputs (constant initializers)
    Reshape-1   (shape attribute)                 -> Reshape-5 shape input
    Upsample-7/9, Resize-10 (scales attribute or input, asymmetric coordinates, floor for nearest)
                                                  -> Resize-11 (X, "", scales) with those modes spelled out
    Resize with an empty roi, scales or sizes tensor  -> Resize with that input absent ("")

TVM's importer picks a converter by opset, but it has only `Slice._impl_v13` and `Reshape._impl_v13`,
which read those values from inputs (an opset-9 Slice, waifu2x CUNet's crops from PyTorch, failed inside
the importer: "Cannot cast NoneType to list of Expr"); its `Upsample._impl_v9` reads the scales attribute
of Upsample-7 (a real Upsample-9 failed) and rounds nearest neighbours instead of flooring them (cosine
0.30 to onnxruntime on a 2x nearest Upsample), and its only Resize converter (`_impl_v18`) reads a
Resize-10 with Resize-18's defaults (half_pixel coordinates, round_prefer_floor).
This runs after onnxruntime's clean-up (which validates the model at its own opset) and rewrites nodes
in place; the model only goes to TVM's importer afterwards, which does not re-check the schemas.
A node already in the wanted form, or whose value is not a constant, is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# op -> attribute names that became inputs (in input order) and their dtype
_TO_INPUTS = {"Slice": (("starts", "ends", "axes"), np.int64), "Reshape": (("shape",), np.int64)}


def legacy_forms_to_tvm_forms(model: onnx.ModelProto) -> int:
    """Rewrite every node listed above; returns how many changed."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    names = {i.name for i in model.graph.initializer} | {v.name for v in model.graph.value_info}
    changed = 0
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in _TO_INPUTS and len(node.input) == 1 and attrs:
            moved, dtype = _TO_INPUTS[node.op_type]
            for name in moved:
                if name not in attrs:  # Slice-1 without axes: the default, all leading axes
                    continue
                tensor = f"{node.name or node.output[0]}__{name}"
                while tensor in names:
                    tensor += "_"
                names.add(tensor)
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(attrs[name], dtype), tensor))
                node.input.append(tensor)
            _drop_attributes(node, moved)
            changed += 1
        elif node.op_type == "Upsample" or (node.op_type == "Resize" and opset < 11):
            if len(node.input) == 1:  # Upsample-7: scales attribute
                tensor = f"{node.name or node.output[0]}__scales"
                while tensor in names:
                    tensor += "_"
                names.add(tensor)
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(attrs["scales"], np.float32),
                                                                       tensor))
                node.input.append(tensor)
            node.op_type = "Resize"
            node.input[:] = [node.input[0], "", node.input[1]]
            _drop_attributes(node, ("scales", "coordinate_transformation_mode", "nearest_mode"))
            node.attribute.extend([helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                   helper.make_attribute("nearest_mode", "floor")])
            changed += 1
        elif node.op_type == "Resize" and any(_empty(model, i) for i in node.input[1:]):
            # roi, scales or sizes as an empty tensor: "not given" to onnxruntime (tflite2onnx writes
            # scales so beside sizes); TVM's converter takes it as given ("only one of scales and sizes")
            node.input[1:] = ["" if _empty(model, i) else i for i in node.input[1:]]
            changed += 1
    return changed


def _empty(model: onnx.ModelProto, name: str) -> bool:
    """Is `name` a constant (an initializer or a Constant node) with no elements?"""
    for init in model.graph.initializer:
        if name and init.name == name:
            return 0 in init.dims
    for node in model.graph.node:
        if name and node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return value is not None and numpy_helper.to_array(value.t).size == 0
    return False


def _drop_attributes(node: onnx.NodeProto, names) -> None:
    keep = [a for a in node.attribute if a.name not in names]
    del node.attribute[:]
    node.attribute.extend(keep)
