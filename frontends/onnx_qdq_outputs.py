"""Quantized graph outputs: a QuantizeLinear whose result is a graph output, directly or through layout ops
(a full-integer TFLite model converted by tf2onnx ends so: its int8 / uint8 output tensor is TFL_QUANTIZE's,
or an op's on the integers, then a Reshape), written out as the float ops it computes, so the output keeps
the file's integer type and codes:

    QuantizeLinear(x, s, zp) -> Cast(Clip(Round(x / s) + zp, qmin, qmax), to=int type)

Round is ONNX's half-to-even, as QuantizeLinear rounds; intq lowers the chain as one table over x's
grid (a cast of whole numbers rounds to the nearest). Only per-tensor constant scales and zero points
are rewritten; others stay (and the op check names them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice")  # move codes unchanged


def quantized_outputs_as_float_ops(model: onnx.ModelProto, value, integer_range) -> int:
    """Rewrite in place the QuantizeLinears that produce graph outputs; `value(name)` reads a constant,
    `integer_range(node, value)` gives (qmin, qmax, dtype). Returns how many were rewritten."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def to_outputs(name: str) -> bool:
        """Whether `name` is a graph output, or reaches only graph outputs through layout ops (tf2onnx's
        Reshape of a detector's int8 map into the output's shape)."""
        after = readers.get(name, [])
        if any(r.op_type not in LAYOUT or r.input[0] != name for r in after):
            return False
        return (name in outputs or bool(after)) and all(to_outputs(o) for r in after for o in r.output)

    nodes, inits, changed = [], [], 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx", "com.microsoft") or \
                len(node.input) < 2 or not to_outputs(node.output[0]):
            nodes.append(node)
            continue
        scale = value(node.input[1])
        given_zero = len(node.input) > 2 and node.input[2]
        zero = value(node.input[2]) if given_zero else None
        grid = integer_range(node, value)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if scale is None or scale.size != 1 or (given_zero and (zero is None or zero.size != 1)) or grid is None \
                or attrs.get("block_size"):
            nodes.append(node)
            continue
        qmin, qmax, dtype = grid
        if dtype.itemsize > 2:  # int32 outputs: the Clip's float32 bounds would not hold the range exactly
            nodes.append(node)
            continue
        prefix = node.name or node.output[0]
        consts = {"scale": scale.astype(np.float32).reshape(()),
                  "zero": (np.zeros((), np.float32) if zero is None else zero.astype(np.float32).reshape(())),
                  "qmin": np.float32(qmin), "qmax": np.float32(qmax)}
        for tag, v in consts.items():
            inits.append(numpy_helper.from_array(np.asarray(v, np.float32), f"{prefix}/{tag}"))
        nodes += [
            helper.make_node("Div", [node.input[0], f"{prefix}/scale"], [f"{prefix}/steps"], name=f"{prefix}/div"),
            helper.make_node("Round", [f"{prefix}/steps"], [f"{prefix}/rounded"], name=f"{prefix}/round"),
            helper.make_node("Add", [f"{prefix}/rounded", f"{prefix}/zero"], [f"{prefix}/shifted"],
                             name=f"{prefix}/add_zero"),
            helper.make_node("Clip", [f"{prefix}/shifted", f"{prefix}/qmin", f"{prefix}/qmax"], [f"{prefix}/saturated"],
                             name=f"{prefix}/saturate"),
            helper.make_node("Cast", [f"{prefix}/saturated"], [node.output[0]], name=f"{prefix}/cast",
                             to=helper.np_dtype_to_tensor_dtype(dtype)),
        ]
        changed += 1
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
    return changed


def output_grids(model: onnx.ModelProto, base_dir: str = "") -> dict[str, tuple[float, float]]:
    """{graph output: (scale, zero point)} for the outputs that are quantized reals: a QuantizeLinear's, or
    the chain `quantized_outputs_as_float_ops` wrote for one. Their codes stand for (q - zp) * s, and are
    compared so (runtime/check.py): a code one step off is a small error, not a wrong answer. `model` may be
    loaded without its external data (`base_dir`: the file's folder): only the one-value constants asked for
    are read, never the weights (reading every initializer failed on torch's dynamo exports, whose weights sit
    in FILE.onnx.data, and skipped the compile's check for all of them)."""
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    producers = {o: n for n in graph.node for o in n.output}

    def scalar(name):
        t = consts.get(name)
        if t is None or int(np.prod(t.dims)) != 1:
            return None
        return float(onnx.numpy_helper.to_array(t, base_dir=base_dir).reshape(-1)[0])

    grids = {}
    for out in graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type in LAYOUT:  # a Reshape of the codes into the output's shape
            node = producers.get(node.input[0])
        if node is None:
            continue
        if node.op_type == "QuantizeLinear" and len(node.input) >= 2:
            scale = scalar(node.input[1])
            zero = scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
        elif node.op_type == "Cast" and node.name.endswith("/cast"):  # the chain written above
            prefix = node.name[:-len("/cast")]
            scale, zero = scalar(f"{prefix}/scale"), scalar(f"{prefix}/zero")
        else:
            continue
        if scale is not None and zero is not None and scale > 0:
            grids[out.name] = (scale, zero)
    return grids
