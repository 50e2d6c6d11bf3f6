"""Unroll ONNX `LSTM`, `GRU` and `RNN` nodes into plain ops (TVM 0.27's importer has none of them;
the unrolled ops lower to integers). Per direction d and step t, with xw = X W_d^T + biases (all
steps at once) and the recurrent bias folded into it wherever the spec adds it unscaled:

    LSTM (gates i, o, f, c~):  g = xw_t + h R^T;  i = f(g_i + P_i c);  f = f(g_f + P_f c) (1 - i if input_forget)
                               c = f c + i g(c~);  o = f(g_o + P_o c);  h = o h(c)
    GRU (gates z, r, n):       z, r = f(split(xw_t[:2H] + h R_zr^T))
        linear_before_reset 0: n = g(xw_t[2H:] + (r h) R_n^T)      (Rb_n folded into xw)
        linear_before_reset 1: n = g(xw_t[2H:] + r (h R_n^T + Rb_n))
                               h = (1 - z) n + z h
    RNN:                       h = f(xw_t + h R^T)
    Y = concat_t(h_t) [T, D, B, H],  Y_h = last h [D, B, H],  Y_c (LSTM) = last c [D, B, H]

f, g, h are the node's activations (default Sigmoid, Tanh, Tanh; any of the spec's ten, with their
alpha/beta), `clip` clips every activation's input, peepholes P are optional, layout 1 ([B, T, ...])
is transposed in and out. Weights, biases and peepholes may be constants (folded here) or tensors
computed in the graph (sliced and transposed by ops). A zero initial state (none given) drops the
terms it would zero at the first step. `sequence_lens` masks each step (past a sequence's end its
state is kept and its output is zero). Fires only where the result is the same op: a static input
shape (bind it with --input-shape). Other nodes are left as they are (the importer then names them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# activation -> (default alpha, default beta); None: takes no such value (spec and onnxruntime defaults)
PARAMS = {"relu": (None, None), "tanh": (None, None), "sigmoid": (None, None), "softsign": (None, None),
          "softplus": (None, None), "leakyrelu": (0.01, None), "thresholdedrelu": (1.0, None), "elu": (1.0, None),
          "hardsigmoid": (0.2, 0.5), "affine": (1.0, 0.0), "scaledtanh": (1.0, 1.0)}


def unroll_recurrent(model: onnx.ModelProto) -> int:
    """Replace every LSTM/GRU/RNN node that `_plan` accepts by its unrolled ops, in place; returns how many."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.input, *model.graph.value_info)}
    nodes, count = [], 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for node in model.graph.node:
        plan = _plan(node, consts, shapes)
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


def _activations(kind: str, attrs: dict, directions: int) -> list[list[tuple]] | None:
    """Per direction, the (name, alpha, beta) of each activation; alpha/beta lists are consumed in
    order by the activations that take them (onnxruntime's reading). None: one the spec lacks."""
    names = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])] or ACTIVATIONS[kind]
    per = len(ACTIVATIONS[kind])
    if len(names) == per:
        names = names * directions
    if len(names) != per * directions or any(n.lower() not in PARAMS for n in names):
        return None
    alphas, betas, resolved = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", [])), []
    for name in names:
        alpha, beta = PARAMS[name.lower()]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        resolved.append((name.lower(), alpha, beta))
    return [resolved[d * per:(d + 1) * per] for d in range(directions)]


def _plan(node, consts, shapes) -> dict | None:
    kind = node.op_type
    if kind not in GATES or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    acts = _activations(kind, attrs, len(reverse or []))
    ins = list(node.input) + [""] * (8 - len(node.input))
    layout = int(attrs.get("layout", 0))
    x_shape = shapes.get(ins[0])
    if reverse is None or acts is None or not x_shape or len(x_shape) != 3 or min(x_shape) <= 0:
        return None  # dynamic shape
    steps = x_shape[1] if layout else x_shape[0]
    lens = ins[4] if ins[4] and not (ins[4] in consts and np.all(consts[ins[4]] == steps)) else None
    value = lambda name: consts.get(name, name) if name else None  # noqa: E731  (array, or a tensor's name)
    w, r = value(ins[1]), value(ins[2])
    hidden = attrs.get("hidden_size")
    if hidden is None:
        r_shape = r.shape if isinstance(r, np.ndarray) else shapes.get(r)
        if not r_shape or len(r_shape) != 3:
            return None
        hidden = r_shape[-1]
    gates = GATES[kind]
    b = value(ins[3])
    if b is None:
        b = np.zeros((len(reverse), 2 * gates * hidden), np.float32)
    return dict(kind=kind, steps=steps, w=w, r=r, b=b, h0=ins[5], c0=ins[6] if kind == "LSTM" else "",
                peep=value(ins[7]) if kind == "LSTM" else None, reverse=reverse, hidden=int(hidden), acts=acts,
                lbr=bool(attrs.get("linear_before_reset", 0)), clip=attrs.get("clip"),
                input_forget=bool(attrs.get("input_forget", 0)), layout=layout, lens=lens)


