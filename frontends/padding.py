"""Does zero padding along a free length leave the real positions' outputs as they are? Measured with
float onnxruntime on the model file (a pre-quantized file's float graph: what intq compiles), not guessed from an
input's name.

An attention-mask input makes padding exact in a transformer (masked keys weigh exactly 0), and the
buckets of runtime/buckets.py then run any length padded to the next bucket and cut back. But a model
can take a mask and still read the padding: a bidirectional GRU encoder that uses its mask only for
pooling runs its backward direction over the pads first, so every real position's state changes with
the bucket (arabic-name-romanizer's encoder: cosine 0.35 to float at a 7-character name padded into the
32 bucket, with no word said). Such a model runs only its compiled lengths, as one without a mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .onnx_qdq import float_graph_file

TOLERANCE = 1e-3  # of an output's largest magnitude: float rounding, not the pads' doing


def padding_changes_outputs(path: str | Path, sample: dict[str, np.ndarray], axes: dict[str, int]) -> str | None:
    """Why zero-padding `sample` (batch-1 inputs; `axes`: the length's axis in each input that has it)
    changes what the model computes for its real positions, or None where it does not (or where float
    onnxruntime cannot run the file at two lengths: nothing to measure). The sample is cut to half its
    length m, then zero-padded (mask 0) back to its length; each output of the padded run, cut back to m
    where it holds the length, must equal the cut run's."""
    import onnxruntime as ort

    length = next(v.shape[axes[k]] for k, v in sample.items() if k in axes)
    m = max(1, length // 2)
    big = max(length, m + 1)
    short = {k: np.take(v, np.arange(m), axis=axes[k]) if k in axes else v for k, v in sample.items()}
    padded = {k: np.pad(v, [(0, big - m) if i == axes[k] else (0, 0) for i in range(v.ndim)]) if k in axes else v
              for k, v in short.items()}
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(float_graph_file(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        cut, full = session.run(names, short), session.run(names, padded)
    except Exception:  # noqa: BLE001  (a file onnxruntime cannot run at other lengths: the name decides)
        return None
    for name, a, b in zip(names, cut, full):
        a, b = np.asarray(a), np.asarray(b)
        for axis in [i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if (p, q) == (m, big)] if a.ndim == b.ndim else []:
            b = np.take(b, np.arange(m), axis=axis)
        if a.shape != b.shape:
            return f"output {name!r} has shape {list(b.shape)} padded, {list(a.shape)} at length {m}"
        scale = max(float(np.abs(a.astype(np.float64)).max(initial=0.0)), 1e-6)
        if a.dtype.kind in "fc" and not np.allclose(a, b, rtol=0, atol=TOLERANCE * scale) or \
                a.dtype.kind not in "fc" and not np.array_equal(a, b):
            error = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            return (f"float onnxruntime's output {name!r} for {m} positions changes by up to {error:.3g} (of "
                    f"{scale:.3g}) when they are zero-padded to {big} with the mask 0")
    return None
