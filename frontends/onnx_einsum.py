"""Einsum with one constant operand as a Transpose/Reshape/MatMul/Reshape/Transpose chain.

    Einsum("btgi,gih->btgh", x, W)   (a grouped linear layer: DeepFilterNet, grouped GRU inputs)
      -> x: Transpose to (rows..., groups..., contracted...) -> Reshape (rows..., G*K)
         MatMul with the block-diagonal (G*K, G*N) weight -> Reshape (rows..., groups..., cols...)
         -> Transpose to the output's letter order

Letters of the equation are classed by where they occur: in x, W and the output (groups), in x
and W only (contracted), in x and the output (rows), in W and the output (columns). With no group
letter it is a plain matmul; with groups, the weight is block-diagonal, which is exact and keeps
the one dense integer path (it costs G times the multiply-adds of the grouped form: fine for the
small groups such layers have).

    Einsum("bcd,bnd->bcn", a, b)   (two activations: attention-like products, TesseraNet)
      -> a: Transpose to (batch..., left..., contracted...) -> Reshape (B, L, K)
         b: Transpose to (batch..., contracted..., right...) -> Reshape (B, K, R)
         MatMul -> Reshape (batch..., left..., right...) -> Transpose to the output's order

an activation x activation matmul like attention's. A letter only one operand has that the output
drops is summed away first (a ReduceSum; over a constant, with NumPy). Equations with a letter
repeated within an operand (traces, diagonals) or a size-1 letter broadcast against a larger one are
left alone (and refused by the op check, naming the node). An ellipsis over operands of static shapes
is first written out as letters (`...pd,...qd->...pq`, OWL-ViT's class head: `Apd,Aqd->Apq`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def einsum_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite every eligible Einsum of `model` in place (shapes must be inferred); returns how many."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shapes = _shapes(model)
    nodes, done = [], 0
    for index, node in enumerate(graph.node):
        einsum = node.op_type == "Einsum" and node.domain in ("", "ai.onnx")
        if einsum:
            _explicit_ellipsis(node, inits, shapes)
        prefix = f"{node.name or 'Einsum_' + str(index)}/"
        pre = _summed_first(node, inits, shapes, prefix, graph, _opset(model)) if einsum else None
        if pre is not None:  # letters one operand alone has and the output drops: summed away first
            summed, node = pre
            nodes.extend(summed)
        plan = _plan(node, inits, shapes) if einsum else None
        pair = _plan_pair(node, inits, shapes) if einsum and plan is None else None
        if plan is not None:
            nodes.extend(_emit(node, prefix, *plan, graph))
        elif pair is not None:
            nodes.extend(_emit_pair(node, prefix, *pair, graph))
        else:
            nodes.append(node)
            continue
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return done


def _explicit_ellipsis(node, inits, shapes) -> None:
    """Write an explicit equation's `...` out as letters it does not use, in place, where every operand's
    rank is known: the broadcast dims of each operand right-aligned (NumPy's rule), the output's as many
    as the widest operand has."""
    equation = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "equation"), b"")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if "..." not in equation or "->" not in equation:
        return
    ranks = []
    for name in node.input:
        if name in inits:
            ranks.append(len(inits[name].dims))
        elif name in shapes:
            ranks.append(len(shapes[name]))
        else:
            return
    lhs, out = equation.split("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks) or out.count("...") > 1 or any(t.count("...") > 1 for t in terms):
        return
    extra = [rank - len(t.replace("...", "")) if "..." in t else 0 for t, rank in zip(terms, ranks)]
    if any(e < 0 for e in extra):
        return
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
    width = max(extra)
    if width > len(free):
        return
    letters = "".join(free[:width])
    terms = [t.replace("...", letters[width - e:]) for t, e in zip(terms, extra)]
    out = out.replace("...", letters)
    for attribute in node.attribute:
        if attribute.name == "equation":
            attribute.s = f"{','.join(terms)}->{out}".encode()


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _summed_first(node, inits, shapes, prefix, graph, opset):
    """(ReduceSum nodes, the Einsum on their results) where an operand has letters that neither the other
    operand nor the output has (`bhqxc,bhlkc->bhqxk` sums l over the second operand alone: torch's
    exporter writes such equations), or None. A constant operand is summed here, with NumPy."""
    parsed = _terms(node)
    if parsed is None:
        return None
    (at, bt), out = parsed
    terms, inputs, nodes = [at, bt], list(node.input), []
    for i, (term, other) in enumerate(((at, bt), (bt, at))):
        alone = [c for c in term if c not in other and c not in out]
        name = inputs[i]
        if not alone or (name not in inits and name not in shapes):
            continue
        axes = [term.index(c) for c in alone]
        kept = "".join(c for c in term if c not in alone)
        summed = f"{prefix}sum{i}"
        if name in inits:
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]).sum(tuple(axes)), summed))
            inits[summed] = graph.initializer[-1]
        else:
            if opset >= 13:
                graph.initializer.append(numpy_helper.from_array(np.asarray(axes, np.int64), f"{summed}_axes"))
                nodes.append(helper.make_node("ReduceSum", [name, f"{summed}_axes"], [summed], name=summed, keepdims=0))
            else:
                nodes.append(helper.make_node("ReduceSum", [name], [summed], name=summed, axes=axes, keepdims=0))
            shapes[summed] = tuple(d for k, d in enumerate(shapes[name]) if k not in axes)
        terms[i], inputs[i] = kept, summed
    if not nodes and inputs == list(node.input):
        return None
    einsum = helper.make_node("Einsum", inputs, list(node.output), name=node.name,
                              equation=f"{terms[0]},{terms[1]}->{out}")
    return nodes, einsum


def _shapes(model: onnx.ModelProto) -> dict:
    out = {}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims) and v.type.tensor_type.HasField("shape"):
            out[v.name] = tuple(d.dim_value for d in dims)
    return out


def _terms(node) -> tuple[list[str], str] | None:
    """The two operand terms and the output term of a two-operand explicit Einsum without repeats."""
    equation = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "equation"), b"")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if len(node.input) != 2 or "->" not in equation or "." in equation:
        return None
    lhs, out = equation.split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or any(len(set(t)) != len(t) for t in (*terms, out)):
        return None
    return terms, out


def _plan_pair(node, inits, shapes):
    """Two activation operands of static shapes, every shared letter of one size: the batched matmul's
    letter classes and sizes."""
    parsed = _terms(node)
    if parsed is None or any(n in inits or n not in shapes for n in node.input):
        return None
    (at, bt), out = parsed
    a_shape, b_shape = shapes[node.input[0]], shapes[node.input[1]]
    if len(at) != len(a_shape) or len(bt) != len(b_shape) or not set(out) <= set(at) | set(bt):
        return None
    size_a, size_b = dict(zip(at, a_shape)), dict(zip(bt, b_shape))
    if any(size_a[c] != size_b[c] for c in set(at) & set(bt)):
        return None
    batch = [c for c in out if c in at and c in bt]
    contracted = [c for c in at if c in bt and c not in out]
    left, right = [c for c in out if c in at and c not in bt], [c for c in out if c in bt and c not in at]
    if len(batch) + len(contracted) + len(left) != len(at) or len(batch) + len(contracted) + len(right) != len(bt):
        return None  # a letter summed away on one side only
    return at, bt, batch, contracted, left, right, out, {**size_a, **size_b}


def _emit_pair(node, prefix, at, bt, batch, contracted, left, right, out, size, graph):
    def const(name, value):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), prefix + name))
        return prefix + name

    def prod(letters):
        return int(np.prod([size[c] for c in letters], dtype=np.int64))

    nodes = []

    def operand(src, term, order, shape3, tag):
        if order != list(term):
            nodes.append(helper.make_node("Transpose", [src], [prefix + tag + "_t"], name=prefix + tag + "_t",
                                          perm=[term.index(c) for c in order]))
            src = prefix + tag + "_t"
        nodes.append(helper.make_node("Reshape", [src, const(tag + "_shape", shape3)], [prefix + tag + "_3d"],
                                      name=prefix + tag + "_3d"))
        return prefix + tag + "_3d"

    a = operand(node.input[0], at, batch + left + contracted, [prod(batch), prod(left), prod(contracted)], "a")
    b = operand(node.input[1], bt, batch + contracted + right, [prod(batch), prod(contracted), prod(right)], "b")
    nodes.append(helper.make_node("MatMul", [a, b], [prefix + "y_3d"], name=prefix + "matmul"))
    produced = batch + left + right
    target = node.output[0] if produced == list(out) else prefix + "y"
    nodes.append(helper.make_node("Reshape", [prefix + "y_3d", const("y_shape", [size[c] for c in produced])],
                                  [target], name=prefix + "y"))
    if target != node.output[0]:
        nodes.append(helper.make_node("Transpose", [target], [node.output[0]], name=prefix + "y_t",
                                      perm=[produced.index(c) for c in out]))
    return nodes


def _plan(node, inits, shapes):
    parsed = _terms(node)
    if parsed is None:
        return None
    terms, out = parsed
    const = [name in inits for name in node.input]
    if const.count(True) != 1 or node.input[const.index(False)] not in shapes:
        return None
    xi, wi = const.index(False), const.index(True)
    xs, ws = terms[xi], terms[wi]
    x_shape = shapes[node.input[xi]]
    w = numpy_helper.to_array(inits[node.input[wi]])
    if len(xs) != len(x_shape) or len(ws) != w.ndim or not set(out) <= set(xs) | set(ws):
        return None
    groups = [c for c in xs if c in ws and c in out]
    contracted = [c for c in xs if c in ws and c not in out]
    rows = [c for c in xs if c not in ws]
    cols = [c for c in ws if c not in xs]
    if any(c not in out for c in rows + cols):
        return None  # a letter summed away on one side only
    size = {**dict(zip(xs, x_shape)), **dict(zip(ws, w.shape))}
    if any(size[c] != n for c, n in zip(xs, x_shape)) or any(size[c] != n for c, n in zip(ws, w.shape)):
        return None
    if any(dict(zip(xs, x_shape))[c] != dict(zip(ws, w.shape))[c] for c in groups + contracted):
        return None  # broadcasting a size-1 dim against a constant: not the matmul form
    g = int(np.prod([size[c] for c in groups], dtype=np.int64))
    k = int(np.prod([size[c] for c in contracted], dtype=np.int64))
    n = int(np.prod([size[c] for c in cols], dtype=np.int64))
    w3 = np.transpose(w, [ws.index(c) for c in groups + contracted + cols]).reshape(g, k, n)
    block = np.zeros((g * k, g * n), w.dtype)
    for j in range(g):
        block[j * k:(j + 1) * k, j * n:(j + 1) * n] = w3[j]
    return (node.input[xi], xs, rows, groups, contracted, cols, out, size, block)


def _emit(node, prefix, x, xs, rows, groups, contracted, cols, out, size, block, graph):
    def const(name, value):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), prefix + name))
        return prefix + name

    nodes = []
    order = rows + groups + contracted
    src = x
    if order != list(xs):
        nodes.append(helper.make_node("Transpose", [src], [prefix + "x_t"], name=prefix + "x_t",
                                      perm=[xs.index(c) for c in order]))
        src = prefix + "x_t"
    row_dims = [size[c] for c in rows]
    nodes.append(helper.make_node("Reshape", [src, const("x_shape", np.array(row_dims + [block.shape[0]], np.int64))],
                                  [prefix + "x_2d"], name=prefix + "x_2d"))
    nodes.append(helper.make_node("MatMul", [prefix + "x_2d", const("weight", block)], [prefix + "y_2d"],
                                  name=prefix + "matmul"))
    produced = rows + groups + cols
    target = node.output[0] if produced == list(out) else prefix + "y"
    nodes.append(helper.make_node("Reshape", [prefix + "y_2d", const("y_shape", np.array(
        row_dims + [size[c] for c in groups + cols], np.int64))], [target], name=prefix + "y"))
    if target != node.output[0]:
        nodes.append(helper.make_node("Transpose", [target], [node.output[0]], name=prefix + "y_t",
                                      perm=[produced.index(c) for c in out]))
    return nodes
