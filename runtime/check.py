"""After a compile: the artifact against float onnxruntime on calibration samples.

A model can verify integer-only and still be wrong (a grid too coarse for a tensor the
sensitivity search did not catch); the user should hear it at compile time, not in production.
The CLI runs the last two calibration samples (more, up to 16, where the artifact runs them within a
second) through the artifact and through onnxruntime on the original file (for a pre-quantized
file, first on the float graph it quantizes) and prints each output's worst cosine (for an integer
output, the share of equal elements; for one that is a quantized real, a QuantizeLinear's codes, the
cosine of the reals they stand for) and largest error, with a warning below 0.99, or where the
error is large for the output's own size (cosine cannot see a scale error, and says 1 for any
one-element output of the right sign).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

MIN_COSINE = 0.99
MIN_IOU = 0.9  # of a probability map's mask at 0.5: a DB text detector's fell to 0.51 at cosine 0.87,
# a segmenter's to 0.53 at cosine 0.998 (its probabilities took 18 values): cosine alone hid it
MIN_MASK = 16  # elements a probability output needs for its mask to be judged
MAX_RELATIVE = 0.15  # ||ours - float|| / ||float||: cosine 0.99 at equal norms is 0.14; a turn detector's
# one probability, 0.95 where float says 0.26, had "cosine 1.0000"
PROBABILITY_FLOOR = 0.1  # a probability output's norm is taken as at least this RMS: 0.003 for 0.001 is no error


SAMPLES = 2  # the last calibration samples checked (one can hide a bad output: 0.995 on one, 0.963 on another)
MAX_SAMPLES = 16  # and up to this many of the last ones where they run within BUDGET_S
BUDGET_S = 1.0


def calibration_samples(calib: str | Path, inputs: list[dict], count: int = SAMPLES) -> list[dict[str, np.ndarray]]:
    """The last `count` samples of a calibration file, shaped as the artifact's inputs (manifest entries)."""
    with np.load(calib) as data:
        arrays = {spec["name"]: data[spec["name"]] for spec in inputs}
    # an array of the input's own rank holds samples of batch 1 along its first axis, as the compile's
    # calibration reads it ([N, 3, 224, 224] for a [1, 3, 224, 224] or free-batch input): taken for one batch,
    # only its last sample was checked
    batched = [a.ndim == len(spec["shape"]) for a, spec in zip(arrays.values(), inputs)]
    total = min(len(a) for a in arrays.values()) if arrays else 0
    if not total:
        return [{k: a[-1:] if b else np.asarray(a[-1]) for (k, a), b in zip(arrays.items(), batched)}]
    # arrays, never NumPy scalars (a 0-d input's sample): onnxruntime refuses those
    return [{k: a[i:i + 1] if b else np.asarray(a[i]) for (k, a), b in zip(arrays.items(), batched)}
            for i in range(max(0, total - count), total)]


class Agreement(NamedTuple):
    """One output against float: cosine, largest |error|, and for a probability map (float values all
    in [0, 1]) the IoU of its mask at 0.5 (None for other outputs). For an integer output (an argmax,
    a top-k's indices) `cosine` is the share of equal elements (`integers`)."""

    name: str
    cosine: float
    error: float
    iou: float | None = None
    integers: bool = False
    note: str = ""  # where NaN/inf differ: which side has them
    relative: float = 0.0  # ||ours - float|| / ||float|| (a probability's norm at least PROBABILITY_FLOOR RMS)
    single: bool = False  # one element: its cosine is +-1 whatever the value, so the errors judge it


def worst(rows_per_sample: list[list[Agreement]]) -> list[Agreement]:
    """Per output, the lowest cosine and IoU and the largest error over the samples (NaN, a mismatch, wins)."""
    merged: dict[str, Agreement] = {}
    for rows in rows_per_sample:
        for row in rows:
            old = merged.get(row.name)
            if old is None:
                merged[row.name] = row
                continue
            cos = row.cosine if np.isnan(row.cosine) or row.cosine < old.cosine else old.cosine
            ious = [v for v in (old.iou, row.iou) if v is not None]
            merged[row.name] = Agreement(row.name, cos, max(old.error, row.error), min(ious) if ious else None,
                                         row.integers, old.note or row.note, max(old.relative, row.relative),
                                         row.single)
    return list(merged.values())


FILE = "float onnxruntime"


