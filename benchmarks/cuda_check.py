"""Bit-exactness of CUDA artifacts against x86 on a real GPU, in two steps.

    python -m benchmarks.cuda_check prepare DIR   # here (compiler, nvcc; no GPU needed)
    python -m benchmarks.cuda_check run DIR       # on the GPU machine (numpy + TVM runtime only)

`prepare` compiles EfficientNet-Lite0 (the main job's ONNX file and calibration data in
--workdir) for cuda and x86, runs the x86 artifact on the 20 evaluation images and saves
the quantized inputs and integer outputs. `run` loads the cuda artifact, runs the same
integers and prints whether every output integer matches, with the median latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def prepare(out: Path, workdir: Path) -> None:
    from benchmarks.models import imagenet_eval_set
    from runtime import compile_model, load

    onnx_path, calib = workdir / "efficientnet_lite0.onnx", workdir / "calib_64.npz"
    out.mkdir(parents=True, exist_ok=True)
    cpu = load(compile_model(onnx_path, "x86", out / "effnet.x86", calib=calib))
    compile_model(onnx_path, "cuda", out / "effnet.cuda", calib=calib)
    images, _ = imagenet_eval_set()
    q = np.stack([cpu.quantize_inputs({"input": x[None]})[0] for x in images])
    np.savez(out / "effnet_x86.npz", q=q, y=np.stack([cpu.run_integer([qi])[0] for qi in q]))


def run(out: Path) -> dict:
    from runtime import load

    ref = np.load(out / "effnet_x86.npz")
    gpu = load(out / "effnet.cuda")
    y = np.stack([gpu.run_integer([qi])[0] for qi in ref["q"]])
    times = []
    for _ in range(50):
        start = time.perf_counter()
        gpu.run_integer([ref["q"][0]])
        times.append(time.perf_counter() - start)
    return {"model": "efficientnet_lite0", "images": int(len(y)), "bit_exact_vs_x86": bool(np.array_equal(y, ref["y"])),
            "mismatched_integers": int((y != ref["y"]).sum()), "gpu": gpu._dev.device_name,
            "median_ms_batch1": round(1e3 * float(np.median(times)), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["prepare", "run"])
    p.add_argument("dir", type=Path)
    p.add_argument("--workdir", type=Path, default=Path("out"), help="where the main job left its files")
    args = p.parse_args(argv)
    if args.step == "prepare":
        prepare(args.dir, args.workdir)
        return 0
    result = run(args.dir)
    print(json.dumps(result))
    return 0 if result["bit_exact_vs_x86"] else 1


if __name__ == "__main__":
    sys.exit(main())
