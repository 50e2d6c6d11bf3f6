"""Pools and depthwise convs over more than three spatial axes, their unit-window axes folded into the
channels (in place, before the import; TVM's converters take 1-3 spatial axes: 'Currently only 1D/2D/3D/
pooling is supported'):

    MaxPool / AveragePool / LpPool(x [N, C, S0..Sk], kernel with 1s on axes T)
        ->  Transpose([N, C, T.., R..]) -> Reshape([N, C * |T|, R..]) -> Pool(kernel on R)
            -> Reshape([N, C, T.., R'..]) -> Transpose back
    Conv(x, w [M, 1, K..], group = M = C)   (depthwise, or one channel to one)
        ->  the same, with w's unit axes dropped, tiled |T| times, and group = C * |T|

An axis is a unit-window axis where the kernel is 1, the stride 1, the dilation 1 and both pads 0: the op
works on each of its positions apart, as on a channel. jax2onnx writes JAX's `lax.reduce_window` this
way (pure-JAX pooling: `reduce_window(x, -inf, max, (1, 2, 2, 1), ...)` on an NHWC tensor): two
Unsqueezes make [1, 1, N, H, W, C], a MaxPool (or, for a sum, a Conv with a ones kernel [1, 1, 1, 2, 2, 1])
pools over all four axes, a Squeeze drops the two. Left as they are: fewer than four spatial axes, an
auto_pad other than NOTSET / VALID, unknown shapes, a conv with more than one input channel per group
or a weight that is not a constant, and windows with more than three axes of size > 1.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_rewrite import rewrite_nodes, static_dims

_POOLS = ("MaxPool", "AveragePool", "LpPool")


def _fold(node, shapes: dict, constants: dict, inits: list) -> list | None:
    x = shapes.get(node.input[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if x is None or len(x) <= 5 or any(d <= 0 for d in x) or len(node.output) > 1:
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID") or attrs.get("ceil_mode"):
        return None  # (ceil_mode's lengths are left to the op as it is)
    rank = len(x) - 2
    weight = None
    if node.op_type == "Conv":
        w = constants.get(node.input[1])
        group = int(attrs.get("group", 1))
        bias = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None or len(w.dims) != len(x) or w.dims[1] != 1 or w.dims[0] != group or group != x[1] \
                or (bias is None and len(node.input) > 2 and node.input[2]):
            return None
        weight, kernel = numpy_helper.to_array(w), list(w.dims[2:])
    else:
        kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = list(attrs.get("pads", [0] * 2 * rank))
    unit = [i for i in range(rank) if kernel[i] == strides[i] == dilations[i] == 1 and pads[i] == pads[i + rank] == 0]
    kept = [i for i in range(rank) if i not in unit]
    if not kept:  # a window of ones everywhere: keep one axis for the op to have one
        kept, unit = [unit[-1]], unit[:-1]
    if len(kept) > 3 or not unit:
        return None
    n, c, folded = x[0], x[1], int(np.prod([x[2 + i] for i in unit]))
    perm = [0, 1] + [2 + i for i in unit] + [2 + i for i in kept]
    prefix = node.name or node.output[0]
    inits.append(numpy_helper.from_array(np.array([n, c * folded] + [x[2 + i] for i in kept], np.int64), f"{prefix}/folded"))
    nodes = [helper.make_node("Transpose", [node.input[0]], [f"{prefix}/unit_first"], name=f"{prefix}/unit_first", perm=perm),
             helper.make_node("Reshape", [f"{prefix}/unit_first", f"{prefix}/folded"], [f"{prefix}/in"], name=f"{prefix}/fold")]
    new_attrs = {k: v for k, v in attrs.items() if k not in ("kernel_shape", "strides", "dilations", "pads", "group")}
    new_attrs.update(strides=[strides[i] for i in kept], pads=[pads[i] for i in kept] + [pads[rank + i] for i in kept])
    inputs = [f"{prefix}/in"]
    if weight is not None:
        w = weight.reshape(weight.shape[0], 1, *[kernel[i] for i in kept])
        w = np.repeat(w, folded, axis=0)  # channel c * |T| + t of the folded input is channel c's position t
        inits.append(numpy_helper.from_array(w.astype(weight.dtype), f"{prefix}/w"))
        inputs.append(f"{prefix}/w")
        if bias is not None:
            inits.append(numpy_helper.from_array(np.repeat(numpy_helper.to_array(bias), folded), f"{prefix}/b"))
            inputs.append(f"{prefix}/b")
        new_attrs.update(group=c * folded, dilations=[dilations[i] for i in kept], kernel_shape=[kernel[i] for i in kept])
    else:
        new_attrs.update(kernel_shape=[kernel[i] for i in kept])
        if "dilations" in attrs:
            new_attrs["dilations"] = [dilations[i] for i in kept]
    out = [(d + pads[i] + pads[i + rank] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
           for i, d in ((i, x[2 + i]) for i in kept)]
    m = weight.shape[0] if weight is not None else c
    inits.append(numpy_helper.from_array(np.array([n, m] + [x[2 + i] for i in unit] + out, np.int64), f"{prefix}/unfolded"))
    nodes += [helper.make_node(node.op_type, inputs, [f"{prefix}/out"], name=prefix, **new_attrs),
              helper.make_node("Reshape", [f"{prefix}/out", f"{prefix}/unfolded"], [f"{prefix}/unit_first_out"],
                               name=f"{prefix}/unfold"),
              helper.make_node("Transpose", [f"{prefix}/unit_first_out"], list(node.output), name=f"{prefix}/unit_back",
                               perm=[int(p) for p in np.argsort(perm)])]
    return nodes


def fold_unit_window_axes(model: onnx.ModelProto) -> int:
    """Rewrite every pool or depthwise conv over more than three spatial axes whose window has at most three
    axes of size > 1 (above); returns how many. Needs the shapes of shape inference."""
    shapes = static_dims(model)
    constants = {i.name: i for i in model.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t")})
    return rewrite_nodes(model, lambda node, inits: _fold(node, shapes, constants, inits)
                         if node.op_type in (*_POOLS, "Conv") and node.domain in ("", "ai.onnx") else None)
