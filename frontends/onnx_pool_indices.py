"""MaxPool's Indices output and MaxUnpool (SegNet / ENet decoders unpool at the encoder's argmax), rewritten
into ops TVM imports and intq lowers (static shapes; registered in onnx_decompose.py):

    Y, I = MaxPool(x)          ->  Y = MaxPool(x);  W = Gather(Reshape(x, [N, C, S]), T, axis=2) (the windows,
                                   [N, C, K, P]);  I = Gather(T, ArgMax(W, axis=2) P + p) + (n C + c) S
    MaxPool(x, auto_pad SAME_*) -> MaxPool(x, explicit pads)
    MaxUnpool(x, I[, shape])   ->  Reshape(ScatterElements(zeros(prod(shape)), Reshape(I, [-1]),
                                   Reshape(x, [-1]), axis=0), shape)

T [K, P] is a constant: for each of the window's K offsets and each of the P outputs, the flat spatial index
of the element it reads (row-major; the Indices output reads its column-major twin where storage_order is 1). A
window offset in the padding reads the window's first real element instead: a copy of an element never
wins over it (ArgMax takes the first maximum, and the copy maps to the same index), so padding needs no
-inf. Compiled, the ArgMax runs on the window's integers: values that differ by less than one step of the
8-bit grid tie there, and the first of them wins. With a free batch the artifact runs sample by sample
(the flat ScatterElements mixes samples), refused where the Indices are an output: they hold each sample's
offset n C S. TVM's converter drops MaxPool's second output, calls `.tolist()` on MaxUnpool's output_shape and sizes
a strided SAME_LOWER MaxPool one row short.
"""

from __future__ import annotations

import itertools

