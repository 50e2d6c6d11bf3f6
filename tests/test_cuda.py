"""The cuda target: compiles on a GPU-less host (nvcc needed), embeds a fatbin, uses
__dp4a for int8 matmuls and pointwise convs; runs bit-exact against x86 where a GPU is."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import runtime
from frontends import ArtifactError, CompileError

NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="the cuda target needs nvcc (CUDA toolkit), not found")
FATBIN_MAGIC = bytes.fromhex("50ed55ba")


def _has_gpu() -> bool:
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")  # may be the build's stub, which has no cuInit
        count = ctypes.c_int(0)
        return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except (OSError, AttributeError):
        return False


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory, small_cnn_path, small_calib):
    if NVCC is None:
        pytest.skip("the cuda target needs nvcc (CUDA toolkit), not found")
    from runtime import compile_model

    out = tmp_path_factory.mktemp("cuda") / "small.cuda.artifact"
    return compile_model(small_cnn_path, "cuda", out, calib=small_calib, progress=False)


@needs_nvcc
def test_cuda_artifact_embeds_compiled_device_code(cuda_artifact):
    manifest = runtime.artifact.read_manifest(cuda_artifact)
    assert manifest["target"]["device"] == "cuda" and manifest["target"]["tvm_target"]["arch"] == "sm_80"
    assert manifest["integer_only"] is True and manifest["device_code"] == "model.cu"
    library = (cuda_artifact / "model.so").read_bytes()
    assert FATBIN_MAGIC in library  # compiled GPU code: no NVRTC or nvcc needed where it runs
    assert b"__global__" not in library  # ... and no CUDA source to compile at load time
    source = (cuda_artifact / "model.cu").read_text()
    assert source.count("__dp4a((") >= 1  # the pointwise conv (the classifier reads 16 values: 16-bit, no dp4a)


def _cuda_compile(build, inputs):
    import tvm
    from conftest import relax_main

    from targets import get_target

    spec = get_target("cuda")
    target = spec.target()
    with spec.build_context(), target:
        ex = tvm.compile(relax_main(build, inputs), target=target, relax_pipeline=spec.relax_pipeline(target))
    from runtime.compiler import _device_source

    return _device_source(ex.mod)


@needs_nvcc
@pytest.mark.parametrize("x_dtype,shape", [("uint8", (1, 1280, 1000)), ("int8", (3, 64, 24)), ("int8", (1, 8, 7))])
def test_int8_matmul_uses_dp4a(x_dtype, shape):
    from passes import reference as ref
    from passes.lowering import emit

    m_, k, n = shape
    w = np.ones((k, n), np.int8)
    m, s = ref.dyadic(np.full(n, 1e-3))
    src = _cuda_compile(lambda a: emit.requantize(emit.matmul_acc(a, w), m, s, -128, 127, "int8"),
                        [np.zeros((m_, k), x_dtype)])
    assert "__dp4a((" in src
    assert ("(*(uint *)" in src) == (x_dtype == "uint8")  # uint8 operands use the mixed-sign overload


@needs_nvcc
def test_unknown_cuda_arch():
    from targets import get_target

    with pytest.raises(CompileError, match="--cuda-arch 'ampere'"):
        get_target("cuda", "ampere")
    with pytest.raises(CompileError, match="applies to the cuda target"):
        get_target("x86", "sm_80")


@needs_nvcc
def test_cuda_artifact_without_gpu_is_refused_clearly(cuda_artifact):
    if _has_gpu():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ArtifactError, match="cuda"):
        runtime.load(cuda_artifact)


@needs_nvcc
def test_cuda_bit_exact_against_x86(cuda_artifact, small_artifact):
    if not _has_gpu():
        pytest.skip("no NVIDIA GPU here: the CUDA run is checked where one is (see README, Targets)")
    gpu, cpu = runtime.load(cuda_artifact), runtime.load(small_artifact)
    rng = np.random.default_rng(7)
    for _ in range(8):
        q = cpu.quantize_inputs({"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)})
        np.testing.assert_array_equal(gpu.run_integer(q)[0], cpu.run_integer(q)[0])


@pytest.fixture(scope="module")
def transformer_artifacts(tmp_path_factory):
    """A pre-LN transformer block (I-LayerNorm, Shiftmax, ShiftGELU) for cuda and x86."""
    if NVCC is None:
        pytest.skip("the cuda target needs nvcc (CUDA toolkit), not found")
    from test_transformer import _block_model

    from runtime import compile_model

    work = tmp_path_factory.mktemp("cuda_block")
    onnx_path = _block_model(work / "block.onnx")
    np.savez(work / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 1, 16, 64)).astype(np.float32))
    return {target: compile_model(onnx_path, target, work / f"block.{target}", calib=work / "calib.npz",
                                  progress=False) for target in ("cuda", "x86")}


@needs_nvcc
def test_transformer_block_compiles_for_cuda(transformer_artifacts):
    """The I-LayerNorm kernel's integer square root must not be inlined step into step (its
    expression doubles per step: MiniLM's grew past 20 GB): one thread per row instead."""
    artifact = transformer_artifacts["cuda"]
    assert runtime.artifact.read_manifest(artifact)["integer_only"] is True
    code = (artifact / "model.cu").read_text()
    assert "threadIdx.x" in code and len(code) < 2_000_000


