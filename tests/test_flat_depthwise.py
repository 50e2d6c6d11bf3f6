"""Flat-row depthwise convs (targets/depthwise.py) over a symbolic batch: stride 1 and 2
(the padded image, then its phases), compiled for x86 with the default schedules, equal the
reference for every sample."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from passes import reference as ref
from passes.lowering import emit
from targets import get_target

rng = np.random.default_rng(3)


class _Attrs:
    dilation, data_layout, kernel_layout, out_layout = (1, 1), "NCHW", "OIHW", "NCHW"

    def __init__(self, strides, padding, groups):
        self.strides, self.padding, self.groups = strides, padding, groups


@pytest.mark.parametrize("stride,padding,k", [(1, (1, 1, 1, 1), 3), (2, (0, 0, 1, 1), 3), (2, (2, 1, 2, 2), 5)])
def test_free_batch(stride, padding, k):
    c = 16
    x = rng.integers(0, 256, (3, c, 13, 11)).astype(np.uint8)
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    attrs = _Attrs((stride, stride), padding, c)
    n = tvm.tirx.Var("n", "int64")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType([n, c, 13, 11], "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit.conv2d_acc(xv, w, attrs))
        bb.emit_func_output(out)
    spec = get_target("x86")
    target = spec.target()
    ex = tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (stride, stride), padding, groups=c))


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("shape,k,stride,padding", [
    ((2, 32, 7, 7), 5, 1, (2, 2, 2, 2)),      # EfficientNet's last 5x5 stage
    ((1, 16, 14, 14), 5, 2, (1, 1, 2, 2)),    # 4 phases, 3 and 2 taps per phase row
    ((1, 16, 9, 6), 7, 1, (3, 2, 3, 1)),      # 7 taps: two quads, one slot unused; asymmetric pads
])
def test_quad_taps(shape, k, stride, padding, x_dtype):
    """Depthwise convs whose taps along x are summed 4 at a time (AVX512-VNNI hosts: quad rows and
    vpdpbusd; elsewhere the flat-row kernel): equal to the reference, with the requantization
    epilogue per channel, at the extremes of both dtypes."""
    from targets import depthwise
    from targets.kernel_family import VNNI, kernel_family

    lo, hi = (-128, 127) if x_dtype == "int8" else (0, 255)
    c = shape[1]
    x = rng.integers(lo, hi + 1, shape).astype(x_dtype)
    x.flat[:2] = [lo, hi]
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    w.flat[:3] = [-128, 127, -128]
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, c))
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)
    attrs = _Attrs((stride, stride), padding, c)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(list(shape), x_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit.requantize(emit.conv2d_acc(xv, w, attrs), m, s, 0, 255, "uint8"))
        bb.emit_func_output(out)
    spec = get_target("x86")
    target = spec.target()
    with target:
        rewritten = depthwise.flat_depthwise(bb.get())
    quads = VNNI in kernel_family(target).dots
    assert ("dwflat_quad" in rewritten.script()) == quads
    ex = tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = ref.requantize(ref.conv2d_acc(x, w, (stride, stride), padding, groups=c), m, s, 0, 255, "uint8")
    np.testing.assert_array_equal(got, want)