import numpy as np
from onnx import helper, numpy_helper


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _explicit_pads(spatial, attrs) -> list[int]:
    """ONNX's pads [begins..., ends...], auto_pad resolved: SAME_* pads for ceil(n / stride) outputs with the
    dilated window (onnx's reference; TVM's converter sized SAME_LOWER outputs as floor(n / stride))."""
    rank = len(spatial)
    kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1] * rank))
    dilations, auto = list(attrs.get("dilations", [1] * rank)), _text(attrs.get("auto_pad", "NOTSET"))
    if auto == "VALID":
        return [0] * 2 * rank
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(attrs.get("pads", [0] * 2 * rank))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    outs = [-(-n // s) for n, s in zip(spatial, strides)]
    total = [max(0, (o - 1) * s + e - n) for o, s, e, n in zip(outs, strides, span, spatial)]
    small = [t // 2 for t in total]
    heads = small if auto == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
    return heads + [t - h for t, h in zip(total, heads)]


def _window_table(spatial, attrs) -> tuple[np.ndarray, list[int], list[int]] | None:
    """[K, P]: the row-major flat spatial index each window offset reads (see the module doc), the output's
    spatial shape and the explicit pads, with ONNX's pads, auto_pad, strides, dilations and ceil_mode; None
    where a window holds no real element."""
    rank = len(spatial)
    kernel = list(attrs["kernel_shape"])
    strides, dilations = list(attrs.get("strides", [1] * rank)), list(attrs.get("dilations", [1] * rank))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    pads = _explicit_pads(spatial, attrs)
    outs = []
    for i in range(rank):
        room = spatial[i] + pads[i] + pads[rank + i] - span[i]
        out = (-(-room // strides[i]) if attrs.get("ceil_mode", 0) else room // strides[i]) + 1
        if attrs.get("ceil_mode", 0) and (out - 1) * strides[i] >= spatial[i] + pads[i]:
            out -= 1  # the last window would start in the trailing padding: ONNX drops it
        outs.append(out)
    starts = np.stack([g.reshape(-1) for g in np.meshgrid(*map(np.arange, outs), indexing="ij")], -1) \
        * np.array(strides) - np.array(pads[:rank])  # [P, rank]
    offsets = np.array(list(itertools.product(*map(range, kernel))), np.int64).reshape(-1, rank) * np.array(dilations)
    reads = offsets[:, None] + starts[None]  # [K, P, rank]
    real = ((reads >= 0) & (reads < np.array(spatial))).all(-1)  # [K, P]
    if not real.any(0).all():
        return None
    first = reads[real.argmax(0), np.arange(reads.shape[1])]  # each window's first real element
    reads = np.where(real[..., None], reads, first[None])
    table = reads @ np.cumprod([1, *spatial[::-1]])[:-1][::-1]  # row-major flat indices
    return table, outs, pads


def max_pool_indices(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """MaxPool with its Indices output (see the module doc); Y stays a MaxPool, which lowers to integers."""
    x = shapes.get(node.input[0])
    if len(node.output) < 2 or not node.output[1] or not node.output[0] or x is None or min(x, default=0) <= 0:
        return None
    attrs = _attrs(node)
    made = _window_table(x[2:], attrs) if "kernel_shape" in attrs else None
    if made is None:
        return None
    table, outs, pads = made
    if attrs.get("storage_order", 0):  # column-major indices: the reversed axes' strides
        spatial = np.array(x[2:])
        coords = np.stack(np.unravel_index(table, spatial), -1)
        stored = coords @ np.cumprod([1, *spatial])[:-1]
    else:
        stored = table
    (k, p), (n, c), size = table.shape, x[:2], int(np.prod(x[2:]))
    prefix = node.name or node.output[1]
    name = lambda s: f"{prefix}/{s}"
    for key, value in {"flat": [n, c, size], "table": table.reshape(-1), "windows": [n, c, k, p],
                       "outputs": np.arange(p), "count": np.array(p, np.int64), "stored": stored.reshape(-1),
                       "channel_offset": (np.arange(n * c) * size).reshape(n, c, 1), "shape": [n, c, *outs]}.items():
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name(key)))
    step = lambda op, ins, out, **kw: helper.make_node(op, ins, [name(out)], name=name(out), **kw)
    # explicit pads: TVM's converter sizes SAME_LOWER outputs as floor(input / stride), ONNX as the ceiling
    kept = [a for a in node.attribute if a.name not in ("storage_order", "auto_pad", "pads")]
    pool = helper.make_node("MaxPool", [node.input[0]], [node.output[0]], name=node.name, pads=pads)
    pool.attribute.extend(kept)
    return [pool,
            step("Reshape", [node.input[0], name("flat")], "x_flat"),
            step("Gather", [name("x_flat"), name("table")], "gathered", axis=2),
            step("Reshape", [name("gathered"), name("windows")], "x_windows"),
            step("ArgMax", [name("x_windows")], "offset", axis=2, keepdims=0),  # the first maximum, as onnxruntime
            step("Mul", [name("offset"), name("count")], "offset_row"),
            step("Add", [name("offset_row"), name("outputs")], "slot"),
            step("Gather", [name("stored"), name("slot")], "spatial", axis=0),
            step("Add", [name("spatial"), name("channel_offset")], "index"),
            helper.make_node("Reshape", [name("index"), name("shape")], [node.output[1]], name=name("indices"))]


def max_pool_explicit_pads(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """MaxPool with auto_pad SAME_*: the same pool with explicit pads (TVM's converter gave a SAME_LOWER pool
    with strides floor(n / stride) outputs, one row short of ONNX's)."""
    x, attrs = shapes.get(node.input[0]), _attrs(node)
    if _text(attrs.get("auto_pad", "NOTSET")) not in ("SAME_UPPER", "SAME_LOWER") or x is None or \
            min(x, default=0) <= 0 or "kernel_shape" not in attrs:
        return None
    pool = helper.make_node("MaxPool", list(node.input), list(node.output), name=node.name,
                            pads=_explicit_pads(x[2:], attrs))
    pool.attribute.extend(a for a in node.attribute if a.name not in ("auto_pad", "pads"))
    return [pool]


def max_unpool(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """MaxUnpool with a static output shape (given as a constant, else ONNX's default from the attributes)."""
    x = shapes.get(node.input[0])
    given = consts(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if x is None or min(x, default=0) <= 0 or (len(node.input) > 2 and node.input[2] and given is None):
        return None
    attrs = _attrs(node)
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    strides, pads = list(attrs.get("strides", [1] * rank)), list(attrs.get("pads", [0] * 2 * rank))
    shape = [int(v) for v in given] if given is not None else x[:2] + [
        (x[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[rank + i] for i in range(rank)]
    prefix = node.name or node.output[0]
    name = lambda s: f"{prefix}/{s}"
    # float32 zeros: MaxUnpool takes floats, and float16 graphs compute as float32 here (onnx_float16.py)
    inits.extend([numpy_helper.from_array(np.zeros(int(np.prod(shape)), np.float32), name("zeros")),
                  numpy_helper.from_array(np.array([-1], np.int64), name("flat")),
                  numpy_helper.from_array(np.array(shape, np.int64), name("shape"))])
    step = lambda op, ins, out, **kw: helper.make_node(op, ins, [name(out)], name=name(out), **kw)
    return [step("Reshape", [node.input[0], name("flat")], "values"),
            step("Reshape", [node.input[1], name("flat")], "indices"),
            step("ScatterElements", [name("zeros"), name("indices"), name("values")], "scattered", axis=0),
            helper.make_node("Reshape", [name("scattered"), name("shape")], list(node.output), name=prefix)]
