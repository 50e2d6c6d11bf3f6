"""compile_model: ONNX file -> integer-only artifact (frontends -> passes -> targets)."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from frontends import CompileError, ImportedModel, InputError, ToolchainError, load_onnx, parse_input_shape
from frontends.batch_axes import output_batch_axes
from frontends.onnx_index_inputs import index_rows
from frontends.onnx_import import (FreeDim, TensorSpec, bound_shapes, check_shared_dims, input_dim_names,
                                   onnxruntime_model)
from frontends.padding import padding_changes_outputs
from passes import (BOUNDARY_ATTR, LAYERS_ATTR, QuantConfig, QuantizeToInteger, bind_weights, calibrate,
                    verify_integer_only)
from passes.generalize_batch import generalize_batch, input_shapes_of, output_shapes, whole_sample_bindings
from passes.quantize_to_integer import BIAS_ATTR, COARSE_ATTR, FLOAT_NODES_ATTR, WIDE_ATTR, check_lowerable
from targets import boundary_kernels, get_target, parallel_build
from targets.cross import first_error_line
from targets.cpu_pipeline import cpu_pipeline

from .plan import FILES as PLAN_FILES_BY_KIND, export_plan, plan_folder
from .artifact import DEVICE_TEXT, LIBRARY, MANIFEST, RELAX_TEXT, REST, TAIL, check_destination, sha256, write_artifact
from .buckets import Buckets, default_sizes, is_mask, length_axes
from .cli import interrupts_recorded, raise_if_interrupted, read_inputs
from .mixed import Precision

SYNTHETIC_SAMPLES = 8
PLAN_ARCHES = ("armv7l", "riscv64")  # no TVM runtime wheels: artifacts also carry plan + intq_exec
PLAN_FILES = set(PLAN_FILES_BY_KIND.values())  # plan.txt, weights.bin, kernels.so, intq_exec


_QUIET = [False]  # `only_warnings()`: the compile's progress and summary lines are dropped, its warnings kept


def log(message: str) -> None:
    """A progress or summary line on stderr (`only_warnings` drops it)."""
    if not _QUIET[0]:
        print(f"[intq] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A line that `only_warnings` keeps: the artifact is less than what was asked for (synthetic calibration, a low
    agreement with float, a bucket or the free batch given up, onnxruntime running what was to be compiled)."""
    print(f"[intq] {message}", file=sys.stderr, flush=True)


@contextmanager
def only_warnings(on: bool = True):
    """While the body runs, only warnings and errors reach stderr (`runtime.compile -q`): the stages' lines,
    the time summary and the check's agreement lines are dropped."""
    before, _QUIET[0] = _QUIET[0], _QUIET[0] or on
    try:
        yield
    finally:
        _QUIET[0] = before


@contextmanager
def stage(what: str, times: dict | None = None, key: str | None = None):
    """Show a long step on stderr with its duration (added to `times[key]` if given)."""
    log(f"{what} ...")
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    raise_if_interrupted()  # a Ctrl-C that a fallback inside the stage swallowed
    log(f"{what}: done in {seconds:.1f} s")
    if times is not None:
        times[key or what] = times.get(key or what, 0.0) + seconds


