"""Unroll ONNX `LSTM`, `GRU` and `RNN` nodes into plain ops (TVM 0.27's importer has none of them;
the unrolled ops lower to integers). Per direction d and step t, with xw = X W_d^T + biases (all
steps at once) and the recurrent bias folded into it wherever the spec adds it unscaled:

    LSTM (gates i, o, f, c~):  g = xw_t + h R^T;  c = sig(f) c + sig(i) tanh(c~);  h = sig(o) tanh(c)
    GRU (gates z, r, n):       z, r = sig(split(xw_t[:2H] + h R_zr^T))
        linear_before_reset 0: n = tanh(xw_t[2H:] + (r h) R_n^T)      (Rb_n folded into xw)
        linear_before_reset 1: n = tanh(xw_t[2H:] + r (h R_n^T + Rb_n))
                               h = (1 - z) n + z h
    RNN:                       h = tanh(xw_t + h R^T)
    Y = concat_t(h_t) [T, D, B, H],  Y_h = last h [D, B, H],  Y_c (LSTM) = last c [D, B, H]

A zero initial state (none given) drops the terms it would zero at the first step. Fires only
where the result is the same op: static shapes (bind them with --input-shape), constant weights,
default activations, no clip, no peepholes, LSTM input_forget 0, layout 0, no sequence_lens.
Other nodes are left as they are (the importer then names them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def unroll_recurrent(model: onnx.ModelProto) -> int:
    """Replace every LSTM/GRU/RNN node that `_plan` accepts by its unrolled ops, in place; returns how many."""
    inits = {i.name: i for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.input, *model.graph.value_info)}
    nodes, count = [], 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for node in model.graph.node:
        plan = _plan(node, inits, shapes)
        if plan is None:
            nodes.append(node)
            continue
        unrolled = _Unrolled(node, opset)
        unrolled.build(**plan)
        nodes.extend(unrolled.nodes)
        model.graph.initializer.extend(unrolled.inits)
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


unroll_lstms = unroll_recurrent  # the name callers used when only LSTM was unrolled


def _plan(node, inits, shapes) -> dict | None:
    kind = node.op_type
    if kind not in GATES or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    default = ACTIVATIONS[kind]
    if (attrs.get("clip") is not None or attrs.get("input_forget", 0) or attrs.get("layout", 0)
            or (acts and acts != default * (len(acts) // len(default)))):
        return None
    ins = list(node.input) + [""] * (8 - len(node.input))
    x_shape = shapes.get(ins[0])
    if not x_shape or len(x_shape) != 3 or min(x_shape) <= 0 or ins[4] or (kind == "LSTM" and ins[7]):
        return None  # dynamic shape, sequence_lens or peepholes
    if any(n and n not in inits for n in ins[1:4]):
        return None
    w, r = (numpy_helper.to_array(inits[n]).astype(np.float32) for n in ins[1:3])
    gates = GATES[kind]
    hidden = int(attrs.get("hidden_size", w.shape[1] // gates))
    b = (numpy_helper.to_array(inits[ins[3]]).astype(np.float32) if ins[3]
         else np.zeros((w.shape[0], 2 * gates * hidden), np.float32))
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    return dict(kind=kind, shape=x_shape, w=w, r=r, b=b, h0=ins[5], c0=ins[6] if kind == "LSTM" else "",
                reverse={"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction],
                lbr=bool(attrs.get("linear_before_reset", 0)))


class _Unrolled:
    """The nodes and initializers replacing one recurrent node (names under `<node>/unrolled/`)."""

    def __init__(self, node, opset: int = 13):
        self.node, self.nodes, self.inits, self.opset = node, [], [], opset
        self.prefix = (node.name or node.output[0]) + "/unrolled"

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), f"{self.prefix}/{name}"))
        return f"{self.prefix}/{name}"

    def op(self, kind, inputs, name, outputs=1, **attrs):
        names = [f"{self.prefix}/{name}"] if outputs == 1 else [f"{self.prefix}/{name}_{k}" for k in range(outputs)]
        if self.opset < 13 and kind in ("Squeeze", "Unsqueeze", "Split"):  # before 13: axes/split attributes
            const = next(i for i in self.inits if i.name == inputs[1])
            attrs["axes" if kind != "Split" else "split"] = numpy_helper.to_array(const).tolist()
            inputs = inputs[:1]
        self.nodes.append(helper.make_node(kind, inputs, names, name=f"{self.prefix}/{name}", **attrs))
        return names[0] if outputs == 1 else names

    def split(self, x, sizes, name):
        return self.op("Split", [x, self.const(f"{name}_sizes", np.asarray(sizes, np.int64))], name,
                       outputs=len(sizes), axis=1)

    def build(self, kind, shape, w, r, b, h0, c0, reverse, lbr):
        steps = shape[0]
        gates, hidden = GATES[kind], r.shape[-1]
        ys, hs, cs = [], [], []
        for d, backward in enumerate(reverse):
            wb, rb = b[d, :gates * hidden], b[d, gates * hidden:]
            bias = wb + rb if kind != "GRU" else np.concatenate([wb[:2 * hidden] + rb[:2 * hidden],
                                                                 wb[2 * hidden:] + (0 if lbr else rb[2 * hidden:])])
            xw = self.op("MatMul", [self.node.input[0], self.const(f"W{d}", w[d].T.copy())], f"xw{d}")
            xw = self.op("Add", [xw, self.const(f"Wb{d}", bias)], f"xwb{d}")
            h, c = self._initial(h0, d, f"h_init{d}"), self._initial(c0, d, f"c_init{d}")
            if kind == "GRU":  # [R_z R_r]^T, R_n^T, Rb_n
                rt = (self.const(f"Rzr{d}", r[d, :2 * hidden].T.copy()),
                      self.const(f"Rn{d}", r[d, 2 * hidden:].T.copy()), self.const(f"Rbn{d}", rb[2 * hidden:]))
            else:
                rt = self.const(f"R{d}", r[d].T.copy())
            out = [None] * steps
            for t in (range(steps - 1, -1, -1) if backward else range(steps)):
                s = f"{d}_{t}"
                xt = self.op("Slice", [xw, self.const(f"t{s}", [t]), self.const(f"t1{s}", [t + 1]),
                                       self.const(f"ax{s}", [0])], f"slice{s}")
                xt = self.op("Squeeze", [xt, self.const(f"sq{s}", [0])], f"x{s}")
                if kind == "LSTM":
                    h, c = self._lstm_step(xt, h, c, rt, hidden, s)
                elif kind == "GRU":
                    h = self._gru_step(xt, h, *rt, hidden, lbr, s)
                else:
                    h = self.op("Tanh", [self._plus_recurrent(xt, h, rt, s)], f"h{s}")
                out[t] = self.op("Unsqueeze", [h, self.const(f"u{s}", [0, 1])], f"y{s}")  # [1, 1, B, H]
            ys.append(self.op("Concat", out, f"y{d}", axis=0))
            hs.append(self.op("Unsqueeze", [h, self.const(f"uh{d}", [0])], f"hn{d}"))
            if c is not None:
                cs.append(self.op("Unsqueeze", [c, self.const(f"uc{d}", [0])], f"cn{d}"))
        for name, parts, axis in zip(self.node.output, (ys, hs, cs), (1, 0, 0)):
            if name:
                self.nodes.append(helper.make_node("Concat", parts, [name], name=f"{self.prefix}/out_{name}",
                                                   axis=axis))

    def _plus_recurrent(self, x, h, rt, s):
        """x + h R^T (just x while h is the zero initial state)."""
        return x if h is None else self.op("Add", [x, self.op("MatMul", [h, rt], f"hr{s}")], f"g{s}")

    def _lstm_step(self, xt, h, c, rt, hidden, s):
        g = self._plus_recurrent(xt, h, rt, s)
        gi, go, gf, gc = self.split(g, [hidden] * 4, f"gates{s}")
        ic = self.op("Mul", [self.op("Sigmoid", [gi], f"si{s}"), self.op("Tanh", [gc], f"tc{s}")], f"ic{s}")
        if c is not None:
            ic = self.op("Add", [self.op("Mul", [self.op("Sigmoid", [gf], f"sf{s}"), c], f"fc{s}"), ic], f"c{s}")
        h = self.op("Mul", [self.op("Sigmoid", [go], f"so{s}"), self.op("Tanh", [ic], f"tanhc{s}")], f"h{s}")
        return h, ic

    def _gru_step(self, xt, h, rzr, rn, rb_n, hidden, lbr, s):
        x_zr, x_n = self.split(xt, [2 * hidden, hidden], f"xsplit{s}")
        zr = self._plus_recurrent(x_zr, h, rzr, f"zr{s}")
        z, g = (self.op("Sigmoid", [v], f"{k}{s}") for k, v in zip("zr", self.split(zr, [hidden] * 2, f"zrsplit{s}")))
        if h is None:  # h = 0: (r h) R_n^T = 0, r (0 R_n^T + Rb_n) = r Rb_n
            inner = self.op("Mul", [g, rb_n], f"rh{s}") if lbr else None
        elif lbr:
            hr = self.op("Add", [self.op("MatMul", [h, rn], f"hrn{s}"), rb_n], f"hrnb{s}")
            inner = self.op("Mul", [g, hr], f"rh{s}")
        else:
            inner = self.op("MatMul", [self.op("Mul", [g, h], f"rh{s}"), rn], f"rhr{s}")
        n = self.op("Tanh", [x_n if inner is None else self.op("Add", [x_n, inner], f"npre{s}")], f"n{s}")
        keep = self.op("Mul", [self.op("Sub", [self.const(f"one{s}", np.ones((), np.float32)), z], f"1mz{s}"), n],
                       f"zn{s}")
        return keep if h is None else self.op("Add", [keep, self.op("Mul", [z, h], f"zh{s}")], f"h{s}")

    def _initial(self, state, d, name):
        """Direction d's initial state [B, H]: a slice of the given [D, B, H] tensor, else None (zeros)."""
        if not state:
            return None
        sliced = self.op("Slice", [state, self.const(f"{name}s", [d]), self.const(f"{name}e", [d + 1]),
                                   self.const(f"{name}a", [0])], f"{name}_slice")
        return self.op("Squeeze", [sliced, self.const(f"{name}q", [0])], name)
