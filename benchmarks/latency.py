"""Latency of an artifact next to onnxruntime fp32, measured in the same run.

    python -m benchmarks.latency [--workdir out] [--repeat 20]

Uses the EfficientNet-Lite0 artifact and ONNX file that `benchmarks.efficientnet_lite0`
writes (run that first). Prints a Markdown table of median and p90 latency.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _measure(fn, repeat: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 90))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="out")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    import onnxruntime as ort

    import runtime

    work = Path(args.workdir)
    onnx_path, artifact = work / "efficientnet_lite0.onnx", work / "efficientnet_lite0.x86.artifact"
    if not artifact.exists():
        print(f"{artifact} not found: run `python -m benchmarks.efficientnet_lite0` first", file=sys.stderr)
        return 2
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model = runtime.load(artifact)
    q = model.quantize_inputs({"input": x})
    rows = [("integer artifact (TVM default pipeline, untuned)", *_measure(lambda: model.run_integer(q), args.repeat))]
    for threads in (1, 2):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        rows.append((f"onnxruntime fp32, {threads} thread(s)",
                     *_measure(lambda: session.run(None, {"input": x}), args.repeat)))
    base = rows[1][1]
    print(f"EfficientNet-Lite0, batch 1, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.repeat}")
    print("| runtime | median ms | p90 ms | vs ORT fp32 1 thread |")
    print("|---|---|---|---|")
    for name, median, p90 in rows:
        print(f"| {name} | {median:.1f} | {p90:.1f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
