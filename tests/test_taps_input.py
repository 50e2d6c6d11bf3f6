"""The taps convs' input pack as loads and shuffles (targets/taps_input.py): equal to the TE pack it
replaces (`vnni.taps_input_te`, compiled as before) for every case of the code (rows whose ends are
padding or clamped loads, rows of padding, a partial channel group, one channel, stride 1 and 2, int8
shifted to uint8, 8-bit widened to int16 pairs, a symbolic batch), on this CPU and on an AVX2 fleet; and
taken by spatial convs, which stay bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import relax_main, run_relax
from tvm import te

from passes import reference as ref
from passes.lowering import emit
from targets import get_target, vnni
from targets.cpu_schedules import schedule_int_matmul_cpu
from targets.kernel_family import DOTS
from targets.taps_input import pack_func
from targets.x86 import missing_features

rng = np.random.default_rng(17)


def _te_pack(shape, pads, stride, hq, wq, dot, dtype, target):
    x = te.placeholder(shape, dtype, name="x")
    out = vnni.taps_input_te(x, pads, stride, hq, wq, dot)
    func = te.create_prim_func([x, out]).with_attr("global_symbol", "main")
    with target:
        mod = schedule_int_matmul_cpu(tvm.IRModule({"main": func}))
    return tvm.compile(mod, target=target)["main"], [int(d) for d in out.shape], str(out.dtype)


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"])
@pytest.mark.parametrize("c,h,w,pads,stride,dot,dtype", [
    (3, 40, 40, (1, 1, 1, 1), 2, "vnni", "int8"),  # an RGB stem: 3 of 4 channels, phases, padding first
    (3, 40, 40, (0, 0, 1, 1), 2, "vnni", "int8"),  # TF's SAME: padding at the far ends only
    (9, 12, 37, (1, 1, 1, 1), 1, "vnni", "uint8"),  # two full groups and one of 1 channel, a partial vector
    (5, 9, 40, (2, 2, 2, 2), 2, "maddubs", "int8"),  # whole rows of padding (top 2, stride 2)
    (16, 6, 35, (1, 1, 1, 1), 1, "maddwd512", "int8"),  # widened to int16 pairs
    (7, 5, 35, (1, 0, 1, 2), 2, "maddwd512", "uint8"),
    (1, 6, 64, (3, 3, 3, 3), 1, "vnni", "uint8"),  # one channel: the shuffle reads zero vectors for lanes
    (5, 8, 40, (1, 1, 1, 1), 2, "wvnni8", "int16"),  # a tensor kept at 16 bits
    (4, 7, 33, (0, 0, 1, 1), 1, "wmaddwd", "int16"),
])
def test_equals_the_te_pack(cpu, c, h, w, pads, stride, dot, dtype):
    spec = get_target("x86", cpu=cpu)
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}")
    d = DOTS[dot]
    ho, wo = (h + pads[0] + pads[2] - 3) // stride + 1, (w + pads[1] + pads[3] - 3) // stride + 1
    hq, wq = ho + 2 // stride, -(-wo // d.lanes) * d.lanes + 2 // stride
    target = spec.target()
    want_fn, shape, out_dtype = _te_pack((1, c, h, w), pads, stride, hq, wq, dot, dtype, target)
    func = pack_func(c, h, w, pads[:2], stride, hq, wq, d.k, dtype, out_dtype).with_attr("global_symbol", "main")
    got_fn = tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]
    lo, hi = ref.kernels.INT_RANGE[dtype]
    x = tvm.runtime.tensor(rng.integers(lo, hi + 1, (1, c, h, w)).astype(dtype))
    want, got = (tvm.runtime.tensor(np.full(shape, fill, out_dtype)) for fill in (0, 77))  # every element written
    want_fn(x, want)
    got_fn(x, got)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_symbolic_batch_equals_each_sample():
    c, h, w, pads, stride, hq, wq = 3, 20, 36, (1, 1), 2, 11, 19
    target = get_target("x86").target()
    lib = tvm.compile(tvm.IRModule({"main": pack_func(c, h, w, pads, stride, hq, wq, 4, "int8", "uint8", batch=True)
                                    .with_attr("global_symbol", "main")}), target=target)
    one = tvm.compile(tvm.IRModule({"main": pack_func(c, h, w, pads, stride, hq, wq, 4, "int8", "uint8")
                                    .with_attr("global_symbol", "main")}), target=target)
    x = rng.integers(-128, 128, (3, c, h, w)).astype(np.int8)
    out = tvm.runtime.tensor(np.zeros((3, stride, stride, 1, hq * wq, 4), np.uint8))
    lib["main"](tvm.runtime.tensor(x), out)
    for i in range(3):
        alone = tvm.runtime.tensor(np.zeros((stride, stride, 1, hq * wq, 4), np.uint8))
        one["main"](tvm.runtime.tensor(x[i:i + 1]), alone)
        np.testing.assert_array_equal(out.numpy()[i], alone.numpy())


class _Conv:
    dilation, groups = (1, 1), 1
    data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"

    def __init__(self, stride: int, pads):
        self.strides, self.padding = (stride, stride), pads


@pytest.mark.parametrize("cpu,shape,stride", [
    ("x86-64-v4+avx512vnni", (1, 3, 48, 48, 16), 2),  # an RGB stem
    ("x86-64-v3", (1, 3, 48, 48, 16), 2),
    ("x86-64-v4+avx512vnni", (2, 8, 20, 40, 24), 1),  # a batch of two
])
def test_spatial_convs_take_it(cpu, shape, stride):
    from targets.cpu_pipeline import cpu_lowering_passes

    n, c, h, wd, o = shape
    x, w = rng.integers(-128, 128, (n, c, h, wd)).astype(np.int8), rng.integers(-128, 128, (o, c, 3, 3)).astype(np.int8)
    build = lambda a: emit.conv2d_acc(a, w, _Conv(stride, (1, 1, 1, 1)))  # noqa: E731
    spec = get_target("x86", cpu=cpu)
    with spec.target():
        mod = tvm.transform.Sequential(cpu_lowering_passes(spec.target()))(relax_main(build, [x]))
    names = [gv.name_hint for gv, _ in mod.functions_items()]
    assert any(name.startswith("taps_input") for name in names) and any("conv_taps" in name for name in names)
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}: compiled only")
    np.testing.assert_array_equal(run_relax(build, [x], cpu), ref.conv2d_acc(x, w, (stride, stride), (1, 1, 1, 1)))
