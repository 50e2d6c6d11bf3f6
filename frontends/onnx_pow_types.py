"""Pow whose base and exponent differ in type, or of two integers (opset 12+ allows both), as ops TVM imports
and lowers (in place, before the import):

    Pow(x: float, e: int)  ->  Pow(x, Cast(e, float))           (a constant e: a float constant, a table)
    Pow(x: int, n)         ->  x * x * ... by squaring          (n a constant whole number 0..64: exact)
    Pow(x: int, e: int)    ->  the same over e's bits at run time (e clipped to 64 or 65, its parity kept;
                                   e < 0: 1 for x = 1, +-1 for x = -1, else 0, onnxruntime's double truncated)
    Pow(x: int, e: float)  ->  Cast(Pow(Cast(x, float), e'), int) (e' e or Cast(e, float))

onnxruntime computes an integer power in double and truncates it to the base's type: the integer forms are
exact wherever that fits the type; the Cast of a float Pow (float32) loses the low bits beyond 2^24. TVM's
converter emitted `power` of two types ("Binary operators must have the same datatype") or of integers,
which its legalization refuses ("power only applies to float").
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_rewrite import rewrite_nodes

_INTEGERS = {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
             TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}


def pow_to_one_dtype(model: onnx.ModelProto) -> int:
    """Rewrite every such Pow (see the module doc); returns how many. Needs the types of shape inference."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.value_info,
                                                          *model.graph.output)}
    constants = {i.name: i for i in model.graph.initializer}
    types.update({name: t.data_type for name, t in constants.items()})
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*model.graph.input, *model.graph.value_info)
             if v.type.tensor_type.HasField("shape")}

    def as_float(name: str, prefix: str, inits: list, nodes: list) -> str:
        if types.get(name) == TensorProto.FLOAT:
            return name
        if name in constants:  # a constant exponent stays a constant: Pow by it is a table (lowering/unary)
            inits.append(numpy_helper.from_array(numpy_helper.to_array(constants[name]).astype(np.float32),
                                                 f"{prefix}/float"))
            return inits[-1].name
        nodes.append(helper.make_node("Cast", [name], [f"{prefix}/float"], name=f"{prefix}/float",
                                      to=TensorProto.FLOAT))
        return nodes[-1].output[0]

    def by_squaring(node, n: int, dtype: int, inits: list) -> list:
        """x^n as Muls of exact integers (x^0: x * 0 + 1)."""
        prefix = node.name or node.output[0]
        if n == 0:
            np_type = helper.tensor_dtype_to_np_dtype(dtype)
            inits.extend([numpy_helper.from_array(np.array(0, np_type), f"{prefix}/zero"),
                          numpy_helper.from_array(np.array(1, np_type), f"{prefix}/one")])
            return [helper.make_node("Mul", [node.input[0], f"{prefix}/zero"], [f"{prefix}/zeros"],
                                     name=f"{prefix}/zeros"),
                    helper.make_node("Add", [f"{prefix}/zeros", f"{prefix}/one"], list(node.output), name=prefix)]
        nodes, factors, power, bits = [], [], node.input[0], bin(n)[2:][::-1]
        for k, bit in enumerate(bits):  # x^n = product of x^(2^k) over the set bits k of n
            if bit == "1":
                factors.append(power)
            if k < len(bits) - 1:
                square = f"{prefix}/square_{k}"
                nodes.append(helper.make_node("Mul", [power, power], [square], name=square))
                power = square
        for k, factor in enumerate(factors[1:]):
            nodes.append(helper.make_node("Mul", [nodes[-1].output[0] if k else factors[0], factor],
                                          [f"{prefix}/product_{k}"], name=f"{prefix}/product_{k}"))
        if not nodes:  # x^1
            return [helper.make_node("Identity", [node.input[0]], list(node.output), name=prefix)]
        nodes[-1].output[0] = node.output[0]  # the last Mul makes x^n
        return nodes

    def run_time_squaring(node, base: int, inits: list) -> list:
        """x^e for integer tensors x and e: seven bits of e (clipped), each a Where of a Mul; e < 0 apart."""
        prefix, x = node.name or node.output[0], node.input[0]
        name = lambda s: f"{prefix}/{s}"
        np_type = helper.tensor_dtype_to_np_dtype(base)
        for key, value in {"zero": 0, "one": 1, "two": 2, "minus_one": -1, "cap": 64}.items():
            inits.append(numpy_helper.from_array(np.array(value, np_type), name(key)))
        step = lambda op, ins, out, **kw: helper.make_node(op, ins, [name(out)], name=name(out), **kw)
        nodes = [step("Cast", [node.input[1]], "e", to=base),
                 step("Mod", [name("e"), name("two")], "odd"),  # e's parity, kept by the clip: (-1)^e
                 step("Add", [name("cap"), name("odd")], "top"),
                 step("Min", [name("e"), name("top")], "e_top"),
                 step("Max", [name("e_top"), name("zero")], "bits_0"),
                 step("Mul", [x, name("zero")], "zeros"),
                 step("Add", [name("zeros"), name("one")], "power_none")]
        result, power = name("power_none"), x
        for k in range(7):
            nodes += [step("Mod", [name(f"bits_{k}"), name("two")], f"bit_{k}"),
                      step("Equal", [name(f"bit_{k}"), name("one")], f"set_{k}"),
                      step("Mul", [result, power], f"times_{k}"),
                      step("Where", [name(f"set_{k}"), name(f"times_{k}"), result], f"power_{k}"),
                      step("Div", [name(f"bits_{k}"), name("two")], f"bits_{k + 1}"),
                      step("Mul", [power, power], f"square_{k}")]
            result, power = name(f"power_{k}"), name(f"square_{k}")
        nodes.pop()  # the last square is not used
        # e < 0: 1 / x^|e| truncated: 1 for x = 1, (-1)^e for x = -1, 0 otherwise (x = 0: onnxruntime's inf)
        nodes += [step("Equal", [x, name("one")], "unit"),
                  step("Equal", [x, name("minus_one")], "minus_unit"),
                  step("Equal", [name("odd"), name("zero")], "even"),
                  step("Where", [name("even"), name("one"), name("minus_one")], "sign"),
                  step("Where", [name("minus_unit"), name("sign"), name("zero")], "minus_power"),
                  step("Where", [name("unit"), name("one"), name("minus_power")], "fraction"),
                  step("Less", [name("e"), name("zero")], "negative"),
                  helper.make_node("Where", [name("negative"), name("fraction"), result], list(node.output),
                                   name=prefix)]
        return nodes

    def rewrite(node, inits):
        if node.op_type != "Pow" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            return None
        base, exponent = (types.get(name) for name in node.input)
        known = _INTEGERS | {TensorProto.FLOAT}  # float16 graphs compute as float32 by now (onnx_float16.py)
        if base not in known or exponent not in known or base == exponent == TensorProto.FLOAT:
            return None
        n = constants.get(node.input[1])
        n = numpy_helper.to_array(n) if n is not None else None
        if base in _INTEGERS and exponent in _INTEGERS and n is not None and n.size == 1 and \
                n.ndim <= ranks.get(node.input[0], -1) and 0 <= int(n.reshape(())) <= 64:
            return by_squaring(node, int(n.reshape(())), base, inits)  # a scalar n: x's shape is the output's
        if base in _INTEGERS and exponent in _INTEGERS:
            return run_time_squaring(node, base, inits)
        prefix = node.name or node.output[0]
        nodes = []
        x = as_float(node.input[0], f"{prefix}/base", inits, nodes)
        e = as_float(node.input[1], f"{prefix}/exponent", inits, nodes)
        if base == TensorProto.FLOAT:
            return nodes + [helper.make_node("Pow", [x, e], list(node.output), name=prefix)]
        return nodes + [helper.make_node("Pow", [x, e], [f"{prefix}/power"], name=f"{prefix}/power"),
                        helper.make_node("Cast", [f"{prefix}/power"], list(node.output), name=prefix, to=base)]

    return rewrite_nodes(model, rewrite)
