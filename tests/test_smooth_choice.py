"""Outlier smoothing's exponent measured per matmul input (passes/smooth_choice.py): where the
fixed alpha = 0.5 leaves most channels a handful of levels (one channel that fires on a few
tokens only, read by weights 60x the others': all-MiniLM-L6-v2's FFN output layers), the measured
choice moves more of the scale into the weights and each row of the product agrees with float
several times better; the chosen exponent is one of the candidates, measured once per tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax

from passes.smooth_choice import ALPHAS, smoothing_error


def _outlier_model(rows: int = 64, k: int = 256, n: int = 64):
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    w[0] *= 60  # all-MiniLM-L6-v2's fc2: max |W| 7.9 on the outlier channel, 0.14 typical

    def sample():  # heavy-tailed channels (|x| median ~0.1, up to 3), channel 0 at 24 on 2 rows, else 0
        x = (0.1 * rng.standard_t(2, (rows, k))).clip(-3, 3).astype(np.float32)
        x[:, 0] = 0
        x[rng.integers(0, rows, 2), 0] = 24.0
        return {"x": x}

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((rows, k), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(xv, relax.const(w)))
        bb.emit_func_output(out)
    return bb.get(), w, sample


def test_measured_alpha_beats_the_fixed_one_where_an_outlier_channel_fires_on_few_rows():
    from passes import QuantConfig, QuantizeToInteger, calibrate

    mod, w, sample = _outlier_model()
    ranges = calibrate(mod, [sample() for _ in range(24)], progress=False)  # 1536 rows
    assert getattr(ranges, "probe", None) is not None
    x = sample()["x"]
    want = x @ w
    errors = {}
    for search in (False, True):
        int_mod = QuantizeToInteger(ranges, QuantConfig(residual_bits=16, sensitivity_tol=None,
                                                        smooth_search=search))(mod)
        boundary = json.loads(str(int_mod["main"].attrs["intq.boundary"]))
        q = np.clip(np.round(x / boundary["inputs"][0]["scale"]), -32768, 32767).astype(np.int16)
        got = relax.VirtualMachine(tvm.compile(int_mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(q))
        got = got.numpy() * np.asarray(boundary["outputs"][0]["scale"])
        errors[search] = float(np.mean(np.sum((got - want) ** 2, 1) / np.sum(want**2, 1)))  # per row
    chosen = ranges.probe._smoothing_alphas
    assert len(chosen) == 1 and set(chosen.values()) <= set(ALPHAS) - {0.5}
    assert errors[True] < 0.5 * errors[False], errors


def test_a_probe_that_cannot_run_leaves_the_configured_alpha():
    from passes import QuantConfig, QuantizeToInteger, calibrate

    mod, _, sample = _outlier_model()
    ranges = calibrate(mod, [sample() for _ in range(24)], progress=False)

    def broken(*_args, **_kwargs):
        raise RuntimeError("no run")

    ranges.probe.values = broken
    config = QuantConfig(residual_bits=16, sensitivity_tol=None)
    with pytest.warns(UserWarning, match="smoothing measurement failed"):
        searched = QuantizeToInteger(ranges, config)(mod)
    fixed = QuantizeToInteger(ranges, QuantConfig(residual_bits=16, sensitivity_tol=None, smooth_search=False))(mod)
    tvm.ir.assert_structural_equal(searched["main"], fixed["main"])


def test_smoothing_error_is_the_products_relative_error():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    step = np.abs(w := rng.standard_normal((8, 4))).max(0) / 127
    w = np.round(w / step) * step  # exact on its 8-bit grid
    fine = np.full(8, 1e-4)  # a grid far finer than x: the product is exact but for float rounding
    wide = w / fine[:, None]
    assert smoothing_error(x, [(wide, 8, x @ wide.astype(np.float32))], fine, 0.0, "int16") < 1e-6
    coarse = np.full(8, 0.5)  # a step of 0.5 on unit-variance x: about 0.5^2 / 12 of a row's power
    err = smoothing_error(x, [(w, 8, x @ w.astype(np.float32))], coarse, 0.0, "int8")
    assert 0.005 < err < 0.1
