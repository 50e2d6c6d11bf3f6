"""passes/short_multipliers.py, passes/accumulator_bounds.py and the 32-bit requantization of
targets/requant.py: bounds that no input passes, multipliers cut only as far as a 32-bit product
holds and within 1/32 of an output step, and the compiled 32-bit form equal to the reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relax_main, run_relax

from passes import reference as ref
from passes.accumulator_bounds import accumulator_bounds
from passes.lowering import emit
from passes.requant_windows import narrowed, short_form, window
from passes.short_multipliers import MAX_ERROR, cut, short_multipliers

rng = np.random.default_rng(11)


class _Conv:
    strides, padding, dilation, groups = (1, 1), (1, 1, 1, 1), (1, 1), 1
    data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"


class _Pointwise(_Conv):
    padding = (0, 0, 0, 0)


def _bindings(mod) -> dict:
    from tvm import relax

    found = {}

    class Visitor(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            found[binding.var] = binding.value

    relax.expr_functor.visitor(Visitor)().visit_expr(mod["main"])
    return found


def _bounds_of_output(build, inputs):
    mod = relax_main(build, inputs)
    bound = _bindings(mod)
    out = mod["main"].body.body
    return accumulator_bounds(out, bound.get)


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_conv_bounds_hold_and_are_reached(x_dtype):
    """Per output channel: every input's sums lie within the bounds, and the input that takes each
    weight's sign to its extreme reaches them (at an interior pixel: the padding only adds zeros)."""
    w = rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, (1, 6, 1, 1)).astype(np.int32)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (1, 4, 7, 7)).astype(x_dtype)
    from tvm import relax

    lo, hi = _bounds_of_output(lambda a: relax.op.add(emit.conv2d_acc(a, w, _Conv), emit.const(bias, "int32")), [x])
    assert np.shape(lo) == (1, 6, 1, 1)
    acc = ref.conv2d_acc(x, w, padding=(1, 1, 1, 1)) + bias
    assert np.all(acc >= lo) and np.all(acc <= hi)
    for c in range(6):
        for sign, want in ((1, hi), (-1, lo)):
            top = np.where(sign * w[c] > 0, info.max, info.min)  # [4, 3, 3]: the extreme under each weight
            image = np.zeros((1, 4, 7, 7), x_dtype)
            image[0, :, 2:5, 2:5] = top
            assert (ref.conv2d_acc(image, w, padding=(1, 1, 1, 1)) + bias)[0, c, 3, 3] == want[0, c, 0, 0]


def test_matmul_bounds_per_column_and_of_two_activations():
    """A constant [K, N] matmul: bounds per column; two activations: K times the extreme product."""
    from tvm import relax

    w = rng.integers(-128, 128, (32, 5)).astype(np.int8)
    x = rng.integers(0, 256, (3, 32)).astype(np.uint8)
    lo, hi = _bounds_of_output(lambda a: emit.matmul_acc(a, w), [x])
    np.testing.assert_array_equal(hi, np.maximum(w.astype(np.int64) * 255, 0).sum(0))
    np.testing.assert_array_equal(lo, np.minimum(w.astype(np.int64) * 255, 0).sum(0))
    a, b = rng.integers(-128, 128, (2, 4, 16)).astype(np.int8)
    lo, hi = _bounds_of_output(lambda p, q: relax.op.matmul(p, relax.op.permute_dims(q), out_dtype="int32"), [a, b])
    assert (int(lo), int(hi)) == (16 * -128 * 127, 16 * 128 * 128)


def test_layout_ops_keep_the_bounds_of_all_their_values():
    """A conv's sums reshaped and transposed (a classifier's flatten): the bounds over every channel;
    summed over 4 pixels (a global pool): 4 times those."""
    from tvm import relax

    w = rng.integers(-128, 128, (6, 4, 1, 1)).astype(np.int8)
    x = rng.integers(0, 256, (1, 4, 2, 2)).astype(np.uint8)
    per_channel = _bounds_of_output(lambda a: emit.conv2d_acc(a, w, _Pointwise), [x])
    lo, hi = _bounds_of_output(lambda a: relax.op.permute_dims(relax.op.reshape(emit.conv2d_acc(a, w, _Pointwise),
                                                                                   (1, 6, 4)), [0, 2, 1]), [x])
    assert (int(lo), int(hi)) == (per_channel[0].min(), per_channel[1].max())
    lo, hi = _bounds_of_output(lambda a: relax.op.sum(emit.conv2d_acc(a, w, _Pointwise), axis=[2, 3]), [x])
    assert (int(lo), int(hi)) == (4 * per_channel[0].min(), 4 * per_channel[1].max())  # a pool's sum of 2 x 2


def test_unknown_accumulators_have_no_bounds():
    """A product with weights that are not constant, or a float, has no bounds."""
    from tvm import relax

    x = rng.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (2, 4, 3, 3)).astype(np.int8)
    mod = relax_main(lambda a, b: relax.op.nn.conv2d(a, b, padding=(1, 1), out_dtype="int32"), [x, w])
    assert accumulator_bounds(mod["main"].body.body, _bindings(mod).get) is None
    f = np.zeros((2, 3), np.float32)
    mod = relax_main(lambda a: relax.op.add(a, a), [f])
    assert accumulator_bounds(mod["main"].body.body, _bindings(mod).get) is None


