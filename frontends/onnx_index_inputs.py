"""Integer model inputs that index a constant table (token ids into an embedding), and its rows.

    input_ids -> [Cast | Unsqueeze | Squeeze | Reshape | Flatten | Identity]* -> Gather(table, ., axis)

ONNX Gather takes indices in [-rows, rows - 1] and onnxruntime refuses the others; the compiled
`take` clamps them to the table's first or last row, so ids from another model's tokenizer (a
larger vocabulary) gave embeddings of the last token without a word. The manifest records each such
input's rows (the smallest table it indexes) and `Model.run` refuses ids outside them.
Inputs that reach a Gather through arithmetic (positions = ids + offset) are not followed.
"""

from __future__ import annotations

import os

import onnx

# ops that pass index values on unchanged (shapes only)
_PASSTHROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"}
_INTEGER = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
            onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}


def index_rows(model_path: str | os.PathLike) -> dict[str, dict]:
    """{input name: {"rows": rows of the smallest constant table it indexes, "node": that Gather's name}}."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    tables = {t.name: list(t.dims) for t in graph.initializer}
    tables.update({n.output[0]: list(a.t.dims) for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = {}
    for value in graph.input:
        if value.name in tables or value.type.tensor_type.elem_type not in _INTEGER:
            continue
        names, seen = [value.name], set()
        while names:
            name = names.pop()
            for node in readers.get(name, []):
                if node.op_type in _PASSTHROUGH and node.input[0] == name and node.output[0] not in seen:
                    seen.add(node.output[0])
                    names.append(node.output[0])
                elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name \
                        and node.input[0] in tables:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = tables[node.input[0]]
                    rows = dims[axis] if -len(dims) <= axis < len(dims) else None
                    if rows and (value.name not in found or rows < found[value.name]["rows"]):
                        found[value.name] = {"rows": int(rows), "node": node.name or node.output[0]}
    return found
