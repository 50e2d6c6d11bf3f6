"""QONNX `Quant` nodes (brevitas' `export_qonnx`, FINN) as standard ONNX, before anything else reads the graph.

    Quant(x, scale, zeropt, bitwidth; signed, narrow, rounding_mode)
        = (clip(round(x / scale + zeropt), lo, hi) - zeropt) * scale      (qonnx.custom_op.general.intquant)

- on a constant (a weight, a bias: any bit width, any rounding mode, per-channel scales): folded into the
  constant it stands for, computed here as qonnx computes it;
- on an activation (at most 8 bits, integer zero point, round half to even): QuantizeLinear -> Clip ->
  DequantizeLinear, the QCDQ triple brevitas' own QCDQ export writes (`onnx_qdq.strip_qdq` reads it: the
  Clip is the narrower grid, e.g. 4 bits in an int8 container, or the narrow range).

`BipolarQuant` on a constant becomes its constant (+-scale) too. What stays (`Trunc`, an activation's
Quant wider than 8 bits or with another rounding) is refused by `onnx_qdq.refuse_qonnx`, every node named.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

QUANT_OPS = ("Quant", "IntQuant")
_ROUNDING = {
    "ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor, "DOWN": np.fix,
    "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)),
    "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5),
    "HALF_DOWN": lambda v: np.sign(v) * np.ceil(np.abs(v) - 0.5),
}


def _is_qonnx(node: onnx.NodeProto) -> bool:
    return node.domain.startswith(("qonnx.", "finn.")) or node.domain in ("finn", "onnx.brevitas")


def int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """The integer grid of a Quant: [lo, hi]."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def fake_quant(x: np.ndarray, scale, zeropt, bits: int, signed: bool, narrow: bool, rounding: str) -> np.ndarray:
    """What a Quant node computes, in float32 as qonnx and brevitas do (a weight halfway between two grid
    points in float64 need not be in float32): scale, shift, clamp, round, back."""
    scale, zeropt = np.float32(scale) if np.ndim(scale) == 0 else np.asarray(scale, np.float32), np.asarray(zeropt, np.float32)
    v = np.asarray(x, np.float32) / scale + zeropt
    if bits == 1 and signed:
        v = np.where(v >= 0, np.float32(1), np.float32(-1))
    else:
        lo, hi = int_range(bits, signed, narrow)
        v = _ROUNDING[rounding](np.clip(v, lo, hi)).astype(np.float32)
    return ((v - zeropt) * scale).astype(np.float32)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _per_axis(scale: np.ndarray) -> tuple[np.ndarray, int | None] | None:
    """A Quant's broadcast scale as QuantizeLinear's: a scalar, or a vector along one axis, counted from
    the back as broadcasting aligns it (None: neither)."""
    if scale.size == 1:
        return scale.reshape(()), None
    axes = [i for i, d in enumerate(scale.shape) if d != 1]
    if len(axes) != 1:
        return None
    return scale.reshape(-1), axes[0] - scale.ndim


def _constants(graph: onnx.GraphProto):
    """name -> its value, for the graph's initializers and what standard nodes compute from them alone
    (a torch export slices its weights before the Quant reads them), evaluated on demand."""
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def value(name: str, depth: int = 0):
        if name in consts or not name:
            return consts.get(name)
        node = producers.get(name)
        if node is None or _is_qonnx(node) or depth > 32 or node.op_type in ("RandomNormal", "RandomUniform"):
            return None
        if node.op_type == "Constant":
            consts[name] = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
            return consts[name]
        args = [value(i, depth + 1) for i in node.input]
        if any(a is None for a, i in zip(args, node.input) if i):
            return None
        from onnx.reference import ReferenceEvaluator

        inputs = [f"in{k}" if i else "" for k, i in enumerate(node.input)]
        step = helper.make_node(node.op_type, inputs, [f"out{k}" for k in range(len(node.output))],
                                domain=node.domain, **_attrs(node))
        one = helper.make_graph([step], "c", [helper.make_tensor_value_info(i, 0, None) for i in inputs if i],
                                [helper.make_tensor_value_info(f"out{k}", 0, None) for k in range(len(node.output))])
        try:
            outs = ReferenceEvaluator(helper.make_model(one, opset_imports=graph_opsets)).run(
                None, {i: a for i, a in zip(inputs, args) if i})
        except Exception:  # an op the reference cannot evaluate: not a constant here
            return None
        for o, v in zip(node.output, outs):
            consts[o] = np.asarray(v)
        return consts[name]

    graph_opsets = []
    return value, graph_opsets


