"""compile_model: ONNX file -> integer-only artifact (frontends -> passes -> targets)."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from frontends import CompileError, ImportedModel, InputError, ToolchainError, load_onnx
from frontends.onnx_import import FreeDim, TensorSpec, bound_shapes
from passes import (BOUNDARY_ATTR, LAYERS_ATTR, QuantConfig, QuantizeToInteger, bind_weights, calibrate,
                    verify_integer_only)
from passes.generalize_batch import generalize_batch, input_shapes_of, output_shapes
from passes.quantize_to_integer import FLOAT_NODES_ATTR
from targets import get_target
from targets.cross import first_error_line
from targets.cpu_pipeline import cpu_pipeline

from .plan import export_plan
from .artifact import DEVICE_TEXT, LIBRARY, RELAX_TEXT, sha256, write_artifact
from .mixed import Precision

SYNTHETIC_SAMPLES = 8
PLAN_ARCHES = ("armv7l", "riscv64")  # no TVM runtime wheels: artifacts also carry plan + intq_exec


def log(message: str) -> None:
    print(f"[intq] {message}", file=sys.stderr, flush=True)


@contextmanager
def stage(what: str, times: dict | None = None, key: str | None = None):
    """Show a long step on stderr with its duration (added to `times[key]` if given)."""
    log(f"{what} ...")
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    log(f"{what}: done in {seconds:.1f} s")
    if times is not None:
        times[key or what] = times.get(key or what, 0.0) + seconds


def float_summary(float_nodes: list[dict]) -> str:
    """The --allow-float summary: every node left in float and why."""
    lines = [f"{n['node']} ({n['op']}): {n['reason']}" for n in float_nodes]
    return f"{len(float_nodes)} node(s) run in float (--allow-float):\n  " + "\n  ".join(lines)


def load_calibration(path: str | os.PathLike, inputs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Samples from an .npz whose keys are the input names and whose first axis indexes
    samples (each sample either the full input shape or, for batch-1 inputs, without it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: calibration file not found")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as err:
        raise InputError(f"{path}: not a readable .npz file ({err})") from None
    names = [i.name for i in inputs]
    if set(data) != set(names):
        raise InputError(f"{path}: keys {sorted(data)} do not match the model's inputs {sorted(names)}")
    counts = set()
    for spec in inputs:
        arr = data[spec.name]
        ok = arr.shape[1:] == spec.shape or (spec.shape[0] == 1 and arr.shape[1:] == spec.shape[1:])
        if arr.ndim == 0 or not ok:
            raise InputError(f"{path}: {spec.name!r} has shape {list(arr.shape)}; expected [N, "
                             f"{', '.join(map(str, spec.shape))}] (first axis indexes samples)")
        if np.issubdtype(np.dtype(spec.dtype), np.floating) != np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"{path}: {spec.name!r} has dtype {arr.dtype}; expected a "
                             f"{'float' if spec.dtype.startswith('float') else 'integer'} array like the model's "
                             f"{spec.dtype}")
        counts.add(arr.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise InputError(f"{path}: inputs hold different or zero sample counts {sorted(counts)}")
    return [{s.name: data[s.name][i].reshape(s.shape).astype(s.dtype) for s in inputs}
            for i in range(counts.pop())]


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
    return {"target": host, "pipeline": cpu_pipeline(host)}


def _free_batch(input_shapes, spec, tune_trials: int) -> dict[str, FreeDim]:
    """The inputs whose batch `--input-shape` leaves free, after checking that the target takes
    a symbolic batch (CPU targets with the TVM runtime; passes/generalize_batch.py)."""
    free = {k: v[0] for k, v in (input_shapes or {}).items() if v and isinstance(v[0], FreeDim)}
    if free and (spec.device != "cpu" or spec.arch in PLAN_ARCHES or tune_trials):
        why = "--tune-trials" if tune_trials else f"target {spec.name}"
        raise CompileError(f"a free batch (--input-shape {next(iter(free))}:N...) is supported on CPU targets "
                           f"with the TVM runtime, without tuning; not with {why}. Give the batch as a number.")
    return free


def _batch_range(name: str, free: dict[str, FreeDim]) -> dict:
    """The manifest's range of an input's free dim: {"range": {"n": [lo, hi or None]}}."""
    return {"range": {free[name].name: [free[name].lo, free[name].hi]}} if name in free else {}


def _export(executable, path: Path, spec) -> None:
    """Link the library; a failing compiler or linker is the user's toolchain, not a crash."""
    try:
        executable.export_library(str(path), **spec.export_kwargs())
    except RuntimeError as err:
        if "Compilation error" not in str(err):
            raise
        compiler = spec.toolchain.compiler or "the host C compiler"
        package = spec.toolchain.libc_package or spec.toolchain.package or "gcc"
        raise ToolchainError(f"linking the library for target {spec.name!r} with {compiler} failed: "
                             f"{first_error_line(str(err).partition('Compilation error:')[2])}; install {package} "
                             "(targets/install_toolchains.sh)") from None


