"""Where the batch sits in each output of an ONNX model, measured with float onnxruntime: the
axis that grows from 1 to 2 when two samples run together. Used for a free batch the integer
module cannot take symbolically (a time-major LSTM, a transpose that moves the batch): the
artifact then runs its batch-1 module once per sample, and each output's samples are joined
along that axis. The same run checks that the model treats samples independently (a pre-quantized file's float
graph does: quantize_dynamic's per-call grids span the batch, so the file itself mixes its samples)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CompileError
from .onnx_qdq import float_graph_file

TOLERANCE = 1e-3  # of an output's largest magnitude: float rounding differs with the batch, samples do not mix


def output_batch_axes(path: str | Path, first: dict[str, np.ndarray], second: dict[str, np.ndarray],
                      outputs: list[str], shapes: list[list[int]]) -> list[int]:
    """Each output's batch axis, from `first` and `second` (batch-1 input dicts) run alone and
    as a batch of two; raises CompileError where an output has none or the samples mix. A model
    that onnxruntime cannot run at batch 2 (an exporter's reshape to a constant batch of 1) is a
    batch-1 model: run per sample, its outputs are joined on axis 0, where each has a 1 (`shapes`:
    the outputs' shapes at batch 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(float_graph_file(path), options, providers=["CPUExecutionProvider"])
        alone = [session.run(outputs, sample) for sample in (first, second)]
        both = session.run(outputs, {k: np.concatenate([first[k], second[k]]) for k in first})
    except Exception as err:  # onnxruntime's own refusal of batch 2: the file is a batch-1 model
        if all(shape[:1] == [1] for shape in shapes):
            return [0] * len(outputs)
        raise CompileError(f"{path}: float onnxruntime cannot run the model at batch 2 ({str(err).strip()[:300]}), "
                           "and not every output leads with a batch of 1; give the batch as a number") from None
    axes = []
    for name, a, b, pair in zip(outputs, alone[0], alone[1], both):
        a, b, pair = np.asarray(a), np.asarray(b), np.asarray(pair)
        grown = [i for i, (p, q) in enumerate(zip(a.shape, pair.shape)) if (p, q) == (1, 2)]
        if len(grown) != 1 or a.ndim != pair.ndim or a.shape != b.shape:
            raise CompileError(f"output {name!r} has shape {list(a.shape)} at batch 1 and {list(pair.shape)} at batch 2 "
                               "in float onnxruntime: no one axis holds the batch; give the batch as a number")
        axis = grown[0]
        scale = max(float(np.abs(np.concatenate([a.ravel(), b.ravel()]).astype(np.float64)).max(initial=0.0)), 1e-6)
        for k, own in enumerate((a, b)):
            part = np.take(pair, [k], axis=axis)
            if part.dtype.kind in "fc" and not np.allclose(part, own, rtol=0, atol=TOLERANCE * scale) or \
                    part.dtype.kind not in "fc" and not np.array_equal(part, own):
                raise CompileError(f"output {name!r}: sample {k} of a batch of two differs from what it gives alone "
                                   "in float onnxruntime: the model mixes samples; give the batch as a number")
        axes.append(axis)
    return axes
