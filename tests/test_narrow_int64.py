"""targets/narrow_int64.py: int64 multiplies, shifts and min/max narrowed only where the value
ranges prove it, with the same integers as the int64 chain at the ranges' extremes."""

from __future__ import annotations

import numpy as np
from conftest import relax_main, run_relax
from tvm import relax

from targets.narrow_int64 import narrow_int64

R = relax.op


def _i64(v) -> relax.Expr:
    return relax.const(np.asarray(v, np.int64), "int64")


def _chain(x: relax.Expr) -> relax.Expr:
    """int16 -> int64 fixed-point steps: a multiply within int32, a shift of a signed value,
    max(x) - x >= 0 times a constant within uint32, a logical shift, a clip."""
    a = R.astype(x, "int64")
    b = R.right_shift(R.add(R.multiply(a, _i64(30001)), _i64(5)), _i64(7))  # |a * 30001| < 2^30
    d = R.subtract(R.max(a, axis=[-1], keepdims=True), a)  # in [0, 65535]
    e = R.right_shift(R.multiply(d, _i64(np.arange(1, 9) * 500_000)), _i64(np.arange(3, 11)))  # >= 0
    return R.clip(R.add(b, e), -(2**40), 2**40)


def _numpy(x: np.ndarray) -> np.ndarray:
    a = x.astype(np.int64)
    b = (a * 30001 + 5) >> 7
    e = ((a.max(-1, keepdims=True) - a) * (np.arange(1, 9) * 500_000)) >> np.arange(3, 11)
    return np.clip(b + e, -(2**40), 2**40)


def test_rewrites_what_the_ranges_prove():
    x = np.zeros((2, 8), np.int16)
    text = narrow_int64(relax_main(_chain, [x])).script(show_meta=False)
    assert text.count('dtype="int32") = R.astype') == 3  # both multiplies' operands, the shifted value
    assert 'dtype="uint64") = R.right_shift' in text  # (max(x) - x) * 500000 k >= 0: a logical shift
    assert 'dtype="int32") = R.right_shift' in text  # the signed shift within int32


def test_same_integers_at_the_extremes():
    rng = np.random.default_rng(3)
    x = rng.integers(-32768, 32768, (6, 8)).astype(np.int16)
    x[0], x[1, :4], x[1, 4:], x[2] = -32768, 32767, -32768, 32767  # every range's corners
    np.testing.assert_array_equal(run_relax(_chain, [x]), _numpy(x))


def test_leaves_what_it_cannot_prove():
    """int32 values times 2^31 need the 64-bit multiply; a shift of a value of either sign
    beyond int32 keeps the arithmetic shift."""
    def wide(x):
        return R.right_shift(R.multiply(R.astype(x, "int64"), _i64(2**31)), _i64(3))

    x = np.zeros((4,), np.int32)
    text = narrow_int64(relax_main(wide, [x])).script(show_meta=False)
    assert "uint64" not in text and text.count('"int32"') == 1  # the parameter's
    x = np.array([-(2**31), 2**31 - 1, -1, 0], np.int32)
    np.testing.assert_array_equal(run_relax(wide, [x]), (x.astype(np.int64) * 2**31) >> 3)


def test_a_clip_above_int32_is_not_narrowed():
    """clip(int32 values, 2^40, 2^41) is 2^40 everywhere: it must not become an int32 clip."""
    def above(x):
        return R.clip(R.astype(x, "int64"), 2**40, 2**41)

    x = np.array([-(2**31), 0, 2**31 - 1], np.int32)
    assert '"int32") = R.clip' not in narrow_int64(relax_main(above, [x])).script(show_meta=False)
    np.testing.assert_array_equal(run_relax(above, [x]), np.full(3, 2**40))
