"""Speed: the integer artifact next to onnxruntime (fp32, int8) and TVM fp32, measured in one run.

    python -m benchmarks.speed [--workdir out] [--models efficientnet,minilm,vit] [--threads 1,2]
                               [--repeat 20] [--skip-tvm-fp32] [--reuse-artifacts] [--tune-trials N]

For each model (EfficientNet-Lite0, all-MiniLM-L6-v2, the DINOv2 ViT-S/14 backbone) it reuses the
ONNX file and calibration .npz in --workdir (or writes them as the model's own benchmark script
does), compiles the integer artifact in a child process (compile time, peak RSS and artifact size
are recorded), quantizes the model with onnxruntime's own static int8 (QDQ, activations uint8,
weights int8 per channel: the U8S8 form ORT recommends on x86, calibrated on the same data), and
times, batch 1, on the first calibration sample, at each thread count:

  - the integer artifact, by wall clock around whole `Model.run` calls (float in, float out: the input's
    quantization and the outputs' dequantization included, as in onnxruntime's QDQ model);
  - onnxruntime fp32 and int8 (ORT_ENABLE_ALL, intra_op_num_threads = threads);
  - TVM fp32 through TVM's default Relax pipeline (plain loops, slow: fewer runs).

`--tune-trials N` (offered when `compile_model` takes `tune_trials`) adds a tuned artifact's row.
Then it times two single int8 kernels at 1 thread (MiniLM's FFN MatMul, EfficientNet-Lite0's
largest Conv) and compares their GOP/s with the CPU's VNNI peak. Writes
benchmarks/results/speed.md and speed.png (see --results) and prints the Markdown on stdout;
progress goes to stderr. Everything runs on this machine: close other work first.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from benchmarks.models import (calibration_images, export_dinov2_backbone, export_efficientnet_lite0,
                               export_minilm, lee_corpus, minilm_tokenize, to_imagenet_normalisation)
from runtime.artifact import read_manifest
from runtime.model import config_threads, wall_times

RESULTS = Path(__file__).parent / "results"
TVM_FP32_REPEAT = 3
KERNEL_REPEAT = 50
def vnni_ops_per_cycle(cpu: dict[str, str]) -> tuple[int, str]:
    """int8 ops per cycle per core of 512-bit VPDPBUSD on this CPU, and why: Zen 4 (AMD family 25)
    splits it into 2 x 256-bit; Zen 5 and AVX-512 Xeons run two full-width pipes (a Sapphire Rapids
    class Xeon measured 495 GOP/s on MiniLM's FFN at 3.6 GHz, above a 128-op peak)."""
    if cpu.get("vendor_id") == "AuthenticAMD" and cpu.get("cpu family") == "25":
        return 128, "Zen 4 executes 512-bit VPDPBUSD as 2 x 256-bit: 2 pipes x 32 u8*s8 MACs x 2 ops"
    return 256, "2 full-width 512-bit VPDPBUSD pipes x 64 u8*s8 MACs x 2 ops (Zen 5, AVX-512 Xeons)"
ORT_FP32, ORT_INT8 = "onnxruntime fp32", "onnxruntime int8 (static QDQ, U8S8, per channel)"
OURS = "intq integer artifact (x86)"
TVM_FP32 = f"TVM fp32, default pipeline (median of {TVM_FP32_REPEAT})"


def log(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Bench:
    """One model: where its ONNX file and calibration data come from, and its input shapes."""

    title: str
    onnx_name: str
    export: Callable[[Path], Path]
    calib_name: str
    calibration: Callable[[], dict[str, np.ndarray]]  # input name -> [N, *shape] samples
    shapes: dict[str, tuple[int, ...]]


def _minilm_calibration() -> dict[str, np.ndarray]:
    ids, mask = minilm_tokenize(lee_corpus()[1][:32])
    return {"input_ids": ids[:, None], "attention_mask": mask[:, None]}


def _vit_calibration() -> dict[str, np.ndarray]:
    return {"input_image": to_imagenet_normalisation(calibration_images(16))[:, None]}


MODELS = {
    "efficientnet": Bench("EfficientNet-Lite0", "efficientnet_lite0.onnx", export_efficientnet_lite0, "calib_64.npz",
                          lambda: {"input": calibration_images(64)}, {"input": (1, 3, 224, 224)}),
    "minilm": Bench("all-MiniLM-L6-v2 (sequence 128)", "minilm.onnx", export_minilm, "minilm_calib_32.npz",
                    _minilm_calibration, {"input_ids": (1, 128), "attention_mask": (1, 128)}),
    "vit": Bench("DINOv2 ViT-S/14 backbone (224x224)", "dinov2_vits14.onnx", export_dinov2_backbone,
                 "vit_calib_16.npz", _vit_calibration, {"input_image": (1, 3, 224, 224)}),
}


@dataclass
class CompileStats:
    seconds: float
    peak_mb: float
    size_mb: float
    family: str = ""  # the x86 kernel family the artifact runs (its manifest's target.kernel_family)


@dataclass
class Result:
    """Median latencies (ms) of one model: row name -> threads -> ms (None: the row failed)."""

    title: str
    compile: CompileStats | None = None
    rows: dict[str, dict[int, float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- timing helpers

def ort_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def time_ort(onnx_path: Path, feed: dict[str, np.ndarray], threads: int, repeat: int) -> float:
    session = ort_session(onnx_path, threads)
    return float(np.median(wall_times(lambda: session.run(None, feed), repeat)))


def in_child(timer: Callable, *args) -> float:
    """`timer(*args)` in a fresh process: onnxruntime's thread pools outlive their sessions in a
    process (spinning), and the integer artifact timed after onnxruntime at 2 threads in the same
    process took 4.3-5.1 ms where it takes 2.6 alone (EfficientNet-Lite0, Zen 4): each runtime
    gets a process of its own."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(timer, *args).result()


def time_artifact(artifact: Path, feed: dict[str, np.ndarray], threads: int, repeat: int) -> float:
    """Median ms of whole `Model.run` calls, as onnxruntime's `session.run` is timed: float in and out.
    (Until session 40 the compiled model alone, by TVM's time evaluator: the input's quantization in
    NumPy, 0.2 ms of EfficientNet-Lite0's ~4.4, was left out of ours and in onnxruntime's.)"""
    import runtime
    from runtime.model import config_threads

    config_threads(threads)
    return float(np.median(runtime.load(artifact).time_run(feed, repeat)))


def build_tvm_fp32(onnx_path: Path, shapes: dict[str, tuple[int, ...]]):
    """The float model through TVM's default Relax pipeline: (VirtualMachine, input names)."""
    import tvm
    from tvm import relax

    from frontends import load_onnx
    from passes import bind_weights
    from targets import get_target

    imported = load_onnx(onnx_path, shapes)
    mod = bind_weights(imported.mod, imported.params)
    target = get_target("x86").target()
    with target:
        executable = tvm.compile(mod, target=target)
    return relax.VirtualMachine(executable, tvm.cpu()), [s.name for s in imported.inputs]


def time_tvm_fp32(built, feed: dict[str, np.ndarray], threads: int) -> float:
    import tvm

    vm, names = built
    config_threads(threads)
    args = [tvm.runtime.tensor(feed[n]) for n in names]
    return float(np.median(wall_times(lambda: vm["main"](*args), TVM_FP32_REPEAT, warmup=1)))


# ---------------------------------------------------------------- preparing the models

def calibration_samples(calib: Path, shapes: dict[str, tuple[int, ...]]) -> list[dict[str, np.ndarray]]:
    data = np.load(calib)
    count = len(data[next(iter(shapes))])
    return [{name: data[name][i].reshape(shape) for name, shape in shapes.items()} for i in range(count)]


def prepare(bench: Bench, work: Path) -> tuple[Path, Path]:
    """The model's ONNX file and calibration .npz in `work`, written only when absent."""
    onnx_path = bench.export(work / bench.onnx_name)
    calib = work / bench.calib_name
    if not calib.exists():
        log(f"writing calibration data {calib}")
        np.savez(calib, **bench.calibration())
    return onnx_path, calib


_CHILD = """
import json, sys, time
from runtime.compiler import compile_model
kwargs = json.loads(sys.argv[1])
kwargs["input_shapes"] = {k: tuple(v) for k, v in kwargs["input_shapes"].items()}
start = time.perf_counter()
compile_model(**kwargs)
seconds = time.perf_counter() - start
peak_kb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))
"""


def compile_in_child(onnx_path: Path, calib: Path, shapes: dict, output: Path, **extra) -> CompileStats:
    """compile_model in a fresh Python process: its time (imports excluded), the child's peak RSS
    and the artifact's size on disk. The peak is the child's VmHWM: getrusage's and wait4's
    ru_maxrss would include this (parent) process's peak, which a child inherits at fork/exec."""
    kwargs = {"model_path": str(onnx_path), "target": "x86", "output": str(output), "calib": str(calib),
              "input_shapes": shapes, **extra}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(kwargs)], stdout=subprocess.PIPE, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {onnx_path.name} failed (exit code {proc.returncode}; the error is in the log)")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in output.iterdir() if f.is_file())
    return CompileStats(measured["seconds"], measured["peak_mb"], size / 2**20)


def compiled(onnx_path: Path, calib: Path, shapes: dict, output: Path, reuse: bool, **extra) -> CompileStats:
    """compile_in_child, or the artifact and stats of an earlier run when `reuse` and present."""
    stats_file = output.with_suffix(".compile.json")
    if reuse and output.exists() and stats_file.exists():
        log(f"reusing {output}")
        return CompileStats(**json.loads(stats_file.read_text()))
    log(f"compiling {output.name} in a child process")
    stats = compile_in_child(onnx_path, calib, shapes, output, **extra)
    stats.family = read_manifest(output)["target"].get("kernel_family", "")
    stats_file.write_text(json.dumps(stats.__dict__))
    return stats


@contextlib.contextmanager
def scratch_cwd():
    """A temporary working directory: ORT's quant_pre_process leaves sym_shape_infer_temp.onnx and
    a <uuid>.data file in the current directory (the user's checkout) on large models."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        yield


def ort_int8(onnx_path: Path, samples: list[dict[str, np.ndarray]], notes: list[str]) -> Path:
    """onnxruntime's static int8 model (cached next to the float one)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = onnx_path.with_suffix(".ort_int8.onnx")
    if out.exists():
        return out

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    onnx_path = onnx_path.resolve()  # before scratch_cwd: a relative --workdir resolved there named no file
    source = onnx_path.with_suffix(".ort_pre.onnx")
    try:
        with scratch_cwd():
            quant_pre_process(str(onnx_path), str(source))
    except Exception as err:  # the tool's optimizer fails on some graphs: quantize the model as it is
        notes.append(f"quant_pre_process failed ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                     "quantized without it")
        source = onnx_path
    tmp = out.with_suffix(".tmp.onnx")
    quantize_static(str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- one model

def run_model(key: str, args, work: Path) -> Result:
    bench = MODELS[key]
    result = Result(bench.title)
    log(f"{bench.title}: preparing")
    onnx_path, calib = prepare(bench, work)
    samples = calibration_samples(calib, bench.shapes)
    feed = samples[0]
    artifacts = {OURS: work / "speed" / f"{onnx_path.stem}.x86.artifact"}
    try:
        result.compile = compiled(onnx_path, calib, bench.shapes, artifacts[OURS], args.reuse_artifacts)
        if getattr(args, "tune_trials", None):
            tuned = f"intq integer artifact, tuned ({args.tune_trials} trials)"
            artifacts[tuned] = work / "speed" / f"{onnx_path.stem}.tuned{args.tune_trials}.x86.artifact"
            stats = compiled(onnx_path, calib, bench.shapes, artifacts[tuned], args.reuse_artifacts,
                             tune_trials=args.tune_trials)
            result.notes.append(f"tuned compile: {stats.seconds:.0f} s, peak {stats.peak_mb:.0f} MB (less when the "
                                "tuning database already holds records for these kernels)")
    except RuntimeError as err:  # go on with the other rows and models; the table says what failed
        result.notes.append(str(err))
        result.rows = {name: {t: None for t in args.threads} for name in artifacts}
        artifacts = {}
    onnx_files = {ORT_FP32: onnx_path}
    log(f"{bench.title}: onnxruntime static int8 quantization")
    try:
        onnx_files[ORT_INT8] = ort_int8(onnx_path, samples, result.notes)
    except Exception as err:
        result.notes.append(f"onnxruntime int8 quantization failed: {type(err).__name__}: {err}")
        result.rows[ORT_INT8] = {t: None for t in args.threads}
    built = None
    if not args.skip_tvm_fp32:
        log(f"{bench.title}: compiling TVM fp32 (default pipeline)")
        built = build_tvm_fp32(onnx_path, bench.shapes)
    for threads in args.threads:
        for name, path in artifacts.items():
            log(f"{bench.title}: {name}, {threads} thread(s)")
            result.rows.setdefault(name, {})[threads] = in_child(time_artifact, path, feed, threads, args.repeat)
        for name, path in onnx_files.items():
            log(f"{bench.title}: {name}, {threads} thread(s)")
            result.rows.setdefault(name, {})[threads] = in_child(time_ort, path, feed, threads, args.repeat)
        if built is not None:
            log(f"{bench.title}: {TVM_FP32}, {threads} thread(s)")
            result.rows.setdefault(TVM_FP32, {})[threads] = time_tvm_fp32(built, feed, threads)
    order = [*artifacts, ORT_FP32, ORT_INT8, TVM_FP32]
    result.rows = {name: result.rows[name] for name in order if name in result.rows}
    return result


# ---------------------------------------------------------------- single kernels

def largest_conv(onnx_path: Path):
    """EfficientNet-Lite0's Conv with the most MACs: (node, input, weight and output shapes, MACs)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = [n.input[0] for n in convs] + [n.output[0] for n in convs]
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shapes = dict(zip(names, (o.shape for o in session.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)}))))
    best = max(convs, key=lambda n: np.prod(shapes[n.output[0]]) * np.prod(weights[n.input[1]][1:]))
    macs = int(np.prod(shapes[best.output[0]]) * np.prod(weights[best.input[1]][1:]))
    return best, shapes[best.input[0]], weights[best.input[1]], shapes[best.output[0]], macs


def one_node_model(path: Path, node, x_shape, weight_shapes: list[tuple[int, ...]], y_shape) -> Path:
    """A float ONNX model of `node` alone: input `x`, random weights for its other inputs, output `y`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.05).astype(np.float32), f"w{i}")
             for i, s in enumerate(weight_shapes)]
    graph_node = helper.make_node(node.op_type, ["x"] + [w.name for w in inits], ["y"])
    graph_node.attribute.extend(node.attribute)
    graph = helper.make_graph([graph_node], "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def kernel_gops(work: Path, efficientnet_onnx: Path) -> list[tuple[str, int, float]]:
    """(kernel, MACs, median ms at 1 thread) of MiniLM's FFN MatMul and EfficientNet-Lite0's largest Conv."""
    from onnx import helper

    import runtime

    folder = work / "speed" / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    conv, x_shape, w_shape, conv_out, conv_macs = largest_conv(efficientnet_onnx)
    k = w_shape[1:]
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    conv_label = (f"EfficientNet-Lite0 {conv.name}: {x_shape[1]}->{w_shape[0]} ch, {k[1]}x{k[2]} kernel, "
                  f"group {group}, {x_shape[2]}x{x_shape[3]} in")
    kernels = [
        ("MiniLM FFN MatMul 1x128x384 @ 384x1536", helper.make_node("MatMul", ["x", "w"], ["y"]), (1, 128, 384),
         [(384, 1536)], (1, 128, 1536), 128 * 384 * 1536),
        (conv_label, conv, tuple(x_shape), [w_shape] + ([(w_shape[0],)] if len(conv.input) > 2 else []),
         tuple(conv_out), conv_macs),
    ]
    out = []
    for i, (label, node, shape, weight_shapes, y_shape, macs) in enumerate(kernels):
        log(f"kernel: {label}")
        path = one_node_model(folder / f"kernel{i}.onnx", node, shape, weight_shapes, y_shape)
        calib = folder / f"kernel{i}_calib.npz"
        np.savez(calib, x=np.random.default_rng(1).standard_normal((4, *shape)).astype(np.float32))
        artifact = runtime.compile_model(path, "x86", folder / f"kernel{i}.x86.artifact", calib, progress=False)
        feed = {"x": np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
        out.append((label, macs, *_dot_kernel_ms(artifact, feed)))
    return out


def _dot_kernel_ms(artifact: Path, feed: dict[str, np.ndarray]) -> tuple[float, str, str]:
    """(ms per run at 1 thread, name, kernel family) of the artifact's slowest kernel (its product,
    requantization fused), timed alone: the whole artifact's time adds the float boundary's
    quantization, which on AMX tiles was 7x the product's."""
    import runtime
    from runtime.model import config_threads

    config_threads(1)
    model = runtime.load(artifact)
    times = model.kernel_times(model.quantize_inputs(feed), repeat=KERNEL_REPEAT)
    name, (ms, _) = max(((k, v) for k, v in times.items() if not k.startswith("vm.")), key=lambda kv: kv[1][0])
    return ms, name, model.manifest["target"].get("kernel_family", "")


_CLOCK_PROBE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec a, b;
    long n = 500000000L, x = 0;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    /* a chain of dependent 1-cycle register adds, 4 cycles per iteration (not add-immediate:
       Golden Cove folds chains of those at rename, and the probe read 9.2 GHz on a Xeon) */
    for (long i = 0; i < n; i++)
        __asm__ volatile("add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0" : "+r"(x));
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%f\n", 4.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9) / 1e6);
    return (int)(x & 0);
}
"""


def measured_clock_mhz() -> float | None:
    """The core clock while busy (best of 3), from dependent adds timed in CPU time, so other work
    on the cores does not skew it. In a VM /proc/cpuinfo shows the nominal clock, and boost runs
    faster (here: a matmul above the nominal-clock peak). None without a C compiler."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_PROBE)
        try:
            subprocess.run(["cc", "-O1", "-o", str(exe), str(src)], check=True, capture_output=True)
            return max(float(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)
                       for _ in range(3))
        except (OSError, subprocess.CalledProcessError):
            return None


def cpu_facts() -> dict[str, str]:
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


# ---------------------------------------------------------------- report

def _tools() -> str:
    names = ("apache-tvm", "apache-tvm-ffi", "onnxruntime", "onnx", "numpy")
    return ", ".join(f"{n} {metadata.version(n)}" for n in names)


def _commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).parent).stdout.strip()

    dirty = " (working tree has uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def _ratio(value, base) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def model_table(result: Result, threads: list[int]) -> list[str]:
    head = "| runtime | " + " | ".join(f"{t} thread{'s' * (t > 1)} ms | vs ORT fp32 | vs ORT int8" for t in threads)
    lines = [f"### {result.title}", "", head + " |", "|---" * (1 + 3 * len(threads)) + "|"]
    for name, by_threads in result.rows.items():
        cells = []
        for t in threads:
            ms = by_threads.get(t)
            cells += ["failed" if ms is None else f"{ms:.2f}", _ratio(ms, result.rows[ORT_FP32].get(t)),
                      _ratio(ms, result.rows.get(ORT_INT8, {}).get(t))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if c := result.compile:
        family = f", kernel family `{c.family}`" if c.family else ""
        lines += ["", (f"Integer artifact: compile {c.seconds:.1f} s without tuning (child process, imports "
                       f"excluded), peak RSS {c.peak_mb:.0f} MB, artifact {c.size_mb:.1f} MB on disk{family}.")]
    lines += [""] * bool(result.notes) + [f"- Note: {n.rstrip('.')}." for n in result.notes]
    return lines + [""]


AMX_OPS = 2048  # int8 ops/cycle/core of AMX: one 16 x 16 x 64 tdpbusd (16384 MACs) per 16 cycles


def kernel_table(kernels, cpu: dict[str, str]) -> list[str]:
    nominal, measured = float(cpu.get("cpu MHz", "nan")), measured_clock_mhz()
    mhz = measured or nominal
    ops, why = vnni_ops_per_cycle(cpu)
    peak = ops * mhz / 1e3
    clock = (f"the measured clock {measured:.0f} MHz (dependent adds timed in CPU time; /proc/cpuinfo says "
             f"{nominal:.0f} MHz, the nominal clock, which would put the peak at "
             f"{ops * nominal / 1e3:.0f} GOP/s)" if measured else
             f"{nominal:.0f} MHz (/proc/cpuinfo `cpu MHz`; no C compiler to measure the boost clock)")
    lines = ["### Single int8 kernels (integer artifact, 1 thread)", "",
             "Each one-node artifact's product kernel (its requantization fused) timed alone by the VM's "
             "instrument, without the float boundary.",
             f"VNNI peak assumed: {ops} int8 ops/cycle/core ({why}) at {clock} = {peak:.0f} GOP/s per core; "
             f"AMX tiles' {AMX_OPS} ops/cycle/core = {AMX_OPS * mhz / 1e3:.0f} GOP/s.", "",
             "| kernel | MACs | kernel (family) | median ms | GOP/s (2 x MACs / time) | of the family's peak |",
             "|---|---|---|---|---|---|"]
    for label, macs, ms, name, family in kernels:
        gops = 2 * macs / ms / 1e6
        top = AMX_OPS * mhz / 1e3 if family == "amx" and "amx" in name else peak
        lines.append(f"| {label} | {macs / 1e6:.1f} M | `{name[:40]}` ({family}) | {ms:.3f} | {gops:.1f} | "
                     f"{100 * gops / top:.1f}% |")
    return lines + [""]


def markdown(results: list[Result], kernels, args, load: tuple[float, float]) -> str:
    cpu = cpu_facts()
    lines = ["## Speed (`python -m benchmarks.speed`)", "",
             (f"Machine: {cpu.get('model name', platform.processor())} (family {cpu.get('cpu family')}, model "
              f"{cpu.get('model')}), {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python "
              f"{platform.python_version()}, {_tools()}; intq commit {_commit()}. Load average (1 min) "
              f"{load[0]:.1f} at the start, {load[1]:.1f} at the end: other work on these cores inflates the "
              "numbers, and more so at 2 threads."), "",
             (f"Batch 1, one real input per model (the first calibration sample), median of {args.repeat} runs "
              f"after 3 warm-up runs (TVM fp32: median of {TVM_FP32_REPEAT} after 1), each by wall clock around a whole "
              "`run` (float in, float out: the integer artifact's input quantization and output dequantization "
              "included, as in onnxruntime's QDQ model). "
              "\"vs\" columns: this row's median / that onnxruntime row's median at the same thread count "
              "(> 1: slower). TVM fp32's default pipeline emits no parallel loops, so threads do not help it."), ""]
    for result in results:
        lines += model_table(result, args.threads)
    if kernels:
        lines += kernel_table(kernels, cpu)
    return "\n".join(lines)


def plot(results: list[Result], threads: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for r in results for name in r.rows))
    bars = [(name, t) for name in names for t in threads]
    width = 0.8 / len(bars)
    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(max(8, 3 * len(results)), 5))
    for j, (name, t) in enumerate(bars):
        heights = [r.rows.get(name, {}).get(t) or np.nan for r in results]
        ax.bar(np.arange(len(results)) + (j - (len(bars) - 1) / 2) * width, heights, width,
               color=colors[names.index(name) % len(colors)], hatch="//" * threads.index(t), edgecolor="white",
               label=f"{name}, {t} thread{'s' * (t > 1)}")
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms (log scale)")
    ax.set_xticks(np.arange(len(results)), [r.title.replace(" (", "\n(") for r in results])
    ax.set_title("Batch-1 latency on this machine (lower is better)")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    from runtime.compiler import compile_model

    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="out", help="ONNX files, calibration data and artifacts (reused)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (default 20)")
    p.add_argument("--skip-tvm-fp32", action="store_true", help="leave out the (slow) TVM fp32 rows")
    p.add_argument("--skip-kernels", action="store_true", help="leave out the single-kernel GOP/s lines")
    p.add_argument("--reuse-artifacts", action="store_true",
                   help="reuse artifacts (and their recorded compile stats) from an earlier run instead of compiling")
    p.add_argument("--results", default=str(RESULTS), help="folder for speed.md and speed.png")
    if "tune_trials" in inspect.signature(compile_model).parameters:
        p.add_argument("--tune-trials", type=int, help="also compile and time an artifact tuned with N trials")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in MODELS]:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads takes comma-separated integers, not {args.threads!r}")
    work, results_dir = Path(args.workdir), Path(args.results)
    (work / "speed").mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    results = [run_model(k, args, work) for k in keys]
    kernels = None
    if not args.skip_kernels:
        try:
            kernels = kernel_gops(work, export_efficientnet_lite0(work / MODELS["efficientnet"].onnx_name))
        except Exception as err:  # keep the model tables of a long run; say what failed
            log(f"single-kernel measurement failed: {type(err).__name__}: {err}")
    text = markdown(results, kernels, args, (load_start, os.getloadavg()[0]))
    (results_dir / "speed.md").write_text(text + "\n")
    plot(results, args.threads, results_dir / "speed.png")
    print(text)
    log(f"wrote {results_dir / 'speed.md'} and {results_dir / 'speed.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
