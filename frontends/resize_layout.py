"""Resize over axes the importer does not resize -> a Transpose sandwich it imports right.

    Resize(x[N, H, W, C], scales [1, a, b, 1])  ->  Transpose(0, 3, 1, 2) -> Resize([1, 1, a, b])
                                                    -> Transpose(0, 2, 3, 1)

A 1-D Resize of [N, C, T] becomes a 2-D one over its row twice, [N, C, 2, T], and row 0 of the result
(TVM imports the 1-D form as an opaque kernel the integer path cannot lower).

TVM's ONNX importer takes the last two axes of a 4-D Resize as H and W whatever the scales
say, so a Keras/TF-style NHWC Resize imports silently wrong (measured: [1, 6, 6, 4] with
scales [1, 2, 2, 1] became [1, 6, 12, 4]). NHWC resizes are rewritten as above; any other
resize of the first two axes is refused by name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    infos = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in infos}


def _array(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _full_rank(model: onnx.ModelProto, node, rank: int, in_shape: list[int], extra: list):
    """Opset 18's `axes` (scales or sizes for those axes only) and keep_aspect_ratio_policy (sizes shrunk or
    grown to keep the aspect ratio), which TVM's converter ignores, made explicit: full-rank constant scales
    or sizes, as the ONNX spec computes them. Returns the node to keep."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    policy = attrs.get("keep_aspect_ratio_policy", b"stretch")
    policy = policy.decode() if isinstance(policy, bytes) else policy
    if axes is None and policy == "stretch":
        return node
    axes = [a % rank for a in (axes or range(rank))]
    scales = _array(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = _array(model, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    ins = list(node.input) + [""] * (4 - len(node.input))
    if sizes is not None and sizes.size:
        full = list(in_shape)
        for a, v in zip(axes, sizes.tolist()):
            full[a] = int(v)
        if policy != "stretch":
            ratios = [full[a] / in_shape[a] for a in axes]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                full[a] = int(np.floor(scale * in_shape[a] + 0.5))  # round_int: halfway cases up
        extra.append(numpy_helper.from_array(np.array(full, np.int64), f"{node.output[0]}/full_sizes"))
        ins[3] = extra[-1].name
    elif scales is not None and scales.size:
        full = np.ones(rank, np.float32)
        full[axes] = scales
        extra.append(numpy_helper.from_array(full, f"{node.output[0]}/full_scales"))
        ins[2] = extra[-1].name
    else:
        return node  # not static: the importer decides
    new = helper.make_node("Resize", ins, list(node.output), name=node.name)
    new.attribute.extend(a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy"))
    return new


def resize_to_nchw(model: onnx.ModelProto, path) -> None:
    """Rewrite every NHWC 4-D Resize of `model` (shape-inferred, constant scales or sizes) in place; Resize's
    `axes` and keep_aspect_ratio_policy first become full-rank scales or sizes (`_full_rank`)."""
    shapes, nodes, extra = _shapes(model), [], []
    for node in model.graph.node:
        if node.op_type == "Resize" and shapes.get(node.input[0]):
            node = _full_rank(model, node, len(shapes[node.input[0]]), shapes[node.input[0]], extra)
            model.graph.initializer.extend(extra)  # visible to `_array` below
            extra.clear()
        if node.op_type == "Resize" and len(shapes.get(node.input[0], [])) == 3:
            nodes += _as_2d(model, node, shapes[node.input[0]], extra)
            continue
        if node.op_type != "Resize" or len(shapes.get(node.input[0], [])) != 4:
            nodes.append(node)
            continue
        in_shape = shapes[node.input[0]]
        scales = _array(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        sizes = _array(model, node.input[3]) if len(node.input) > 3 and node.input[3] else None
        ratio = (np.asarray(sizes, np.float64) / in_shape if scales is None or scales.size == 0
                 else np.asarray(scales, np.float64))
        if ratio.size != 4 or (ratio[0] == 1 and ratio[1] == 1):
            nodes.append(node)  # NCHW (or not static: the importer decides)
            continue
        roi = _array(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if ratio[0] != 1 or ratio[3] != 1 or (roi is not None and roi.size):
            raise UnsupportedModelError(f"{path}: Resize node {node.name or node.output[0]!r} resizes axes "
                                        f"{[i for i in range(4) if ratio[i] != 1]} (scales {ratio.tolist()}): only "
                                        "NCHW (axes 2, 3) and NHWC (axes 1, 2) resizes without roi are supported")
        base = node.output[0]
        perm_in, perm_out = [0, 3, 1, 2], [0, 2, 3, 1]
        inputs = [f"{base}/nchw_in", ""]
        if scales is not None and scales.size:
            extra.append(numpy_helper.from_array(np.asarray(scales)[perm_in].astype(np.float32), f"{base}/nchw_scales"))
            inputs.append(f"{base}/nchw_scales")
        else:
            extra.append(numpy_helper.from_array(np.asarray(sizes)[perm_in].astype(np.int64), f"{base}/nchw_sizes"))
            inputs += ["", f"{base}/nchw_sizes"]
        nodes.append(helper.make_node("Transpose", [node.input[0]], [inputs[0]], perm=perm_in, name=f"{base}/to_nchw"))
        resize = helper.make_node("Resize", inputs, [f"{base}/nchw_out"], name=node.name)
        resize.attribute.extend(node.attribute)
        nodes.append(resize)
        nodes.append(helper.make_node("Transpose", [f"{base}/nchw_out"], [base], perm=perm_out,
                                      name=f"{base}/to_nhwc"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(extra)



def _as_2d(model: onnx.ModelProto, node, in_shape: list[int], extra: list) -> list:
    """A Resize of the last axis of [N, C, T] (torch's 1-D F.interpolate) as a 2-D one over [N, C, 2, T] (the
    row twice: TVM's align_corners divides by zero on an axis of 1 -> 1), row 0 taken after; the integer path
    lowers 2-D resizes (TVM imports the 1-D form as an opaque kernel). Others stay as they are."""
    scales = _array(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = _array(model, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    roi = _array(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None
    base = node.output[0]
    if scales is not None and scales.size == 3 and scales[0] == 1 and scales[1] == 1:
        extra.append(numpy_helper.from_array(np.array([1, 1, 1, scales[2]], np.float32), f"{base}/2d_scales"))
        inputs = [f"{base}/2d_in", "", extra[-1].name]
    elif (sizes is not None and sizes.size == 3 and 0 not in in_shape
          and sizes[0] == in_shape[0] and sizes[1] == in_shape[1]):
        extra.append(numpy_helper.from_array(np.array([*sizes[:2], 2, sizes[2]], np.int64), f"{base}/2d_sizes"))
        inputs = [f"{base}/2d_in", "", "", extra[-1].name]
    else:
        return [node]
    if roi is not None and roi.size:
        return [node]
    extra += [numpy_helper.from_array(np.array([2], np.int64), f"{base}/2d_axis"),
              numpy_helper.from_array(np.array(0, np.int64), f"{base}/2d_row")]
    resize = helper.make_node("Resize", inputs, [f"{base}/2d_out"], name=node.name)
    resize.attribute.extend(node.attribute)
    return [helper.make_node("Unsqueeze", [node.input[0], f"{base}/2d_axis"], [f"{base}/2d_row_in"], name=f"{base}/to_2d"),
            helper.make_node("Concat", [f"{base}/2d_row_in"] * 2, [inputs[0]], axis=2, name=f"{base}/twice"),
            resize, helper.make_node("Gather", [f"{base}/2d_out", f"{base}/2d_row"], [base], axis=2, name=f"{base}/to_1d")]