def references(model_path: str | Path) -> list[tuple[str, str | bytes]]:
    """(label, model) pairs the artifact is checked against, the one that decides the warning first:
    the file run by onnxruntime; for a pre-quantized file (QDQ, QOperator, dynamic quantization)
    first the float graph it quantizes, which is what intq compiles with grids of its own: a
    dynamically quantized T5 encoder agrees with that graph at cosine 0.70-0.87 itself, and an
    artifact closer to float than the file must not be reported as wrong for it."""
    import onnx

    from frontends.onnx_qdq import strip_qdq
    from frontends.onnx_qonnx import read_qonnx

    from frontends.onnx_old_opsets import upgrade_old_opset
    from frontends.onnx_tflite import tflite_ops_to_standard

    model = onnx.load(str(model_path))
    # a QONNX file (Quant nodes) runs nowhere as it is: its standard QDQ form stands for it; so does a tf2onnx
    # file's with TFLite builtins it left unconverted (TFL_RELU_0_TO_1) for that file
    itself = (("the QONNX file as QuantizeLinear / DequantizeLinear (onnxruntime)", model.SerializeToString())
              if read_qonnx(model) else
              ("the file with tf2onnx's unconverted TFLite ops as ONNX ops (onnxruntime)", model.SerializeToString())
              if tflite_ops_to_standard(model) else
              ("the file with its pools over four or more axes folded to fewer (onnxruntime)", model.SerializeToString())
              if _fold_wide_pools(model) else
              ("the file converted to opset 7 (onnxruntime runs opset 7 and later)", model.SerializeToString())
              if upgrade_old_opset(model) else
              ("the pre-quantized file itself (onnxruntime, its own quantization included)", str(model_path)))
    if not strip_qdq(model):
        return [(FILE if itself[1] == str(model_path) else itself[0], itself[1])]
    return [("the float graph of this pre-quantized file (onnxruntime)", model.SerializeToString()), itself]


def _fold_wide_pools(model) -> bool:
    """jax2onnx's `lax.reduce_window` pools (a MaxPool or ones-kernel Conv over 4 spatial axes), which onnxruntime
    cannot run, folded in place as the import folds them (frontends/onnx_window_axes.py); False where there are none."""
    import onnx

    from frontends.onnx_window_axes import fold_unit_window_axes

    wide = any(n.op_type in ("MaxPool", "AveragePool", "LpPool", "Conv")
               and any(a.name in ("kernel_shape", "strides", "dilations") and len(a.ints) > 3 for a in n.attribute)
               for n in model.graph.node)
    if not wide:
        return False
    inferred = onnx.ModelProto()
    inferred.CopyFrom(model)
    del inferred.graph.value_info[:]  # jax2onnx declares some NHWC tensors with NCHW shapes
    inferred = onnx.shape_inference.infer_shapes(inferred)
    if not fold_unit_window_axes(inferred):
        return False
    model.CopyFrom(inferred)
    return True


def float_agreement(model_path: str | Path | bytes, artifact, samples, got=None) -> list[Agreement]:
    """(output, worst cosine, largest |error|, worst mask IoU) of the loaded artifact (or its outputs `got`) against
    onnxruntime over `samples` (one input dict, or a list), for each float output (`model_path`: a
    file, or a serialized model); one onnxruntime session for them all."""
    import onnxruntime as ort

    samples, gots = ([samples], [got]) if isinstance(samples, dict) else (samples, got or [None] * len(samples))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph warnings flooded the compile's output
    session = ort.InferenceSession(model_path if isinstance(model_path, bytes) else str(model_path), options,
                                   providers=["CPUExecutionProvider"])
    wanted = {i.name: i.type for i in session.get_inputs()}
    grids = _output_grids(model_path)
    per_sample, values = [], {}
    for sample, ours in zip(samples, gots):
        want = session.run(None, {k: _as_session_type(v, wanted[k]) for k, v in sample.items() if k in wanted})
        ours = artifact.run(sample) if ours is None else ours
        per_sample.append([row for out, ref in zip(session.get_outputs(), want)
                           if (row := _agreement(out.name, *_dequantized(ours.get(out.name), np.asarray(ref),
                                                                         grids.get(out.name)))) is not None])
        refs = {out.name: ref for out, ref in zip(session.get_outputs(), want)}
        for row in per_sample[-1]:
            if row.single and not row.integers:
                values.setdefault(row.name, []).append((float(np.ravel(ours[row.name])[0]),
                                                        float(np.ravel(refs[row.name])[0])))
    return [_single_relative(row, values[row.name]) if len(values.get(row.name, ())) > 1 else row
            for row in worst(per_sample)]


