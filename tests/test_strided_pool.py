"""Max pools of stride 2 as loads, shuffles and vector maxima (targets/strided_pool.py): equal to the
NumPy twin (padding at the dtype's minimum) for every code path (a row's clamped ends, padded windows,
2x2 and 3x3 windows, 8- and 16-bit), on this CPU and an AVX2 fleet; and taken by integer max pools in
compiled models, which stay bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import relax_main, run_relax
from tvm import relax

from targets import get_target
from targets.cpu_pipeline import cpu_lowering_passes
from targets.strided_pool import pool_func, reference
from targets.x86 import missing_features

rng = np.random.default_rng(23)
CASES = [  # (c, h, w), kernel, pads, dtype
    ((4, 30, 112), 3, (1, 1, 1, 1), "uint8"),  # a ResNet stem's: padded windows, rows of 56 outputs
    ((3, 20, 80), 2, (0, 0, 0, 0), "uint8"),  # VGG's / a U-Net's 2x2
    ((5, 17, 99), 3, (1, 1, 1, 1), "int8"),  # odd sizes: a partial last vector
    ((2, 11, 81), 3, (0, 0, 1, 1), "int16"),  # TF's SAME: padding at the far ends; 16 outputs a vector
    ((1, 9, 70), 2, (1, 1, 1, 1), "int8"),  # one inner block only, both ends clamped
]


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"])
@pytest.mark.parametrize("shape,k,pads,dtype", CASES)
def test_equals_reference(cpu, shape, k, pads, dtype):
    spec = get_target("x86", cpu=cpu)
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}")
    c, h, w = shape
    ho, wo = (h + pads[0] + pads[2] - k) // 2 + 1, (w + pads[1] + pads[3] - k) // 2 + 1
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (1, c, h, w)).astype(dtype)
    func = pool_func(c, h, w, k, k, pads[0], pads[1], ho, wo, dtype).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=spec.target())
    out = tvm.runtime.tensor(np.full((1, c, ho, wo), 7, dtype))
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), reference(x, k, k, pads, ho, wo))


@pytest.mark.parametrize("shape,k,pads,dtype", CASES[:2])
def test_max_pools_take_it(shape, k, pads, dtype):
    x = rng.integers(0, 200, (1, *shape)).astype(dtype)
    build = lambda a: relax.op.nn.max_pool2d(a, (k, k), (2, 2), pads)  # noqa: E731
    spec = get_target("x86")
    with spec.target():
        mod = tvm.transform.Sequential(cpu_lowering_passes(spec.target()))(relax_main(build, [x]))
    assert any(gv.name_hint.startswith("max_pool") for gv, _ in mod.functions_items())
    c, h, w = shape
    ho, wo = (h + pads[0] + pads[2] - k) // 2 + 1, (w + pads[1] + pads[3] - k) // 2 + 1
    np.testing.assert_array_equal(run_relax(build, [x]), reference(x, k, k, pads, ho, wo))
