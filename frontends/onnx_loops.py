"""Unroll `Scan` and `Loop` nodes whose iteration count is known at compile time.

    Scan(s_0..; x_0..) {body(s.., x_t..) -> s'.., y_t..}   ->   body inlined once per t, the states
        chained, x_t a slice of each scan input along its axis (reversed where its direction is 1),
        each scan output the concat of its y_t along its axis (likewise reversed)
    Loop(M, cond; v_0..) {body(i, c, v..) -> c', v'.., y..}   ->   body inlined M times, i the
        constant iteration number, each scan output the y of every iteration stacked on a new axis 0

A static graph cannot stop early, so a Loop unrolls only where it cannot: M a constant, the cond
input absent or a constant true (or computed from constants), and the body's cond output its cond
input, a constant true, or known in each iteration from the iteration number and the constant
carried values alone (tf2onnx's
Keras LSTM/GRU `while` loops; paddle2onnx's counting decoders): it runs until that cond is false.
Without M (tf2onnx's loops from Keras 2.15), or with an M beyond MAX_STEPS (tf2onnx writes a TFLite WHILE
with M = INT64_MAX), that cond must turn false within MAX_STEPS.
A Scan needs its scan inputs' lengths (static shapes: bind free dims with --input-shape). Anything
else stays and is refused by the op check with the node named. Nested loops unroll from the
outside in (the inlined bodies are unrolled in turn); an If inside becomes a select (onnx_if.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_if import fresh_prefix, graph_names, inline_graph

MAX_STEPS = 4096  # iterations per node: beyond this the unrolled graph is no longer a sensible build


def unroll_loops(model: onnx.ModelProto) -> int:
    """Unroll every eligible top-level Scan and Loop of `model` in place (again for loops the
    unrolled bodies contain); returns how many nodes were unrolled."""
    done = 0
    for _ in range(8):  # nesting depth
        if not any(n.op_type in ("Scan", "Loop") for n in model.graph.node):
            break
        model_shapes = _shapes(model)
        consts = {i.name: i for i in model.graph.initializer}
        consts.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                       if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
        taken, nodes, count = graph_names(model.graph), [], 0
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        for index, node in enumerate(model.graph.node):
            unroller = {"Scan": _scan, "Loop": _loop}.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            prefix = fresh_prefix(f"{node.name or node.op_type + '_' + str(index)}/", taken) if unroller else ""
            unrolled = unroller(node, model.graph, prefix, model_shapes, consts, opset) if unroller else None
            if unrolled is None:
                nodes.append(node)
                continue
            nodes.extend(unrolled)
            count += 1
        if not count:
            break
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        done += count
    return done


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (shape inference is a help here, not a requirement)
        inferred = model
    return {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _body(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "body")


class _Emitter:
    """Nodes and constants under one prefix."""

    def __init__(self, graph: onnx.GraphProto, prefix: str, opset: int):
        self.graph, self.prefix, self.opset, self.nodes = graph, prefix, opset, []
        self.values = {}  # constant name -> value, for the attribute forms of older opsets

    def const(self, name: str, value) -> str:
        self.values[self.prefix + name] = np.asarray(value)
        self.graph.initializer.append(numpy_helper.from_array(self.values[self.prefix + name], self.prefix + name))
        return self.prefix + name

    def op(self, kind: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attrs) -> str:
        if self.opset < 13 and kind in ("Squeeze", "Unsqueeze"):  # axes as an attribute before 13
            attrs["axes"], inputs = self.values[inputs[1]].tolist(), inputs[:1]
        outputs = outputs or [self.prefix + name]
        self.nodes.append(helper.make_node(kind, inputs, outputs, name=self.prefix + name, **attrs))
        return outputs[0]

    def take(self, x: str, axis: int, t: int, name: str) -> str:
        """x[..., t, ...] along `axis`, that axis removed."""
        if self.opset < 10:  # Slice-1: attributes
            sliced = self.op("Slice", [x], f"{name}_slice", starts=[t], ends=[t + 1], axes=[axis])
        else:
            sliced = self.op("Slice", [x, self.const(f"{name}_b", [t]), self.const(f"{name}_e", [t + 1]),
                                       self.const(f"{name}_a", [axis])], f"{name}_slice")
        return self.op("Squeeze", [sliced, self.const(f"{name}_q", [axis])], name)

    def stack(self, parts: list[str], axis: int, output: str, name: str) -> str:
        """The parts (each without `axis`) stacked along a new `axis`, written to `output`."""
        grown = [self.op("Unsqueeze", [p, self.const(f"{name}_u{k}", [axis])], f"{name}_u{k}_v")
                 for k, p in enumerate(parts)]
        return self.op("Concat", grown, name, outputs=[output], axis=axis)


def _scan(node, graph, prefix, shapes, consts, opset) -> list | None:
    if opset < 9:  # Scan-8 has a batch axis and sequence_lens
        return None
    body, attrs = _body(node), {a.name: helper.get_attribute_value(a) for a in node.attribute}
    m = int(attrs["num_scan_inputs"])
    n = len(node.input) - m
    k = len(body.output) - n
    in_axes = list(attrs.get("scan_input_axes", [0] * m))
    in_dirs = list(attrs.get("scan_input_directions", [0] * m))
    out_axes = list(attrs.get("scan_output_axes", [0] * k))
    out_dirs = list(attrs.get("scan_output_directions", [0] * k))
    lengths = set()
    for j, x in enumerate(node.input[n:]):
        shape = shapes.get(x) or (list(consts[x].dims) if x in consts else None)
        if not shape or not all(shape):
            return None  # a free length
        in_axes[j] %= len(shape)
        lengths.add(shape[in_axes[j]])
    if len(lengths) != 1 or not 0 < min(lengths) <= MAX_STEPS:
        return None
    steps = lengths.pop()
    out_rank = [len(shapes.get(o, [])) for o in node.output[n:]]
    if any(a < 0 for a in out_axes) and not all(out_rank):
        return None
    out_axes = [a % (r or 1) if a < 0 else a for a, r in zip(out_axes, out_rank)]
    emit = _Emitter(graph, prefix, opset)
    states, ys = list(node.input[:n]), [[None] * steps for _ in range(k)]
    for t in range(steps):
        xs = [emit.take(x, in_axes[j], steps - 1 - t if in_dirs[j] else t, f"x{j}_{t}")
              for j, x in enumerate(node.input[n:])]
        bind = {formal.name: actual for formal, actual in zip(body.input, [*states, *xs])}
        nodes, outs = inline_graph(body, f"{prefix}{t}/", graph, bind)
        emit.nodes.extend(nodes)
        states = outs[:n]
        for j, y in enumerate(outs[n:]):
            ys[j][steps - 1 - t if out_dirs[j] else t] = y
    for name, state in zip(node.output[:n], states):
        if name:
            emit.op("Identity", [state], f"state_{name}", outputs=[name])
    for j, name in enumerate(node.output[n:]):
        if name:
            emit.stack(ys[j], out_axes[j], name, f"y{j}")
    return emit.nodes


def _loop(node, graph, prefix, shapes, consts, opset) -> list | None:
    body = _body(node)
    ins = list(node.input) + [""] * max(0, 2 - len(node.input))
    trip, cond = ins[0], ins[1]
    limit = _known(trip, graph, consts) if trip else None
    if trip and limit is None:
        return None
    # no trip count (tf2onnx's Keras `while` loops), or one no build could unroll (tf2onnx writes a TFLite
    # WHILE with INT64_MAX): the cond alone ends it, within MAX_STEPS
    steps = int(limit.reshape(-1)[0]) if trip else MAX_STEPS
    unbounded = not trip or steps > MAX_STEPS
    steps = MAX_STEPS if unbounded else steps
    if steps <= 0:
        return None
    if cond and not ((first := _known(cond, graph, consts)) is not None and bool(first.reshape(-1)[0])):
        return None
    n = len(ins) - 2
    if not _cond_stays_true(body):
        steps = _counted_steps(body, steps, ins[2:], consts, bounded=not unbounded)
        if steps is None:
            return None
    elif unbounded:
        return None
    emit = _Emitter(graph, prefix, opset)
    carried, ys = list(ins[2:]), [[] for _ in range(len(body.output) - 1 - n)]
    true = emit.const("true", np.array(True))
    for t in range(steps):
        i = emit.const(f"i{t}", np.array(t, np.int64))
        bind = {formal.name: actual for formal, actual in zip(body.input, [i, true, *carried])}
        nodes, outs = inline_graph(body, f"{prefix}{t}/", graph, bind)
        emit.nodes.extend(nodes)
        carried = outs[1:1 + n]
        for j, y in enumerate(outs[1 + n:]):
            ys[j].append(y)
    for name, value in zip(node.output[:n], carried):
        if name:
            emit.op("Identity", [value], f"final_{name}", outputs=[name])
    for j, name in enumerate(node.output[n:]):
        if name:
            emit.stack(ys[j], 0, name, f"y{j}")
    return emit.nodes


def _known(name: str, graph: onnx.GraphProto, consts: dict, depth: int = 4) -> np.ndarray | None:
    """The value of `name` where it is a constant or small outer-graph nodes compute it from constants
    alone (tf2onnx's first cond: Less(0, n)), else None."""
    if name in consts:
        return numpy_helper.to_array(consts[name])
    producer = next((n for n in graph.node if name in n.output), None)
    if depth == 0 or producer is None or producer.op_type in ("Loop", "Scan", "If") or \
            producer.op_type not in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Not",
                                     "Add", "Sub", "Mul", "Cast", "Identity", "Min", "Max"):
        return None
    values = [_known(i, graph, consts, depth - 1) if i else None for i in producer.input]
    if any(v is None or v.size > 64 for v, i in zip(values, producer.input) if i):
        return None
    from onnx.reference import ReferenceEvaluator

    try:
        outs = ReferenceEvaluator(producer).run(None, {i: v for i, v in zip(producer.input, values) if i})
    except Exception:  # noqa: BLE001  (what the reference cannot run stays unknown)
        return None
    return np.asarray(outs[list(producer.output).index(name)])