@pytest.mark.parametrize("lo,hi", [(0, 255), (-128, 127), (-32768, 32767)])
def test_cut_multipliers_keep_results_within_max_error(lo, hi):
    """For ratios over 7 decades and accumulators reaching 2^14..2^24: where `cut` cuts, the short
    form holds over the narrowed window, and at every sum near the window's edges and across the
    bounds the result moves by at most one step, from a real-valued change of at most MAX_ERROR
    within either window (beyond both, both saturate)."""
    cuts = 0
    for _ in range(300):
        ratio = float(np.exp(rng.uniform(np.log(1e-6), np.log(10.0))))
        reach = int(2 ** rng.uniform(14, 24))
        r_lo, r_hi = -reach, int(reach * rng.uniform(0.2, 1.0))
        (m,), (s,) = (v.reshape(1) for v in ref.dyadic(np.array([ratio])))
        m, s = int(m), int(s)
        if not 1 <= s <= 62:
            continue
        got = cut(m, 1 << (s - 1), s, lo, hi, r_lo, r_hi)
        if got is None or got == (m, s):
            continue
        cuts += 1
        mt, st = got
        rt = 1 << (st - 1)
        a_lo, a_hi = narrowed(*window(mt, rt, st, lo, hi), r_lo, r_hi)
        assert short_form(np.int64(mt), np.int64(rt), np.int64(st), a_lo, a_hi) is not None
        acc = np.unique(np.concatenate([rng.integers(r_lo, r_hi + 1, 400), [r_lo, r_hi, 0],
                                        *(np.clip(e + np.arange(-2, 3), r_lo, r_hi) for e in (a_lo, a_hi))]))
        old = ref.requantize(acc, m, s, lo, hi, "int32").astype(np.int64)
        new = ref.requantize(acc, mt, st, lo, hi, "int32").astype(np.int64)
        assert np.abs(new - old).max() <= 1
        o_lo, o_hi = window(m, 1 << (s - 1), s, lo, hi)
        # beyond both windows, both results saturate
        inside = acc[((acc >= a_lo) & (acc <= a_hi)) | ((acc >= o_lo) & (acc <= o_hi))]
        assert np.abs(inside.astype(np.float64) * ((mt << (s - st)) - m) / 2.0**s).max(initial=0) <= MAX_ERROR
    if hi - lo <= 255:
        assert cuts >= 100  # most 8-bit requantizations are cut: the test would not pass vacuously


def test_no_multiplier_is_cut_to_nothing():
    """An int32 result of sums bounded past int32 (an OWL-ViT head's shift, summed in int64): fitting
    32 bits took all 30 bits of m, and m' = 0 has a window of nothing, inside which no error shows;
    the error is judged over the original window too, so this is no cut (its cosine fell to 0.83)."""
    i32 = np.iinfo(np.int32)
    assert cut(1074476242, 1 << 41, 42, int(i32.min), int(i32.max), -34358689792, 34359738368) is None


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("out", [(0, 255, "uint8"), (-128, 127, "int8")])
def test_compiled_32_bit_form_equals_the_reference(x_dtype, out):
    """A conv + bias requantized per channel: the pass cuts its multipliers, the CPU pipeline compiles
    the 32-bit form (no 64-bit value in its requantization), and the kernel equals the reference
    at the extremes of the input (the sums at their bounds) and on random inputs."""
    import tvm
    from tvm import relax

    from targets import get_target
    from targets.cpu_pipeline import cpu_lowering_passes

    lo, hi, dtype = out
    w = rng.integers(-128, 128, (16, 8, 3, 3)).astype(np.int8)
    bias = rng.integers(-20000, 20000, (1, 16, 1, 1)).astype(np.int32)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (4, 8, 9, 9)).astype(x_dtype)
    x[1], x[2] = info.max, info.min
    x[3, :, 3:6, 3:6] = np.where(w[0] > 0, info.max, info.min)  # channel 0's upper bound at pixel (4, 4)
    ratios = np.exp(rng.uniform(np.log(1e-4), np.log(0.05), 16))
    m, s = (emit.channel_shape(v, 4, 1) for v in ref.dyadic(ratios))

    def build(a):
        acc = relax.op.add(emit.conv2d_acc(a, w, _Conv), emit.const(bias, "int32"))
        return emit.requantize(acc, m, s, lo, hi, dtype)

    cut_mod = short_multipliers(relax_main(build, [x]))
    acc = ref.conv2d_acc(x, w, padding=(1, 1, 1, 1)) + bias
    mt, st = np.zeros_like(m), np.zeros_like(s)
    r_lo, r_hi = _bounds_of_output(lambda a: relax.op.add(emit.conv2d_acc(a, w, _Conv), emit.const(bias, "int32")), [x])
    for c in range(16):
        mt[0, c, 0, 0], st[0, c, 0, 0] = cut(int(m[0, c, 0, 0]), 1 << int(s[0, c, 0, 0] - 1), int(s[0, c, 0, 0]),
                                             lo, hi, int(r_lo[0, c, 0, 0]), int(r_hi[0, c, 0, 0]))
    assert np.any(mt != m)
    target = get_target("x86").target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(cut_mod)
    text = lowered.script()
    assert "windowed_requant" in text and '"uint64"' not in text and '"uint32"' in text
    spec = get_target("x86")
    ex = tvm.compile(cut_mod, target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.requantize(acc, mt, st, lo, hi, dtype))