def _output_grids(model_path) -> dict[str, tuple[float, float]]:
    """The outputs that are quantized reals (a full-integer TFLite model's int8 output, as tf2onnx writes it)
    with their (scale, zero point): frontends/onnx_qdq_outputs.py."""
    import onnx

    from frontends.onnx_qdq_outputs import output_grids

    try:
        model = onnx.load_from_string(model_path) if isinstance(model_path, bytes) else \
            onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001  (onnxruntime read it; the grids are only a refinement)
        return {}
    return output_grids(model, "" if isinstance(model_path, bytes) else str(Path(model_path).parent))


def _dequantized(got, ref: np.ndarray, grid: tuple[float, float] | None) -> tuple:
    """(got, ref) as the reals their codes stand for where the output is a quantized real: codes one step
    apart are a small error there, and the share of equal codes said nothing (EfficientNet-Lite0's int8
    logits: 13% equal at cosine 0.996)."""
    if grid is None or got is None or ref.dtype.kind not in "iu":
        return got, ref
    scale, zero = grid
    return ((np.asarray(got, np.float64) - zero) * scale, (ref.astype(np.float64) - zero) * scale)


def _as_session_type(value: np.ndarray, ort_type: str) -> np.ndarray:
    """A float32 sample for a float16 or float64 input of the file (the artifact takes it as float32:
    frontends/onnx_float_io.py) in that input's own type."""
    wanted = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(ort_type)
    return value.astype(wanted) if wanted is not None and value.dtype.kind == "f" else value


def _single_relative(row: Agreement, pairs: list[tuple[float, float]]) -> Agreement:
    """A one-value output's relative error over the samples: the largest |error| against the RMS of
    float's values, not each sample's own value (a retention time near 0 on one peptide, 0.319 off
    on an output spanning -28..81, read as 21% wrong)."""
    ours, theirs = np.asarray(pairs).T
    rms = float(np.sqrt(np.mean(theirs**2)))
    if theirs.min() >= 0.0 and theirs.max() <= 1.0:
        rms = max(rms, PROBABILITY_FLOOR)
    finite = np.isfinite(ours) & np.isfinite(theirs)
    error = float(np.abs(ours[finite] - theirs[finite]).max(initial=0.0))
    return row._replace(relative=error / rms if rms else float(error > 0))


def _agreement(name: str, got, ref: np.ndarray) -> Agreement | None:
    """The agreement of one output; None where it is not a numeric output of the same size."""
    if got is None or ref.dtype.kind not in "fiub":
        return None
    if ref.dtype.kind != "f":  # an argmax, a top-k's indices, a mask: the share of equal elements
        a, b = np.asarray(got).ravel(), ref.ravel()
        if a.shape != b.shape:
            return None
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return Agreement(name, float(np.mean(a == b)) if a.size else 1.0, float(diff.max(initial=0.0)), None, True)
    a, b = np.asarray(got, np.float64).ravel(), ref.astype(np.float64).ravel()
    if a.shape != b.shape:
        return None
    finite = np.isfinite(b)  # NaN or inf on purpose (masked targets): they must come out the same,
    if not np.array_equal(finite, np.isfinite(a)) or not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        ours, theirs = int((~np.isfinite(a) & finite).sum()), int((np.isfinite(a) & ~finite).sum())
        note = "; ".join(text for count, text in (
            (ours, f"{ours} NaN/inf value(s) where float has finite ones"),
            (theirs, f"{theirs} finite value(s) where float has NaN/inf")) if count) or "NaN/inf of other signs"
        return Agreement(name, float("nan"), float("inf"), note=note)  # and the rest is compared
    iou = _mask_iou(np.asarray(got, np.float64), ref.astype(np.float64)) if finite.all() else None
    a, b = a[finite], b[finite]
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a.any() and b.any() else float(np.array_equal(a, b))
    norm = np.linalg.norm(b)
    if b.size and b.min() >= 0.0 and b.max() <= 1.0:
        norm = max(norm, PROBABILITY_FLOOR * b.size ** 0.5)
    relative = float(np.linalg.norm(a - b) / norm) if norm else float(not np.array_equal(a, b))
    return Agreement(name, cos, float(np.abs(a - b).max(initial=0.0)), iou, relative=relative, single=b.size == 1)