def _cond_stays_true(body: onnx.GraphProto) -> bool:
    """The body's cond output is its cond input (through Identity nodes) or a constant true."""
    cond_in, name = body.input[1].name, body.output[0].name
    producers = {o: n for n in body.node for o in n.output}
    while name in producers and producers[name].op_type == "Identity":
        name = producers[name].input[0]
    if name == cond_in:
        return True
    init = next((i for i in body.initializer if i.name == name), None)
    if init is None and name in producers and producers[name].op_type == "Constant":
        init = producers[name].attribute[0].t
    return init is not None and bool(numpy_helper.to_array(init).reshape(-1)[0])


def _counted_steps(body: onnx.GraphProto, steps: int, carried: list[str], consts: dict,
                   bounded: bool = True) -> int | None:
    """How many iterations run (at most `steps`; without a trip count, `bounded` False, the cond
    must turn false within them), from the body's cond output evaluated with what is
    known at compile time: the iteration number, constant initial values of the carried values and
    whatever the body computes from them alone (tf2onnx's Keras RNN loops recompute `counter < n and
    i + 1 < n` with n from the bound input shape; paddle2onnx's decoders count `i + 1 < n + 1` up to a
    constant n, SLANet's 501 of at most 1024 steps). Nodes that read data are skipped; a cond that
    depends on them is not known (None: the Loop is not unrolled)."""
    from onnx.reference import ReferenceEvaluator

    read = {i for node in body.node for i in node.input}  # only these constants, not every weight of the model
    fixed = {name: numpy_helper.to_array(consts[name]) for name in read if name in consts}
    fixed.update({i.name: numpy_helper.to_array(i) for i in body.initializer})
    state = [numpy_helper.to_array(consts[c]) if c in consts else None for c in carried]
    evaluators: dict[int, object] = {}
    for t in range(steps - 1):
        known = dict(fixed)
        known[body.input[0].name], known[body.input[1].name] = np.array(t, np.int64), np.array(True)
        for formal, value in zip(body.input[2:], state):
            if value is not None:
                known[formal.name] = value
        for k, node in enumerate(body.node):
            if node.op_type in ("Loop", "Scan", "If") or not all(i in known for i in node.input if i):
                continue
            try:
                evaluator = evaluators.get(k) or evaluators.setdefault(k, ReferenceEvaluator(node))
                outs = evaluator.run(None, {i: known[i] for i in node.input if i})
            except Exception:  # noqa: BLE001  (an op the reference cannot run: its outputs stay unknown)
                continue
            known.update({o: np.asarray(v) for o, v in zip(node.output, outs) if o})
        cond = known.get(body.output[0].name)
        if cond is None:
            return None
        if not bool(np.asarray(cond).reshape(-1)[0]):
            return t + 1
        state = [known.get(o.name) for o in body.output[1:1 + len(carried)]]
    return steps if bounded else None