def _names(names: list[str], shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def float_summary(float_nodes: list[dict]) -> str:
    """The --allow-float summary: every node left in float and why."""
    lines = [f"{n['onnx'] + ', binding ' if n.get('onnx') else ''}{n['node']} ({n['op']}): {n['reason']}"
             for n in float_nodes]
    return f"{len(float_nodes)} node(s) run in float (--allow-float):\n  " + "\n  ".join(lines)


def calibration_arrays(calib: str | os.PathLike | Mapping) -> dict[str, np.ndarray]:
    """The calibration arrays by input name: an .npz file's, or a dict's as given (the Python API's)."""
    if isinstance(calib, Mapping):
        return {name: np.asarray(value) for name, value in calib.items()}
    if not Path(calib).is_file():
        raise InputError(f"{calib}: calibration file not found")
    return read_inputs(str(calib))  # a single .npy array is named as such (a dict() error before)


def _calibration_label(calib) -> str:
    """How messages name the calibration data: its file, or the dict given as `calib`."""
    return "calib (the dict given)" if isinstance(calib, Mapping) else str(calib)


def load_calibration(path: str | os.PathLike | Mapping, inputs: list[TensorSpec],
                     others: tuple[str, ...] = ()) -> list[dict[str, np.ndarray]]:
    """Samples from an .npz (or a dict) whose keys are the input names and whose first axis indexes
    samples (each sample either the full input shape or, for batch-1 inputs, without it);
    `others`: inputs the file may hold that calibration does not read (the tail's own)."""
    data = calibration_arrays(path)
    path = _calibration_label(path)
    names = [i.name for i in inputs]
    data = {k: v for k, v in data.items() if k not in others or k in names}
    if set(data) != set(names):
        raise InputError(f"{path}: keys {sorted(data)} do not match the model's inputs {sorted(names)}")
    counts = set()
    for spec in inputs:
        arr = data[spec.name]
        ok = arr.shape[1:] == spec.shape or (spec.shape[0] == 1 and arr.shape[1:] == spec.shape[1:])
        if arr.ndim == 0 or not ok:
            raise InputError(f"{path}: {spec.name!r} has shape {list(arr.shape)}; expected [N, "
                             f"{', '.join(map(str, spec.shape))}]{_batchless(spec.shape)} (first axis indexes samples)")
        if np.issubdtype(np.dtype(spec.dtype), np.floating) != np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"{path}: {spec.name!r} has dtype {arr.dtype}; expected "
                             f"{'a float' if spec.dtype.startswith('float') else 'an integer'} array like the "
                             f"model's {spec.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # ranges of NaN: an artifact of garbage scales
            bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
            raise InputError(f"{path}: {spec.name!r} holds NaN or infinite values (sample(s) "
                             f"{', '.join(map(str, bad[:8]))}{', ...' if bad.size > 8 else ''}); calibrate on finite "
                             "inputs, as the model will be run on")
        if arr.dtype.kind == "f" and arr.size > len(arr) and np.ptp(arr) == 0 and not is_mask(spec.name):
            # blank images, a preprocessing slip: every range is calibrated on one value, the check on the same
            warn(f"WARNING: {path}: {spec.name!r} holds the one value {arr.flat[0]:g} in every element of every "
                 "sample: every range after it is calibrated on that alone, and the artifact will clip real inputs "
                 "(the check, run on these samples, cannot tell); calibrate on inputs like the real ones")
        counts.add(arr.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise InputError(f"{path}: inputs hold different or zero sample counts {sorted(counts)}")
    return [{s.name: data[s.name][i].reshape(s.shape).astype(s.dtype) for s in inputs}
            for i in range(counts.pop())]


def _batchless(shape: tuple) -> str:
    """The other layout calibration takes for a batch-1 input: " or [N, 3, 224, 224]" (not named, a user
    with that layout's wrong spatial size was told only of [N, 1, 3, 224, 224])."""
    return f" or [N, {', '.join(map(str, shape[1:]))}]" if shape and shape[0] == 1 else ""


def synthetic_calibration(inputs: list[TensorSpec], count: int = SYNTHETIC_SAMPLES) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{s.name: rng.standard_normal(s.shape).astype(np.float32) if s.dtype.startswith("float")
             else np.ones(s.shape, s.dtype) for s in inputs} for _ in range(count)]


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("intq", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _device_source(module) -> str | None:
    """The generated GPU code (CUDA C) of a built library, if it has any."""
    if module.kind == "cuda":
        return module.inspect_source("cuda")
    for imported in module.imports:
        found = _device_source(imported)
        if found is not None:
            return found
    return None


def _host_build() -> dict:
    """How to compile the float model that calibration runs on this machine: with the
    project's CPU schedules on x86 (TVM's default CPU pipeline emits plain loops)."""
    if platform.machine() != "x86_64":
        return {}
    host = get_target("x86").target()
    return {"build": functools.partial(parallel_build.executable, target=host, pipeline=cpu_pipeline(host))}


def has_normalization(float_mod) -> bool:
    """Does the model hold a LayerNorm or RMSNorm (a transformer: 16-bit residual stream)? The RMSNorms
    `passes.fuse_l2_normalize` made of L2 normalizations (a CNN's embedding head) do not count."""
    from tvm import relax

    from passes.fuse_l2_normalize import count_l2

    text = float_mod.script(show_meta=False)
    l2 = sum(count_l2(f) for _, f in float_mod.functions_items() if isinstance(f, relax.Function))
    return "R.nn.layer_norm(" in text or text.count("R.nn.rms_norm(") > l2


def _free_batch(input_shapes, spec, tune_trials: int) -> dict[str, FreeDim]:
    """The inputs whose batch `--input-shape` leaves free, after checking that the target takes
    a symbolic batch (CPU targets and cuda; passes/generalize_batch.py; a plan runs per sample)."""
    free = {k: v[0] for k, v in (input_shapes or {}).items() if v and isinstance(v[0], FreeDim)}
    if free and (spec.device not in ("cpu", "cuda") or tune_trials):
        why = "--tune-trials" if tune_trials else f"target {spec.name}"
        raise CompileError(f"a free batch (--input-shape {next(iter(free))}:N...) is supported on CPU targets "
                           f"and cuda without tuning; not with {why}. Give the batch as a number.")
    return free


def _ranges(name: str, free: dict[str, FreeDim], seq: FreeDim | None, axes: dict[str, int]) -> dict:
    """The manifest's ranges of an input's free dims: {"range": {"n": [lo, hi or None], "seq": [lo, hi]}}."""
    ranges = {free[name].name: [free[name].lo, free[name].hi]} if name in free else {}
    if name in axes:
        ranges[seq.name] = [seq.lo, seq.hi]
    return {"range": ranges} if ranges else {}


MAX_FEATURES = 256  # inputs with at most this many features on their last axis record each one's calibrated max


def _feature_amax(name: str, quant: dict, ranges, shape) -> dict:
    """{"feature_amax": [max |x| per last-axis feature over the calibration data]} of a float input
    of rank <= 3 ([N, F] or [N, T, F]) with one scale and few features (tabular, per-residue or
    per-frame features): what `Model.run` warns against (`model._warn_beyond_features`); else {}.
    An image's last axis is its width, whose columns are no features."""
    amax = getattr(ranges, "channel_amax", {}).get(name)
    if amax is None or quant.get("scale") is None or isinstance(quant["scale"], list) or len(shape) > 3 or \
            not 1 < np.size(amax[0]) <= MAX_FEATURES:
        return {}
    return {"feature_amax": [float(v) for v in np.asarray(amax[0]).ravel()]}


def _sequence_dim(input_shapes, sizes: list[int] | None, spec, precision) -> tuple[FreeDim | None, list[int],
                                                                                  dict[str, int]]:
    """The free dim after the batch (a sequence length, compiled as buckets: runtime/buckets.py),
    the bucket lengths, and the axis it has in each input that has it."""
    later = [(k, i, d) for k, v in (input_shapes or {}).items() for i, d in enumerate(v) if i > 0 and isinstance(d, FreeDim)]
    twice = sorted({k for k, _, _ in later if sum(k == other for other, _, _ in later) > 1})
    if twice:  # an image's height and width: buckets are one length, padded along one axis
        raise CompileError(f"--input-shape: {', '.join(repr(k) for k in twice)} has more than one free dim after the "
                           "batch (" + ", ".join(f"axis {i}: {d.lo}..{d.hi}" for k, i, d in later if k in twice) + "); an "
                           "artifact takes one free length: give the others as numbers (e.g. image:1x3x256x1..512), "
                           "or compile one artifact per size")
    found = {k: (i, d) for k, i, d in later}
    if not found:
        if sizes:
            raise CompileError("--buckets needs a free length in --input-shape (e.g. input_ids:1x1..512)")
        return None, [], {}
    dims = {d for _, d in found.values()}
    if len(dims) != 1 or len({k for k in found}) != len(found):
        raise CompileError(f"--input-shape: one free length (the same name and range in every input that has it) "
                           f"is supported; got {sorted(f'{k}: {d.name}={d.lo}..{d.hi}' for k, (_, d) in found.items())}")
    seq = dims.pop()
    if precision.bits == "mixed":
        raise CompileError("--bits mixed with a free length: the per-layer choice is made at one length; "
                           "give the length as a number")
    sizes = sorted(set(sizes)) if sizes else default_sizes(seq.lo, seq.hi)
    if sizes[0] < seq.lo or sizes[-1] != seq.hi:
        raise CompileError(f"--buckets {','.join(map(str, sizes))}: the lengths must lie in [{seq.lo}, {seq.hi}] "
                           f"and the largest must be {seq.hi}, the range's upper bound")
    return seq, sizes, {k: i for k, (i, _) in found.items()}


def _empty_tensor(mod) -> str | None:
    """The first call of `main` whose static shape has a zero (a length pooled to nothing), as
    "the op name: shape"; None if there is none."""
    from tvm import relax

    for block in mod["main"].body.blocks:
        for b in block.bindings:
            shape = getattr(b.var.ty, "shape", None)
            dims = [int(d) if hasattr(d, "value") else None for d in shape] if shape is not None else []
            if 0 in dims and isinstance(b.value, relax.Call):
                op = getattr(b.value.op, "name", "a call").removeprefix("relax.")
                return f"the {op} {b.var.name}: shape {dims}"
    return None


def _one_length_in_the_model(model_path: Path, seq: FreeDim, axes: dict[str, int]) -> None:
    """Refuse a free length given to inputs whose dims the model names differently: they are
    independent lengths (an encoder's source and a decoder's prefix), which one artifact's buckets
    (one length, padded together) cannot serve."""
    names = input_dim_names(model_path)
    symbols = {k: names[k][axis] for k, axis in axes.items() if k in names and axis < len(names[k])}
    if len({v for v in symbols.values() if v}) > 1:
        shown = ", ".join(f"{k!r} ({v})" for k, v in symbols.items() if v)
        raise CompileError(f"--input-shape gives one free length {seq.name}={seq.lo}..{seq.hi} to inputs whose lengths "
                           f"the model names apart: {shown}. They are independent lengths, and an artifact takes one "
                           "free length: give the others as numbers (e.g. --input-shape "
                           f"{next(iter(symbols))}:1x8), or compile one artifact per length")


def _calibration_length(calib, seq: FreeDim, axes: dict[str, int], input_shapes) -> int:
    """The length the calibration samples have (the largest bucket for synthetic samples)."""
    if calib is None:
        return seq.hi
    try:
        data = calibration_arrays(calib)
        lengths = {k: int(data[k].shape[axes[k] - len(input_shapes[k])]) for k in axes if k in data}
    except Exception:  # load_calibration names what is wrong with the file
        return seq.hi
    calib = _calibration_label(calib)
    if not lengths:
        return seq.hi
    if len(set(lengths.values())) > 1:
        raise InputError(f"{calib}: the inputs sharing the free length {seq.name} have different lengths in the "
                         f"calibration samples ({', '.join(f'{k!r}: {v}' for k, v in lengths.items())}); "
                         "pad them to one length (masked positions zero)")
    length = next(iter(lengths.values()))
    if not seq.lo <= length <= seq.hi:
        raise InputError(f"{calib}: the calibration samples have {seq.name} = {length}, outside --input-shape's "
                         f"range {seq.lo}..{seq.hi}")
    return length


def _length_axes(a: list[TensorSpec], b: list[TensorSpec], la: int, lb: int,
                 padded: bool) -> tuple[list[int | list[int] | None], list[dict[int, str]]]:
    """Where the length sits in each output, from the output shapes at two lengths: an axis, None, or
    several axes (an attention map [.., L, L], each cut back after padding); and, per output, the
    dims that follow the length otherwise ({axis: "L/4"}: a strided conv's frames, a text line's
    steps), which only unpadded buckets take (each runs its own length: nothing to cut back)."""
    axes, derived = [], []
    for x, y in zip(a, b):
        moved = [i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q]
        other = {i: _follows(x.shape[i], y.shape[i], la, lb) for i in moved if (x.shape[i], y.shape[i]) != (la, lb)}
        if other and padded:
            raise CompileError(f"output {x.name!r} has shape {list(x.shape)} at length {la} and {list(y.shape)} at "
                               f"{lb}: each dim that follows the length must be the length itself to cut it back "
                               "after padding; give the length as a number")
        moved = [i for i in moved if i not in other]
        axes.append(moved[0] if len(moved) == 1 else moved or None)
        derived.append(other)
    return axes, derived


def _follows(p: int, q: int, la: int, lb: int) -> str:
    """How a dim that is p at length la and q at lb follows the length L, in words ("L/4", "L*2")."""
    if la % p == 0 and lb % q == 0 and la // p == lb // q:
        return f"L/{la // p}"
    if p % la == 0 and q % lb == 0 and p // la == q // lb:
        return f"L*{p // la}"
    return "f(L)"


def _tail_inputs(imported: ImportedModel) -> list[str]:
    """The graph inputs only the tail reads (onnx_tail.py)."""
    head = {i.name for i in imported.inputs}
    return [] if imported.tail is None else [spec["name"] for spec in imported.tail.inputs if spec["name"] not in head]


def _float_structure(mod) -> list[tuple[str, str]]:
    """(binding, op) of every float tensor of `main`: calibration ranges are keyed by binding name,
    which names the same tensor at another length only where this list is the same there."""
    from tvm import relax

    return [(b.var.name, b.value.op.name if isinstance(b.value, relax.Call) and hasattr(b.value.op, "name") else "")
            for block in mod["main"].body.blocks for b in block.bindings
            if str(getattr(b.var.ty, "dtype", "")).startswith("float")]


def _at_length(samples: list[dict], axes: dict[str, int], length: int) -> list[dict]:
    """The calibration samples cut or edge-padded along the length to `length` (a bucket whose graph
    differs from the calibrated one, an LSTM unrolled per step, is calibrated on these)."""
    def fit(x: np.ndarray, axis: int) -> np.ndarray:
        if x.shape[axis] >= length:
            return np.take(x, np.arange(length), axis=axis)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return np.pad(x, widths, mode="edge")
    return [{k: fit(v, axes[k]) if k in axes else v for k, v in sample.items()} for sample in samples]


def _two_samples(samples: list[dict]) -> tuple[dict, dict]:
    """Two calibration samples for float onnxruntime's batch check (one reversed where there is one only)."""
    return samples[0], samples[-1] if len(samples) > 1 else {k: v[..., ::-1].copy() for k, v in samples[0].items()}


def _samples_kept_apart(model_path: Path, samples: list[dict], imported: ImportedModel, bindings: list[str]) -> None:
    """A batch made symbolic with bindings that take a whole sample as one (at batch 1 a reduction over every
    axis: a spectrogram clipped below its max; a scalar condition) takes each sample's own elements; float
    onnxruntime, run on two samples alone and as a batch of two, must agree (else the model takes the batch
    as one, and the batch falls back to per sample, which says so)."""
    first, second = _two_samples(samples)
    try:
        output_batch_axes(model_path, first, second, [s.name for s in imported.outputs],
                          [list(s.shape) for s in imported.outputs])
    except CompileError as err:
        raise CompileError(f"symbolic batch: binding(s) {', '.join(bindings[:3])} take a whole sample "
                           f"as one (a reduction over every axis, a scalar), which in the float model is the whole "
                           f"batch ({err})") from None


def _per_sample_shapes(model_path: Path, samples: list[dict], imported: ImportedModel, free: dict[str, FreeDim],
                       in_shapes: list[list], out_shapes: list[list], why: str) -> None:
    """Name the batch in the shapes of a batch-1 module run per sample: axis 0 of each free
    input, and in each output the axis float onnxruntime puts it on (frontends/batch_axes.py)."""
    name = next(iter(free.values())).name
    for spec, shape in zip(imported.inputs, in_shapes):
        if spec.name in free:
            shape[0] = name
    first, second = _two_samples(samples)
    try:
        axes = output_batch_axes(model_path, first, second, [s.name for s in imported.outputs],
                                 [list(s.shape) for s in imported.outputs])
    except CompileError as err:
        raise CompileError(f"{why}; nor can it run per sample: {err}") from None
    for shape, axis in zip(out_shapes, axes):
        shape[axis] = name


def _export(mod, target, pipeline, path: Path, spec):
    """Compile `mod` and link its library (on every CPU: targets/parallel_build.py); a failing
    compiler or linker is the user's toolchain, not a crash."""
    try:
        return parallel_build.export(mod, target, pipeline, path, **spec.export_kwargs())
    except RuntimeError as err:
        if "Compilation error" not in str(err):
            raise
        compiler = spec.toolchain.compiler or "the host C compiler"
        package = spec.toolchain.libc_package or spec.toolchain.package or "gcc"
        raise ToolchainError(f"linking the library for target {spec.name!r} with {compiler} failed: "
                             f"{first_error_line(str(err).partition('Compilation error:')[2])}; install {package} "
                             "(targets/install_toolchains.sh)") from None


def _compile_rest(rest, folder: Path, source: Path, calib, target: str, observer: str, progress: bool, cuda_arch, cpu
                  ) -> tuple[dict, list[dict]]:
    """Compile the nodes after the tail's first ones (onnx_tail.Rest) of the model file `source` as an
    artifact of their own in `folder`, calibrated on the tensors they read: the probe's outputs (and the
    model's inputs) on the calibration samples. Returns the manifest's entry and the rest's float nodes."""
    import onnx
    import onnxruntime as ort

    specs = [TensorSpec(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim),
                        onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name)
             for v in onnx.load_from_string(rest.probe).graph.input]
    # as the compiled part itself was calibrated: the file's samples, else synthetic N(0, 1) ones
    samples = load_calibration(calib, specs) if calib is not None else synthetic_calibration(specs)
    session = ort.InferenceSession(rest.probe, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reads = [v.name for v in onnx.load_from_string(rest.model).graph.input]
    rows = []
    for feed in samples:
        values = {**feed, **dict(zip(names, session.run(names, {arg.name: feed[arg.name] for arg in
                                                               session.get_inputs()})))}
        rows.append({name: values[name] for name in reads})
    work = Path(tempfile.mkdtemp(prefix=".intq-rest-", dir=folder.parent))
    try:
        (work / "rest.onnx").write_bytes(rest.model)
        np.savez(work / "calib.npz", **{name: np.stack([row[name] for row in rows]) for name in reads})
        log("compiling the nodes after onnxruntime's as an artifact of their own")
        compile_model(work / "rest.onnx", target, folder, calib=work / "calib.npz", observer=observer,
                      allow_float=True, progress=progress, cuda_arch=cuda_arch, cpu=cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    nested = json.loads((folder / MANIFEST).read_text())
    # the model it is part of, not the temporary file it was compiled from (gone now)
    nested["source"] = {"path": str(source), "sha256": sha256(source), "part": "the nodes after onnxruntime's"}
    (folder / MANIFEST).write_text(json.dumps(nested, indent=2) + "\n")
    return {"folder": folder.name, "inputs": reads}, nested.get("float_nodes", [])


def _write_tail(tail, tmp: Path, compile_rest, where: str) -> tuple[dict, list[dict]]:
    """Write the tail into the artifact folder `tmp`: its first nodes and the rest compiled again where
    the rest compiles (`compile_rest(rest, folder)`), else the whole tail. Returns the manifest's
    `tail` entry (without the boundary) and the float nodes it adds, `where` saying where they run."""
    model, nodes, entry, later = tail.model, tail.nodes, None, []
    if tail.rest is not None:
        try:
            entry, later = compile_rest(tail.rest, tmp / REST)
            model, nodes = tail.rest.first, tail.rest.nodes
        except CompileError as err:  # then onnxruntime runs it, as before the rest was compiled on its own
            shutil.rmtree(tmp / REST, ignore_errors=True)
            warn(f"the nodes after onnxruntime's did not compile on their own ({first_error_line(str(err))}); "
                "onnxruntime runs them too")
    (tmp / TAIL).write_bytes(model)
    floats = [{**n, "reason": f"runs in onnxruntime{where}: {n['reason']}"} for n in nodes]
    floats += [{**n, "reason": f"in the part compiled after onnxruntime's: {n['reason']}"} for n in later]
    log(float_summary(floats))
    return {"file": TAIL, "sha256": sha256(tmp / TAIL), "outputs": tail.outputs, "inputs": tail.inputs,
            "rest": entry}, floats


def _onnxruntime_artifact(imported: ImportedModel, model_path: Path, output: Path, spec, free_shapes, times: dict,
                          start: float, compile_rest) -> Path:
    """The artifact of a model whose unsupported nodes read its inputs (--allow-float): nothing is left to
    compile before them, so onnxruntime runs the whole graph, in float, every node listed with the reason."""
    tail = imported.tail
    if spec.arch in PLAN_ARCHES:
        raise CompileError(f"{model_path}: every node would run in onnxruntime (" + _names(
            [f"{n['op']} (node {n['node']})" for n in tail.nodes], 3) + f" read the inputs), and {spec.arch} "
            "boards run the plan executor, which has no onnxruntime; compile it for a target with a Python runtime")
    free = [k for k, v in (free_shapes or {}).items() if any(isinstance(d, FreeDim) for d in v)]
    if free:
        raise CompileError(f"{model_path}: every node runs in onnxruntime here, at the shapes given; free dims "
                           f"(--input-shape {free[0]}) are not taken: give them as numbers")

    def fill(tmp: Path) -> dict:
        entry, float_nodes = _write_tail(tail, tmp, compile_rest, "")
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {"path": str(model_path), "sha256": sha256(model_path)},
            "tuning": None,
            "target": {"name": spec.name, "tvm_target": spec.tvm_target, "arch": spec.arch, "device": "cpu",
                       "features": [], "kernel_family": None, "cross_compiler": spec.toolchain.compiler},
            "tools": _versions(),
            "inputs": [], "outputs": [],
            "quantization": None,
            "integer_only": False,
            "tail": {**entry, "boundary": []},
            "allow_float": True,
            "float_nodes": float_nodes,
            "verifier": "nothing compiled: onnxruntime runs the whole model",
            "relax": None, "device_code": None, "executor": None, "buckets": None, "batch": None,
            "library": None,
        }

    path = write_artifact(output, fill)
    log(f"wrote {path}")
    _log_times(times, start)
    return path


def compile_model(model_path: str | os.PathLike, target: str = "x86", output: str | os.PathLike | None = None,
                  calib: str | os.PathLike | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None,
                  observer: str = "minmax", allow_float: bool = False, config: QuantConfig | None = None,
                  progress: bool = True, cuda_arch: str | None = None, cpu: str | None = None, tune_trials: int = 0,
                  precision: Precision | None = None, buckets: list[int] | None = None, quiet: bool = False) -> Path:
    """Compile an ONNX model into an integer-only artifact; returns the artifact path.

    `calib`: an .npz file or a dict of arrays by input name, samples along the first axis; `input_shapes`:
    dims as numbers, FreeDims or --input-shape's words (`("N", 3, 224, 224)`).
    `cpu` (x86) builds for a fleet (`x86-64-v3`, ...) instead of this CPU's features.
    `precision` chooses the weight bits (uniform 8 or 4, or mixed under limits: `runtime.mixed`).
    A free length in `input_shapes` (`(1, FreeDim("seq", 1, 512))`) compiles one library per
    bucket length (`buckets`, default powers of two: runtime/buckets.py). `quiet`: only warnings on stderr
    (no stages, times or summaries; `progress` is the calibration's progress bars).
    Raises CompileError (and writes nothing) on bad input or an unsupported model. With `allow_float`,
    an internal failure on the graph makes the artifact onnxruntime's (every node listed with the error).
    """
    _check_argument_types(model_path, calib, input_shapes)
    input_shapes = _input_shapes(input_shapes)
    precision = precision if precision is None or isinstance(precision, Precision) else Precision(str(precision))
    start = time.perf_counter()
    with interrupts_recorded(), only_warnings(quiet):  # a Ctrl-C that a fallback swallows still stops it
        try:
            return _compile(Path(model_path), target, output, calib, input_shapes, observer, allow_float, config,
                            progress, cuda_arch, cpu, tune_trials, precision, buckets)
        except CompileError:
            raise
        except Exception as err:  # a bug of intq's or TVM's on this graph: --allow-float still runs the model
            free = any(isinstance(d, FreeDim) for dims in (input_shapes or {}).values() for d in dims)
            why = f"intq failed on this graph ({type(err).__name__}: {str(err).strip().splitlines()[-1][:300]})"
            imported = None if not allow_float or free else onnxruntime_model(model_path, input_shapes, why)
            if imported is None:
                raise
            warn(f"{why}; with --allow-float onnxruntime runs the whole model")
            spec = get_target(target, cuda_arch, cpu)
            return _onnxruntime_artifact(imported, Path(model_path), _destination(Path(model_path), output, spec), spec,
                                         None, {}, start, None)


def _check_argument_types(model_path, calib, input_shapes) -> None:
    """TypeError naming the argument a script got wrong: pathlib's own ('expected str, bytes or os.PathLike
    object, not dict') named none, and with allow_float the fallback below made the whole model onnxruntime's."""
    def wrong(what: str, value, expected: str) -> TypeError:
        return TypeError(f"compile_model: {what} must be {expected}, not {type(value).__module__}."
                         f"{type(value).__qualname__}".replace("builtins.", ""))

    if not isinstance(model_path, (str, os.PathLike)):
        raise wrong("model_path", model_path, "the path of an ONNX file (save a ModelProto with onnx.save first)")
    if calib is not None and not isinstance(calib, (str, os.PathLike, Mapping)):
        raise wrong("calib", calib, "the path of an .npz file or a dict of arrays by input name, each holding "
                    "samples along its first axis (stack a list of samples with np.stack)")
    for name, dims in (input_shapes or {}).items():
        if isinstance(dims, (str, bytes)) or not hasattr(dims, "__len__"):
            raise wrong(f"input_shapes[{name!r}]", dims, "a tuple of dims, e.g. (1, 3, 224, 224) or ('N', 3, 224, "
                        "224)")
        for d in dims:
            if not isinstance(d, (int, np.integer, str, FreeDim)) or isinstance(d, bool):
                raise wrong(f"input_shapes[{name!r}] {tuple(dims)}: each dim", d, "a number, a FreeDim or a word "
                            "--input-shape takes ('N', '1..32', 'seq=1..512')")


def _input_shapes(input_shapes: dict | None) -> dict[str, tuple] | None:
    """`input_shapes` as the compile takes them: dims given as --input-shape's words (('N', 3, 224, 224),
    ('1..8', ...), -1) read as it reads them (the importer's 'str' object cannot be interpreted as an integer)."""
    if input_shapes is None:
        return None
    return {name: parse_input_shape(f"{name}:" + "x".join(map(str, dims)))[1]
            if any(isinstance(d, str) or (not isinstance(d, FreeDim) and d <= 0) for d in dims) else tuple(dims)
            for name, dims in input_shapes.items()}


def _log_times(times: dict, start: float) -> None:
    """Where the time went: `time: import 1.0 s, ...; total 8.5 s`."""
    log("time: " + "".join(f"{k} {v:.1f} s, " for k, v in times.items()).removesuffix(", ") +
        ("; " if times else "") + f"total {time.perf_counter() - start:.1f} s")


def _destination(model_path: Path, output, spec) -> Path:
    """The artifact's path: `output`, else the model's beside it, named for the target."""
    label = "custom" if spec.name.lstrip().startswith("{") else re.sub(r"[^\w.-]+", "_", spec.name)
    return check_destination(output if output else model_path.with_suffix(f".{label}.artifact"))


def _compile(model_path: Path, target, output, calib, input_shapes, observer, allow_float, config, progress, cuda_arch,
             cpu, tune_trials, precision, buckets) -> Path:
    """compile_model, but for its last resort."""
    start, times = time.perf_counter(), {}  # where the time went, printed at the end
    precision = precision or Precision()
    spec = get_target(target, cuda_arch, cpu)
    output = _destination(model_path, output, spec)
    spec.check()
    if tune_trials and (spec.device != "cpu" or spec.arch != platform.machine()):
        raise CompileError(f"--tune-trials measures kernels on this machine ({platform.machine()}); "
                           f"it cannot tune for target {spec.name} ({spec.device}, {spec.arch})")
    config = replace(config or QuantConfig(), allow_float=allow_float or (config is not None and config.allow_float))
    free = _free_batch(input_shapes, spec, tune_trials)
    seq, sizes, seq_axes = _sequence_dim(input_shapes, buckets, spec, precision)
    check_shared_dims(model_path, input_shapes)  # before onnxruntime meets unequal shapes in the graph
    if seq:
        _one_length_in_the_model(model_path, seq, seq_axes)
    free_shapes = input_shapes
    calib_length = _calibration_length(calib, seq, seq_axes, input_shapes) if seq else None
    input_shapes = bound_shapes(input_shapes, {seq.name: calib_length} if seq else None)  # batch 1
    if precision.bits == "4":
        config = replace(config, weight_bits=4)
    with stage(f"importing {model_path}", times, "import"):
        try:
            imported: ImportedModel = load_onnx(model_path, input_shapes, allow_unsupported=allow_float,
                                                segments=not free and not seq and spec.arch not in PLAN_ARCHES)
        except CompileError as err:
            if not free or "onnxruntime cannot load" not in str(err):
                raise
            raise CompileError(f"{err}\nA free batch is imported at batch 1 (--input-shape {next(iter(free))}:"
                               f"{free[next(iter(free))].name}=...): this model cannot run at batch 1, so its batch "
                               "is not independent samples (a reshape of the batch, e.g. several views of one item "
                               "averaged); compile one fixed batch per artifact") from None
        float_mod = None if imported.mod is None else bind_weights(imported.mod, imported.params)
        if not allow_float:
            check_lowerable(float_mod["main"])
    # the nodes after a tail's first ones, compiled again (onnx_tail.split_rest)
    compile_rest = functools.partial(_compile_rest, source=model_path, calib=calib, target=target, observer=observer,
                                     progress=progress, cuda_arch=cuda_arch, cpu=cpu)
    if float_mod is None:  # --allow-float and nothing before the unsupported nodes: all in onnxruntime
        log("nothing to compile before the unsupported nodes: they read the model's inputs")
        return _onnxruntime_artifact(imported, model_path, output, spec, free_shapes, times, start, compile_rest)
    if has_normalization(float_mod) and config.residual_bits == 8:
        log("transformer (LayerNorm found): residual stream, LayerNorm and inputs at 16 bits")
        config = replace(config, residual_bits=16)
    if calib is None:
        warn(f"WARNING: no --calib file: calibrating on {SYNTHETIC_SAMPLES} synthetic N(0,1) inputs. "
            "Activation ranges will not match real data and accuracy will suffer; pass --calib FILE.npz.")
        samples, synthetic = synthetic_calibration(imported.inputs), True
    else:
        samples, synthetic = load_calibration(calib, imported.inputs, tuple(_tail_inputs(imported))), False
    with stage(f"calibrating ({observer}) on {len(samples)} sample(s)", times, "calibration"):
        ranges = calibrate(float_mod, samples, observer=observer, progress=progress, **_host_build())
    padded, changed = bool(seq) and any(is_mask(k) for k in seq_axes), None
    if padded:  # a mask the model does not apply everywhere (a GRU over the pads) makes padding inexact
        changed = padding_changes_outputs(model_path, samples[0], seq_axes)
        padded = changed is None
    if padded:  # a sample's integers must agree in every bucket: no width may follow a size that follows the length
        config = replace(config, sized_widths=False)
    elif seq and not buckets and calib_length not in sizes:  # only the compiled lengths run: the calibration
        sizes = sorted([*sizes, calib_length])  # samples' own is one the deployment has (and the check runs on)
        log(f"{seq.name} = {calib_length} (the calibration samples' length) added to the buckets: without an "
            "attention mask only the compiled lengths run")
    mixed = None
    if precision.bits == "mixed":
        from .mixed import choose_bits

        with stage("lowering at 8 bits to list the layers", times, "mixed precision"):
            layers8 = json.loads(str(QuantizeToInteger(ranges, config)(float_mod)["main"].attrs[LAYERS_ATTR]))
        with stage("choosing bits per layer", times, "mixed precision"):
            mixed = choose_bits(model_path, float_mod, layers8, samples, precision, spec, input_shapes, progress,
                                log)
        log("per-layer weight bits:\n" + mixed.table())
        config = replace(config, layer_bits=mixed.layer_bits)

    batch1 = {}  # length (None: no buckets) -> the batch-1 integer module: what a plan (armv7, riscv64) runs
    per_sample = []  # why the batch cannot be symbolic, if so: the batch-1 module then runs per sample
    checked_apart = []  # float onnxruntime found that what takes a whole sample as one does not mix samples

    probe = getattr(ranges, "probe", None)

    def lower(float_mod, what: str = "", size: int | None = None, own_ranges=None):
        measured = probe.seconds if probe else 0.0
        with stage(f"lowering to integer-only Relax{what}", times, "lowering"):
            int_mod = QuantizeToInteger(own_ranges or ranges, config)(float_mod)
        if probe and probe.seconds > measured:  # the sensitivity search ran inside: its own line
            times["lowering"] -= probe.seconds - measured
            times["sensitivity"] = times.get("sensitivity", 0.0) + probe.seconds - measured
        if not batch1 and config.sensitivity_tol is not None and (probe or getattr(ranges, "moments", None)):
            # the first lowering chose the 16-bit tensors
            attrs = int_mod["main"].attrs
            wide = json.loads(str(attrs.get(WIDE_ATTR, "{}")))
            coarse = json.loads(str(attrs.get(COARSE_ATTR, "{}"))) or {"tensors": []}
            found = [n for n in wide if n not in coarse["tensors"]]
            line = f"sensitivity: {probe.runs if probe else 0} float run(s) in {probe.seconds if probe else 0.0:.1f} s; "
            if coarse["tensors"]:
                cost = "" if coarse.get("error") is None else f", costing the outputs {coarse['error']:.3f} together"
                line += (f"{len(coarse['tensors'])} tensor(s) with a coarse 8-bit grid{cost}: "
                         + ("kept at 16 bits; " if coarse["kept"] else "left at 8 bits; "))
            log(line + (f"{len(found)} tensor(s) measured sensitive, kept at 16 bits: {_names(found)}" if found
                        else "no other tensor kept at 16 bits"))
            bias = json.loads(str(attrs.get(BIAS_ATTR, "{}")))
            if bias.get("uncorrected_layers"):
                off = bias["uncorrected_layers"]
                log(f"bias correction left off on {len(off)} of {bias['layers']} layer(s), where it moved the outputs "
                    f"away from float (relative error {bias['corrected']:.4f} corrected everywhere, "
                    f"{bias['uncorrected']:.4f} nowhere, {bias['chosen']:.4f} chosen): {_names(off)}")
        batch1[size] = int_mod
        if free and not per_sample:  # before the verifier, which then sees the module that is compiled
            with stage(f"generalizing the batch ({', '.join(f'{k}: {d.name}' for k, d in free.items())})", times,
                       "lowering"):
                try:
                    int_mod = generalize_batch(int_mod, {k: (d.name, d.hi) for k, d in free.items()})
                    whole = whole_sample_bindings(int_mod)
                    if whole and not checked_apart:
                        _samples_kept_apart(model_path, samples, imported, whole)
                        checked_apart.append(True)
                except CompileError as err:  # the batch-1 module, run once per sample
                    per_sample.append(str(err))
                    warn(f"{err}: the artifact runs a batch sample by sample instead (the batch-1 module; "
                        "each sample's integers are those it gets alone)")
        return int_mod

    bucket_mods, bucket_specs, dropped = {}, {}, []  # length -> integer module, output specs; default lengths left out
    calib_structure = _float_structure(float_mod) if seq else None
    for size in sizes:  # the same model at each bucket length, lowered with the same ranges
        if size == calib_length:
            bucket_mods[size], bucket_specs[size] = lower(float_mod, f" at {seq.name} = {size}", size), imported.outputs
            continue
        with stage(f"importing at {seq.name} = {size}", times, "import"):
            try:
                other = load_onnx(model_path, bound_shapes(free_shapes, {seq.name: size}), allow_unsupported=allow_float)
                other_mod = bind_weights(other.mod, other.params)
                empty = _empty_tensor(other_mod)
            except CompileError as err:
                if "zero-size" not in str(err):
                    raise
                empty = "TVM's import met a zero-size array"
        if empty is not None:  # pooled to nothing at this length (5 halvings of 16 steps)
            why = f"at {seq.name} = {size} the model makes an empty tensor ({empty})"
            if buckets:
                raise CompileError(f"--buckets {','.join(map(str, sizes))}: {why}; give bucket lengths the model "
                                   "can run, from the shortest that leaves every tensor nonempty")
            warn(f"bucket {seq.name} = {size} left out: {why}")
            dropped.append(size)
            continue
        own = None  # ranges of its own where the graph differs (its op count follows the length)
        if _float_structure(other_mod) != calib_structure:
            with stage(f"calibrating at {seq.name} = {size} (the graph differs at this length: a layer unrolled "
                       "per step; the samples cut or edge-padded to it)", times, "calibration"):
                own = calibrate(other_mod, _at_length(samples, seq_axes, size), observer=observer, progress=progress,
                                **_host_build())
        bucket_mods[size] = lower(other_mod, f" at {seq.name} = {size}", size, own)
        bucket_specs[size] = other.outputs
    sizes = [size for size in sizes if size not in dropped]
    if seq:
        int_mod, imported = bucket_mods.pop(sizes[-1]), replace(imported, outputs=bucket_specs[sizes[-1]])
        if len(sizes) == 1:  # where the length sits in the outputs: from a second length
            probe = sizes[0] - 1 if sizes[0] > 1 else 2
            bucket_specs[probe] = load_onnx(model_path, bound_shapes(free_shapes, {seq.name: probe}),
                                            allow_unsupported=allow_float).outputs
        a, b = sorted(bucket_specs)[:2]
        out_axes, derived = _length_axes(bucket_specs[a], bucket_specs[b], a, b, padded)
        layout = Buckets(seq.name, sizes, padded, [seq_axes.get(s.name) for s in imported.inputs], out_axes)
        log(f"{seq.name} buckets {sizes}: "
            + ("inputs are zero-padded to the next bucket (the attention mask makes it exact)" if layout.padded else
               f"{'the model reads the padding despite its mask (' + changed + ')' if changed else 'no attention-mask input'}"
               ", so padding would change the result: only these lengths run "
               "(--buckets names every length a deployment needs)"))
    else:
        int_mod = lower(float_mod)
    in_shapes, out_shapes = ((input_shapes_of(int_mod), output_shapes(int_mod)) if free and not per_sample else
                             ([list(s.shape) for s in imported.inputs], [list(s.shape) for s in imported.outputs]))
    if per_sample:  # ["n", 3, 224, 224] in, and the batch wherever float onnxruntime puts it out
        _per_sample_shapes(model_path, samples, imported, free, in_shapes, out_shapes, per_sample[0])
    if seq:  # the length by name: ["n", "seq"]
        for shapes, axes in ((in_shapes, layout.input_axes), (out_shapes, layout.output_axes)):
            for shape, entry in zip(shapes, axes):
                for axis in length_axes(entry):
                    shape[axis] = seq.name
        for shape, other in zip(out_shapes, derived):
            for axis, how in other.items():
                shape[axis] = how.replace("L", seq.name, 1)
    report = verify_integer_only(int_mod)
    log(str(report))
    for size, mod in bucket_mods.items():
        other = verify_integer_only(mod)
        if other.integer_only != report.integer_only:
            raise CompileError(f"bucket {seq.name} = {size} lowers differently (integer-only: {other.integer_only})")
    float_nodes = json.loads(str(int_mod["main"].attrs.get(FLOAT_NODES_ATTR, "[]")))
    tail = imported.tail
    if tail is not None:
        if seq or per_sample:
            raise CompileError("a model whose last part runs in onnxruntime (" + _names(
                [f"{n['op']} (node {n['node']})" for n in tail.nodes], 3) + ") takes a free batch only where the "
                "batch stays the leading dim, and no free length; give them as numbers")
    if float_nodes:
        log(float_summary(float_nodes))
    if not report.integer_only and not allow_float:
        raise CompileError(f"the lowered module is not integer-only; no artifact written.\n{report}\n"
                           "Pass --allow-float to accept float ops.")
    boundary = json.loads(str(int_mod["main"].attrs[BOUNDARY_ATTR]))
    layers = json.loads(str(int_mod["main"].attrs[LAYERS_ATTR]))
    if mixed is not None:
        layers = mixed.annotate(layers)

    def fill(tmp: Path) -> dict:
        import tvm

        from targets.kernel_family import kernel_family

        tvm_target = spec.target()
        with stage(f"compiling for {spec.name} ({' '.join(spec.features)})", times, "compile"), spec.build_context(), \
                tvm_target:
            executable = _export(int_mod, tvm_target, spec.relax_pipeline(tvm_target, tune_trials), tmp / LIBRARY, spec)
        libraries = {}
        for size, mod in bucket_mods.items():
            with stage(f"compiling {seq.name} = {size}", times, "compile"), spec.build_context(), tvm_target:
                lib = f"model.{seq.name}{size}.so"
                _export(mod, tvm_target, spec.relax_pipeline(tvm_target, tune_trials), tmp / lib, spec)
                libraries[size] = {"file": lib, "sha256": sha256(tmp / lib)}
        if seq:
            libraries[sizes[-1]] = {"file": LIBRARY, "sha256": sha256(tmp / LIBRARY)}
        one_sample = {}  # length (None: no buckets) -> the batch-1 library, which one-sample calls run
        # (not `samples`: that made the calibration samples local here, and the manifest counted these libraries)
        if free and not per_sample and spec.sample_library:
            for size, mod in batch1.items():
                lib = f"model.{seq.name}{size}.sample.so" if seq else "model.sample.so"
                with stage(f"compiling the batch-1 library{f' at {seq.name} = {size}' if seq else ''}", times,
                           "compile"), spec.build_context(), tvm_target:
                    _export(mod, tvm_target, spec.relax_pipeline(tvm_target), tmp / lib, spec)
                one_sample[size] = {"file": lib, "sha256": sha256(tmp / lib)}
                if seq:
                    libraries[size]["sample"] = one_sample[size]
        (tmp / RELAX_TEXT).write_text(int_mod.script(show_meta=False))
        boundary_library = None
        if spec.device == "cpu" and spec.arch not in PLAN_ARCHES:  # the runtime's float boundary, compiled
            with spec.build_context(), tvm_target:
                names = boundary_kernels.export(tvm_target, tmp / boundary_kernels.FILE, **spec.export_kwargs())
            boundary_library = {"file": boundary_kernels.FILE, "sha256": sha256(tmp / boundary_kernels.FILE), **names}
        entry, later = None, []
        if tail is not None:
            entry, later = _write_tail(tail, tmp, compile_rest, " after the artifact")
            entry = {**entry, "boundary": tail.boundary,
                     "inputs": [spec for spec in entry["inputs"] if spec["name"] in _tail_inputs(imported)]}
        executor = None
        if spec.arch in PLAN_ARCHES:  # no TVM runtime there: ship the plan and its executor too
            with stage(f"exporting the plan executor for {spec.arch}", times, "compile"):
                executor = export_plan(batch1[sizes[-1] if seq else None], spec, tmp)
                for size in bucket_mods:  # the smaller buckets' plans, next to the largest's
                    folder = plan_folder(seq.name, size)
                    export_plan(batch1[size], spec, tmp / folder, executor=False)
                    libraries[size]["plan"] = folder
                # every file the executor reads, hash-checked at load as the libraries are (a copy that
                # changed weights.bin ran with the changed weights, silently)
                executor["sha256"] = {str(f.relative_to(tmp)): sha256(f) for f in sorted(tmp.rglob("*"))
                                      if f.is_file() and f.name in PLAN_FILES}
        if mixed is not None:
            mixed.write(tmp)
        device_code = _device_source(executable.mod)
        if device_code is not None:
            (tmp / DEVICE_TEXT).write_text(device_code)
        indexing = index_rows(model_path)  # token ids and their table's rows, which `Model.run` checks
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {"path": str(model_path), "sha256": sha256(model_path)},
            "tuning": {"trials": tune_trials} if tune_trials else None,
            "target": {"name": spec.name, "tvm_target": spec.tvm_target, "arch": spec.arch,
                       "device": spec.device, "features": list(spec.features),
                       "kernel_family": kernel_family(tvm_target).name,  # x86 int8 dot-product kernels
                       "cross_compiler": spec.toolchain.compiler},
            "tools": _versions(),
            "inputs": [{"name": s.name, "shape": shape, "dtype": s.dtype, "quant": q,
                        **_ranges(s.name, free, seq, seq_axes), **_feature_amax(s.name, q, ranges, shape),
                        **({"index_rows": indexing[s.name]} if s.name in indexing and q.get("scale") is None else {})}
                       for s, q, shape in zip(imported.inputs, boundary["inputs"], in_shapes)],
            "outputs": [{"name": s.name, "shape": shape, "dtype": s.dtype, "quant": q}
                        for s, q, shape in zip(imported.outputs, boundary["outputs"], out_shapes)],
            "quantization": {"observer": observer, "calibration_samples": len(samples),
                             "synthetic_calibration": synthetic, "bits": precision.bits,
                             "weight_bits": "mixed" if mixed is not None else config.weight_bits,
                             "weight_mb": sum(lay["weight_bytes"] for lay in layers) / 1e6,
                             "activation_bits": config.activation_bits, "layers": layers,
                             **({"mixed": mixed.manifest(precision)} if mixed is not None else {})},
            "integer_only": report.integer_only and tail is None,
            "tail": entry,
            "allow_float": allow_float,
            "float_nodes": float_nodes + later,
            "verifier": str(report),
            "relax": RELAX_TEXT,
            "device_code": DEVICE_TEXT if device_code is not None else None,
            "executor": executor,
            "boundary_library": boundary_library,
            "buckets": layout.manifest(dict(sorted(libraries.items()))) if seq else None,
            "batch": None if not free else "per-sample" if per_sample else "symbolic",
            **({"library": {"sample": one_sample[None]}} if None in one_sample else {}),
        }

    path = write_artifact(output, fill)
    log(f"wrote {path}")
    _log_times(times, start)
    return path
