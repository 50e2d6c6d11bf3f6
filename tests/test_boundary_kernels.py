"""The artifact's compiled float boundary (targets/boundary_kernels.py) gives the integers and floats
of the NumPy reference (runtime/boundary.py) bit for bit, and the runtime uses it."""

import json
import shutil

import numpy as np
import pytest

from runtime.boundary import dequantize, quantize

RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@pytest.fixture(scope="module", params=[None, "x86-64-v3"], ids=["host", "avx2"])
def kernels(request, tmp_path_factory):
    """The kernels built for this machine and for an AVX2 fleet (which any x86-64-v3 CPU runs)."""
    import tvm

    from targets import boundary_kernels, get_target
    from targets.x86 import missing_features

    spec = get_target("x86", cpu=request.param)
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}")
    path = tmp_path_factory.mktemp("boundary") / boundary_kernels.FILE
    names = boundary_kernels.export(spec.target(), path)
    lib = tvm.runtime.load_module(str(path))
    return {way: {dtype: lib[name] for dtype, name in names[way].items()} for way in names}


def _call(kernel, x, scale, dtype):
    import tvm_ffi

    out = np.empty(x.shape, dtype)
    kernel(tvm_ffi.from_dlpack(x), scale, tvm_ffi.from_dlpack(out))
    return out


@pytest.mark.parametrize("dtype", sorted(RANGES))
def test_quantize_kernel_equals_numpy(kernels, dtype):
    rng = np.random.default_rng(0)
    lo, hi = RANGES[dtype]
    scale = 0.0123456789 if dtype != "int16" else 1.7e-4
    # every tie (k + 0.5) * scale as float32 and its float32 neighbours, values past both ends, and
    # a random bulk; an odd length so that the last partial vector runs too
    ties = ((np.arange(lo - 3, hi + 3, dtype=np.float64) + 0.5) * scale).astype(np.float32)
    near = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    bulk = (rng.standard_normal(100_003) * scale * hi / 2).astype(np.float32)
    x = np.concatenate([near, bulk, np.float32([0.0, -0.0, 1e30, -1e30])])
    assert x.size % 64
    for n in (x.size, 63, 1):
        np.testing.assert_array_equal(_call(kernels["quantize"][dtype], x[:n], scale, dtype), quantize(x[:n], scale, dtype))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32"])
def test_dequantize_kernel_equals_numpy(kernels, dtype):
    info = np.iinfo(dtype)
    q = np.random.default_rng(1).integers(info.min, info.max, 10_007, endpoint=True).astype(dtype)
    for scale in (0.0123456789, 3.3e-9):
        np.testing.assert_array_equal(_call(kernels["dequantize"][dtype], q, scale, "float32"), dequantize(q, scale))


@pytest.mark.filterwarnings("ignore:input 'x'")
def test_artifact_runs_its_boundary_kernels(small_artifact, tmp_path, monkeypatch):
    """The artifact ships the kernels; its outputs equal those of the same artifact without them
    (the NumPy boundary), for a misaligned, read-only input too (the kernels on every size here: the
    runtime dequantizes outputs under DEQUANTIZE_KERNEL elements with NumPy)."""
    import runtime
    import runtime.model

    monkeypatch.setattr(runtime.model, "DEQUANTIZE_KERNEL", 1)

    model = runtime.load(small_artifact)
    assert model._boundary["quantize"] and model.manifest["boundary_library"]["file"] == "boundary.so"
    old = tmp_path / "old.artifact"
    shutil.copytree(small_artifact, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["boundary_library"]  # as artifacts before it were written
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "boundary.so").unlink()
    numpy_only = runtime.load(old)
    assert numpy_only._boundary == {}
    rng = np.random.default_rng(2)
    buffer = rng.standard_normal(3 * 16 * 16 + 1).astype(np.float32)
    x = buffer[1:].reshape(1, 3, 16, 16)  # 4 bytes past an aligned start
    x.flags.writeable = False
    for feed in ({"x": x}, {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32) * 40}):
        got, want = model.run(feed), numpy_only.run(feed)
        assert got.keys() == want.keys()
        for name in got:
            np.testing.assert_array_equal(got[name], want[name])
