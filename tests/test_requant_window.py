"""targets/requant.py: the requantization with its int32 sum clamped to the unsaturated window
equals the int64 reference bit for bit, at the window's edges and for every kind of ratio."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relax_main, run_relax

from passes import reference as ref
from passes.lowering import emit
from targets.requant import window

rng = np.random.default_rng(7)
I32 = np.iinfo(np.int32)
RATIOS = [0.5, 1 / 3, 1e-3, 7.3e-6, 0.999999, 1.0, 3.7, 255.0, 2.0**29 * 1.7, 1e-25]


def _accs(m, s, lo, hi):
    """Random sums, int32's extremes and every sum within 2 of the window's edges."""
    rnd = np.where(s > 0, np.left_shift(1, np.maximum(s - 1, 0)), 0)
    a_lo, a_hi = window(m, rnd, s, lo, hi)
    edges = np.concatenate([np.clip(e.astype(np.int64) + d, I32.min, I32.max).ravel()
                            for e in (a_lo, a_hi) for d in range(-2, 3)])
    return np.concatenate([rng.integers(I32.min, I32.max, 200, dtype=np.int64), [I32.min, I32.max, 0, -1, 1], edges])


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("out_dtype", ["int8", "uint8", "int16", "int32"])
def test_clamping_to_the_window_changes_nothing(ratio, out_dtype):
    """NumPy only: requantize(clamp(acc, window)) == requantize(acc), for all the sums near the edges."""
    m, s = ref.dyadic(ratio)
    m, s = np.where(s > 62, 0, m), np.where(s > 62, 1, s)  # what emit.requantize does for tiny ratios
    lo, hi = ref.kernels.INT_RANGE[out_dtype]
    if np.any(s < 1):
        pytest.skip("left shifts keep the int64 chain")
    acc = _accs(m, s, lo, hi)
    rnd = np.left_shift(1, s - 1)
    a_lo, a_hi = window(m, rnd, s, lo, hi)
    want = ref.requantize(acc, m, s, lo, hi, out_dtype)
    np.testing.assert_array_equal(ref.requantize(np.clip(acc, a_lo, a_hi), m, s, lo, hi, out_dtype), want)


@pytest.mark.parametrize("out_dtype", ["int8", "uint8", "int32"])
def test_compiled_per_channel_at_the_edges(out_dtype):
    """Per-channel ratios over 5 decades: the compiled kernel (rewritten by the CPU pipeline)
    equals the reference at and around every channel's window edges."""
    c = 12
    ratios = np.exp(rng.uniform(np.log(1e-5), np.log(4.0), c))
    m, s = ref.dyadic(ratios)
    lo, hi = ref.kernels.INT_RANGE[out_dtype]
    rnd = np.left_shift(1, s - 1)
    a_lo, a_hi = window(m, rnd, s, lo, hi)
    acc = rng.integers(-(2**22), 2**22, (2, c, 16), dtype=np.int64)
    for ch in range(c):  # the edges of each channel's window, and int32's extremes
        near = np.concatenate([np.arange(-2, 3) + a_lo[ch], np.arange(-2, 3) + a_hi[ch], [I32.min, I32.max]])
        acc[0, ch, :near.size] = np.clip(near, I32.min, I32.max)
    acc = acc.astype(np.int32)
    mc, sc = emit.channel_shape(m, 3, 1), emit.channel_shape(s, 3, 1)
    want = ref.requantize(acc, mc, sc, lo, hi, out_dtype)
    got = run_relax(lambda a: emit.requantize(a, mc, sc, lo, hi, out_dtype), [acc])
    np.testing.assert_array_equal(got, want)


def _rewritten(lo: int, hi: int, out_dtype: str) -> str:
    """The text of a per-channel requantization of int32 sums after the CPU pipeline's rewrite."""
    from targets.requant import windowed_requant

    m, s = ref.dyadic(np.array([1e-3, 2e-3]))
    x = np.zeros((2, 8), np.int32)
    mod = relax_main(lambda a: emit.requantize(a, m.reshape(2, 1), s.reshape(2, 1), lo, hi, out_dtype), [x])
    return windowed_requant(mod).script()


