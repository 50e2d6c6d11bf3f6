"""Shapes: one artifact for every batch size and sequence length, timed next to onnxruntime.

    python -m benchmarks.shapes [--workdir out] [--threads 1,2] [--repeat 20] [--reuse-artifacts]

1. Batch: EfficientNet-Lite0 and all-MiniLM-L6-v2 (sequence 128) compiled once with a free
   batch (`--input-shape x:1..32x...`), timed at batch 1, 8 and 32: ms per sample and throughput
   gain over batch 1, next to onnxruntime fp32 and int8 (static QDQ) with a dynamic batch axis.
   Ours runs a batch sample by sample on `threads` threads side by side (`Model.batch_workers`),
   batch 1 as one call on `threads` TVM threads.
2. Sequence: MiniLM compiled once with a free length (`1x1..256`, buckets 16..256), timed at
   16, 32, 64, 128 and 256 real tokens, next to onnxruntime with dynamic axes; each length's
   time as a fraction of the 128-token time.
3. Callers: one EfficientNet-Lite0 `Model` shared by 1, 2 and 4 Python threads (each running
   TVM with one thread), runs per second.

Writes benchmarks/results/shapes.md and prints it; progress on stderr. Close other work first.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.models import (calibration_images, export_efficientnet_lite0, export_minilm, lee_corpus,
                               minilm_tokenize)
from benchmarks.speed import ORT_FP32, ORT_INT8, cpu_facts, in_child, log, ort_int8, time_ort
from frontends.onnx_import import FreeDim

RESULTS = Path(__file__).parent / "results" / "shapes.md"
BATCHES = (1, 8, 32)
LENGTHS = (16, 32, 64, 128, 256)
CALLERS = (1, 2, 4)
OURS = "intq"


def compiled(onnx_path: Path, calib: Path, shapes: dict, artifact: Path, reuse: bool, **extra) -> Path:
    """The artifact (compiled here, or reused from an earlier run)."""
    from runtime.compiler import compile_model

    if reuse and artifact.exists():
        log(f"reusing {artifact}")
        return artifact
    artifact.parent.mkdir(parents=True, exist_ok=True)
    return compile_model(onnx_path, "x86", artifact, calib=calib, input_shapes=shapes, **extra)


def _set_tvm_threads(threads: int) -> None:
    from runtime.model import config_threads

    config_threads(threads)


def _time_ours(artifact: Path, feed: dict[str, np.ndarray], threads: int, repeat: int) -> float:
    import runtime

    _set_tvm_threads(threads)
    model = runtime.load(artifact)
    model.batch_workers = threads  # a batch runs sample by sample on `threads` threads, one TVM thread each
    q = model.quantize_inputs(feed)
    return float(np.median(model.time(q, repeat=repeat)))


def _texts(count: int) -> list[str]:
    return lee_corpus()[1][:count]


def _minilm_feed(batch: int, length: int) -> dict[str, np.ndarray]:
    """`batch` real sentences, each cut or padded to exactly `length` real tokens (all mask 1)."""
    text = " ".join(_texts(40))
    ids, _ = minilm_tokenize([text] * batch, length)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _images(batch: int) -> dict[str, np.ndarray]:
    return {"input": calibration_images(batch, seed=1)}


def batch_table(work: Path, threads: list[int], repeat: int, reuse: bool) -> list[str]:
    rows = ["| model | runtime | threads | " + " | ".join(f"batch {b}: ms/sample" for b in BATCHES)
            + " | throughput gain at batch 8 | at batch 32 |", "|---|---|---|" + "---|" * (len(BATCHES) + 2)]
    cases = [
        ("EfficientNet-Lite0", export_efficientnet_lite0(work / "efficientnet_lite0_dyn.onnx", dynamic=True),
         {"input": calibration_images(32)}, {"input": (FreeDim("n", 1, 32), 3, 224, 224)}, _images),
        ("all-MiniLM-L6-v2 (128 tokens)", export_minilm(work / "minilm_dyn.onnx", dynamic=True),
         dict(zip(("input_ids", "attention_mask"), minilm_tokenize(_texts(32), 128))),
         {"input_ids": (FreeDim("n", 1, 32), 128), "attention_mask": (FreeDim("n", 1, 32), 128)},
         lambda b: _minilm_feed(b, 128)),
    ]
    for title, onnx_path, calib_data, shapes, feed_of in cases:
        calib = work / f"{onnx_path.stem}_calib.npz"
        np.savez(calib, **{k: v[:, None] for k, v in calib_data.items()})
        artifact = work / "shapes" / f"{onnx_path.stem}.batch.artifact"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        log(f"{title}: compiling with a free batch")
        compiled(onnx_path, calib, shapes, artifact, reuse)
        samples = [{k: v[i:i + 1] for k, v in calib_data.items()} for i in range(8)]
        sources = {ORT_FP32: onnx_path, ORT_INT8: ort_int8(onnx_path, samples, [])}
        for t in threads:
            results = {OURS: [], ORT_FP32: [], ORT_INT8: []}
            for b in BATCHES:  # each runtime in a process of its own (speed.in_child)
                feed = feed_of(b)
                log(f"{title}: batch {b}, {t} thread(s)")
                results[OURS].append(in_child(_time_ours, artifact, feed, t, repeat) / b)
                for name, path in sources.items():
                    results[name].append(in_child(time_ort, path, feed, t, repeat) / b)
            for name, per_sample in results.items():
                gains = [per_sample[0] / per_sample[BATCHES.index(b)] for b in (8, 32)]
                rows.append(f"| {title} | {name} | {t} | " + " | ".join(f"{ms:.2f}" for ms in per_sample)
                            + " | " + " | ".join(f"{g:.2f}x" for g in gains) + " |")
    return rows


def sequence_table(work: Path, threads: list[int], repeat: int, reuse: bool) -> list[str]:
    onnx_path = export_minilm(work / "minilm_dyn.onnx", dynamic=True)
    ids, mask = minilm_tokenize(_texts(16), 128)
    calib = work / "minilm_seq_calib.npz"
    np.savez(calib, input_ids=ids, attention_mask=mask)
    artifact = work / "shapes" / "minilm.seq.artifact"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    log(f"MiniLM: compiling with a free length (buckets {list(LENGTHS)})")
    length = FreeDim("seq", 1, LENGTHS[-1])
    compiled(onnx_path, calib, {"input_ids": (1, length), "attention_mask": (1, length)}, artifact, reuse,
             buckets=list(LENGTHS))
    samples = [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]} for i in range(8)]
    sources = {ORT_FP32: onnx_path, ORT_INT8: ort_int8(onnx_path, samples, [])}
    rows = ["| runtime | threads | " + " | ".join(f"{n} tokens: ms" for n in LENGTHS) + " | "
            + " | ".join(f"{n} / 128" for n in LENGTHS if n != 128) + " |",
            "|---|---|" + "---|" * (2 * len(LENGTHS) - 1)]
    for t in threads:
        results = {OURS: [], ORT_FP32: [], ORT_INT8: []}
        for n in LENGTHS:
            feed = _minilm_feed(1, n)
            log(f"MiniLM: {n} tokens, {t} thread(s)")
            results[OURS].append(in_child(_time_ours, artifact, feed, t, repeat))
            for name, path in sources.items():
                results[name].append(in_child(time_ort, path, feed, t, repeat))
        base = LENGTHS.index(128)
        for name, ms in results.items():
            rows.append(f"| {name} | {t} | " + " | ".join(f"{v:.2f}" for v in ms) + " | "
                        + " | ".join(f"{v / ms[base]:.0%}" for n, v in zip(LENGTHS, ms) if n != 128) + " |")
    return rows


def callers_table(work: Path, repeat: int, reuse: bool) -> list[str]:
    """Runs per second of one shared Model called from several Python threads at once."""
    import runtime

    onnx_path = export_efficientnet_lite0(work / "efficientnet_lite0.onnx")
    calib = work / "efficientnet_callers_calib.npz"
    np.savez(calib, input=calibration_images(16))
    artifact = work / "shapes" / "efficientnet.artifact"
    compiled(onnx_path, calib, {"input": (1, 3, 224, 224)}, artifact, reuse)
    model = runtime.load(artifact)
    feed = _images(1)
    expected = model.run(feed)["logits"]
    rows = ["| caller threads | runs/s | vs 1 caller | outputs identical to a sequential run |", "|---|---|---|---|"]
    base = None
    for callers in CALLERS:
        calls, same = max(repeat, 8), []

        def work_loop():
            _set_tvm_threads(1)
            for _ in range(calls):
                same.append(np.array_equal(model.run(feed)["logits"], expected))

        pool = [threading.Thread(target=work_loop) for _ in range(callers)]
        start = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        rate = callers * calls / (time.perf_counter() - start)
        base = base or rate
        log(f"{callers} caller thread(s): {rate:.1f} runs/s")
        rows.append(f"| {callers} | {rate:.1f} | {rate / base:.2f}x | {all(same) and len(same) == callers * calls} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="out", help="ONNX files, calibration data and artifacts (reused)")
    p.add_argument("--threads", default="1,2", help="comma-separated runtime thread counts (default 1,2)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (default 20)")
    p.add_argument("--reuse-artifacts", action="store_true", help="reuse artifacts compiled by an earlier run")
    p.add_argument("--parts", default="batch,sequence,callers", help="which tables (default all three)")
    p.add_argument("--results", default=str(RESULTS), help="Markdown file to write")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    parts = args.parts.split(",")
    from targets.kernel_family import kernel_family
    from targets import get_target

    cpu = cpu_facts()
    family = kernel_family(get_target("x86").target()).name
    out = ["# Shapes: batch, sequence length, caller threads", "",
           f"`python -m benchmarks.shapes` on {datetime.now(UTC):%Y-%m-%d}: {cpu.get('model name', '?')}, "
           f"kernel family {family}; median of {args.repeat} runs; load average at the start "
           f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (above ~0.5 the absolute times are inflated).", ""]
    if "batch" in parts:
        out += ["## Batch (one artifact, free batch 1..32)", "",
                "ms per sample (lower is better); throughput gain = batch-1 ms/sample over batch-B ms/sample.", "",
                *batch_table(work, threads, args.repeat, args.reuse_artifacts), ""]
    if "sequence" in parts:
        out += ["## Sequence length (one MiniLM artifact, free length 1..256, buckets 16..256)", "",
                "Latency at batch 1 with every token real; onnxruntime runs the same ONNX with dynamic axes.", "",
                *sequence_table(work, threads, args.repeat, args.reuse_artifacts), ""]
    if "callers" in parts:
        out += ["## Caller threads sharing one Model (EfficientNet-Lite0, TVM 1 thread per caller)", "",
                *callers_table(work, args.repeat, args.reuse_artifacts), ""]
    text = "\n".join(out)
    Path(args.results).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
