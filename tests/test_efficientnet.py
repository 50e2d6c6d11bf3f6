"""Model-level: EfficientNet-Lite0 from its PyPI package, calibrated on other images,
compiled for x86, on foolbox's 20 labeled ImageNet images."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_efficientnet_lite0_integer_only_accuracy(tmp_path_factory):
    from benchmarks.efficientnet_lite0 import evaluate
    from benchmarks.models import calibration_images, export_efficientnet_lite0
    from runtime import compile_model, load

    work = tmp_path_factory.mktemp("effnet")
    onnx_path = export_efficientnet_lite0(work / "efficientnet_lite0.onnx")
    np.savez(work / "calib.npz", input=calibration_images(32))
    artifact = compile_model(onnx_path, "x86", work / "effnet.artifact", calib=work / "calib.npz", progress=False)
    manifest = load(artifact).manifest
    assert manifest["integer_only"] is True and manifest["verifier"] == "integer-only: yes"
    assert len(manifest["quantization"]["layers"]) == 50  # 49 convs + the classifier
    r = evaluate(artifact, onnx_path)
    assert r["agreement"] >= 19, r
    assert r["top1_int"] >= r["top1_float"] - 1, r
    assert r["logit_cosine"] > 0.97, r
