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


def _softmax_like(x: relax.Expr, mask: relax.Expr) -> relax.Expr:
    """Shiftmax's shape: 16-bit scores widened, a row max, exponent-like steps within int32, a mask
    multiply, a row sum beyond int32 (2^24 x 256 keys), each exponential times 2^30 over that sum."""
    s = R.astype(x, "int64")
    d = R.subtract(R.max(s, axis=[-1], keepdims=True), s)  # [0, 65535]
    e = R.right_shift(_i64(1 << 24), R.minimum(R.right_shift(d, _i64(11)), _i64(24)))  # [1, 2^24]
    e = R.multiply(e, R.astype(mask, "int64"))  # a 0/1 mask
    total = R.sum(e, axis=[-1], keepdims=True)  # up to 2^32: int64
    return R.floor_divide(R.multiply(e, _i64(1 << 30)), R.maximum(total, _i64(1)))


def _softmax_like_numpy(x, mask):
    s = x.astype(np.int64)
    d = s.max(-1, keepdims=True) - s
    e = ((1 << 24) >> np.minimum(d >> 11, 24)) * mask.astype(np.int64)
    return (e * (1 << 30)) // np.maximum(e.sum(-1, keepdims=True), 1)


def test_a_chain_within_int32_stays_int32_between_kernels():
    """Every step that fits int32 runs on int32 values and its readers take them as they are (no
    int64 copy of them left); a sum beyond int32 widens its int32 input itself; the integers are
    the int64 chain's at the extremes."""
    x, mask = np.zeros((3, 256), np.int16), np.ones((3, 256), bool)
    x[:, ::2], x[:, 1::2] = 32767, -32768  # scores spanning 2^16: every exponent step
    x[2] = 32767  # a flat row: the sum reaches 2^32
    mask[1, 5:] = False
    text = narrow_int64(relax_main(_softmax_like, [x, mask])).script(show_meta=False)
    for op in ("max", "subtract", "minimum", "right_shift", "multiply"):
        assert f'dtype="int32") = R.{op}(' in text, op
    int64 = [line.split("= ")[1] for line in text.splitlines() if 'dtype="int64") =' in line]
    # the mask product widened for the sum, the sum, its maximum with 1, the division
    assert len(int64) == 4 and int64[0].startswith("R.astype(") and int64[1].startswith("R.sum("), int64
    np.testing.assert_array_equal(run_relax(_softmax_like, [x, mask]), _softmax_like_numpy(x, mask))
