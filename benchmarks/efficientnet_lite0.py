"""Main job: EfficientNet-Lite0 -> integer-only x86 artifact -> top-1 on real images.

    python -m benchmarks.efficientnet_lite0 [--workdir out] [--calib-count 64] [--observer minmax]

Exports the model from its PyPI package, writes a calibration .npz of images that are not
the evaluation images, compiles through the CLI (`python -m runtime.compile`), runs the
artifact and onnxruntime (float) on foolbox's 20 labeled ImageNet images and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.models import calibration_images, export_efficientnet_lite0, imagenet_eval_set


def evaluate(artifact: Path, onnx_path: Path) -> dict:
    """Top-1 of the artifact and of onnxruntime float on the 20 images, and their agreement."""
    import onnxruntime as ort

    import runtime

    images, labels = imagenet_eval_set()
    model = runtime.load(artifact)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = np.concatenate([model.run({"input": x[None]})["logits"] for x in images])
    ref = np.concatenate([session.run(None, {"input": x[None]})[0] for x in images])
    cos = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return {"images": len(labels), "top1_float": int(np.sum(ref.argmax(1) == labels)),
            "top1_int": int(np.sum(ours.argmax(1) == labels)),
            "agreement": int(np.sum(ours.argmax(1) == ref.argmax(1))), "logit_cosine": float(cos.mean()),
            "integer_only": model.manifest["integer_only"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="out", help="where the ONNX file, calibration data and artifact go")
    p.add_argument("--calib-count", type=int, default=64, help="number of calibration images")
    p.add_argument("--observer", default="minmax", help="calibration observer (minmax, percentile, mse)")
    args = p.parse_args(argv)
    from runtime.compile import main as compile_main

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = export_efficientnet_lite0(work / "efficientnet_lite0.onnx")
    calib = work / f"calib_{args.calib_count}.npz"
    if not calib.exists():
        np.savez(calib, input=calibration_images(args.calib_count))
    artifact = work / "efficientnet_lite0.x86.artifact"
    rc = compile_main([str(onnx_path), "--target", "x86", "--calib", str(calib), "--observer", args.observer,
                       "-o", str(artifact)])
    if rc != 0:
        return rc
    r = evaluate(artifact, onnx_path)
    print(f"\nEfficientNet-Lite0, {r['images']} labeled ImageNet images (foolbox), "
          f"calibrated on {args.calib_count} other images ({args.observer}):")
    print("| model | top-1 | agreement with float | mean logit cosine |")
    print("|---|---|---|---|")
    print(f"| float (onnxruntime) | {r['top1_float']}/{r['images']} | - | - |")
    print(f"| integer-only artifact (x86, integer_only={str(r['integer_only']).lower()}) | "
          f"{r['top1_int']}/{r['images']} | {r['agreement']}/{r['images']} | {r['logit_cosine']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
