"""Model-level: EfficientNet-Lite0 from its PyPI package, calibrated on other images,
compiled for x86 and aarch64, on foolbox's 20 labeled ImageNet images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def effnet(tmp_path_factory):
    from benchmarks.models import calibration_images, export_efficientnet_lite0
    from runtime import compile_model

    work = tmp_path_factory.mktemp("effnet")
    onnx_path = export_efficientnet_lite0(work / "efficientnet_lite0.onnx")
    np.savez(work / "calib.npz", input=calibration_images(32))
    artifact = compile_model(onnx_path, "x86", work / "effnet.artifact", calib=work / "calib.npz", progress=False)
    return work, onnx_path, artifact


def test_efficientnet_lite0_integer_only_accuracy(effnet):
    from benchmarks.efficientnet_lite0 import evaluate
    from runtime import load

    _, onnx_path, artifact = effnet
    manifest = load(artifact).manifest
    assert manifest["integer_only"] is True and manifest["verifier"] == "integer-only: yes"
    assert len(manifest["quantization"]["layers"]) == 50  # 49 convs + the classifier
    r = evaluate(artifact, onnx_path)
    assert r["agreement"] >= 19, r
    assert r["top1_int"] >= r["top1_float"] - 1, r
    assert r["logit_cosine"] > 0.97, r


def test_efficientnet_lite0_free_batch_equals_batch_1(effnet):
    """The same model compiled with a free batch (1..8): at batch 1, 3 and 8 (one call, and cut
    into slices that run side by side) every image's integers equal the batch-1 artifact's."""
    from benchmarks.models import calibration_images
    from conftest import without_sample_library
    from frontends.onnx_import import FreeDim
    from runtime import compile_model, load

    work, onnx_path, artifact = effnet
    batched = load(compile_model(onnx_path, "x86", work / "effnet-n.artifact", calib=work / "calib.npz",
                                 input_shapes={"input": (FreeDim("n", 1, 8), 3, 224, 224)}, progress=False))
    single = load(artifact)
    images = calibration_images(8, seed=11)
    alone = np.concatenate([single.run_integer(single.quantize_inputs({"input": images[i:i + 1]}))[0]
                            for i in range(8)])
    assert "sample" in batched.manifest["library"]
    # one call (the symbolic library), or one sample a call (the batch-1 library), one after the other or side by side
    for count, workers, one_call in ((1, 1, False), (3, 1, True), (8, 1, True), (8, 1, False), (8, 2, False)):
        batched.batch_workers, batched.batch_in_one_call = workers, one_call
        (got,) = batched.run_integer(batched.quantize_inputs({"input": images[:count]}))
        np.testing.assert_array_equal(got, alone[:count])
    without_sample_library(batched)  # and the symbolic library a sample at a time
    (got,) = batched.run_integer(batched.quantize_inputs({"input": images[:2]}))
    np.testing.assert_array_equal(got, alone[:2])


def test_efficientnet_lite0_shared_by_8_threads(effnet):
    """Serving code shares one Model: 8 threads x 125 calls (1000 in all) on the real model, no
    crash, every output identical to the sequential run of the same image."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.models import calibration_images
    from runtime import load

    model = load(effnet[2])
    images = calibration_images(8, seed=5)
    expected = [model.run({"input": images[i:i + 1]})["logits"] for i in range(len(images))]

    def worker(t: int) -> int:
        return sum(not np.array_equal(model.run({"input": images[(t + i) % 8:(t + i) % 8 + 1]})["logits"],
                                      expected[(t + i) % 8]) for i in range(125))

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 0


def test_efficientnet_lite0_aarch64_bit_exact_under_qemu(effnet):
    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and gcc-aarch64-linux-gnu (targets/install_toolchains.sh)")
    from benchmarks.emulation import Aarch64Emulator
    from benchmarks.models import imagenet_eval_set
    from runtime import compile_model, load

    work, onnx_path, artifact = effnet
    arm = compile_model(onnx_path, "arm", work / "effnet.arm.artifact", calib=work / "calib.npz", progress=False)
    cpu = load(artifact)
    images, _ = imagenet_eval_set()
    emulator = Aarch64Emulator()
    for image in images[:2]:
        q = cpu.quantize_inputs({"input": image[None]})
        np.testing.assert_array_equal(emulator.run_integer(arm, q)[0], cpu.run_integer(q)[0])


@pytest.mark.parametrize("target", ["riscv", "arm32"])
def test_efficientnet_lite0_plan_executor_bit_exact_under_qemu(effnet, target):
    from benchmarks.emulation import plan_launcher
    from benchmarks.models import imagenet_eval_set
    from runtime import compile_model, load
    from runtime.plan import run_plan

    work, onnx_path, artifact = effnet
    launcher = plan_launcher("riscv64" if target == "riscv" else "armv7l")
    if shutil.which(launcher[0]) is None:
        pytest.skip("needs qemu-user and the cross gcc (targets/install_toolchains.sh)")
    cross = compile_model(onnx_path, target, work / f"effnet.{target}.artifact", calib=work / "calib.npz",
                          progress=False)
    cpu = load(artifact)
    images, _ = imagenet_eval_set()
    q = cpu.quantize_inputs({"input": images[0][None]})
    np.testing.assert_array_equal(run_plan(cross, q, launcher)[0], cpu.run_integer(q)[0])