class _Unrolled:
    """The nodes and initializers replacing one recurrent node (names under `<node>/unrolled/`).
    Values are arrays (constants, computed here) or tensor names (computed by emitted ops)."""

    def __init__(self, node, opset: int = 13):
        self.node, self.nodes, self.inits, self.opset = node, [], [], opset
        self.prefix = (node.name or node.output[0]) + "/unrolled"
        self.clip, self.act = None, []

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), f"{self.prefix}/{name}"))
        return f"{self.prefix}/{name}"

    def tensor(self, value, name):
        """A tensor name for `value` (an array becomes an initializer)."""
        return value if isinstance(value, str) else self.const(name, np.asarray(value, np.float32))

    def op(self, kind, inputs, name, outputs=1, **attrs):
        names = [f"{self.prefix}/{name}"] if outputs == 1 else [f"{self.prefix}/{name}_{k}" for k in range(outputs)]
        if self.opset < 13 and kind in ("Squeeze", "Unsqueeze", "Split"):  # before 13: axes/split attributes
            const = next(i for i in self.inits if i.name == inputs[1])
            attrs["axes" if kind != "Split" else "split"] = numpy_helper.to_array(const).tolist()
            inputs = inputs[:1]
        self.nodes.append(helper.make_node(kind, inputs, names, name=f"{self.prefix}/{name}", **attrs))
        return names[0] if outputs == 1 else names

    # values: constants fold in NumPy, tensors get ops
    def rows(self, value, start, stop, name, axis=0):
        """value[start:stop] along `axis`."""
        if isinstance(value, np.ndarray):
            return np.take(value, range(start, stop), axis=axis)
        return self.op("Slice", [value, self.const(f"{name}s", [start]), self.const(f"{name}e", [stop]),
                                 self.const(f"{name}a", [axis])], name)

    def pick(self, value, d, name, axis=0):
        """value[d] along `axis` (that axis removed)."""
        if isinstance(value, np.ndarray):
            return np.take(value, d, axis=axis)
        return self.op("Squeeze", [self.rows(value, d, d + 1, f"{name}_r", axis), self.const(f"{name}q", [axis])], name)

    def transposed(self, value, name):
        if isinstance(value, np.ndarray):
            return value.T.copy()
        return self.op("Transpose", [value], name, perm=[1, 0])

    def plus(self, a, b, name):
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return a + b
        return self.op("Add", [self.tensor(a, f"{name}_a"), self.tensor(b, f"{name}_b")], name)

    def joined(self, parts, name):
        if all(isinstance(p, np.ndarray) for p in parts):
            return np.concatenate(parts)
        return self.op("Concat", [self.tensor(p, f"{name}{k}") for k, p in enumerate(parts)], name, axis=0)

    def split(self, x, sizes, name):
        """x's parts along axis 1, each a Slice: a slice fuses into the kernel that reads it, where a Split
        was a kernel of its own per step (with a tuple to make and a tensor per part to allocate)."""
        ends = np.cumsum(sizes)
        return [self.rows(x, int(end - size), int(end), f"{name}_{k}", axis=1)
                for k, (size, end) in enumerate(zip(sizes, ends))]

    def activate(self, which, x, name):
        """Activation `which` (0: f, 1: g, 2: h) of this direction; `clip` clips the gates' inputs
        (f and g), not the LSTM cell state that h reads (onnxruntime's reading of the spec)."""
        if self.clip is not None and which < 2:
            if self.opset >= 11:
                x = self.op("Clip", [x, self.const(f"{name}_lo", np.float32(-self.clip)),
                                     self.const(f"{name}_hi", np.float32(self.clip))], f"{name}_clip")
            else:
                x = self.op("Clip", [x], f"{name}_clip", min=-self.clip, max=self.clip)
        kind, alpha, beta = self.act[which]
        simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign", "softplus": "Softplus"}
        if kind in simple:
            return self.op(simple[kind], [x], name)
        if kind in ("leakyrelu", "thresholdedrelu", "elu"):
            return self.op({"leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "elu": "Elu"}[kind], [x],
                           name, alpha=alpha)
        if kind == "hardsigmoid":
            return self.op("HardSigmoid", [x], name, alpha=alpha, beta=beta)
        if kind == "affine":
            scaled = self.op("Mul", [x, self.const(f"{name}_alpha", np.float32(alpha))], f"{name}_mul")
            return self.op("Add", [scaled, self.const(f"{name}_beta", np.float32(beta))], name)
        inner = self.op("Mul", [x, self.const(f"{name}_beta", np.float32(beta))], f"{name}_in")  # scaledtanh
        return self.op("Mul", [self.op("Tanh", [inner], f"{name}_tanh"), self.const(f"{name}_alpha", np.float32(alpha))],
                       name)

    def build(self, kind, steps, w, r, b, h0, c0, peep, reverse, hidden, acts, lbr, clip, input_forget, layout, lens):
        gates, self.clip = GATES[kind], clip
        x = self.node.input[0] if not layout else self.op("Transpose", [self.node.input[0]], "x_tbi", perm=[1, 0, 2])
        state_axis = 1 if layout else 0  # initial states: [D, B, H], or [B, D, H] in layout 1
        ys, hs, cs = [], [], []
        for d, backward in enumerate(reverse):
            self.act = acts[d]
            bd = self.pick(b, d, f"B{d}")
            wb, rb = self.rows(bd, 0, gates * hidden, f"Wb{d}"), self.rows(bd, gates * hidden, 2 * gates * hidden, f"Rb{d}")
            if kind == "GRU":
                zr = self.plus(self.rows(wb, 0, 2 * hidden, f"Wbzr{d}"), self.rows(rb, 0, 2 * hidden, f"Rbzr{d}"), f"bzr{d}")
                wn, rn_b = self.rows(wb, 2 * hidden, 3 * hidden, f"Wbn{d}"), self.rows(rb, 2 * hidden, 3 * hidden, f"Rbn{d}")
                bias = self.joined([zr, wn if lbr else self.plus(wn, rn_b, f"bn{d}")], f"bias{d}")
            else:
                bias = self.plus(wb, rb, f"bias{d}")
            wt = self.tensor(self.transposed(self.pick(w, d, f"W{d}"), f"Wt{d}"), f"Wt{d}")
            xw = self.op("Add", [self.op("MatMul", [x, wt], f"xw{d}"), self.tensor(bias, f"Wb{d}")], f"xwb{d}")
            h = self._initial(h0, d, f"h_init{d}", state_axis)
            c = self._initial(c0, d, f"c_init{d}", state_axis)
            rd = self.pick(r, d, f"R{d}")
            if kind == "GRU":  # [R_z R_r]^T, R_n^T, Rb_n
                rt = (self.tensor(self.transposed(self.rows(rd, 0, 2 * hidden, f"Rzr{d}"), f"Rzrt{d}"), f"Rzrt{d}"),
                      self.tensor(self.transposed(self.rows(rd, 2 * hidden, 3 * hidden, f"Rn{d}"), f"Rnt{d}"), f"Rnt{d}"),
                      self.tensor(rn_b, f"Rbn{d}"))
            else:
                rt = self.tensor(self.transposed(rd, f"Rt{d}"), f"Rt{d}")
            pd = None
            if peep is not None:  # P [D, 3H]: i, o, f
                pdv = self.pick(peep, d, f"P{d}")
                pd = [self.tensor(self.rows(pdv, k * hidden, (k + 1) * hidden, f"P{d}{g}"), f"P{d}{g}")
                      for k, g in enumerate("iof")]
            out = [None] * steps
            for t in (range(steps - 1, -1, -1) if backward else range(steps)):
                s = f"{d}_{t}"
                # a Gather at a constant step, not a Slice: every step's kernel is then the same one (the
                # index an argument), where each Slice baked its offset into a kernel of its own
                xt = self.op("Gather", [xw, self.const(f"step{s}", np.int64(t))], f"x{s}", axis=0)
                if kind == "LSTM":
                    h_new, c_new = self._lstm_step(xt, h, c, rt, pd, hidden, input_forget, s)
                elif kind == "GRU":
                    h_new, c_new = self._gru_step(xt, h, *rt, hidden, lbr, s), None
                else:
                    h_new, c_new = self.activate(0, self._plus_recurrent(xt, h, rt, s), f"h{s}"), None
                if lens is None:
                    y, h, c = h_new, h_new, c_new
                else:  # steps past a sequence's length keep its state and output zeros
                    mask = self._mask(lens, t, s)
                    y = self.op("Mul", [mask, h_new], f"my{s}")
                    h = self._masked(mask, h_new, h, y, f"mh{s}")
                    c = None if c_new is None else self._masked(mask, c_new, c, None, f"mc{s}")
                out[t] = self.op("Unsqueeze", [y, self.const(f"u{s}", [0, 1])], f"y{s}")  # [1, 1, B, H]
            ys.append(self.op("Concat", out, f"y{d}", axis=0))
            hs.append(self.op("Unsqueeze", [h, self.const(f"uh{d}", [0])], f"hn{d}"))
            if c is not None:
                cs.append(self.op("Unsqueeze", [c, self.const(f"uc{d}", [0])], f"cn{d}"))
        # layout 1: Y [B, T, D, H], Y_h and Y_c [B, D, H]
        for name, parts, axis, perm in zip(self.node.output, (ys, hs, cs), (1, 0, 0), ([2, 0, 1, 3], [1, 0, 2], [1, 0, 2])):
            if not name:
                continue
            joined = name if not layout else f"{self.prefix}/{name}_tdbh"
            self.nodes.append(helper.make_node("Concat", parts, [joined], name=f"{self.prefix}/out_{name}", axis=axis))
            if layout:
                self.nodes.append(helper.make_node("Transpose", [joined], [name], name=f"{self.prefix}/layout_{name}",
                                                   perm=perm))

    def _mask(self, lens, t, s):
        """[B, 1]: 1.0 where step t lies within the sequence (t < sequence_lens), else 0.0. Both
        directions: the reverse one then starts each sequence at its own last step."""
        inside = self.op("Less", [self.const(f"t{s}", np.array(t, np.int32)), lens], f"in{s}")
        as_float = self.op("Cast", [inside], f"inf{s}", to=onnx.TensorProto.FLOAT)
        return self.op("Unsqueeze", [as_float, self.const(f"mu{s}", [1])], f"m{s}")

    def _masked(self, mask, new, old, masked_new, name):
        """new where the mask is 1, old (None: zeros) where it is 0."""
        if old is None:
            return masked_new if masked_new is not None else self.op("Mul", [mask, new], name)
        step = self.op("Mul", [mask, self.op("Sub", [new, old], f"{name}_d")], f"{name}_m")
        return self.op("Add", [old, step], name)

    def _plus_recurrent(self, x, h, rt, s):
        """x + h R^T (just x while h is the zero initial state)."""
        return x if h is None else self.op("Add", [x, self.op("MatMul", [h, rt], f"hr{s}")], f"g{s}")

    def _peep(self, gate, p, c, s):
        """gate + P c (the gate itself without peepholes or while c is the zero initial state)."""
        return gate if p is None or c is None else self.op("Add", [gate, self.op("Mul", [p, c], f"p{s}")], f"pg{s}")

    def _lstm_step(self, xt, h, c, rt, pd, hidden, input_forget, s):
        pi, po, pf = pd or (None, None, None)
        g = self._plus_recurrent(xt, h, rt, s)
        gi, go, gf, gc = self.split(g, [hidden] * 4, f"gates{s}")
        i = self.activate(0, self._peep(gi, pi, c, f"i{s}"), f"si{s}")
        ic = self.op("Mul", [i, self.activate(1, gc, f"tc{s}")], f"ic{s}")
        if c is not None:
            if input_forget:  # f = 1 - i
                f = self.op("Sub", [self.const(f"one{s}", np.ones((), np.float32)), i], f"sf{s}")
            else:
                f = self.activate(0, self._peep(gf, pf, c, f"f{s}"), f"sf{s}")
            ic = self.op("Add", [self.op("Mul", [f, c], f"fc{s}"), ic], f"c{s}")
        o = self.activate(0, self._peep(go, po, ic, f"o{s}"), f"so{s}")
        h = self.op("Mul", [o, self.activate(2, ic, f"tanhc{s}")], f"h{s}")
        return h, ic

    def _gru_step(self, xt, h, rzr, rn, rb_n, hidden, lbr, s):
        x_zr, x_n = self.split(xt, [2 * hidden, hidden], f"xsplit{s}")
        zr = self._plus_recurrent(x_zr, h, rzr, f"zr{s}")
        z, g = (self.activate(0, v, f"{k}{s}") for k, v in zip("zr", self.split(zr, [hidden] * 2, f"zrsplit{s}")))
        if h is None:  # h = 0: (r h) R_n^T = 0, r (0 R_n^T + Rb_n) = r Rb_n
            inner = self.op("Mul", [g, rb_n], f"rh{s}") if lbr else None
        elif lbr:
            hr = self.op("Add", [self.op("MatMul", [h, rn], f"hrn{s}"), rb_n], f"hrnb{s}")
            inner = self.op("Mul", [g, hr], f"rh{s}")
        else:
            inner = self.op("MatMul", [self.op("Mul", [g, h], f"rh{s}"), rn], f"rhr{s}")
        n = self.activate(1, x_n if inner is None else self.op("Add", [x_n, inner], f"npre{s}"), f"n{s}")
        keep = self.op("Mul", [self.op("Sub", [self.const(f"one{s}", np.ones((), np.float32)), z], f"1mz{s}"), n],
                       f"zn{s}")
        return keep if h is None else self.op("Add", [keep, self.op("Mul", [z, h], f"zh{s}")], f"h{s}")

    def _initial(self, state, d, name, axis):
        """Direction d's initial state [B, H] (a slice of the given one), else None (zeros)."""
        if not state:
            return None
        return self.pick(state, d, name, axis)
