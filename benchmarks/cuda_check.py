"""Bit-exactness of CUDA artifacts against x86 on a real GPU, in two steps.

    python -m benchmarks.cuda_check prepare DIR [--models efficientnet minilm vit]   # here (nvcc, no GPU)
    python -m benchmarks.cuda_check run DIR                                          # on the GPU machine

`prepare` compiles each model (ONNX files and calibration data from the benchmarks' --workdir)
for cuda and x86, runs the x86 artifact on real evaluation inputs and saves the quantized inputs
and integer outputs: EfficientNet-Lite0 on foolbox's 20 ImageNet images, all-MiniLM-L6-v2 on the
first 10 Lee documents (integer Shiftmax, ShiftGELU, I-LayerNorm, masks), the DINOv2 ViT-S/14
backbone on 4 ImageNet images. `run` needs only numpy and the TVM runtime: it loads each cuda
artifact, runs the same integers and reports whether every output integer matches, with the
median latency at batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _eval_inputs(name: str, workdir: Path):
    """(onnx path, calibration file, list of float/int input dicts, extra compile args)."""
    from benchmarks import models

    if name == "efficientnet":
        images, _ = models.imagenet_eval_set()
        return workdir / "efficientnet_lite0.onnx", workdir / "calib_64.npz", [{"input": x[None]} for x in images], []
    if name == "minilm":
        ids, mask = models.minilm_tokenize(models.lee_corpus()[0][:10])
        return (workdir / "minilm.onnx", workdir / "minilm_calib_32.npz",
                [{"input_ids": i[None], "attention_mask": m[None]} for i, m in zip(ids, mask)], [])
    if name == "vit":
        images = models.to_imagenet_normalisation(models.imagenet_eval_set()[0][:4])
        return (workdir / "dinov2_vits14.onnx", workdir / "vit_calib_16.npz", [{"input_image": x[None]} for x in images],
                ["--input-shape", "input_image:1x3x224x224"])
    raise ValueError(f"unknown model {name!r}")


def prepare(out: Path, workdir: Path, names: list[str]) -> None:
    from runtime import load
    from runtime.compile import main as compile_main

    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        onnx_path, calib, feeds, extra = _eval_inputs(name, workdir)
        for target in ("x86", "cuda"):
            if compile_main([str(onnx_path), "--calib", str(calib), "--target", target, "-o",
                             str(out / f"{name}.{target}"), *extra]):
                raise SystemExit(f"compiling {name} for {target} failed")
        cpu = load(out / f"{name}.x86")
        qs = [cpu.quantize_inputs(f) for f in feeds]
        ys = [cpu.run_integer(q) for q in qs]
        arrays = {f"q{k}_{j}": a for k, q in enumerate(qs) for j, a in enumerate(q)}
        arrays.update({f"y{k}_{j}": a for k, y in enumerate(ys) for j, a in enumerate(y)})
        np.savez(out / f"{name}_x86.npz", count=len(qs), **arrays)


def _unpack(ref, prefix: str, k: int) -> list[np.ndarray]:
    return [ref[key] for key in sorted((key for key in ref.files if key.startswith(f"{prefix}{k}_")),
                                       key=lambda key: int(key.rsplit("_", 1)[1]))]


def run(out: Path) -> list[dict]:
    from runtime import load

    results = []
    for path in sorted(out.glob("*_x86.npz")):
        name = path.name[:-len("_x86.npz")]
        ref, gpu = np.load(path), load(out / f"{name}.cuda")
        count = int(ref["count"])
        got = [gpu.run_integer(_unpack(ref, "q", k)) for k in range(count)]
        want = [_unpack(ref, "y", k) for k in range(count)]
        mismatched = sum(int((g != w).sum()) for gs, ws in zip(got, want) for g, w in zip(gs, ws))
        total = sum(w.size for ws in want for w in ws)
        q0 = _unpack(ref, "q", 0)
        times = []
        for _ in range(30):
            start = time.perf_counter()
            gpu.run_integer(q0)
            times.append(time.perf_counter() - start)
        results.append({"model": name, "inputs": count, "bit_exact_vs_x86": mismatched == 0,
                        "mismatched_integers": mismatched, "output_integers": total, "gpu": gpu._dev.device_name,
                        "median_ms_batch1": round(1e3 * float(np.median(times)), 3)})
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["prepare", "run"])
    p.add_argument("dir", type=Path)
    p.add_argument("--workdir", type=Path, default=Path("out"), help="where the benchmarks left their files")
    p.add_argument("--models", nargs="+", default=["efficientnet", "minilm", "vit"],
                   choices=["efficientnet", "minilm", "vit"])
    args = p.parse_args(argv)
    if args.step == "prepare":
        prepare(args.dir, args.workdir, args.models)
        return 0
    results = run(args.dir)
    if not results:
        print(f"no *_x86.npz in {args.dir}: run `python -m benchmarks.cuda_check prepare {args.dir}` first",
              file=sys.stderr)
        return 2
    for r in results:
        print(json.dumps(r))
    return 0 if results and all(r["bit_exact_vs_x86"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
