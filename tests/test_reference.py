"""The NumPy references against the real arithmetic they approximate (tolerances live here)."""

from __future__ import annotations

import numpy as np
import pytest

from passes import reference as ref


def test_dyadic_is_normalized_and_accurate():
    r = np.geomspace(1e-12, 1e9, 2000)
    m, s = ref.dyadic(r)
    assert np.all((m >= 2**30) & (m < 2**31))
    np.testing.assert_allclose(m * np.exp2(-s.astype(np.float64)), r, rtol=2**-30)


def test_dyadic_mantissa_carry():
    m, s = ref.dyadic(np.nextafter(1.0, 0))  # f rounds up to 2^31
    assert m == 2**30 and s == 30


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan])
def test_dyadic_rejects_non_positive(bad):
    with pytest.raises(ValueError):
        ref.dyadic(bad)


def test_requantize_matches_rounded_real_product():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**24), 2**24, 10000)
    for ratio in (1e-5, 0.013, 0.7, 3.0):
        m, s = ref.dyadic(ratio)
        got = ref.requantize(acc, m, s, -(2**31), 2**31 - 1, "int64")
        exact = np.floor(acc * ratio + 0.5)
        assert np.max(np.abs(got - exact)) <= 1  # dyadic approximation of the ratio: 2^-30 relative


def test_requantize_extremes():
    acc = np.array([2**31 - 1, -(2**31)])
    m, s = ref.dyadic(2.0**40)  # s <= 0: left shift, then clamp
    np.testing.assert_array_equal(ref.requantize(acc, m, s, -128, 127, "int8"), [127, -128])
    m, s = ref.dyadic(1e-30)  # s > 62: zero
    np.testing.assert_array_equal(ref.requantize(acc, m, s, -128, 127, "int8"), [0, 0])


def test_weight_quantization_error_is_half_a_step():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 8, 3, 3))
    w[3] = 0.0  # an all-zero channel keeps a finite scale
    q, scale = ref.quantize_weights(w, 8, axis=0)
    assert q.dtype == np.int8 and np.all(np.abs(q) <= 127)
    err = np.abs(q * scale.reshape(-1, 1, 1, 1) - w)
    assert np.all(err <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-12)


def test_conv_reference_matches_float_convolution():
    import torch

    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (1, 6, 9, 9)).astype(np.int8)
    w = rng.integers(-128, 128, (6, 3, 3, 3)).astype(np.int8)
    want = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                                      stride=2, padding=1, groups=2).numpy()
    np.testing.assert_array_equal(ref.conv2d_acc(x, w, (2, 2), (1, 1, 1, 1), groups=2), want)