def test_the_chain_is_rewritten():
    """The int64 multiply becomes the windowed kernel (so the tests above test it)."""
    text = _rewritten(0, 255, "uint8")
    assert "windowed_requant" in text and "R.multiply" not in text


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("out_dtype", ["int8", "uint8", "int16", "int32"])
def test_the_unsigned_form_equals_the_reference(ratio, out_dtype):
    """NumPy only, in exact integers: ((u * m + C) >> s) + f_lo over the window (u = clamp - a_lo)
    equals the reference wherever `offset_form` offers it (8- and 16-bit outputs at least)."""
    from targets.requant import offset_form

    m, s = ref.dyadic(ratio)
    m, s = np.where(s > 62, 0, m), np.where(s > 62, 1, s)
    lo, hi = ref.kernels.INT_RANGE[out_dtype]
    if np.any(s < 1):
        pytest.skip("left shifts keep the int64 chain")
    rnd = np.left_shift(1, s - 1)
    a_lo, a_hi = window(m, rnd, s, lo, hi)
    form = offset_form(m, rnd, s, a_lo, a_hi)
    if out_dtype != "int32":
        assert form is not None
    if form is None:
        return
    c, f_lo = (int(v) for v in form)
    acc = _accs(m, s, lo, hi)
    u = [int(a) - int(a_lo) for a in np.clip(acc, a_lo, a_hi)]
    assert all(0 <= x < 2**32 and x * int(m) + c < 2**64 for x in u)
    got = np.array([min(max(((x * int(m) + c) >> int(s)) + f_lo, lo), hi) for x in u])
    np.testing.assert_array_equal(got, ref.requantize(acc, m, s, lo, hi, out_dtype).astype(np.int64))


def test_8_bit_outputs_take_the_unsigned_form():
    """The rewrite emits the unsigned 64-bit multiply and shift (AVX2 has no 64-bit arithmetic shift)."""
    text = _rewritten(-128, 127, "int8")
    assert "windowed_requant" in text and '"uint64"' in text  # the signed form has no unsigned value


@pytest.mark.parametrize("out_dtype", ["int8", "int16"])
def test_equal_shapes_share_one_kernel_and_keep_their_values(out_dtype):
    """An unrolled recurrence requantizes one shape thousands of times with different ratios:
    the rewrite builds one windowed kernel (its constants are arguments) and drops the dead chains
    (frontends.relax_rewrite.KernelCache, drop_unused_bindings); each result keeps its own ratio.
    At 16 bits the tiny ratios' windows reach int32's end, so their offsets f_lo differ."""
    from tvm import relax

    from targets.requant import windowed_requant

    ratios = [1e-5, 3e-5, 0.2] if out_dtype == "int16" else [1e-3, 3e-3, 0.2]
    lo, hi = ref.kernels.INT_RANGE[out_dtype]
    acc = rng.integers(-(2**20), 2**20, (2, 8), dtype=np.int32)

    def build(a):
        outs = [emit.requantize(a, *ref.dyadic(np.array([r])), lo, hi, out_dtype) for r in ratios]
        return relax.op.concat(outs, axis=0)

    text = windowed_requant(relax_main(build, [acc])).script()
    assert text.count("def windowed_requant") == 1 and "R.multiply" not in text
    want = np.concatenate([ref.requantize(acc, *ref.dyadic(np.array([r])), lo, hi, out_dtype) for r in ratios])
    np.testing.assert_array_equal(run_relax(build, [acc]), want)


@pytest.mark.parametrize("out_dtype", ["int8", "uint8", "int16"])
def test_a_bias_folded_into_the_window(out_dtype):
    """requantize(acc + bias): the rewrite moves the window by the constant bias instead of adding
    it (one add less per output), biases large enough that a moved edge leaves int32 included;
    ratios above 1 keep the final clip. Equal to the reference at and around every window edge."""
    from tvm import relax

    from targets.requant import windowed_requant

    c = 12
    ratios = np.exp(rng.uniform(np.log(1e-5), np.log(4.0), c))
    ratios[:4] = 1e-3
    m, s = ref.dyadic(ratios)
    lo, hi = ref.kernels.INT_RANGE[out_dtype]
    a_lo, a_hi = window(m, np.left_shift(1, s - 1), s, lo, hi)
    bias = rng.integers(-(2**20), 2**20, c).astype(np.int64)
    bias[:4] = [2**31 - 2**10, -(2**31) + 2**10, 2**31 - 2**20, 0]  # a_lo - bias or a_hi - bias past int32
    acc = rng.integers(-(2**21), 2**21, (2, c, 16), dtype=np.int64)
    for ch in range(c):
        near = np.concatenate([np.arange(-2, 3) + a_lo[ch], np.arange(-2, 3) + a_hi[ch]]) - bias[ch]
        acc[0, ch, :near.size] = near
    acc = np.clip(acc, I32.min - np.minimum(bias, 0)[:, None], I32.max - np.maximum(bias, 0)[:, None]).astype(np.int32)
    mc, sc, bc = (emit.channel_shape(v, 3, 1) for v in (m, s, bias))
    want = ref.requantize(acc.astype(np.int64) + bc, mc, sc, lo, hi, out_dtype)

    def build(a):
        return emit.requantize(relax.op.add(a, relax.const(bc.astype(np.int32))), mc, sc, lo, hi, out_dtype)

    text = windowed_requant(relax_main(build, [acc])).script()
    assert "R.add" not in text and "windowed_requant" in text
    np.testing.assert_array_equal(run_relax(build, [acc]), want)
