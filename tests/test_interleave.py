"""The dot-product kernels' activation repack as one kernel of loads and shuffles
(targets/interleave.py): equal to its NumPy twin for every case of the code (flat pixels with a
tail, padded rows whose last channel group loads exactly, zero channels, 2- and 4-element steps),
on this CPU and on an AVX2 fleet; and taken by pointwise convs (lanes over pixels or over output
channels, AMX tiles), which stay bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relax_main, run_relax

from passes import reference as ref
from passes.lowering import emit
from targets import amx, get_target
from targets.interleave import interleave_func, reference
from targets.x86 import missing_features

rng = np.random.default_rng(11)


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"])
@pytest.mark.parametrize("c,h,w,step,channels,width,dtype", [
    (144, 56, 56, 4, 144, 56, "uint8"),  # flat pixels, whole vectors
    (30, 5, 5, 2, 30, 5, "int16"),  # flat, a tail of 9 pixels, 2-element steps
    (5, 7, 7, 2, 8, 7, "int16"),  # a tail of one pixel; channels 5..7 zero
    (1152, 7, 7, 4, 1152, 16, "uint8"),  # rows padded 7 -> 16, loads of 16 reading past each row
    (6, 3, 5, 4, 12, 16, "int8"),  # padded rows and channels: the groups holding the last channel exact
    (240, 28, 28, 4, 256, 32, "uint8"),
    (8, 1, 7, 4, 8, 16, "uint8"),  # one row of 7: a 16-wide load would pass the tensor's end, so none does
])
@pytest.mark.parametrize("batch", [None, 3])  # None: batch 1's kernel; 3: the symbolic batch's
def test_equals_reference(cpu, c, h, w, step, channels, width, dtype, batch):
    import tvm

    spec = get_target("x86", cpu=cpu)
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}")
    func = interleave_func(c, h, w, step, channels, width, dtype, batch is not None)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=spec.target())
    lo, hi = ref.kernels.INT_RANGE[dtype]
    x = rng.integers(lo, hi + 1, (batch or 1, c, h, w)).astype(dtype)
    want = np.stack([reference(x[i:i + 1], step, channels, width) for i in range(len(x))])
    out = tvm.runtime.tensor(np.full(want.shape if batch else want.shape[1:], 77, dtype))  # every element written
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), want if batch else want[0])


class _Pointwise:
    strides, padding, dilation, groups = (1, 1), (0, 0, 0, 0), (1, 1), 1
    data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"


@pytest.mark.parametrize("cpu,shape", [
    ("x86-64-v4+avx512vnni", (1, 30, 28, 28, 24)),  # VNNI lanes over pixels, 30 channels padded to 32
    ("x86-64-v3", (1, 30, 28, 28, 24)),  # AVX2: int16 pairs
    ("x86-64-v4+avx512vnni", (1, 30, 7, 7, 48)),  # 49 pixels: VNNI lanes over output channels
    ("x86-64-v3", (1, 30, 7, 7, 48)),
    ("x86-64-v4+avx512vnni", (3, 30, 28, 28, 24)),  # a batch: the batched repack
    ("x86-64-v4+avx512vnni", (3, 30, 7, 7, 48)),
    ("x86-64-v4+avx512vnni+amx-tile+amx-int8", (1, 250, 7, 7, 64)),  # AMX: rows 7 -> 16, K 250 -> 256
])
def test_pointwise_convs_take_it(cpu, shape):
    import tvm

    from targets.cpu_pipeline import cpu_lowering_passes

    n, c, h, wd, o = shape
    x, w = rng.integers(0, 256, (n, c, h, wd)).astype(np.uint8), rng.integers(-128, 128, (o, c, 1, 1)).astype(np.int8)
    build = lambda a: emit.conv2d_acc(a, w, _Pointwise)  # noqa: E731
    spec = get_target("x86", cpu=cpu)
    with spec.target():
        mod = tvm.transform.Sequential(cpu_lowering_passes(spec.target()))(relax_main(build, [x]))
    assert any(gv.name_hint.startswith("interleave") for gv, _ in mod.functions_items())
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}: compiled only")
    assert "amx" not in cpu or amx.enable()
    np.testing.assert_array_equal(run_relax(build, [x], cpu), ref.conv2d_acc(x, w, (1, 1), (0, 0, 0, 0)))
