"""Operands that set a shape (Reshape's shape, Slice's starts, TopK's k, ...) computed from an input's
values: intq compiles static shapes, so such a model is refused with the nodes named, before TVM
fails on it with an internal error (or a crash at run time).

A tensor depends on an input's values if it is computed from one through any op but Shape and Size
(which read only the static shape, and which onnxruntime's clean-up has folded to constants).
"""

from __future__ import annotations

import onnx

# op -> input positions that set an output shape (or a count of outputs)
SHAPE_OPERANDS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Pad": (1, 3), "TopK": (1,), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
    "Resize": (1, 2, 3), "Upsample": (1,), "OneHot": (1,), "CenterCropPad": (1,), "EyeLike": (), "Trilu": (1,),
    "NonMaxSuppression": (0, 1, 2), "CumSum": (1,),  # NMS keeps a value-dependent number of boxes
    "Compress": (1,), "NonZero": (0,), "Unique": (0,),  # output shapes that depend on the values
    "DFT": (1, 2), "STFT": (1, 3), "MaxUnpool": (2,), "CumProd": (1,),
}
SHAPE_ONLY = frozenset({"Shape", "Size"})


def dynamic_shape_operands(model: onnx.ModelProto) -> list[tuple[int, str]]:
    """(node index, '<op> (node <name>) input <k> (<tensor>)') for every shape operand that depends on
    an input's values."""
    inits = {i.name for i in model.graph.initializer}
    dynamic = {v.name for v in model.graph.input if v.name not in inits}
    found = []
    for index, node in enumerate(model.graph.node):  # topological order (checked by onnx.checker)
        for k in SHAPE_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if k < len(node.input) and node.input[k] in dynamic:
                found.append((index, f"{node.op_type} (node {node.name or '<unnamed>'}) input {k} "
                                     f"({node.input[k]!r})"))
        if node.op_type not in SHAPE_ONLY and any(i in dynamic for i in node.input):
            dynamic.update(o for o in node.output if o)
    return found
