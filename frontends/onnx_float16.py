"""A float16 (or bfloat16) graph as the float32 graph it was converted from.

onnxconverter-common's `convert_float_to_float16` and onnxruntime's transformer optimizer
(`convert_float_to_float16`) turn a float32 model into one that computes in float16, with Casts where
they keep some ops or the inputs and outputs in float32. intq quantizes every float tensor anyway, so
float16's own rounding buys nothing, and its lowering took float16 graphs less well than float32 ones
(all-MiniLM-L6-v2 through optimize_model + float16: token cosine 0.19, its softmax and LayerNorms not
recognized; the same model in float32 0.98). Every float16 tensor becomes float32, exactly:

    initializers and Constant / ConstantOfShape values: widened (every float16 value is a float32 one)
    Cast(to=float16)  ->  Cast(to=float32)            graph inputs, outputs, value_info: float32

The outputs' own types are returned, so that the artifact still gives float16 back where the model
did (`runtime.model._as_output`); onnxruntime's check runs the file as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

NARROW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _widened(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def _graph(graph: onnx.GraphProto) -> int:
    """Widen one graph and its subgraphs in place; returns how many things changed."""
    count = 0
    for i, init in enumerate(graph.initializer):
        if init.data_type in NARROW:
            graph.initializer[i].CopyFrom(_widened(init))
            count += 1
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type in NARROW:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
            count += 1
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in NARROW:
                attr.t.CopyFrom(_widened(attr.t))
                count += 1
            elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i in NARROW:
                attr.i = TensorProto.FLOAT
                count += 1
            elif attr.type == onnx.AttributeProto.GRAPH:
                count += _graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                count += sum(_graph(g) for g in attr.graphs)
    return count


def float16_as_float32(model: onnx.ModelProto) -> dict[str, str]:
    """Rewrite the model in place (module doc); returns {output name: "float16"} for its float16 outputs."""
    narrow = {o.name: "float16" for o in model.graph.output  # (bfloat16 outputs come back as float32: NumPy has no
              if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type == TensorProto.FLOAT16}  # bfloat16)
    _graph(model.graph)
    return narrow
