"""Resize with a filter TVM's `resize2d` lacks or intq does not lower to integers (antialias=1 from opset 18; cubic)
as one constant MatMul per resized axis (in place, before the import):

    Resize(x, mode linear | cubic, antialias=1)  ->  per resized axis a:  x <- x @ W_a^T along a
    Resize(x, mode cubic)                           (a Transpose before and after where a is not the last axis)

W_a [out, in] is the resize of the identity along that axis, computed by onnx's reference implementation
(`onnx.reference`, NumPy), which onnxruntime agrees with to 1e-6: the widened triangle (linear) or cubic
filter of an antialiased downscale, or the 4-tap cubic kernel, normalized per output, each attribute
(coordinate_transformation_mode, cubic_coeff_a, exclude_outside) as the node has it. Both filters are
separable per axis (onnxruntime computes them so), so the product of the per-axis passes is the Resize. Each
pass lowers as a MatMul with constant weights (8-bit weights, int32 sums, one requantization); W is dense,
out x in multiply-adds per output row where the filter has 4 (or 4 / scale) taps.

Before this rewrite TVM's converter dropped the antialias attribute: `F.interpolate(x, size, mode="bilinear",
antialias=True)` exported by torch's dynamo exporter (the resize of torchvision's transforms, written into a
model's preprocessing) compiled and ran as plain bilinear sampling, cosine 0.71 to onnxruntime on a 16 -> 7
downscale, without a word; cubic (`mode="bicubic"`) was refused ("resize2d method cubic: only
nearest_neighbor and linear"). Not rewritten: nearest and plain linear (TVM's resize2d, or
onnx_resize_coords.py), tf_crop_and_resize, sizes or scales computed at run time, keep_aspect_ratio_policy
other than stretch, non-float x.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_resize_coords import static_resize
from .onnx_rewrite import rewrite_nodes

_COPIED = ("antialias", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside", "mode")


def axis_matrix(size: int, out: int, scale: float | None, attrs: dict) -> np.ndarray:
    """W [out, size]: Resize (the node's attributes, by `scale` if given, else to `out`) of the identity along
    its first axis, computed by onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    kept = {k: v for k, v in attrs.items() if k in _COPIED}
    operands = ["x", "", "scales"] if scale is not None else ["x", "", "", "sizes"]
    given = (numpy_helper.from_array(np.array([scale, 1.0], np.float32), "scales") if scale is not None
             else numpy_helper.from_array(np.array([out, size], np.int64), "sizes"))
    graph = helper.make_graph([helper.make_node("Resize", operands, ["y"], **kept)], "axis",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [given])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    w = ReferenceEvaluator(model).run(None, {"x": np.eye(size, dtype=np.float32)})[0]
    assert w.shape == (out, size), (w.shape, out, size)
    return w.astype(np.float32)


def resize_filters_to_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite every antialiased or cubic Resize that the module doc names; returns how many. Needs shape inference."""
    values = {v.name: v.type.tensor_type for v in (*model.graph.input, *model.graph.value_info)}
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def rewrite(node, inits):
        read = static_resize(node, values, constants)
        if read is None:
            return None
        text, shape, out, scale = read
        mode = text.get("mode", "nearest")
        if not (text.get("antialias", 0) and mode == "linear" or mode == "cubic"):
            return None
        scale = [None if v is None else float(v) for v in scale]
        resized = [a for a in range(len(shape)) if out[a] != shape[a] or (scale[a] is not None and scale[a] != 1.0)]
        if not resized or min(shape + out) <= 0:
            return None
        prefix, rank = node.name or node.output[0], len(shape)
        nodes, current = [], node.input[0]
        for step, a in enumerate(reversed(resized)):  # the last axis first
            name = lambda s, step=step: f"{prefix}/aa{step}_{s}"
            target = node.output[0] if step == len(resized) - 1 else name("out")
            w = axis_matrix(shape[a], out[a], scale[a], text)
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name("w")))
            if a == rank - 1:
                nodes.append(helper.make_node("MatMul", [current, name("w")], [target], name=name("matmul")))
            else:
                perm = [d for d in range(rank) if d != a] + [a]
                back = list(np.argsort(perm))
                nodes += [helper.make_node("Transpose", [current], [name("t")], name=name("t"), perm=perm),
                          helper.make_node("MatMul", [name("t"), name("w")], [name("m")], name=name("matmul")),
                          helper.make_node("Transpose", [name("m")], [target], name=name("back"),
                                           perm=[int(p) for p in back])]
            current = target
        return nodes

    return rewrite_nodes(model, rewrite)