def compile_model(model_path: str | os.PathLike, target: str = "x86", output: str | os.PathLike | None = None,
                  calib: str | os.PathLike | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None,
                  observer: str = "minmax", allow_float: bool = False, config: QuantConfig | None = None,
                  progress: bool = True, cuda_arch: str | None = None, cpu: str | None = None, tune_trials: int = 0,
                  precision: Precision | None = None) -> Path:
    """Compile an ONNX model into an integer-only artifact; returns the artifact path.

    `cpu` (x86) builds for a fleet (`x86-64-v3`, ...) instead of this CPU's features.
    `precision` chooses the weight bits (uniform 8 or 4, or mixed under limits: `runtime.mixed`).
    Raises CompileError (and writes nothing) on bad input or an unsupported model.
    """
    start, times = time.perf_counter(), {}  # where the time went, printed at the end
    model_path = Path(model_path)
    precision = precision or Precision()
    spec = get_target(target, cuda_arch, cpu)
    label = "custom" if spec.name.lstrip().startswith("{") else re.sub(r"[^\w.-]+", "_", spec.name)
    output = Path(output) if output else model_path.with_suffix(f".{label}.artifact")
    spec.check()
    if tune_trials and (spec.device != "cpu" or spec.arch != platform.machine()):
        raise CompileError(f"--tune-trials measures kernels on this machine ({platform.machine()}); "
                           f"it cannot tune for target {spec.name} ({spec.device}, {spec.arch})")
    config = replace(config or QuantConfig(), allow_float=allow_float or (config is not None and config.allow_float))
    free = _free_batch(input_shapes, spec, tune_trials)
    if free and precision.bits != "8":  # refused now, not after calibration
        raise CompileError(f"--bits {precision.bits} with a free batch: 4-bit kernels are compiled for batch 1; "
                           "use --bits 8, or give the batch as a number")
    input_shapes = bound_shapes(input_shapes)  # import, calibrate and lower at batch 1
    if precision.bits == "4":
        config = replace(config, weight_bits=4)
    with stage(f"importing {model_path}", times, "import"):
        imported: ImportedModel = load_onnx(model_path, input_shapes, allow_unsupported=allow_float)
        float_mod = bind_weights(imported.mod, imported.params)
    if "R.nn.layer_norm" in float_mod.script(show_meta=False) and config.residual_bits == 8:
        log("transformer (LayerNorm found): residual stream, LayerNorm and inputs at 16 bits")
        config = replace(config, residual_bits=16)
    if calib is None:
        log(f"WARNING: no --calib file: calibrating on {SYNTHETIC_SAMPLES} synthetic N(0,1) inputs. "
            "Activation ranges will not match real data and accuracy will suffer; pass --calib FILE.npz.")
        samples, synthetic = synthetic_calibration(imported.inputs), True
    else:
        samples, synthetic = load_calibration(calib, imported.inputs), False
    with stage(f"calibrating ({observer}) on {len(samples)} sample(s)", times, "calibration"):
        ranges = calibrate(float_mod, samples, observer=observer, progress=progress, **_host_build())
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
    with stage("lowering to integer-only Relax", times, "lowering"):
        int_mod = QuantizeToInteger(ranges, config)(float_mod)
    if free:  # before the verifier, which then sees the module that is compiled
        with stage(f"generalizing the batch ({', '.join(f'{k}: {d.name}' for k, d in free.items())})", times,
                   "lowering"):
            int_mod = generalize_batch(int_mod, {k: (d.name, d.hi) for k, d in free.items()})
    in_shapes, out_shapes = ((input_shapes_of(int_mod), output_shapes(int_mod)) if free else  # ["n", 3, 224, 224]
                             ([list(s.shape) for s in imported.inputs], [list(s.shape) for s in imported.outputs]))
    report = verify_integer_only(int_mod)
    log(str(report))
    float_nodes = json.loads(str(int_mod["main"].attrs.get(FLOAT_NODES_ATTR, "[]")))
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
            executable = tvm.compile(int_mod, target=tvm_target, relax_pipeline=spec.relax_pipeline(tvm_target, tune_trials))
            _export(executable, tmp / LIBRARY, spec)
        (tmp / RELAX_TEXT).write_text(int_mod.script(show_meta=False))
        executor = None
        if spec.arch in PLAN_ARCHES:  # no TVM runtime there: ship the plan and its executor too
            with stage(f"exporting the plan executor for {spec.arch}", times, "compile"):
                executor = export_plan(int_mod, spec, tmp)
        if mixed is not None:
            mixed.write(tmp)
        device_code = _device_source(executable.mod)
        if device_code is not None:
            (tmp / DEVICE_TEXT).write_text(device_code)
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {"path": str(model_path), "sha256": sha256(model_path)},
            "tuning": {"trials": tune_trials} if tune_trials else None,
            "target": {"name": spec.name, "tvm_target": spec.tvm_target, "arch": spec.arch,
                       "device": spec.device, "features": list(spec.features),
                       "kernel_family": kernel_family(tvm_target).name,  # x86 int8 dot-product kernels
                       "cross_compiler": spec.toolchain.compiler},
            "tools": _versions(),
            "inputs": [{"name": s.name, "shape": shape, "dtype": s.dtype, "quant": q, **_batch_range(s.name, free)}
                       for s, q, shape in zip(imported.inputs, boundary["inputs"], in_shapes)],
            "outputs": [{"name": s.name, "shape": shape, "dtype": "float32", "quant": q}
                        for s, q, shape in zip(imported.outputs, boundary["outputs"], out_shapes)],
            "quantization": {"observer": observer, "calibration_samples": len(samples),
                             "synthetic_calibration": synthetic, "bits": precision.bits,
                             "weight_bits": "mixed" if mixed is not None else config.weight_bits,
                             "weight_mb": sum(lay["weight_bytes"] for lay in layers) / 1e6,
                             "activation_bits": config.activation_bits, "layers": layers,
                             **({"mixed": mixed.manifest(precision)} if mixed is not None else {})},
            "integer_only": report.integer_only,
            "allow_float": allow_float,
            "float_nodes": float_nodes,
            "verifier": str(report),
            "relax": RELAX_TEXT,
            "device_code": DEVICE_TEXT if device_code is not None else None,
            "executor": executor,
        }

    path = write_artifact(output, fill)
    log(f"wrote {path}")
    log("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + f"; total {time.perf_counter() - start:.1f} s")
    return path
