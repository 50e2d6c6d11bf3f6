"""Files of the ONNX Model Zoo's oldest opsets as current ONNX, before onnxruntime's clean-up:

    ImageScaler(x, scale, bias)   ->  Add(Mul(x, scale), bias as [1, C, 1, 1])
    Crop(x, border, scale)        ->  Slice of the two spatial axes
    opset < 7                     ->  opset 7, by onnx's version converter

ImageScaler and Crop are experimental ops of opsets 1-9 (tinyyolov2-8's input scaling, Caffe and CNTK
conversions) that TVM's importer has no converter for. onnxruntime runs opset 7 and later only: the zoo's
opset-3 and opset-6 files (BatchNormalization with is_test and consumed_inputs, Dropout with is_test, Gemm
with broadcast) could not even be cleaned up. The converter needs shapes at each step and infers none
through opset 3's BatchNormalization, so it goes to 6 first, infers again, then to 7.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_rewrite import rewrite_nodes

INT64_MAX = np.iinfo(np.int64).max


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _image_scaler(node, opset: int, inits: list) -> list:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    prefix = node.name or node.output[0]
    scale, bias = float(attrs.get("scale", 1.0)), attrs.get("bias")
    inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}/scale"))
    if not bias:
        return [helper.make_node("Mul", [node.input[0], f"{prefix}/scale"], list(node.output), name=prefix)]
    inits.append(numpy_helper.from_array(np.array(bias, np.float32).reshape(1, -1, 1, 1), f"{prefix}/bias"))
    return [helper.make_node("Mul", [node.input[0], f"{prefix}/scale"], [f"{prefix}/scaled"], name=f"{prefix}/mul"),
            helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/bias"], list(node.output), name=prefix)]


def _crop(node, opset: int, inits: list) -> list:
    """border = (left, top, right, bottom); with scale = (height, width) the crop is that size from (top, left)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    prefix = node.name or node.output[0]
    left, top, right, bottom = (list(attrs.get("border", [])) + [0, 0, 0, 0])[:4]
    size = attrs.get("scale")
    if size:
        ends = [top + size[0], left + size[1]]
    else:  # counted from the far side: no shape needed
        ends = [-bottom if bottom else INT64_MAX, -right if right else INT64_MAX]
    starts, axes = [top, left], [2, 3]
    if opset < 10:  # Slice-1: attributes (legacy_forms_to_tvm_forms makes them inputs for TVM later)
        return [helper.make_node("Slice", [node.input[0]], list(node.output), name=prefix, starts=starts, ends=ends,
                                 axes=axes)]
    for key, value in (("starts", starts), ("ends", ends), ("axes", axes)):
        inits.append(numpy_helper.from_array(np.array(value, np.int64), f"{prefix}/{key}"))
    return [helper.make_node("Slice", [node.input[0], f"{prefix}/starts", f"{prefix}/ends", f"{prefix}/axes"],
                             list(node.output), name=prefix)]


_EXPERIMENTAL = {"ImageScaler": _image_scaler, "Crop": _crop}


def experimental_ops_to_standard(model: onnx.ModelProto) -> int:
    """ImageScaler and Crop as standard ops, in place; returns how many were rewritten."""
    opset = _opset(model)

    def rewrite(node, inits):
        op = _EXPERIMENTAL.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        return op(node, opset, inits) if op else None

    return rewrite_nodes(model, rewrite)


def upgrade_old_opset(model: onnx.ModelProto) -> bool:
    """An opset < 7 model converted to opset 7, in place; False where it already was 7 or later."""
    from onnx import version_converter

    opset = _opset(model)
    if opset >= 7:
        return False
    ir = model.ir_version
    for target in ((6, 7) if opset < 6 else (7,)):
        model.CopyFrom(version_converter.convert_version(onnx.shape_inference.infer_shapes(model), target))
    model.ir_version = max(ir, model.ir_version)
    return True


def old_opsets_to_current(model: onnx.ModelProto) -> int:
    """Both rewrites, the experimental ops first (the converter has no adapters for them)."""
    return experimental_ops_to_standard(model) + int(upgrade_old_opset(model))
