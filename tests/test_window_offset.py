"""targets/window_offset.py: a constant subtracted from the sums before the unsigned requantization's
window moves the window instead: the same integers (bounds that leave int32 included), one vector
subtraction less."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import te, tirx

from targets import tir_pipeline

rng = np.random.default_rng(5)
I32 = np.iinfo(np.int32)
HOST = tvm.target.Target("llvm")


def _func(n: int, channels: int, lanes: int):
    """out[c, i] = uint32(clamp(acc[c, i] - k[c], lo[c], hi[c])) - base[c], vectorized along i."""
    acc = te.placeholder((channels, n), "int32", name="acc")
    k, lo, hi = (te.placeholder((channels,), "int32", name=v) for v in ("k", "lo", "hi"))
    base = te.placeholder((channels,), "uint32", name="base")
    out = te.compute((channels, n), lambda c, i: tirx.max(tirx.min(acc[c, i] - k[c], hi[c]), lo[c]).astype("uint32")
                     - base[c], name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([acc, k, lo, hi, base, out]))
    _, inner = sch.split(sch.get_loops(sch.get_sblock("out"))[1], [None, lanes])
    sch.vectorize(inner)
    return sch.mod["main"].with_attr("global_symbol", "window")


@pytest.mark.parametrize("lanes", [16, 7])
def test_the_folded_window_gives_the_same_integers(lanes):
    """Windows near int32's ends with corrections of either sign (hi + k and lo + k past int32),
    sums at and around every bound: the rewritten kernel equals NumPy and TVM's default lowering."""
    channels, n = 7, 112
    # hi + k past INT32_MAX, lo + k past INT32_MIN, the whole window past either end (one value)
    k = np.array([2**30, -(2**30), 5, -7, I32.max // 2, I32.min // 2, 2**30], np.int32)
    lo = np.array([I32.min + 3, -100, -2**20, 0, 2**30, I32.min, I32.max - 10], np.int32)
    hi = np.array([I32.max - 3, 100, 2**20, 255, I32.max, I32.min + 10, I32.max], np.int32)
    base = rng.integers(0, 2**32, channels, dtype=np.uint64).astype(np.uint32)
    acc = rng.integers(I32.min, I32.max, (channels, n), dtype=np.int64)
    for c in range(channels):  # the true sums never overflow acc - k: keep them where acc - k fits int32
        edges = [int(lo[c]) + int(k[c]) + d for d in (-2, -1, 0, 1, 2)] + [int(hi[c]) + int(k[c]) + d for d in (-2, -1, 0, 1, 2)]
        acc[c, :10] = edges
        acc[c] = np.clip(acc[c], I32.min + max(int(k[c]), 0), I32.max + min(int(k[c]), 0))
    acc = acc.astype(np.int32)
    want = (np.clip(acc.astype(np.int64) - k[:, None], lo[:, None], hi[:, None]).astype(np.int64) % 2**32
            - base[:, None].astype(np.int64)) % 2**32
    func = _func(n, channels, lanes)
    for pipeline in (tir_pipeline.register(), "default"):
        lib = tvm.tirx.build(tvm.IRModule({"window": func}), target=HOST, pipeline=pipeline)
        args = [tvm.runtime.tensor(a) for a in (acc, k, lo, hi, base, np.zeros((channels, n), np.uint32))]
        lib["window"](*args)
        np.testing.assert_array_equal(args[-1].numpy().astype(np.int64), want, err_msg=pipeline)


def test_one_subtraction_less():
    """The kernel's LLVM IR subtracts once per vector (the base moved by the correction), not twice."""
    func = _func(64, 2, 16)
    counts = {}
    for pipeline in (tir_pipeline.register(), "default"):
        ir = tvm.tirx.build(tvm.IRModule({"window": func}), target=HOST, pipeline=pipeline).inspect_source("ll")
        counts[pipeline] = len(re.findall(r"= sub (?:nsw |nuw )*<16 x i32>", ir))
    assert counts["default"] > 0 and 2 * counts[tir_pipeline.NAME] == counts["default"], counts
