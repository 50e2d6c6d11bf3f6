"""Integer transformer kernels (Shiftmax, ShiftGELU, isqrt, I-LayerNorm; exp2_neg, softmax_exp2,
gelu_tanh): compiled == NumPy reference bit for bit on random and adversarial inputs;
reference vs float accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run_relax
from tvm import relax

from passes.reference import dyadic
from passes.reference import transformer as ref
from passes.lowering import emit_transformer as emit

R = relax.op
rng = np.random.default_rng(5)


def _rows(kind: str, shape, lo: int, hi: int) -> np.ndarray:
    if kind == "random":
        return rng.integers(lo, hi + 1, shape)
    if kind == "equal":
        return np.full(shape, rng.integers(lo, hi + 1))
    if kind == "onehot":
        x = np.full(shape, lo)
        x[..., rng.integers(shape[-1])] = hi
        return x
    if kind == "extremes":
        return rng.choice([lo, hi], shape)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["random", "equal", "onehot", "extremes"])
@pytest.mark.parametrize("length,scale,n", [(128, 2.0**-6, 15), (257, 2.0**-6, 15), (4096, 2.0**-6, 12),
                                            (16, 0.5, 15), (64, 2.0**-10, 8)])
def test_shiftmax_bit_exact(kind, length, scale, n):
    x0 = ref.exp_params(scale)
    assert length * -x0 * 2**n < 2**31  # the bound the lowering asserts
    x = _rows(kind, (4, length), -2000, 2000).astype(np.int32)
    got = run_relax(lambda a: emit.shiftmax(a, x0, n), [x])
    np.testing.assert_array_equal(got, ref.shiftmax(x, x0, n))
    assert got.dtype == np.uint8


def test_shiftmax_mask_gives_exact_zeros():
    x0 = ref.exp_params(2.0**-6)
    x = rng.integers(-500, 500, (2, 3, 64)).astype(np.int32)
    mask = (rng.random((2, 1, 64)) < 0.7).astype(np.int32)
    mask[1, 0, :] = 0
    mask[1, 0, 5] = 1  # a single visible key
    got = run_relax(lambda a, m: emit.shiftmax(a, x0, 15, mask=m), [x, mask])
    want = ref.shiftmax(x, x0, 15, mask=mask)
    np.testing.assert_array_equal(got, want)
    assert np.all(got[np.broadcast_to(mask == 0, got.shape)] == 0)
    assert np.all(got[1, :, 5] == 255)


@pytest.mark.parametrize("bits", [8, 16])
def test_shift_gelu_bit_exact(bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = 10.0 / hi
    x0 = ref.exp_params(1.702 * scale)
    n = ref.gelu_n(x0)
    x = np.concatenate([np.arange(lo, hi + 1, max(1, (hi - lo) // 4000)), [lo, hi, 0, -1, 1]]).astype(np.int32)
    got = run_relax(lambda a: emit.shift_gelu(a, x0, n), [x.reshape(1, -1)])
    np.testing.assert_array_equal(got.ravel(), ref.shift_gelu(x, x0, n))


def test_exp2_neg_bit_exact():
    a = np.concatenate([np.arange(0, 70000, 7), rng.integers(0, 2**40, 3000),
                        [0, 1, 65535, 65536, (31 << 16) - 1, 31 << 16, 2**62]]).astype(np.int64)
    got = run_relax(emit.exp2_neg, [a.reshape(1, -1)]).ravel()
    np.testing.assert_array_equal(got, ref.exp2_neg(a))
    assert got[0] == ref.EXP2_COEFFS[0] and got[-1] == 0


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
def test_exp2_table_or_its_cubic_per_target(cpu):
    """exp2_neg reads its cubic from a table of its 2^16 values; on AVX-512 targets the lookup becomes
    the cubic's Horner steps again (`targets/exp2_cubic.py`: a lane-by-lane gather cost more there),
    on AVX2 it stays. Both equal the reference bit for bit, through a softmax too; a build for
    features this CPU lacks is only compiled."""
    import tvm

    from conftest import relax_main
    from targets import get_target
    from targets.exp2_cubic import exp2_cubic_pass, has_avx512
    from targets.x86 import missing_features

    a = np.concatenate([np.arange(0, 70000, 7), [0, 65535, 65536, (31 << 16) - 1, 31 << 16, 2**62]]).astype(np.int64)
    spec = get_target("x86", cpu=cpu)
    assert has_avx512(spec.target()) == (cpu == "x86-64-v4")
    module = relax_main(emit.exp2_neg, [a.reshape(1, -1)])
    assert "R.take" in module.script() and "R.take" not in exp2_cubic_pass(module).script()
    m, s = _softmax_params(0.05)
    x = _rows("random", (4, 257), -3000, 3000).astype(np.int32)
    ex = tvm.compile(relax_main(lambda v: emit.softmax_exp2(v, m, s), [x]), target=spec.target(),
                     relax_pipeline=spec.relax_pipeline(spec.target()))
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}: compiled only")
    np.testing.assert_array_equal(run_relax(emit.exp2_neg, [a.reshape(1, -1)], cpu=cpu).ravel(), ref.exp2_neg(a))
    got = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.softmax_exp2(x, m, s))


def _softmax_params(scale: float) -> tuple[int, int]:
    m, s = dyadic(scale * math.log2(math.e) * 2**16)
    return int(m), int(s)


@pytest.mark.parametrize("kind", ["random", "equal", "onehot", "extremes"])
@pytest.mark.parametrize("length,scale,lo,hi,bits", [(257, 2e-3, -2**31, 2**31 - 1, 15), (257, 0.05, -3000, 3000, 15),
                                                     (4096, 2.0**-6, -2000, 2000, 15), (16, 0.5, -100, 100, 8),
                                                     (64, 1e-6, -2**31, 2**31 - 1, 15)])
def test_softmax_exp2_bit_exact(kind, length, scale, lo, hi, bits):
    m, s = _softmax_params(scale)
    x = _rows(kind, (4, length), lo, hi).astype(np.int32)
    got = run_relax(lambda a: emit.softmax_exp2(a, m, s, bits), [x])
    want = ref.softmax_exp2(x, m, s, bits)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == (np.uint8 if bits == 8 else np.int16)
    assert np.all(want.sum(-1) <= 2**bits + length / 2)  # the row-sum bound attention @ V relies on


def test_softmax_exp2_mask_gives_exact_zeros():
    m, s = _softmax_params(2.0**-6)
    x = rng.integers(-500, 500, (2, 3, 64)).astype(np.int32)
    mask = (rng.random((2, 1, 64)) < 0.7).astype(np.int32)
    mask[1, 0, :] = 0
    mask[1, 0, 5] = 1  # a single visible key
    got = run_relax(lambda a, k: emit.softmax_exp2(a, m, s, mask=k), [x, mask])
    np.testing.assert_array_equal(got, ref.softmax_exp2(x, m, s, mask=mask))
    assert np.all(got[np.broadcast_to(mask == 0, got.shape)] == 0)
    assert np.all(got[1, :, 5] == 2**15 - 1)


@pytest.mark.parametrize("empty_rows", ["uniform", "logits"])
def test_softmax_exp2_fully_masked_rows_as_float(empty_rows):
    """A query whose keys are all masked (DeBERTa's query x key mask on a padded token): float softmax gives
    it a uniform row (where(keep, x, min), x + finfo.min) or the softmax of its logits (x - 10000), not the
    zeros that left DeBERTa's padded tokens at cosine 0.36 to onnxruntime."""
    m, s = _softmax_params(2.0**-6)
    x = rng.integers(-500, 500, (2, 3, 8, 16)).astype(np.int32)
    mask = (rng.random((2, 1, 8, 16)) < 0.7).astype(np.int32)
    mask[:, :, 5:, :] = 0  # padded queries: every key masked
    got = run_relax(lambda a, k: emit.softmax_exp2(a, m, s, mask=k, empty_rows=empty_rows), [x, mask])
    np.testing.assert_array_equal(got, ref.softmax_exp2(x, m, s, mask=mask, empty_rows=empty_rows))
    full = np.broadcast_to(mask[:, :, :5] == 0, got[:, :, :5].shape)
    assert np.all(got[:, :, :5][full] == 0)  # rows with a visible key: masked keys exactly zero, as before
    want = ref.softmax_exp2(x[:, :, 5:], m, s) if empty_rows == "logits" else np.full_like(got[:, :, 5:], 2**15 // 16)
    np.testing.assert_array_equal(got[:, :, 5:], want)


@pytest.mark.parametrize("scale", [10.0 / 32767, 30.0 / 32767, 1.0 / 32767, 0.05])
def test_gelu_tanh_bit_exact(scale):
    m, s = dyadic(scale * 2**16)
    x = np.concatenate([np.arange(-32768, 32768, 13), [-32768, 32767, 0, -1, 1]]).astype(np.int16)
    got = run_relax(lambda a: emit.gelu_tanh(a, int(m), int(s)), [x.reshape(1, -1)]).ravel()
    want = ref.gelu_tanh(x, int(m), int(s))
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).max() <= 2**30


def test_isqrt_exact():
    v = np.concatenate([np.arange(0, 2000), rng.integers(0, 2**62, 3000), [2**62 - 1]]).astype(np.int64)
    got = run_relax(emit.isqrt, [v.reshape(1, -1)]).ravel()
    np.testing.assert_array_equal(got, ref.isqrt(v))
    exact = np.array([math.isqrt(int(a)) for a in v])
    np.testing.assert_array_equal(got, exact)


@pytest.mark.parametrize("kind", ["random", "equal", "onehot", "extremes"])
@pytest.mark.parametrize("channels", [384, 768, 7])
@pytest.mark.parametrize("center", [True, False], ids=["layernorm", "rmsnorm"])
def test_layernorm_core_bit_exact(kind, channels, center):
    x = _rows(kind, (5, channels), -32768, 32767).astype(np.int16)
    m, s = dyadic(1.0 / channels)
    got = run_relax(lambda a: emit.layernorm_core(a, int(m), int(s), center=center), [x])
    np.testing.assert_array_equal(got, ref.layernorm_core(x, int(m), int(s), center=center))


@pytest.mark.parametrize("kind", ["random", "equal", "onehot", "extremes"])
@pytest.mark.parametrize("channels", [512, 4096, 7])
@pytest.mark.parametrize("center", [True, False], ids=["layernorm", "rmsnorm"])
def test_layernorm_core_of_int32_rows_bit_exact(kind, channels, center):
    """An int32 residual stream: shifted by `stream_shift` (the int64 sum of squares cannot overflow,
    even for full-range centred rows) and normalized with a 62-bit reciprocal of std."""
    k = ref.stream_shift(channels)
    assert channels * 4.0 ** (32 - k) < 2.0**62 <= channels * 4.0 ** (33 - k)
    x = _rows(kind, (5, channels), -(2**31) + 1, 2**31 - 1)
    x = np.where(x >= 0, (x >> k) + ((x >> max(k - 1, 0)) & 1) * (k > 0), -((-x) >> k)).astype(np.int32)
    m, s = dyadic(1.0 / channels)
    got = run_relax(lambda a: emit.layernorm_core(a, int(m), int(s), center=center, precise=True), [x])
    np.testing.assert_array_equal(got, ref.layernorm_core(x, int(m), int(s), center=center, precise=True))


@pytest.mark.parametrize("kind", ["random", "equal", "extremes"])
@pytest.mark.parametrize("eps", [1, 12345, 2**33, 2**62 - 1 - 7 * 4**17], ids=["one", "small", "dominant", "cap"])
@pytest.mark.parametrize("precise", [False, True])
def test_layernorm_core_with_eps_bit_exact(kind, eps, precise):
    """epsilon in the integers' units added to the sum of squares (`layernorm_eps`): up to the cap the lowering
    allows for 16-bit rows (isqrt's 2^62 less the largest sum of squares), all-equal rows (y = 0) included."""
    x = _rows(kind, (5, 7), -32768, 32767).astype(np.int16)
    m, s = dyadic(1.0 / 7)
    got = run_relax(lambda a: emit.layernorm_core(a, int(m), int(s), precise=precise, eps=eps), [x])
    np.testing.assert_array_equal(got, ref.layernorm_core(x, int(m), int(s), precise=precise, eps=eps))


def test_layernorm_eps_against_float():
    """Rows whose variance is near epsilon (RWKV's embeddings: 1e-8 against 1e-5): with eps in the integers'
    units the core equals float's y / sqrt(var + eps); without, it normalised to unit variance (20x off)."""
    rng = np.random.default_rng(0)
    c, scale = 128, 2e-4 / 32767
    xi = np.round(rng.normal(0, 1e-4, (16, c)) / scale).astype(np.int64)
    x = xi * scale
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    m, s = dyadic(1.0 / c)
    eps = ref.layernorm_eps(1e-5, c, scale, c * 4**17)
    got = ref.layernorm_core(xi, int(m), int(s), precise=eps >= ref.PRECISE_EPS, eps=eps) * math.sqrt(c) / 2.0**30
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    without = ref.layernorm_core(xi, int(m), int(s)) * math.sqrt(c) / 2.0**30
    assert np.abs(without).max() > 10 * np.abs(want).max()
    assert ref.layernorm_eps(1e-12, 384, 3e-4, 384 * 4**17) == 0  # BERT's eps on its grid: nothing changes


# Reference against float: the only place tolerances appear (also reported in the README).

def test_shiftmax_accuracy():
    x = rng.normal(0, 3, (256, 128))
    xi = np.round(x / 2.0**-6).astype(np.int64)
    got = ref.shiftmax(xi, ref.exp_params(2.0**-6), 15) / 256.0
    xr = xi * 2.0**-6
    want = np.exp(xr - xr.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert np.abs(got - want).max() < 0.02 and np.abs(got - want).mean() < 1e-3


def test_shift_gelu_accuracy():
    scale = 8.0 / 32767
    xi = np.arange(-32768, 32768, 3)
    x0 = ref.exp_params(1.702 * scale)
    got = ref.shift_gelu(xi, x0, ref.gelu_n(x0)) * scale / 128
    x = xi * scale
    want = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    assert np.abs(got - want).max() < 0.07 and np.abs(got - want).mean() < 0.02


def test_layernorm_accuracy():
    x = rng.normal(3, 2, (64, 384))
    xi = np.round(x / (x.std() * 8 / 32767)).astype(np.int64)
    m, s = dyadic(1.0 / 384)
    got = ref.layernorm_core(xi, int(m), int(s)) * math.sqrt(384) / 2.0**30
    want = (xi - xi.mean(-1, keepdims=True)) / xi.std(-1, keepdims=True)
    assert np.abs(got - want).max() < 1e-3


def test_precise_layernorm_accuracy_over_31_bits():
    """Rows of an int32 stream with std from 2^10 to 2^25: within 5e-4 of float with the 62-bit
    reciprocal of std, where the 31-bit one (floor(2^31 / std): few bits for large rows) is off by
    up to 1 at std 2^25."""
    own = np.random.default_rng(5)  # its own draws: the module's rng depends on which tests ran before
    rows = np.stack([own.normal(0, 2.0**e, 512) for e in range(10, 26)])
    xi = np.round(rows).astype(np.int64)
    m, s = dyadic(1.0 / 512)
    want = (xi - xi.mean(-1, keepdims=True)) / xi.std(-1, keepdims=True)
    errors = [np.abs(ref.layernorm_core(xi, int(m), int(s), precise=p) * math.sqrt(512) / 2.0**30 - want).max()
              for p in (True, False)]
    assert errors[0] < 5e-4 < 0.1 < errors[1]


def test_softmax_exp2_accuracy():
    x = rng.normal(0, 6, (256, 257))
    scale = 2e-3
    xi = np.round(x / scale).astype(np.int64)
    got = ref.softmax_exp2(xi, *_softmax_params(scale)) / 2.0**15
    xr = xi * scale
    want = np.exp(xr - xr.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert np.abs(got - want).max() < 1e-4 and np.abs(got - want).mean() < 2e-5


def test_gelu_tanh_accuracy():
    scale = 8.0 / 32767
    xi = np.arange(-32768, 32768, 3)
    m, s = dyadic(scale * 2**16)
    got = ref.gelu_tanh(xi, int(m), int(s)) * scale / 2**15
    x = xi * scale
    want = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    assert np.abs(got - want).max() < 1e-3 and np.abs(got - want).mean() < 2e-4