def read_qonnx(model: onnx.ModelProto) -> int:
    """Rewrite the graph's Quant / BipolarQuant nodes that standard ONNX can state (see the module
    docstring); the number rewritten. The rest stay for `refuse_qonnx` to name."""
    graph = model.graph
    if not any(_is_qonnx(n) and n.op_type in (*QUANT_OPS, "BipolarQuant") for n in graph.node):
        return 0
    constant, opsets = _constants(graph)
    opsets.extend(o for o in model.opset_import if not o.domain.startswith(("qonnx.", "finn.")))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes, inits, rewritten = [], [], 0
    for node in graph.node:
        operands = [constant(name) for name in node.input[1:]] if _is_qonnx(node) else [None]
        if node.op_type not in (*QUANT_OPS, "BipolarQuant") or any(v is None for v in operands):
            nodes.append(node)
            continue
        a = _attrs(node)
        out, x = node.output[0], node.input[0]
        weight = constant(x)
        if node.op_type == "BipolarQuant":
            if weight is None:
                nodes.append(node)
                continue
            inits.append(numpy_helper.from_array((np.where(weight >= 0, 1.0, -1.0) * operands[0]).astype(np.float32), out))
            rewritten += 1
            continue
        scale, zeropt, bits = operands[:3]
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        rounding = (a.get("rounding_mode", b"ROUND").decode() if isinstance(a.get("rounding_mode"), bytes)
                    else a.get("rounding_mode", "ROUND")).upper()
        if bits.size != 1 or rounding not in _ROUNDING or float(bits) != int(bits) or int(bits) < 1:
            nodes.append(node)
            continue
        bits = int(bits)
        if weight is not None:  # a weight or a bias: the constant itself
            inits.append(numpy_helper.from_array(fake_quant(weight, scale, zeropt, bits, signed, narrow, rounding), out))
            rewritten += 1
            continue
        axis = _per_axis(np.asarray(scale, np.float32))
        zero = np.asarray(zeropt, np.float64)
        lo, hi = int_range(bits, signed, narrow)
        container = np.int8 if signed else np.uint8
        info = np.iinfo(container)
        if (axis is None or bits > 8 or (bits == 1 and signed) or rounding not in ("ROUND", "HALF_EVEN")
                or np.any(zero != np.round(zero)) or (axis[1] is not None and opset < 13)
                or zero.size not in (1, axis[0].size) or np.any(zero < info.min) or np.any(zero > info.max)):
            nodes.append(node)
            continue
        scale_1, axis_1 = axis
        prefix = f"{node.name or out}/qcdq"
        zero_1 = np.broadcast_to(zero.reshape(-1) if zero.size > 1 else zero.reshape(()), scale_1.shape)
        inits += [numpy_helper.from_array(scale_1.astype(np.float32), f"{prefix}/scale"),
                  numpy_helper.from_array(zero_1.astype(container), f"{prefix}/zero"),
                  numpy_helper.from_array(np.array(lo, container), f"{prefix}/lo"),
                  numpy_helper.from_array(np.array(hi, container), f"{prefix}/hi")]
        kw = {} if axis_1 is None else {"axis": axis_1}
        nodes += [helper.make_node("QuantizeLinear", [x, f"{prefix}/scale", f"{prefix}/zero"], [f"{prefix}/q"],
                                   name=f"{prefix}/quantize", **kw),
                  helper.make_node("Clip", [f"{prefix}/q", f"{prefix}/lo", f"{prefix}/hi"], [f"{prefix}/c"],
                                   name=f"{prefix}/clip"),
                  helper.make_node("DequantizeLinear", [f"{prefix}/c", f"{prefix}/scale", f"{prefix}/zero"], [out],
                                   name=f"{prefix}/dequantize", **kw)]
        rewritten += 1
    if rewritten:
        folded = {i.name for i in inits}
        nodes = [n for n in nodes if not any(o in folded for o in n.output)]
        needed = {o.name for o in graph.output}
        for n in reversed(nodes):  # what the folded weights were computed from goes (onnxruntime's cleanup
            if any(o in needed for o in n.output) or not n.output:  # would, later)
                needed.update(n.input)
        nodes = [n for n in nodes if any(o in needed for o in n.output) or not n.output]
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [i for i in graph.initializer if i.name in needed]
        gone = {i.name for i in graph.initializer} - needed
        del graph.initializer[:]
        graph.initializer.extend(kept + inits)
        # old exports list initializers among the inputs too: those that went, and folded values
        inputs = [i for i in graph.input if i.name not in gone and i.name not in folded]
        del graph.input[:]
        graph.input.extend(inputs)
        if not any(_is_qonnx(n) for n in graph.node):
            domains = [o for o in model.opset_import if not (o.domain.startswith(("qonnx.", "finn.")) or
                                                            o.domain in ("finn", "onnx.brevitas"))]
            del model.opset_import[:]
            model.opset_import.extend(domains)
    return rewritten
