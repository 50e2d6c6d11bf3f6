"""After a compile: the artifact against float onnxruntime on one calibration sample.

A model can verify integer-only and still be wrong (a grid too coarse for a tensor the
sensitivity search did not catch); the user should hear it at compile time, not in production.
The CLI runs the last two calibration samples through the artifact and through onnxruntime on the
original file (for a pre-quantized file, first on the float graph it quantizes) and prints each
output's worst cosine and largest error, with a warning below 0.99.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_COSINE = 0.99


SAMPLES = 2  # the last calibration samples checked (one can hide a bad output: 0.995 on one, 0.963 on another)


def calibration_samples(calib: str | Path, inputs: list[dict], count: int = SAMPLES) -> list[dict[str, np.ndarray]]:
    """The last `count` samples of a calibration file, shaped as the artifact's inputs (manifest entries)."""
    with np.load(calib) as data:
        arrays = {spec["name"]: data[spec["name"]] for spec in inputs}
    batched = [a.ndim == len(spec["shape"]) for a, spec in zip(arrays.values(), inputs)]
    total = min(len(a) for a in arrays.values()) if arrays else 0
    if any(batched) or not total:  # no samples axis: the file is one batch
        return [{k: a[-1:] if b else a[-1] for (k, a), b in zip(arrays.items(), batched)}]
    return [{k: a[i] for k, a in arrays.items()} for i in range(max(0, total - count), total)]


def worst(rows_per_sample: list[list[tuple[str, float, float]]]) -> list[tuple[str, float, float]]:
    """Per output, the lowest cosine and the largest error over the samples (NaN, a mismatch, wins)."""
    merged: dict[str, tuple[float, float]] = {}
    for rows in rows_per_sample:
        for name, cos, err in rows:
            low, high = merged.get(name, (np.inf, 0.0))
            merged[name] = (cos if np.isnan(cos) or cos < low else low, max(high, err))
    return [(name, cos, err) for name, (cos, err) in merged.items()]


FILE = "float onnxruntime"


def references(model_path: str | Path) -> list[tuple[str, str | bytes]]:
    """(label, model) pairs the artifact is checked against, the one that decides the warning first:
    the file run by onnxruntime; for a pre-quantized file (QDQ, QOperator, dynamic quantization)
    first the float graph it quantizes, which is what intq compiles with grids of its own: a
    dynamically quantized T5 encoder agrees with that graph at cosine 0.70-0.87 itself, and an
    artifact closer to float than the file must not be reported as wrong for it."""
    import onnx

    from frontends.onnx_qdq import strip_qdq

    model = onnx.load(str(model_path))
    if not strip_qdq(model):
        return [(FILE, str(model_path))]
    return [("the float graph of this pre-quantized file (onnxruntime)", model.SerializeToString()),
            ("the pre-quantized file itself (onnxruntime, its own quantization included)", str(model_path))]


def float_agreement(model_path: str | Path | bytes, artifact, samples, got=None) -> list[tuple[str, float, float]]:
    """(output, worst cosine, largest |error|) of the loaded artifact (or its outputs `got`) against
    onnxruntime over `samples` (one input dict, or a list), for each float output (`model_path`: a
    file, or a serialized model); one onnxruntime session for them all."""
    import onnxruntime as ort

    samples, gots = ([samples], [got]) if isinstance(samples, dict) else (samples, got or [None] * len(samples))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph warnings flooded the compile's output
    session = ort.InferenceSession(model_path if isinstance(model_path, bytes) else str(model_path), options,
                                   providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    per_sample = []
    for sample, ours in zip(samples, gots):
        want = session.run(None, {k: v for k, v in sample.items() if k in wanted})
        ours = artifact.run(sample) if ours is None else ours
        per_sample.append([row for out, ref in zip(session.get_outputs(), want)
                           if (row := _agreement(out.name, ours.get(out.name), np.asarray(ref))) is not None])
    return worst(per_sample)


def _agreement(name: str, got, ref: np.ndarray) -> tuple[str, float, float] | None:
    """(name, cosine, max |error|) of one output; None where it is not a float output of the same size."""
    if got is None or ref.dtype.kind != "f":
        return None
    a, b = np.asarray(got, np.float64).ravel(), ref.astype(np.float64).ravel()
    if a.shape != b.shape:
        return None
    finite = np.isfinite(b)  # NaN or inf on purpose (masked targets): they must come out the same,
    if not np.array_equal(finite, np.isfinite(a)) or not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return name, float("nan"), float("inf")  # and the rest is compared
    a, b = a[finite], b[finite]
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a.any() and b.any() else float(np.array_equal(a, b))
    return name, cos, float(np.abs(a - b).max(initial=0.0))


def report(rows: list[tuple[str, float, float]], label: str = FILE, warn: bool = True, samples: int = 1) -> str:
    """One line per output, and (`warn`) a warning when one falls below MIN_COSINE."""
    where = "the last calibration sample" if samples == 1 else f"the last {samples} calibration samples (worst)"
    lines = [f"check against {label} on {where}: {name}: cosine {cos:.4f}, "
             f"max |error| {err:.4g}" for name, cos, err in rows]
    low = [name for name, cos, _ in rows if not cos >= MIN_COSINE]
    if low and warn:
        lines.append(f"WARNING: {', '.join(low)} agree(s) with float below cosine {MIN_COSINE}: the artifact "
                     "may be wrong on real inputs; try more or more representative --calib data, or "
                     "--allow-float and compare")
    return "\n".join(lines)
