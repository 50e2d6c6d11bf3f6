"""The integers an accumulator can hold: bounds per output channel, from constant weights and dtypes.

A conv or matmul with constant int8 weights over an input of a known integer dtype sums
products of known signs: output channel c lies within

    [sum_k min(w[c, k] * x_lo, w[c, k] * x_hi),  sum_k max(w[c, k] * x_lo, w[c, k] * x_hi)]

(zero padding adds zeros, inside both). A constant bias moves the bounds, layout ops keep the
bounds of all their input's values (a reshape, a transpose, a max pool), a sum (a pool's) the
count of its terms times theirs; a product of two
activations is bounded by its reduction length times the dtypes' extreme product; an 8- or
16-bit value (cast to int32 or int64) by its dtype. These are the bounds that no input can
pass, not calibrated ranges: what they prove holds for every input. `short_multipliers.py`
chooses requantization multipliers by them and `targets/requant.py` proves its 32-bit
products exact by the same bounds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax

Bounds = tuple[np.ndarray, np.ndarray]  # (lo, hi) int64, broadcastable to the value's shape

NARROW = ("int8", "uint8", "int16", "uint16", "bool")
LAYOUT = frozenset(f"relax.{name}" for name in ("reshape", "permute_dims", "squeeze", "expand_dims", "flatten",
                                                  "strided_slice", "nn.max_pool2d", "broadcast_to"))


def _dtype_bounds(dtype: str) -> Bounds | None:
    if dtype == "bool":
        return np.int64(0), np.int64(1)
    if dtype not in NARROW:
        return None
    info = np.iinfo(dtype)
    return np.int64(info.min), np.int64(info.max)


def _op(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


def _scalar(bounds: Bounds) -> tuple[int, int]:
    return int(np.min(bounds[0])), int(np.max(bounds[1]))


def _weighted(w: np.ndarray, x: tuple[int, int], axes: tuple[int, ...]) -> Bounds:
    """Bounds of sum over `axes` of w * x for x within [x_lo, x_hi]."""
    w = w.astype(np.int64)
    a, b = w * x[0], w * x[1]
    return np.minimum(a, b).sum(axis=axes), np.maximum(a, b).sum(axis=axes)


def accumulator_bounds(expr: relax.Expr, lookup: Callable[[relax.Var], relax.Expr | None]) -> Bounds | None:
    """(lo, hi) of integer `expr` (broadcastable to its shape: per output channel where weights
    give them), or None where unknown. `lookup(var)` gives a variable's bound value (None: a
    parameter)."""
    if isinstance(expr, relax.Var):
        bound = lookup(expr)
        if bound is not None:
            return accumulator_bounds(bound, lookup)
    value = _const(expr)
    if value is not None:
        if value.dtype.kind not in "iub":
            return None
        return value.astype(np.int64), value.astype(np.int64)
    dtype = str(getattr(expr.ty, "dtype", ""))
    op = _op(expr)
    if op == "relax.astype" and dtype in ("int32", "int64"):
        return accumulator_bounds(expr.args[0], lookup)
    if op in ("relax.add", "relax.subtract") and dtype in ("int32", "int64"):
        a, b = (accumulator_bounds(e, lookup) for e in expr.args)
        if a is None or b is None:
            return None
        lo, hi = (a[0] + b[0], a[1] + b[1]) if op == "relax.add" else (a[0] - b[1], a[1] - b[0])
        return (lo, hi) if max(np.abs(lo).max(), np.abs(hi).max()) < 2**62 else None
    if op in LAYOUT and dtype in ("int32", "int64"):  # the same values, moved: the bounds over all of them
        inner = accumulator_bounds(expr.args[0], lookup)
        return None if inner is None else (np.int64(np.min(inner[0])), np.int64(np.max(inner[1])))
    if op == "relax.sum" and dtype in ("int32", "int64"):  # a pool's sum: the count of its terms times theirs
        inner, shape = accumulator_bounds(expr.args[0], lookup), _shape(expr.args[0])
        if inner is None or shape is None:
            return None
        axes = expr.attrs.axis
        count = int(np.prod([shape[int(a)] for a in axes])) if axes is not None else int(np.prod(shape))
        return np.int64(count * int(np.min(inner[0]))), np.int64(count * int(np.max(inner[1])))
    if op == "relax.nn.conv2d" and dtype == "int32":
        return _conv_bounds(expr, lookup)
    if op == "relax.matmul" and dtype == "int32":
        return _matmul_bounds(expr, lookup)
    return _dtype_bounds(dtype)


def _conv_bounds(call: relax.Call, lookup) -> Bounds | None:
    w, x = _const(call.args[1]), accumulator_bounds(call.args[0], lookup)
    attrs = call.attrs
    out_layout = str(attrs.out_layout) or str(attrs.data_layout)
    kernel_layout = str(attrs.kernel_layout)
    if (w is None or x is None or w.dtype.kind not in "iu" or sorted(kernel_layout) != sorted("OIHW")
            or sorted(out_layout) != sorted("NCHW")):
        return None
    o = kernel_layout.index("O")
    lo, hi = _weighted(w, _scalar(x), tuple(d for d in range(4) if d != o))
    shape = [1] * 4
    shape[out_layout.index("C")] = -1
    return lo.reshape(shape), hi.reshape(shape)


def _matmul_bounds(call: relax.Call, lookup) -> Bounds | None:
    a, b = call.args
    w = _const(b)
    x = accumulator_bounds(a, lookup)
    if x is None:
        return None
    if w is not None and w.ndim == 2 and w.dtype.kind in "iu":  # [K, N]: per column
        return _weighted(w, _scalar(x), (0,))
    y = accumulator_bounds(b, lookup)
    shape = _shape(b)
    if y is None or shape is None or len(shape) < 2:
        return None
    (x_lo, x_hi), (y_lo, y_hi) = _scalar(x), _scalar(y)
    corners = [x_lo * y_lo, x_lo * y_hi, x_hi * y_lo, x_hi * y_hi]
    k = shape[-2]
    return np.int64(k * min(corners)), np.int64(k * max(corners))
