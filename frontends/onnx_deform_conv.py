"""DeformConv (opset 19; torchvision's deform_conv2d: DCNv1/v2 layers of detectors and segmenters) as ops
that TVM imports and intq lowers to integers (in place, before the import):

    DeformConv(X, W, offset, B, mask)  ->  Conv1x1(Reshape(GridSample(X, grid) * mask), W as [O, C/G * kH kW, 1, 1], B)

Each output position's kH x kW taps, moved by their learned offsets, are sampled bilinearly from the
image (zeros outside it, as onnxruntime and torchvision sample), one GridSample per offset group over
a grid of [kH kW, oH oW] points; weighted by the modulation mask (DCNv2), the samples are the columns of
an im2col whose matmul with the filters is a grouped 1x1 conv. The grid's normalized coordinates are
affine in the offsets (align_corners=0: pixel p is (2 p + 1) / size - 1), so a conv computing offsets,
the grid, the sampling (`lowering.resize.lower_grid_sample`), the mask's product and the conv all lower
to integers.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


def deform_conv(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """The rewrite of one 2-D DeformConv with static image and offset shapes (else None: left as is)."""
    x, offset = shapes.get(node.input[0]), shapes.get(node.input[2])
    weight = consts(node.input[1])
    if x is None or offset is None or weight is None or len(x) != 4 or len(offset) != 4 or weight.ndim != 4:
        return None
    if min(x[1:]) <= 0 or min(offset[1:]) <= 0:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = (int(k) for k in attrs.get("kernel_shape", weight.shape[2:]))
    sh, sw = (int(s) for s in attrs.get("strides", [1, 1]))
    dh, dw = (int(d) for d in attrs.get("dilations", [1, 1]))
    top, left = (int(p) for p in attrs.get("pads", [0, 0, 0, 0])[:2])
    groups, offset_groups = int(attrs.get("group", 1)), int(attrs.get("offset_group", 1))
    _, c, h, w = x
    _, _, oh, ow = offset
    k, length = kh * kw, oh * ow
    if offset[1] != 2 * offset_groups * k or c % offset_groups or c % groups or weight.shape[1] * groups != c:
        return None
    prefix = node.name or node.output[0]

    def const(value, name, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), f"{prefix}/{name}"))
        return inits[-1].name

    def op(kind, inputs, name, **kwargs):
        nodes.append(helper.make_node(kind, inputs, [f"{prefix}/{name}"], name=f"{prefix}/{name}", **kwargs))
        return nodes[-1].output[0]

    nodes: list = []
    moves = op("Reshape", [node.input[2], const([0, offset_groups, k, 2, length], "moves_shape", np.int64)], "moves")
    # tap (i, j) of output (y, x) sits at pixel (y sh - top + i dh, x sw - left + j dw) before its offset
    tap_y = (np.arange(kh) * dh)[:, None, None, None] + (np.arange(oh) * sh - top)[None, None, :, None]
    tap_x = (np.arange(kw) * dw)[None, :, None, None] + (np.arange(ow) * sw - left)[None, None, None, :]
    axes = []
    for axis, (size, taps) in enumerate(((h, tap_y), (w, tap_x))):  # offsets: (dy, dx); the grid: (x, y)
        moved = op("Slice", [moves, const([axis], f"from{axis}", np.int64), const([axis + 1], f"to{axis}", np.int64),
                             const([3], f"axis{axis}", np.int64)], f"move{axis}")
        scaled = op("Mul", [moved, const(2.0 / size, f"scale{axis}")], f"scaled{axis}")
        base = np.broadcast_to((2 * taps + 1) / size - 1, (kh, kw, oh, ow)).reshape(1, 1, k, 1, length)
        axes.append(op("Add", [scaled, const(base, f"base{axis}")], f"grid{axis}"))
    grid = op("Concat", axes[::-1], "grid", axis=3)  # [N, og, K, 2, L]
    grid = op("Transpose", [grid], "grid_last", perm=[0, 1, 2, 4, 3])
    grid = op("Reshape", [grid, const([-1, k, length, 2], "grid_shape", np.int64)], "grid_groups")
    image = op("Reshape", [node.input[0], const([-1, c // offset_groups, h, w], "image_shape", np.int64)], "image")
    taps = op("GridSample", [image, grid], "taps", mode="linear" if opset >= 20 else "bilinear",
              padding_mode="zeros", align_corners=0)  # [N og, C / og, K, L]
    if len(node.input) > 4 and node.input[4]:
        mask = op("Reshape", [node.input[4], const([-1, 1, k, length], "mask_shape", np.int64)], "mask")
        taps = op("Mul", [taps, mask], "modulated")
    columns = op("Reshape", [taps, const([-1, c * k, oh, ow], "columns_shape", np.int64)], "columns")
    filters = const(weight.reshape(weight.shape[0], -1, 1, 1), "filters", weight.dtype)
    bias = [node.input[3]] if len(node.input) > 3 and node.input[3] else []
    nodes.append(helper.make_node("Conv", [columns, filters, *bias], list(node.output), name=prefix, group=groups,
                                  kernel_shape=[1, 1]))
    return nodes
