"""Pre-quantized ONNX models (QDQ format: onnxruntime's quantize_static default, TensorRT and
Olive exports; QOperator format: QLinearConv, QLinearMatMul, ...; onnxruntime's dynamic
quantization: DynamicQuantizeLinear + MatMulInteger or ConvInteger) back to the float graph they
quantize, which intq then calibrates and lowers itself. QOperator nodes first become DequantizeLinear -> float op ->
QuantizeLinear, then:

    DequantizeLinear(constant q, s, zp)         -> the constant (q - zp) * s (weights, int32 biases)
    DequantizeLinear(QuantizeLinear(x, s, zp))  -> Clip(x, (qmin - zp) s, (qmax - zp) s): the pair's clamp
                                                   (quantizers drop a ReLU there), without its rounding
    DequantizeLinear(integer tensor x, s, zp)   -> (float(x) - zp) * s   (a quantized graph input)

The scales in the file are not reused: intq's own calibration (with the data given by --calib)
chooses every scale, so the result does not depend on how the file was quantized. A QuantizeLinear
whose output is read by anything but a DequantizeLinear stays (and is named by the op check).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError
from .onnx_qdq_concat import dequantize_before_concat
from .onnx_qdq_dynamic import dynamic_pairs_to_float
from .onnx_qdq_outputs import quantized_outputs_as_float_ops
from .onnx_tail import names_read

STANDARD = ("", "ai.onnx", "com.microsoft")  # onnxruntime's contrib Q/DQ take the same inputs
MASK_FILL = 1e30  # beyond any activation: only masks' fills (float32's lowest, -1e38...) reach it


def _is(node, op: str) -> bool:
    return node.op_type == op and node.domain in STANDARD


def _dequantized(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    q = q.astype(np.float64)
    scale, zero = scale.astype(np.float64), (zero.astype(np.float64) if zero is not None else 0.0)
    if scale.ndim == 1 and scale.size > 1 or block:
        axis = axis % q.ndim
        if block:  # blocked quantization (opset 21): one scale per `block` elements along `axis`
            scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            zero = zero if np.isscalar(zero) else np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = zero if np.isscalar(zero) else zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _clamp(quantize, value, out: str, prefix: str, inits: list, bounds: tuple | None = None) -> list:
    """What a QuantizeLinear -> DequantizeLinear pair does besides rounding: clamp x to the range its integer
    type holds, [(qmin - zp) s, (qmax - zp) s]. Quantizers drop a ReLU (or ReLU6) before a pair whose range
    starts (ends) there, so the clamp is part of the model. `bounds`: an integer Clip between the two
    (brevitas' QCDQ narrows the range so: [-127, 127], or [-8, 7] for 4 bits in an int8 container)."""
    scale = value(quantize.input[1])
    zero = value(quantize.input[2]) if len(quantize.input) > 2 and quantize.input[2] else None
    if zero is None and len(quantize.input) > 2 and quantize.input[2]:  # given but not a constant: range unknown
        return [helper.make_node("Identity", [quantize.input[0]], [out], name=f"{prefix}/unquantized")]
    attrs = {a.name: helper.get_attribute_value(a) for a in quantize.attribute}
    grid = _integer_range(quantize, value)
    if scale is None or attrs.get("block_size") or grid is None:
        return [helper.make_node("Identity", [quantize.input[0]], [out], name=f"{prefix}/unquantized")]
    qmin, qmax, _ = grid
    if bounds is not None:
        qmin, qmax = max(qmin, bounds[0]), min(qmax, bounds[1])
    zero = np.zeros_like(scale, np.float64) if zero is None else zero.astype(np.float64)
    lo, hi = ((q - zero) * scale.astype(np.float64) for q in (qmin, qmax))
    if scale.size > 1:  # per axis: shaped to broadcast along it (rank from the scale's axis is unknown here)
        return [helper.make_node("Identity", [quantize.input[0]], [out], name=f"{prefix}/unquantized")]
    if max(float(np.max(np.abs(lo))), float(np.max(np.abs(hi)))) >= MASK_FILL:  # a grid spanning an additive mask's fill (-3.4e38):
        # its steps (~1e33) zero every ordinary value, so the file there computes nothing meaningful; as a
        # clamp it would hide the mask from the softmax (and clip the logits at the grid's other end)
        return [helper.make_node("Identity", [quantize.input[0]], [out], name=f"{prefix}/unquantized")]
    names = []
    for tag, v in (("min", lo), ("max", hi)):
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32).reshape(()), f"{prefix}/{tag}"))
        names.append(inits[-1].name)
    return [helper.make_node("Clip", [quantize.input[0], *names], [out], name=f"{prefix}/clamp")]


