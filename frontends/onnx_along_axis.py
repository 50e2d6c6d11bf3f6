"""Ops along one axis that TVM's importer lacks, as ops it has (registered in onnx_decompose.py):

    ReverseSequence(x, lens)   ->  GatherElements(x, idx, axis=time), idx[t, b] = lens[b] - 1 - t where
                                   t < lens[b], else t: a constant for constant lens (Keras bidirectional
                                   RNNs), else Less / Sub / Where on the lengths at run time
    CumProd(x, axis)           ->  ReduceProd(Where(M, Unsqueeze(x, axis), 1), axis + 1): M [N, N] keeps the
                                   j <= i (exclusive: j < i; reverse: j >= i, j > i) factors of output i

CumProd's masked product holds N x N elements per row: an integer x is exact (int in and out); a float
x runs in float (--allow-float).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def reverse_sequence(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """ReverseSequence with static shapes (see the module doc)."""
    lens, shape = consts(node.input[1]), shapes.get(node.input[0])
    if not shape or min(shape) <= 0:
        return None
    attrs = _attrs(node)
    time, batch = int(attrs.get("time_axis", 0)), int(attrs.get("batch_axis", 1))
    view = [1] * len(shape)
    view[time], view[batch] = shape[time], shape[batch]
    prefix = node.name or node.output[0]
    name = lambda s: f"{prefix}/{s}"
    if lens is not None:
        lens = np.minimum(lens.astype(np.int64).reshape(-1), shape[time])
        if lens.size != shape[batch]:
            return None
        t = np.arange(shape[time])[:, None]
        source = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # [time, batch]
        index = np.broadcast_to((source if time < batch else source.T).reshape(view), shape)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(index), name("source")))
        return [helper.make_node("GatherElements", [node.input[0], inits[-1].name], list(node.output), name=prefix,
                                 axis=time)]
    # run-time lengths: the same indices computed in int64, [time, batch] (or [batch, time]) broadcast to x
    steps = np.arange(shape[time], dtype=np.int64)
    steps = steps[:, None] if time < batch else steps[None, :]
    lens_view = [1, shape[batch]] if time < batch else [shape[batch], 1]
    for key, value in {"steps": steps, "lens_view": lens_view, "one": 1, "view": view, "shape": shape}.items():
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name(key)))
    step = lambda op, ins, out, **kw: helper.make_node(op, ins, [name(out)], name=name(out), **kw)
    return [step("Cast", [node.input[1]], "lens64", to=onnx.TensorProto.INT64),
            step("Reshape", [name("lens64"), name("lens_view")], "lens"),
            step("Less", [name("steps"), name("lens")], "inside"),
            step("Sub", [name("lens"), name("one")], "last"),
            step("Sub", [name("last"), name("steps")], "reversed"),
            step("Where", [name("inside"), name("reversed"), name("steps")], "source"),
            step("Reshape", [name("source"), name("view")], "source_view"),
            step("Expand", [name("source_view"), name("shape")], "index"),
            helper.make_node("GatherElements", [node.input[0], name("index")], list(node.output), name=prefix,
                             axis=time)]


def cum_prod(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """CumProd with a constant axis and static shapes (see the module doc)."""
    axis, shape = consts(node.input[1]), shapes.get(node.input[0])
    if axis is None or not shape or min(shape) <= 0:
        return None
    rank = len(shape)
    axis = int(axis.reshape(-1)[0]) % rank
    attrs = _attrs(node)
    i, j = np.arange(shape[axis])[:, None], np.arange(shape[axis])[None, :]
    keep = {(0, 0): j <= i, (1, 0): j < i, (0, 1): j >= i, (1, 1): j > i}[
        (int(attrs.get("exclusive", 0)), int(attrs.get("reverse", 0)))]
    prefix = node.name or node.output[0]
    name = lambda s: f"{prefix}/{s}"
    inits.extend([numpy_helper.from_array(keep.reshape(keep.shape + (1,) * (rank - 1 - axis)), name("keep")),
                  numpy_helper.from_array(np.array([axis], np.int64), name("axis")),
                  numpy_helper.from_array(np.array([axis + 1], np.int64), name("factors")),
                  numpy_helper.from_array(np.array(1, np.float32), name("one_float"))])
    step = lambda op, ins, out, **kw: helper.make_node(op, ins, [name(out)], name=name(out), **kw)
    nodes = [step("Unsqueeze", [node.input[0], name("axis")], "rows"),
             step("CastLike", [name("one_float"), node.input[0]], "one"),  # 1 in x's type, whatever it is
             step("Where", [name("keep"), name("rows"), name("one")], "masked")]
    # CumProd came in opset 26: Unsqueeze and ReduceProd take their axes as inputs
    return nodes + [helper.make_node("ReduceProd", [name("masked"), name("factors")], list(node.output), name=prefix,
                                     keepdims=0)]