MAX_CLASSES = 64  # an axis this long or shorter whose values sum to 1 is taken for a softmax's classes


def _mask_iou(got: np.ndarray, ref: np.ndarray) -> float | None:
    """IoU of {got > 0.5} and {ref > 0.5} for a probability map (ref in [0, 1]), of the smaller side (a
    mostly-foreground map is judged by its background); for a softmax over a class axis, the worst
    class's (a segmenter's rare foreground beside its background); None for other outputs."""
    if ref.size < MIN_MASK or ref.min(initial=0.0) < 0.0 or ref.max(initial=0.0) > 1.0:
        return None
    summed = [ax for ax in range(ref.ndim) if 2 <= ref.shape[ax] <= MAX_CLASSES
              and np.allclose(ref.sum(axis=ax), 1.0, atol=1e-3)]
    classes = [ax for ax in summed if ref.shape.count(ref.shape[ax]) == 1]
    if summed and not classes:  # [.., L, L]: attention over keys, where no mask means anything
        return None
    if classes:
        ious = [_iou(np.take(got, c, axis=classes[-1]), np.take(ref, c, axis=classes[-1]))
                for c in range(ref.shape[classes[-1]])]
        ious = [v for v in ious if v is not None]
        return min(ious) if ious else None
    return _iou(got, ref)


IOU_BAND = 0.02  # elements float puts this close to 0.5 are a coin toss at any precision: not counted
MIN_MASK_UNION = 8  # a mask (and its prediction) of fewer elements is not judged by IoU (one site of 5000: 0 or 1)


def _iou(got: np.ndarray, ref: np.ndarray) -> float | None:
    clear = np.abs(ref - 0.5) >= IOU_BAND
    want, have = ref[clear] > 0.5, got[clear] > 0.5
    if want.size and want.mean() > 0.5:
        want, have = ~want, ~have
    union = np.count_nonzero(want | have)
    return float(np.count_nonzero(want & have) / union) if union >= MIN_MASK_UNION else None


def _floor(cosine: float) -> str:
    """Four digits, rounded down: 0.98996 is below 0.99, and printed as 0.9900 it read as agreeing."""
    return f"{cosine:.4f}" if not np.isfinite(cosine) else f"{np.floor(cosine * 1e4) / 1e4:.4f}"


WEIGHT_HINTS = {"4": "--bits 8 or --bits mixed (4-bit weights in every layer lose the most), ",
                "mixed": "a looser limit for --bits mixed (fewer layers at 4 bits), "}


def report(rows: list[Agreement], label: str = FILE, warn: bool = True, samples: int = 1, bits: str = "8") -> str:
    """One line per output, and (`warn`) a warning when one falls below MIN_COSINE or MIN_IOU, naming the
    weight bits first where they are 4 or mixed (`bits`, the manifest's: a --bits 4 user was sent to calibration
    data and activation bits only)."""
    where = "the last calibration sample" if samples == 1 else f"the last {samples} calibration samples (worst)"
    lines = [f"check against {label} on {where}: {r.name}: "
             + (f"{r.cosine:.2%} of the integers equal" if r.integers else "one value" if r.single
                else f"cosine {_floor(r.cosine)}")
             + f", {'|error|' if r.single else 'max |error|'} {r.error:.4g}"
             + ("" if r.iou is None else f", mask (> 0.5) IoU {r.iou:.3f}")
             + (f", relative error {r.relative:.3g}" if r.relative > MAX_RELATIVE else "")
             + (f" ({r.note})" if r.note else "")
             for r in rows]
    low = [r.name for r in rows if not (r.cosine >= MIN_COSINE or r.single) or (r.iou is not None and r.iou < MIN_IOU)
           or r.relative > MAX_RELATIVE]
    if low and warn:
        lines.append(f"WARNING: {', '.join(low)} agree(s) with float below cosine {MIN_COSINE} (integers: that "
                     f"share equal), mask IoU {MIN_IOU} or above a relative error {MAX_RELATIVE} (|error| / |float|; one "
                     "value: / its RMS over the samples): "
                     "the artifact may be wrong on real inputs; try " + WEIGHT_HINTS.get(bits, "") +
                     "more or more representative --calib data, "
                     "--activation-bits 16 (every activation at 16 bits), --no-bias-correction, or --allow-float and compare")
    return "\n".join(lines)
