"""Graph inputs in float16, bfloat16 or float64 as float32 inputs followed by a Cast to their type.

onnxconverter-common's `convert_float_to_float16(keep_io_types=False)` (and mixed-precision exports
that keep fp16 at the boundary) leave a model whose inputs are float16; onnxruntime runs it, intq
refused it in both modes ("input has dtype float16"). Every value of those types is a float32 value
exactly (bfloat16 and float16 widen without rounding; float64 rounds as the user's float32 data did),
so the input is quantized at the boundary as a float32 one and the graph's own Cast makes its type:

    x: float16 -> consumers        =>      x: float32 -> Cast(to=float16) -> consumers

The runtime casts a float16 array handed to it to float32 (exact); outputs keep the model's own
float type (`runtime.model._as_output`).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

WIDENED = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def widen_float_inputs(model: onnx.ModelProto) -> list[str]:
    """Rewrite each graph input of a WIDENED type in place (module doc); returns their names."""
    skip = {i.name for i in model.graph.initializer} | {o.name for o in model.graph.output}  # (an input passed
    # straight out keeps its type: left to the dtype check)
    names = []
    for value in model.graph.input:
        ttype = value.type.tensor_type
        if value.name in skip or not value.type.HasField("tensor_type") or ttype.elem_type not in WIDENED:
            continue
        cast = f"{value.name}/as_{TensorProto.DataType.Name(ttype.elem_type).lower()}"
        for node in model.graph.node:
            node.input[:] = [cast if i == value.name else i for i in node.input]
        model.graph.node.insert(0, helper.make_node("Cast", [value.name], [cast], name=cast, to=ttype.elem_type))
        ttype.elem_type = TensorProto.FLOAT
        names.append(value.name)
    return names
