"""Float inputs whose features have ranges of their own: one scale per feature at the boundary.

    x: float32 [..., F], features spanning [0.001, 0.03] beside [185, 4254] (raw tabular data)
        ==>  x: int16 [..., F] at scale 4 amax[f] / 32767 each (`scale` a list, `axis` -1 at the boundary)

One scale for the whole tensor (max |x| / 32767: 0.13) leaves the small features 0 or 1 step, and a
StandardScaler in the graph ((x - mean) / std) then blows that rounding up to several standard
deviations: a breast-cancer MLP flipped 9 of 171 labels. The runtime quantizes inputs in float
anyway, so a scale per feature costs nothing there. Inside, the input is an int32 accumulator with
per-feature scales, which the lowerings already carry through a constant bias or factor per feature
(the scaler) and fold into a constant matmul weight (`LoweringContext.per_feature`).

Preconditions: a float input of rank >= 1 and a static last axis of at most MAX_FEATURES, whose
per-tensor grid would leave some feature fewer than MIN_LEVELS steps, and whose every use is an
add/subtract/multiply/divide by a constant that varies along the last axis only, a matmul
(input first) with a constant 2-D weight, a constant matmul of its 2-D transpose (C @ x^T), or a
float -> float cast whose uses are such. Anything else (a conv, an image) keeps one scale.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .integer_inputs import vars_read
from .layout import channel_axis_after_reshape

MIN_LEVELS = 16  # a feature on fewer steps of the per-tensor grid gets its own scale
FEATURE_HEADROOM = 4  # each feature's grid spans 4x its calibrated max |x| (a step of 1/8192 of that)
MAX_FEATURES = 1024  # a longer last axis is a signal (a waveform's samples), not features of their own
_AFFINE = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.divide"})


def _per_feature_constant(expr, features: int, axis: int, rank: int) -> bool:
    """A constant that varies along the feature axis `axis` (of `rank`) only, broadcasting from the right."""
    if not isinstance(expr, tvm.ir.GenericConst):
        return False
    shape = expr.value.numpy().shape
    lead = rank - len(shape)
    return lead >= 0 and all(d == 1 or (lead + k == axis and d == features) for k, d in enumerate(shape))


def _call(value, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def _static(shape) -> list[int] | None:
    return [int(d) for d in shape] if shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in shape) else None


def _takes_features(value, p: relax.Var, features: int, axis: int) -> bool:
    """Whether `value` reads `p` (features on `axis`) per feature: an affine op with a per-feature
    constant, a constant matmul reading p's last axis, or C @ p with the features second to last."""
    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)):
        return False
    args, op, rank = list(value.args), value.op.name, len(p.ty.shape)
    if op in _AFFINE and len(args) == 2:
        other = args[1] if args[0].same_as(p) else args[0]
        return not other.same_as(p) and _per_feature_constant(other, features, axis, rank)
    if op != "relax.matmul":
        return False
    if axis == rank - 2 and args[1].same_as(p):
        return isinstance(args[0], tvm.ir.GenericConst) and args[0].value.numpy().ndim == 2
    return (axis == rank - 1 and args[0].same_as(p) and isinstance(args[1], tvm.ir.GenericConst)
            and args[1].value.numpy().ndim == 2)


def _moves_features(value, var: relax.Var, axis: int) -> int | None:
    """Where a float cast, transpose or reshape of `var` puts its feature axis `axis` (None: it
    does not keep the features apart: not one of those, or a reshape that mixes them)."""
    if _call(value, "relax.astype") and str(value.attrs.dtype).startswith("float"):
        return axis
    if _call(value, "relax.permute_dims"):
        rank = len(var.ty.shape)
        axes = [int(a) for a in value.attrs.axes] if value.attrs.axes is not None else list(range(rank))[::-1]
        return axes.index(axis)
    if _call(value, "relax.reshape"):
        before, after = _static(var.ty.shape), _static(getattr(value.ty, "shape", None))
        return None if before is None or after is None else channel_axis_after_reshape(before, after, axis)
    return None


def _reads(expr, var: relax.Var) -> bool:
    return any(v.same_as(var) for v in vars_read(expr))


def _only_per_feature(func: relax.Function, p: relax.Var, features: int) -> bool:
    """Whether every use of `p`, and of its float -> float casts (hummingbird computes in float64),
    transposes and reshapes that keep its features apart ([1, T, F] -> [T, F] before a matmul, a
    BatchNormalization between transposes), takes it per feature (`_takes_features`)."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    todo = [(p, len(p.ty.shape) - 1)]
    while todo:
        var, axis = todo.pop()
        uses = [b for b in bindings if _reads(b.value, var)]
        if not uses or _reads(func.body.body, var):
            return False
        for b in uses:
            moved = _moves_features(b.value, var, axis)
            if moved is not None:
                todo.append((b.var, moved))
            elif not _takes_features(b.value, var, features, axis):
                return False
    return True


def whole_scale(scale):
    """The power of two at or above `scale` (each, for an array) where it is at most 1: a grid on which
    whole numbers stay whole (a count compared with a threshold equal to a data value, `x <= 16`, keeps
    its side); a coarser scale stays as it is (pixels 0..255 on 8 bits: no grid keeps them whole)."""
    up = 2.0 ** np.ceil(np.log2(scale))
    return np.where(up <= 1.0, up, scale) if np.ndim(scale) else (float(up) if up <= 1.0 else scale)


def feature_scales(func: relax.Function, p: relax.Var, amax: np.ndarray | None, qmax: int,
                   whole: bool = False) -> np.ndarray | None:
    """Per-feature scales (int16) for float param `p` of `func` (module doc), or None: one scale;
    `whole` (calibration saw whole numbers only): powers of two."""
    shape = p.ty.shape if isinstance(p.ty, relax.TensorType) else None
    if (amax is None or shape is None or len(shape) < 1 or not isinstance(shape[-1], tvm.tirx.IntImm)
            or int(shape[-1]) != amax.size or not 2 <= amax.size <= MAX_FEATURES or not np.all(np.isfinite(amax))):
        return None
    top = float(amax.max(initial=0.0))
    if top <= 0 or qmax * float(amax[amax > 0].min()) / top >= MIN_LEVELS:
        return None
    if not _only_per_feature(func, p, int(shape[-1])):
        return None
    # a feature never seen nonzero: any scale; FEATURE_HEADROOM over the calibrated maxima: int16 has bits to
    # spare, and a dozen calibration rows had left ordinary test rows 1.5-4x beyond some feature's range
    scales = np.maximum(amax, top * 2.0**-20) * FEATURE_HEADROOM / np.iinfo(np.int16).max
    return whole_scale(scales) if whole else scales
