"""The artifact's compiled float boundary (targets/boundary_kernels.py) gives the integers and floats
of the NumPy reference (runtime/boundary.py) bit for bit, and the runtime uses it."""

import json
import shutil

import numpy as np
import pytest

from frontends.errors import InputError
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
    return {way: {dtype: lib[name] for dtype, name in by_dtype.items()} for way, by_dtype in names.items()
            if isinstance(by_dtype, dict)}


def _checked(kernel, x, scale, dtype):
    """(integers, (min, max, non-finite count)) of the checked quantization."""
    import tvm_ffi

    from targets.boundary_kernels import CHECK_CHUNK, STATS

    out, stats = np.empty(x.shape, dtype), np.empty(STATS * -(-x.size // CHECK_CHUNK))
    kernel(tvm_ffi.from_dlpack(x), scale, tvm_ffi.from_dlpack(out), tvm_ffi.from_dlpack(stats))
    return out, tuple(stats[:STATS])


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


def test_quantize_rounds_the_reciprocals_float32_product():
    """The boundary's contract: x * float32(1 / s) in float32, then round half to even, not x / s: values a
    float32 rounding away from a half-integer go where the product puts them (here 134 of 780 such values
    differ from the float64 quotient's integer)."""
    scale = 0.0123456789
    ties = ((np.arange(-130, 130) + 0.5) * scale).astype(np.float32)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    product = np.clip(np.rint(x * np.float32(1 / scale)), -128, 127).astype(np.int8)
    quotient = np.clip(np.round(x.astype(np.float64) / scale), -128, 127).astype(np.int8)
    assert np.count_nonzero(product != quotient) > 100
    np.testing.assert_array_equal(quantize(x, scale, "int8"), product)


@pytest.mark.parametrize("dtype", sorted(RANGES))
def test_checked_quantize_kernel_flags_what_numpy_finds(kernels, dtype):
    """The checked kernel's integers are `quantize`'s (half-integer neighbours too); its min and max are NumPy's
    over the whole tensor (a tensor of several chunks and a partial one, the extremes in the partial chunk too);
    its sum is finite, and not where a NaN or infinity is anywhere."""
    from targets.boundary_kernels import CHECK_CHUNK

    rng = np.random.default_rng(3)
    lo, hi = RANGES[dtype]
    scale = 0.0123456789 if dtype != "int16" else 1.7e-4
    ties = ((np.arange(lo - 3, hi + 3, dtype=np.float64) + 0.5) * scale).astype(np.float32)
    near = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    kernel = kernels["quantize_checked"][dtype]
    for n in (1, 63, CHECK_CHUNK, 3 * CHECK_CHUNK + 101, near.size + 2 * CHECK_CHUNK):
        x = (rng.standard_normal(n) * 2).astype(np.float32)
        x[: min(n - 1, near.size)] = near[: n - 1]
        x[-1] = 7.5 if dtype != "int16" else 9.0  # the largest value, in the last (partial) chunk
        q, (low, high, total) = _checked(kernel, x, scale, dtype)
        np.testing.assert_array_equal(q, quantize(x, scale, dtype))
        assert (low, high) == (float(x.min()), float(x.max())) and np.isfinite(total)
        for value in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[rng.integers(0, n, 2)] = value
            y[0] = value
            assert not np.isfinite(_checked(kernel, y, scale, dtype)[1][2])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32"])
def test_dequantize_axis_kernel_equals_numpy(kernels, dtype):
    """A scale per channel, the channels first, in the middle or last."""
    import tvm_ffi

    info = np.iinfo(dtype)
    rng = np.random.default_rng(4)
    for shape in ((1, 1000), (2, 5, 7), (3, 1, 4)):
        q = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        for axis in range(len(shape)):
            scale = rng.uniform(1e-9, 3.0, shape[axis])
            view = (int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:])))
            out = np.empty(shape, np.float32)
            kernels["dequantize_axis"][dtype](tvm_ffi.from_dlpack(q.reshape(view)), tvm_ffi.from_dlpack(scale),
                                              tvm_ffi.from_dlpack(out.reshape(view)))
            shaped = scale.reshape([-1 if d == axis else 1 for d in range(len(shape))])
            np.testing.assert_array_equal(out, dequantize(q, shaped))


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
    bad = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    bad[0, 1, 2, 3] = np.nan
    for artifact in (model, numpy_only):  # the kernel's count and NumPy's check refuse alike
        with pytest.raises(InputError, match="1 of 768 values are NaN or infinite"):
            artifact.run({"x": bad})


@pytest.mark.filterwarnings("ignore:input 'x'")
def test_runs_reuse_their_input_buffers(small_artifact):
    """`run` quantizes into this thread's buffer of the last call (a new one when the shape changes) and
    gives what `run_integer` on fresh integers gives; `quantize_inputs` hands out new arrays every call."""
    import runtime

    model = runtime.load(small_artifact)
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    for feed in feeds:
        q = model.quantize_inputs(feed)
        want = model._dequantize(0, model.run_integer(q)[0])
        np.testing.assert_array_equal(model.run(feed)[model.output_names[0]], want)
    buffer = model._local.buffers[0][0]
    model.run(feeds[0])
    assert model._local.buffers[0][0] is buffer and list(model._local.buffer_args) == [id(buffer)]
    assert model.quantize_inputs(feeds[0])[0] is not model.quantize_inputs(feeds[0])[0]
