"""Unroll ONNX `LSTM` nodes into plain ops (TVM's importer has no LSTM; the unrolled ops lower).

    LSTM(X[T, B, I], W, R, B, h0, c0)  ->  per direction d and step t (gates i, o, f, c):
        g = X_t W_d^T + h R_d^T + (Wb_d + Rb_d);  i, o, f, c~ = split(g)
        c = sigmoid(f) * c + sigmoid(i) * tanh(c~);  h = sigmoid(o) * tanh(c)
    Y = concat_t(h_t)[T, D, B, H],  Y_h = last h [D, B, H],  Y_c = last c [D, B, H]

Fires only where the result is the same op: static shapes (bind them with --input-shape), constant
weights, default activations, no clip, no peepholes, input_forget 0, layout 0, no sequence_lens.
Other LSTMs are left as they are (the importer then names them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def unroll_lstms(model: onnx.ModelProto) -> int:
    """Replace every LSTM node that `_plan` accepts by its unrolled ops, in place; returns how many."""
    inits = {i.name: i for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.input, *model.graph.value_info)}
    nodes, count = [], 0
    for node in model.graph.node:
        plan = _plan(node, inits, shapes)
        if plan is None:
            nodes.append(node)
            continue
        new_nodes, new_inits = _unroll(node, *plan)
        nodes.extend(new_nodes)
        model.graph.initializer.extend(new_inits)
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _plan(node, inits, shapes):
    if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if (attrs.get("clip") is not None or attrs.get("input_forget", 0) or attrs.get("layout", 0)
            or (acts and acts != ["Sigmoid", "Tanh", "Tanh"] * (len(acts) // 3))):
        return None
    ins = list(node.input) + [""] * (8 - len(node.input))
    x_shape = shapes.get(ins[0])
    if not x_shape or len(x_shape) != 3 or min(x_shape) <= 0 or ins[4] or ins[7]:
        return None  # dynamic shape, sequence_lens or peepholes
    if any(n and n not in inits for n in (ins[1], ins[2], ins[3])):
        return None
    w, r = (numpy_helper.to_array(inits[n]).astype(np.float32) for n in ins[1:3])
    hidden = w.shape[1] // 4
    b = numpy_helper.to_array(inits[ins[3]]).astype(np.float32) if ins[3] else np.zeros((w.shape[0], 8 * hidden),
                                                                                      np.float32)
    direction = attrs.get("direction", b"forward")
    return x_shape, w, r, b, ins[5], ins[6], direction.decode() if isinstance(direction, bytes) else direction


def _unroll(node, x_shape, w, r, b, h0, c0, direction):
    steps, batch, _ = x_shape
    hidden = w.shape[1] // 4
    p = (node.name or node.output[0]) + "/unrolled"
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), f"{p}/{name}"))
        return f"{p}/{name}"

    def op(kind, inputs, name, **attrs):
        nodes.append(helper.make_node(kind, inputs, [f"{p}/{name}"], name=f"{p}/{name}", **attrs))
        return f"{p}/{name}"

    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    split = const("split", np.full(4, hidden, np.int64))
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        xw = op("MatMul", [node.input[0], const(f"W{d}", w[d].T.copy())], f"xw{d}")
        xw = op("Add", [xw, const(f"b{d}", b[d, :4 * hidden] + b[d, 4 * hidden:])], f"xwb{d}")
        rt = const(f"R{d}", r[d].T.copy())
        h = _initial(op, const, h0, d, batch, hidden, f"init_h{d}")
        c = _initial(op, const, c0, d, batch, hidden, f"init_c{d}")
        out = [None] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            s = f"{d}_{t}"
            xt = op("Squeeze", [op("Slice", [xw, const(f"t{s}", [t]), const(f"t1{s}", [t + 1]), const(f"ax{s}", [0])],
                                   f"slice{s}"), const(f"sq{s}", [0])], f"x{s}")
            g = op("Add", [xt, op("MatMul", [h, rt], f"hr{s}")], f"g{s}")
            gi, go, gf, gc = (f"{p}/gate_{k}{s}" for k in "iofc")
            nodes.append(helper.make_node("Split", [g, split], [gi, go, gf, gc], name=f"{p}/split{s}", axis=1))
            c = op("Add", [op("Mul", [op("Sigmoid", [gf], f"sf{s}"), c], f"fc{s}"),
                           op("Mul", [op("Sigmoid", [gi], f"si{s}"), op("Tanh", [gc], f"tc{s}")], f"ic{s}")], f"c{s}")
            h = op("Mul", [op("Sigmoid", [go], f"so{s}"), op("Tanh", [c], f"tanhc{s}")], f"h{s}")
            out[t] = op("Unsqueeze", [h, const(f"u{s}", [0, 1])], f"y{s}")  # [1, 1, B, H]
        ys.append(op("Concat", out, f"y{d}", axis=0))
        hs.append(op("Unsqueeze", [h, const(f"uh{d}", [0])], f"hn{d}"))
        cs.append(op("Unsqueeze", [c, const(f"uc{d}", [0])], f"cn{d}"))
    for name, parts, axis in zip(node.output, (ys, hs, cs), (1, 0, 0)):
        if name:
            nodes.append(helper.make_node("Concat", parts, [name], name=f"{p}/out_{name}", axis=axis))
    return nodes, inits


def _initial(op, const, state, d, batch, hidden, name):
    """Direction d's initial state [B, H]: a slice of the given [D, B, H] tensor, else zeros."""
    if not state:
        return const(name, np.zeros((batch, hidden), np.float32))
    sliced = op("Slice", [state, const(f"{name}s", [d]), const(f"{name}e", [d + 1]), const(f"{name}a", [0])],
                f"{name}_slice")
    return op("Squeeze", [sliced, const(f"{name}q", [0])], name)