def _integer_range(node, value) -> tuple[int, int, np.dtype] | None:
    """The integer range a QuantizeLinear saturates to and the dtype that holds it (None: not integer)."""
    zero = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    elem = attrs.get("output_dtype") or (helper.np_dtype_to_tensor_dtype(zero.dtype) if zero is not None
                                          else onnx.TensorProto.UINT8)
    bits = {onnx.TensorProto.INT4: (-8, 7, np.int8), onnx.TensorProto.UINT4: (0, 15, np.uint8)}
    if elem in bits:
        return bits[elem][0], bits[elem][1], np.dtype(bits[elem][2])
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    if not np.issubdtype(dtype, np.integer):
        return None
    return int(np.iinfo(dtype).min), int(np.iinfo(dtype).max), np.dtype(dtype)


def _clip_bounds(clip, value) -> tuple[float, float] | None:
    """A Clip's (min, max) as numbers (-inf / inf where not given); None where one is given but not a
    scalar constant."""
    got = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(clip.input) > i and clip.input[i]:
            v = value(clip.input[i])
            if v is None or v.size != 1:
                return None
            got.append(float(v))
        else:
            got.append(default)
    return got[0], got[1]


def _integer_constants(graph: onnx.GraphProto, value) -> dict:
    """QuantizeLinear of a constant, and an integer Clip or Cast of such a result, computed here (name ->
    integer value). Brevitas' QCDQ export writes every weight so: QuantizeLinear(float W) -> Clip(-127, 127)
    -> DequantizeLinear, per output channel too; the DequantizeLinear then folds like a stored integer weight."""
    folded: dict = {}

    def val(name):
        return folded[name] if name in folded else value(name)

    for node in graph.node:
        if _is(node, "QuantizeLinear") and len(node.input) >= 2:
            x, scale = val(node.input[0]), val(node.input[1])
            zero = val(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            grid = _integer_range(node, val)
            if x is None or scale is None or grid is None or attrs.get("block_size") or \
                    (len(node.input) > 2 and node.input[2] and zero is None):
                continue
            scale = scale.astype(np.float32)
            zero = np.zeros((), np.float64) if zero is None else zero.astype(np.float64)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * x.ndim
                shape[int(attrs.get("axis", 1)) % x.ndim] = -1
                scale = scale.reshape(shape)
                zero = zero.reshape(shape) if zero.size > 1 else zero
            q = np.rint((x.astype(np.float32) / scale).astype(np.float64)) + zero  # round half to even, as the spec
            folded[node.output[0]] = np.clip(q, grid[0], grid[1]).astype(grid[2])
        elif node.op_type in ("Clip", "Cast") and node.domain in STANDARD and node.input and node.input[0] in folded:
            x = folded[node.input[0]]
            if node.op_type == "Cast":
                to = helper.get_attribute_value(node.attribute[0]) if node.attribute else None
                dtype = helper.tensor_dtype_to_np_dtype(to) if to else None
                if dtype is None or not np.issubdtype(dtype, np.integer):
                    continue
                folded[node.output[0]] = x.astype(dtype)
                continue
            bounds = _clip_bounds(node, val)
            if bounds is None:
                continue
            folded[node.output[0]] = np.clip(x, *bounds).astype(x.dtype)
    return folded


def _constants(graph: onnx.GraphProto):
    """name -> its value, for initializers, Constant nodes and Identity nodes of either (torch's exporter
    shares a repeated constant, e.g. a fake-quant's zero point, through Identity nodes); None for anything else."""
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    copies = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.domain in STANDARD and n.input}

    def value(name):
        for _ in range(len(copies) + 1):
            if name not in copies or name in inits or name in consts:
                break
            name = copies[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts and consts[name].attribute[0].HasField("t"):
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    return value


# QOperator ops: (float op, [(x, scale, zero point) input positions], (y scale, y zero point) positions | None,
# positions passed through as they are (an int32 bias is dequantized at x_scale * w_scale)
_QOPS = {
    "QLinearConv": ("Conv", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMatMul": ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2)], (3, 4)),
    "QLinearSoftmax": ("Softmax", [(0, 1, 2)], (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
    "QGemm": ("Gemm", [(0, 1, 2), (3, 4, 5)], (7, 8)),  # onnxruntime's; C (6): int32 at alpha * a_scale * b_scale
}


LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice", "Identity", "MaxPool", "Gather")


def _dequantize_before_layout(model: onnx.ModelProto) -> int:
    """Q -> layout ops (on the 8-bit tensor) -> DQs with the same scale and zero point become
    Q -> DQ -> layout ops (on floats): layout ops move integers unchanged (MaxPool keeps their order),
    so the dequantize commutes with them, and `strip_qdq` then finds the pair. onnxruntime's
    QOperator files leave Transpose/Reshape/Split between their QLinear ops. A layout op whose result is
    an integer graph output gets a QuantizeLinear to q's grid before it (tf2onnx's full-integer TFLite
    detectors Slice and Reshape a head's int8 codes straight into an output). Returns how many."""
    graph, value, count = model.graph, _constants(model.graph), 0
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    inserted = []
    for q in [n for n in graph.node if _is(n, "QuantizeLinear") and len(n.input) >= 2]:
        grid = [value(q.input[1]), value(q.input[2]) if len(q.input) > 2 and q.input[2] else None]
        if grid[0] is None or grid[0].size != 1:
            continue
        layout, dqs, frontier, ok = [], [], [q.output[0]], True
        while frontier and ok:  # the layout ops reachable from q, and the dequantizes (or graph outputs) that end them
            name = frontier.pop()
            for r in readers.get(name, []):
                if r.op_type in LAYOUT and r.domain in STANDARD and r.input[0] == name:
                    layout.append(r)
                    frontier.extend(o for o in r.output if o not in graph_outputs)
                elif (_is(r, "DequantizeLinear") and np.array_equal(value(r.input[1]), grid[0])
                      and np.array_equal(value(r.input[2]) if len(r.input) > 2 and r.input[2] else None, grid[1])):
                    dqs.append(r) if name != q.output[0] else None
                else:
                    ok = False
        exits = [(node, k) for node in layout for k, o in enumerate(node.output) if o in graph_outputs]
        if not ok or not layout or not (dqs or exits):
            continue
        prefix = q.name or q.output[0]
        dq = helper.make_node("DequantizeLinear", [q.output[0], *q.input[1:]], [f"{prefix}/dequantized"],
                              name=f"{prefix}/dequantized")
        inserted.append((q, dq))
        for node in layout:
            if node.input[0] == q.output[0]:
                node.input[0] = dq.output[0]
        for node, k in exits:  # an integer graph output (tf2onnx: int8 boxes Sliced and Reshaped out of a conv's
            out = node.output[k]  # codes): the float values quantized again to q's grid just before it
            node.output[k] = f"{out}/float"
            requantize = helper.make_node("QuantizeLinear", [node.output[k], *q.input[1:]], [out], name=f"{out}/quantize")
            requantize.attribute.extend(q.attribute)
            inserted.append((node, requantize))
        for r in dqs:  # the layout ops' results are already float: each dequantize passes them on
            r.op_type, r.domain = "Identity", ""
            del r.input[1:]
            del r.attribute[:]
        count += 1
    if inserted:
        nodes = list(graph.node)
        for q, dq in inserted:
            nodes.insert(nodes.index(q) + 1, dq)
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def qoperators_to_qdq(model: onnx.ModelProto) -> int:
    """QOperator-format nodes (QLinearConv, QLinearMatMul, onnxruntime's QLinearAdd/Sigmoid/...) as
    DequantizeLinear -> float op -> QuantizeLinear, which `strip_qdq` then undoes; returns how many."""
    graph, value = model.graph, _constants(model.graph)
    nodes, inits, count = [], [], 0
    for node in graph.node:
        spec = _QOPS.get(node.op_type) if node.domain in STANDARD else None
        if spec is None:
            nodes.append(node)
            continue
        op, triples, (ys, yz) = spec
        prefix, ins = node.name or node.output[0], list(node.input)
        at = {"Conv": 8, "Gemm": 6}.get(op)  # the int32 bias's position
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha = float(attrs.get("alpha", 1.0)) if op == "Gemm" else 1.0
        bias = value(ins[at]) if at is not None and len(ins) > at and ins[at] else None
        scales = [value(ins[1]), value(ins[4])] if at is not None else []
        if at is not None and len(ins) > at and ins[at] and (bias is None or any(v is None for v in scales)):
            nodes.append(node)  # a bias computed at run time: left for the op check to name
            continue
        floats = []
        for k, (x, sc, zp) in enumerate(triples):
            # per output channel weights: a Conv's axis 0, a Gemm's N axis (1, or 0 when transposed)
            axis = {"axis": 0} if op == "Conv" and k == 1 else \
                {"axis": 0 if attrs.get("transB", 0) else 1} if op == "Gemm" and k == 1 else {}
            out = f"{prefix}/dq{k}"
            nodes.append(helper.make_node("DequantizeLinear", [ins[x], ins[sc]] + ([ins[zp]] if ins[zp] else []),
                                          [out], name=out, **axis))
            floats.append(out)
        if bias is not None:  # int32 at x_scale * w_scale (a QGemm's also times alpha)
            inits.append(numpy_helper.from_array((bias * alpha * scales[0] * scales[1]).astype(np.float32),
                                                 f"{prefix}/bias"))
            floats.append(inits[-1].name)
        kept = [a for a in node.attribute if op in ("Conv", "LeakyRelu", "Softmax", "AveragePool", "Gemm")]
        quantized = len(ins) > ys and ins[ys]  # a QGemm without y_scale has a float output
        y = f"{prefix}/float" if quantized else node.output[0]
        float_node = helper.make_node(op, floats, [y], name=f"{prefix}/float")
        float_node.attribute.extend(kept)
        nodes.append(float_node)
        if quantized:
            nodes.append(helper.make_node("QuantizeLinear", [y, ins[ys]] + ([ins[yz]] if len(ins) > yz and ins[yz] else []),
                                          [node.output[0]], name=f"{prefix}/q"))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
    return count


def _float_lstm(node, value, inits: list):
    """The ONNX LSTM that a DynamicQuantizeLSTM computes (None: its weights are not constants):
    W, R = (q - zp) * scale, per direction or per gate column, from onnxruntime's [D, in, 4H]
    layout to ONNX's [D, 4H, in]."""
    ins = list(node.input) + [""] * (12 - len(node.input))
    weights = []
    for q, scale, zero in ((ins[1], ins[8], ins[9]), (ins[2], ins[10], ins[11])):
        q, scale, zero = value(q), value(scale) if scale else None, value(zero) if zero else None
        if q is None or scale is None or q.ndim != 3:
            return None
        shape = (-1, 1, 1) if scale.size == q.shape[0] else (q.shape[0], 1, q.shape[2])  # per direction | column
        zero = 0.0 if zero is None else zero.astype(np.float64).reshape(shape)
        w = (q.astype(np.float64) - zero) * scale.astype(np.float64).reshape(shape)
        name = f"{node.name or node.output[0]}/{'WR'[len(weights)]}"
        inits.append(numpy_helper.from_array(w.transpose(0, 2, 1).astype(np.float32), name))
        weights.append(name)
    lstm = helper.make_node("LSTM", [ins[0], *weights, *ins[3:8]], list(node.output), name=node.name)
    while lstm.input and not lstm.input[-1]:
        lstm.input.pop()
    lstm.attribute.extend(node.attribute)
    return lstm


def _dynamic_bias(name: str, producers: dict, value) -> np.ndarray | None:
    """The float bias B that onnxruntime's dynamic quantization adds to an integer product as
    [Reshape/Unsqueeze](Cast(Round or Floor(Div(B, scale)))), shaped as the reshape makes it; None otherwise."""
    shape_ops = []
    node = producers.get(name)
    while node is not None and node.op_type in ("Reshape", "Unsqueeze"):
        shape_ops.append(node)
        node = producers.get(node.input[0])
    chain = []
    for ops in (("Cast",), ("Round", "Floor"), ("Div",)):  # onnxruntime's versions round or floor
        if node is None or node.op_type not in ops:
            return None
        chain.append(node)
        node = producers.get(node.input[0])
    bias = value(chain[-1].input[0])
    if bias is None:
        return None
    bias = bias.astype(np.float64)
    for op in reversed(shape_ops):
        target = value(op.input[1]) if len(op.input) > 1 else None
        if op.op_type == "Reshape" and target is not None:
            bias = bias.reshape([int(d) if d != 0 else bias.shape[i] for i, d in enumerate(target)])
        elif op.op_type == "Unsqueeze":
            axes = target if target is not None else next((a.ints for a in op.attribute if a.name == "axes"), None)
            if axes is None:
                return None
            bias = np.expand_dims(bias, tuple(int(a) for a in axes))
        else:
            return None
    return bias


def dynamic_to_float(model: onnx.ModelProto) -> int:
    """Undo onnxruntime's dynamic quantization (quantize_dynamic, transformers.js' *_quantized models):

        a, s_a, z_a = DynamicQuantizeLinear(x)
        y = Mul(Cast(MatMulInteger(a, W_q, z_a, z_w), float), Mul(s_a, s_w))  ->  y = MatMul(x, (W_q - z_w) s_w)
        (b, s_b, z_b = DynamicQuantizeLinear(x2) in place of W_q: optimum's dynamic configs quantize q @ k^T
        and attention @ v so)                                                 ->  y = MatMul(x, x2)

    and the same with ConvInteger (its attributes kept; per-channel z_w, s_w along the output channels) ->
    Conv, and com.microsoft's DynamicQuantizeLSTM -> LSTM, in place; returns how many nodes were replaced. (The scale is computed
    from each input at run time, which an integer-only model cannot do; intq calibrates the float op instead.)"""
    graph, value = model.graph, _constants(model.graph)
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    drop, replaced, inits = set(), {}, []
    for node in graph.node:
        lstm = _float_lstm(node, value, inits) if _is(node, "DynamicQuantizeLSTM") else None
        if lstm is not None:
            replaced[id(node)] = lstm
            continue
        if not ((_is(node, "MatMulInteger") or _is(node, "ConvInteger")) and len(node.input) >= 2):
            continue
        quant = producers.get(node.input[0])
        weight = value(node.input[1])
        cast, bias, add = readers.get(node.output[0], []), None, None
        if len(cast) == 1 and cast[0].op_type == "Add":  # a conv's bias, quantized at run time to the product's scale
            add = cast[0]
            bias = _dynamic_bias(next((i for i in add.input if i != node.output[0]), ""), producers, value)
            cast = readers.get(add.output[0], []) if bias is not None else []
        quant_b = producers.get(node.input[1])  # the second operand quantized at run time too (q @ k^T, attention @ v)
        both = weight is None and _is(node, "MatMulInteger") and quant_b is not None and \
            _is(quant_b, "DynamicQuantizeLinear") and quant_b.output[0] == node.input[1]
        if quant is None or not _is(quant, "DynamicQuantizeLinear") or (weight is None and not both) or \
                len(cast) != 1 or cast[0].op_type != "Cast":
            continue
        mul = readers.get(cast[0].output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul":
            continue
        scales = producers.get(next(i for i in mul[0].input if i != cast[0].output[0]))
        if scales is None or scales.op_type != "Mul" or quant.output[1] not in scales.input:
            continue
        if both:  # (a - z_a) s_a @ (b - z_b) s_b: the float operands' product
            if bias is not None or quant_b.output[1] not in scales.input:
                continue
            replaced[id(mul[0])] = helper.make_node("MatMul", [quant.input[0], quant_b.input[0]], [mul[0].output[0]],
                                                    name=node.name or mul[0].output[0])
            drop.update(id(n) for n in (node, cast[0]))
            if len(readers.get(scales.output[0], [])) == 1:
                drop.add(id(scales))
            continue
        w_scale = value(next(i for i in scales.input if i != quant.output[1]))
        w_zero = value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if w_scale is None:
            continue
        conv = node.op_type == "ConvInteger"
        w_zero = 0.0 if w_zero is None else w_zero.astype(np.float64)
        if conv:  # per output channel: along the weight's first axis
            w_zero, w_scale = (v.reshape((-1,) + (1,) * (weight.ndim - 1)) if np.size(v) > 1 else v
                               for v in (w_zero, w_scale))
        w = (weight.astype(np.float64) - w_zero) * w_scale
        name = f"{node.name or node.output[0]}/weight"
        inits.append(numpy_helper.from_array(w.astype(np.float32), name))
        product = mul[0].output[0] if bias is None else f"{name}/product"
        float_op = helper.make_node("Conv" if conv else "MatMul", [quant.input[0], name], [product],
                                    name=node.name or mul[0].output[0])
        float_op.attribute.extend(node.attribute if conv else [])
        if bias is None:
            replaced[id(mul[0])] = float_op
        else:  # the product where the quantized bias was added, the float bias where the scales were applied
            inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}/bias"))
            replaced[id(add)] = float_op
            replaced[id(mul[0])] = helper.make_node("Add", [product, f"{name}/bias"], [mul[0].output[0]],
                                                    name=f"{node.name or node.output[0]}/bias")
        drop.update(id(n) for n in (node, cast[0]))
        if len(readers.get(scales.output[0], [])) == 1:
            drop.add(id(scales))
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in drop]
    while True:  # what only the quantized products read (the run-time scales, a bias quantized to them) goes
        used = {i for n in nodes for i in names_read(n)} | {o.name for o in graph.output}  # subgraphs' too
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            break
        nodes = live
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    return len(replaced)


def float_graph_file(path) -> str | bytes:
    """What intq compiles, for onnxruntime to measure the model's structure with (padding exactness, samples kept
    apart): a pre-quantized file's float graph (`strip_qdq`), else the file's path. A dynamically quantized file
    rounds each activation on a grid spanning the whole tensor, pads and other samples included, so the file itself
    "reads" its padding and "mixes" its samples where its float graph does not."""
    try:
        model = onnx.load(str(path))
        return model.SerializeToString() if strip_qdq(model) else str(path)
    except Exception:  # noqa: BLE001  (onnxruntime reads the file as it is)
        return str(path)


def strip_qdq(model: onnx.ModelProto) -> int:
    """Rewrite the model's Q/DQ nodes as above, in place; returns how many nodes were removed or replaced."""
    changed = dynamic_to_float(model) + dynamic_pairs_to_float(model) + qoperators_to_qdq(model)
    changed += dequantize_before_concat(model, _constants(model.graph)) + _dequantize_before_layout(model)
    graph, stored = model.graph, _constants(model.graph)
    folded = _integer_constants(graph, stored)

    def value(name):
        return folded[name] if name in folded else stored(name)

    changed += quantized_outputs_as_float_ops(model, value, _integer_range)  # int8 outputs (onnx_qdq_outputs.py)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}

    def integer_clip(name):
        """Clip(QuantizeLinear(x)) on the integers, read only by DequantizeLinears: (the quantize, bounds)."""
        clip = producers.get(name)
        if clip is None or clip.op_type != "Clip" or clip.domain not in STANDARD or name in outputs:
            return None
        quantize = producers.get(clip.input[0])
        if quantize is None or not _is(quantize, "QuantizeLinear") or clip.input[0] in outputs or \
                any(r is not clip for r in readers.get(clip.input[0], [])) or \
                not all(_is(r, "DequantizeLinear") for r in readers.get(name, [])):
            return None
        bounds = _clip_bounds(clip, value)
        return None if bounds is None else (quantize, bounds)

    new_inits, nodes = [], []
    for node in graph.node:
        if not _is(node, "DequantizeLinear"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
        src = node.input[0]
        scale = value(node.input[1])
        zero = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        q = value(src)
        producer = producers.get(src)
        if q is not None and scale is not None:  # a constant: fold it
            new_inits.append(numpy_helper.from_array(_dequantized(q, scale, zero, axis, block), node.output[0]))
            changed += 1
        elif producer is not None and _is(producer, "QuantizeLinear") and src not in outputs and \
                all(_is(r, "DequantizeLinear") for r in readers.get(src, [])):
            nodes.extend(_clamp(producer, value, node.output[0], node.name or node.output[0], new_inits))
            changed += 1
        elif (clipped := integer_clip(src)) is not None:
            quantize, bounds = clipped
            nodes.extend(_clamp(quantize, value, node.output[0], node.name or node.output[0], new_inits, bounds))
            changed += 1
        elif scale is not None and scale.size == 1 and (zero is None or zero.size == 1):
            prefix = node.name or node.output[0]
            x = f"{prefix}/float"
            nodes.append(helper.make_node("Cast", [src], [x], name=f"{prefix}/cast", to=onnx.TensorProto.FLOAT))
            if zero is not None and np.any(zero):
                z = numpy_helper.from_array(zero.astype(np.float32).reshape(()), f"{prefix}/zero")
                new_inits.append(z)
                nodes.append(helper.make_node("Sub", [x, z.name], [f"{prefix}/centered"], name=f"{prefix}/sub"))
                x = f"{prefix}/centered"
            s = numpy_helper.from_array(scale.astype(np.float32).reshape(()), f"{prefix}/scale")
            new_inits.append(s)
            nodes.append(helper.make_node("Mul", [x, s.name], [node.output[0]], name=f"{prefix}/scale"))
            changed += 1
        else:
            nodes.append(node)
    if not changed:
        return 0
    while True:  # drop quantizes (and the integer clips / casts folded above) that nothing reads any more
        used = {name for n in nodes for name in n.input} | outputs
        dead = [n for n in nodes if not any(o in used for o in n.output) and
                (_is(n, "QuantizeLinear") or n.output and all(o in folded for o in n.output) or
                 n.op_type == "Clip" and n.domain in STANDARD and n.input and
                 (producers.get(n.input[0]) is not None and _is(producers[n.input[0]], "QuantizeLinear")))]
        if not dead:
            break
        nodes = [n for n in nodes if not any(n is d for d in dead)]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.initializer if i.name in used or i.name in {v.name for v in graph.input}]
    del graph.initializer[:]
    graph.initializer.extend(kept + [i for i in new_inits if i.name in used])
    return changed + _merge_clips(model)


def _merge_clips(model: onnx.ModelProto) -> int:
    """Clip(Clip(x, a, b), c, d) -> Clip(x, max(a, c), min(b, d)) for scalar constant bounds, where the inner
    clip has no other reader: a fake-quant export writes the pair's clamp, the model's ReLU6 and the next
    pair's clamp back to back (torch QAT: clamp -> Clip(0, 6) -> clamp), and each clip between was one more
    8-bit tensor on the wide range before the ReLU6. Returns how many clips were merged away."""
    graph, stored, fresh = model.graph, _constants(model.graph), {}

    def value(name):
        return fresh[name] if name in fresh else stored(name)

    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}

    def bounds(clip):  # a float clip's bounds (merged bounds are written as float32)
        given = [value(name) for name in clip.input[1:3] if name]
        if any(v is not None and not np.issubdtype(v.dtype, np.floating) for v in given):
            return None
        return _clip_bounds(clip, value)

    merged, new_inits, gone = 0, [], set()
    for outer in graph.node:
        if outer.op_type != "Clip" or outer.domain not in STANDARD:
            continue
        inner = producers.get(outer.input[0])
        if inner is None or inner.op_type != "Clip" or inner.domain not in STANDARD or inner.output[0] in outputs or \
                readers.get(inner.output[0], 0) != 1 or inner.output[0] in gone:
            continue
        a, b = bounds(inner) or (None, None)
        c, d = bounds(outer) or (None, None)
        if a is None or c is None or max(a, c) > min(b, d):
            continue
        lo, hi = max(a, c), min(b, d)
        prefix = outer.name or outer.output[0]
        names = []
        for tag, v in (("min", lo), ("max", hi)):
            if np.isinf(v):
                names.append("")
                continue
            new_inits.append(numpy_helper.from_array(np.asarray(v, np.float32).reshape(()), f"{prefix}/merged_{tag}"))
            names.append(new_inits[-1].name)
            fresh[names[-1]] = np.asarray(v, np.float32)
        del outer.input[:]
        outer.input.extend([inner.input[0], *names])
        producers[outer.output[0]] = outer
        gone.add(inner.output[0])
        merged += 1
    if merged:
        nodes = [n for n in graph.node if not (n.op_type == "Clip" and n.output[0] in gone)]
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_inits)
    return merged


def refuse_qonnx(model: onnx.ModelProto, path) -> None:
    """QONNX files (brevitas' export_qonnx, FINN): Quant / BipolarQuant / Trunc nodes of the qonnx or finn domains,
    which no ONNX runtime runs. Refused in both modes, every node named, with the conversion that makes them
    standard QuantizeLinear -> Clip -> DequantizeLinear triples (which intq takes)."""
    nodes = [n for n in model.graph.node if n.domain.startswith(("qonnx.", "finn.")) or n.domain in ("finn", "onnx.brevitas")]
    if not nodes:
        return
    named = "\n".join(f"  {n.domain}:{n.op_type} (node {n.name or n.output[0]})" for n in nodes[:12])
    more = f"\n  ... and {len(nodes) - 12} more" if len(nodes) > 12 else ""
    raise UnsupportedModelError(
        f"{path}: {len(nodes)} QONNX node(s), which neither intq nor onnxruntime runs:\n{named}{more}\n"
        "Convert them to standard QuantizeLinear / DequantizeLinear first, e.g. with the qonnx package: "
        "qonnx.util.cleanup.cleanup(file, out_file=clean), then ModelWrapper(clean).transform("
        "qonnx.transformation.qonnx_to_qcdq.QuantToQCDQ()).save(out) (8 bits or fewer); or export with "
        "brevitas.export.export_onnx_qcdq instead of export_qonnx.")
