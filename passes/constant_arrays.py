"""NumPy arrays of Relax constants, converted once per constant.

    w = constant_arrays.array(call.args[1])              read-only; the same array at every read
    w64 = constant_arrays.array(call.args[1], "float64")

An unrolled recurrence (`frontends/onnx_rnn.py`) reads the same weight constants at every step, and
each pass that reads weights (smoothing's choice, the float runs of calibration and sensitivity, the
lowering) converted them at every read: `Tensor.numpy()` copies (~25 ms for a 768 x 3072 float32
matrix) and a float64 view doubles it. A 40-step LSTM 768 wide spent ~6 s of its 33 s compile so.
Large constants are kept here by the tensor they hold (the constant stays alive with its entry, so
its address cannot be reused), least recently used first out past KEPT_BYTES: enough for a 3-layer
LSTM 768 wide (~170 MB with float64 twins), little held between the compiles of one process.
"""

from __future__ import annotations

import collections

import numpy as np

MIN_SIZE = 1 << 14  # elements; smaller constants convert in microseconds
KEPT_BYTES = 256 << 20
_KEPT: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()


def array(const, dtype: str | None = None) -> np.ndarray:
    """`const`'s values (cast to `dtype` where given) as a read-only array, the same array for the same
    constant tensor while it is kept."""
    value = const.value
    size = int(np.prod([int(d) for d in value.shape]))
    if size < MIN_SIZE:
        return _read_only(value.numpy(), dtype)
    key = (hash(value), dtype)
    entry = _KEPT.get(key)
    if entry is not None and entry[0].same_as(value):
        _KEPT.move_to_end(key)
        return entry[1]
    out = _read_only(array(const) if dtype is not None else value.numpy(), dtype)
    _KEPT[key] = (value, out)
    while sum(a.nbytes for _, a in _KEPT.values()) > KEPT_BYTES and len(_KEPT) > 1:
        _KEPT.popitem(last=False)
    return out


def _read_only(a: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is not None and a.dtype != np.dtype(dtype):
        a = a.astype(dtype)
    a.flags.writeable = False
    return a
