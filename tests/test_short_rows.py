"""Elementwise integer kernels over maps of 14x14 or 7x7 (EfficientNet-Lite0's residual adds after its
late blocks) run each row as one vector on x86 (`cpu_schedules._chunk_rows`), equal to NumPy; float
ones (a calibration model's) and other targets keep their rows scalar."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from conftest import relax_main, run_relax

from passes import reference as ref
from passes.lowering import emit
from targets import get_target

rng = np.random.default_rng(3)


def _kernels(build, inputs, target) -> str:
    from targets.cpu_pipeline import cpu_lowering_passes

    with target:
        mod = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(build, inputs))
    return "\n".join(f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize("side", [14, 7])
def test_a_residual_add_over_short_rows_runs_in_vectors(side):
    a = rng.integers(-128, 128, (1, 112, side, side)).astype(np.int8)
    b = rng.integers(-128, 128, (1, 112, side, side)).astype(np.int8)
    ma, sa = ref.dyadic(rng.uniform(0.3, 0.9, 112))
    ma, sa = emit.channel_shape(ma, 4, 1), emit.channel_shape(sa, 4, 1)
    mb, sb = ref.dyadic(0.7)

    def build(x, y):
        return emit.add_requant(x, y, ma, sa, mb, sb, -128, 127, "int8")

    want = ref.add_requant(a, b, ma, sa, mb, sb, -128, 127, "int8")
    np.testing.assert_array_equal(run_relax(build, [a, b]), want)
    x86 = _kernels(build, [a, b], get_target("x86").target())
    assert re.search(rf"T\.vectorized\(T\.int64\({side}\)\)", x86)
    riscv = _kernels(build, [a, b], tvm.target.Target({"kind": "llvm", "mtriple": "riscv64-linux-gnu",
                                                       "mattr": ["+m", "+a", "+f", "+d", "+c", "+v"]}))
    assert not re.search(rf"T\.vectorized\(T\.int64\({side}\)\)", riscv)