@needs_nvcc
def test_transformer_block_bit_exact_on_gpu(transformer_artifacts):
    if not _has_gpu():
        pytest.skip("no NVIDIA GPU here: the CUDA run is checked where one is (benchmarks/cuda_check.py)")
    gpu, cpu = (runtime.load(transformer_artifacts[t]) for t in ("cuda", "x86"))
    rng = np.random.default_rng(3)
    for _ in range(4):
        q = cpu.quantize_inputs({"x": rng.standard_normal((1, 16, 64)).astype(np.float32)})
        np.testing.assert_array_equal(gpu.run_integer(q)[0], cpu.run_integer(q)[0])


@pytest.fixture(scope="module")
def cuda_batch_artifacts(tmp_path_factory, small_calib):
    """The small CNN and the transformer block with a free batch, for cuda and x86 (batch 1)."""
    if NVCC is None:
        pytest.skip("the cuda target needs nvcc (CUDA toolkit), not found")
    from conftest import small_cnn
    from test_transformer import _block_model

    from frontends.onnx_import import FreeDim
    from runtime import compile_model

    work = tmp_path_factory.mktemp("cuda_batch")
    cnn = small_cnn(work / "dyn.onnx", dynamic_batch=True)
    block = _block_model(work / "block.onnx")
    np.savez(work / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 1, 16, 64)).astype(np.float32))
    return {
        "cnn": {"cuda": compile_model(cnn, "cuda", work / "cnn.cuda", calib=small_calib, progress=False,
                                      input_shapes={"x": (FreeDim("n", 1, 8), 3, 16, 16)}),
                "x86": compile_model(cnn, "x86", work / "cnn.x86", calib=small_calib, progress=False,
                                     input_shapes={"x": (1, 3, 16, 16)})},
        "block": {"cuda": compile_model(block, "cuda", work / "block.cuda", calib=work / "calib.npz",
                                        progress=False, input_shapes={"x": (FreeDim(), 16, 64)}),
                  "x86": compile_model(block, "x86", work / "block.x86", calib=work / "calib.npz", progress=False)},
    }


@needs_nvcc
def test_free_batch_compiles_for_cuda(cuda_batch_artifacts):
    """A free batch on cuda: the manifest keeps the range, the int8 matmuls stay on __dp4a with a
    row count of n * rows (tiles divide the static factor), and a GPU runs the batch in one call."""
    cnn = runtime.artifact.read_manifest(cuda_batch_artifacts["cnn"]["cuda"])
    block = runtime.artifact.read_manifest(cuda_batch_artifacts["block"]["cuda"])
    assert cnn["inputs"][0]["range"] == {"n": [1, 8]} and block["inputs"][0]["range"] == {"n": [1, None]}
    assert cnn["integer_only"] is True and block["integer_only"] is True
    # the transformer's matmuls (the CNN's one matmul, its classifier, reads 16 values: carried at 16 bits)
    assert "__dp4a((" in (cuda_batch_artifacts["block"]["cuda"] / "model.cu").read_text()


@needs_nvcc
@pytest.mark.parametrize("name,shape", [("cnn", (3, 16, 16)), ("block", (16, 64))])
def test_free_batch_bit_exact_on_gpu(cuda_batch_artifacts, name, shape):
    if not _has_gpu():
        pytest.skip("no NVIDIA GPU here: the CUDA run is checked where one is")
    gpu, cpu = (runtime.load(cuda_batch_artifacts[name][t]) for t in ("cuda", "x86"))
    assert gpu.batch_workers == 1
    x = np.random.default_rng(4).standard_normal((5, *shape)).astype(np.float32)
    q = cpu.quantize_inputs({"x": x})
    alone = np.concatenate([cpu.run_integer([qi[i:i + 1] for qi in q])[0] for i in range(5)])
    np.testing.assert_array_equal(gpu.run_integer(q)[0], alone)
