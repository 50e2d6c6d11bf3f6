"""Pad with negative pads (a crop), rewritten as a crop and a pad (in place, before the import):

    Pad(x, pads with negatives, constant v)  ->  Pad(Slice(x, the cropped ends), max(pads, 0), constant v)

torch's `nn.ZeroPad2d((0, 0, 1, -1))` (RWKV's time shift: the sequence moved one step later, its last step
dropped) exports one Pad whose pads mix +1 and -1. TVM's importer writes it as a `call_tir` whose output is not
a padding of its input, so `te_calls_to_ops` cannot recover an `R.nn.pad` from it and the kernel had no integer
lowering: refused integer-only. A Slice and a non-negative Pad are both ops intq lowers (data movement on the
integers). Constant mode only: there cropping and padding commute per axis, as long as an axis is not cropped
by more than its size (then a crop would reach into the other side's padding); reflect and edge pads are left
as they are.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


def _pads_and_axes(node, opset: int, rank: int, consts) -> tuple[np.ndarray, list[int]] | None:
    """(pads [2 * len(axes)], axes) of a Pad node, or None where they are not constants."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if opset < 11:
        return np.asarray(attrs.get("pads", []), np.int64), list(range(rank))
    pads = consts(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        given = consts(node.input[3])
        if given is None:
            return None
        axes = [int(a) % rank for a in given.ravel()]
    return (None if pads is None else pads.astype(np.int64).ravel()), axes


def negative_pads(node, opset: int, inits: list, shapes: dict, consts) -> list | None:
    """A constant-mode Pad with a negative pad: Slice then a Pad of the non-negative pads (see the module
    docstring); None where the pads are all >= 0, not constant, or the mode is not constant."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("mode", b"constant")
    shape = shapes.get(node.input[0])
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or not shape or min(shape) < 0:
        return None
    found = _pads_and_axes(node, opset, len(shape), consts)
    if found is None or found[0] is None or found[0].size != 2 * len(found[1]) or (found[0] >= 0).all():
        return None
    pads, axes = found
    begin, end = pads[: len(axes)], pads[len(axes):]
    crop_begin, crop_end = np.maximum(-begin, 0), np.maximum(-end, 0)
    sizes = np.array([shape[a] for a in axes], np.int64)
    if (crop_begin + crop_end > sizes).any():
        return None  # cropped past its own length: into the padding, which a crop first cannot express
    prefix = node.name or node.output[0]
    cropped = f"{prefix}/cropped"
    # Slice-10's inputs at any opset: the form TVM's converter reads (this runs after `legacy_forms_to_tvm_forms`)
    for name, value in (("starts", crop_begin), ("ends", sizes - crop_end), ("axes", axes)):
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), f"{prefix}/crop_{name}"))
    crop = helper.make_node("Slice", [node.input[0], *(i.name for i in inits[-3:])], [cropped], name=cropped)
    kept = np.concatenate([np.maximum(begin, 0), np.maximum(end, 0)])
    if opset < 11:
        return [crop, helper.make_node("Pad", [cropped], list(node.output), name=prefix, mode="constant",
                                       pads=kept.tolist(), value=float(attrs.get("value", 0.0)))]
    inits.append(numpy_helper.from_array(kept, f"{prefix}/kept_pads"))
    rest = list(node.input[2:])
    return [crop, helper.make_node("Pad", [cropped, inits[-1].name, *rest], list(node.output), name=prefix,
                                   mode="constant")]
