"""Binary ops of two activations, reductions and softmax/log-softmax on any axis: compiled kernels
equal their NumPy twins bit for bit; the twins are close to float (the only tolerances here, each
justified); small ONNX models compile integer-only and agree with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from passes.lowering import emit_binary as eb
from passes.reference import binary as rb
from passes.reference.kernels import INT_RANGE, dyadic

R = relax.op
rng = np.random.default_rng(7)


def _run_many(build, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Compile `main(*inputs) -> tuple(build(*vars))` once for the x86 host, run it."""
    import tvm

    from conftest import relax_main
    from targets import get_target

    spec = get_target("x86")
    mod = relax_main(lambda *xs: relax.Tuple(build(*xs)), inputs)
    ex = tvm.compile(mod, target=spec.target(), relax_pipeline=spec.relax_pipeline(spec.target()))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in inputs])
    return [o.numpy() for o in out]


def _edges(x: np.ndarray) -> np.ndarray:
    lo, hi = INT_RANGE[str(x.dtype)]
    x.flat[:4] = [lo, hi, 0, lo]
    return x


def _ints(dtype, shape):
    return _edges(rng.integers(*INT_RANGE[dtype], size=shape, endpoint=True).astype(dtype))


def test_binary_kernels_bitexact():
    """Every common-scale op, multiply and divide on broadcast shapes, mixed dtypes and scales."""
    a, b = _ints("int8", (2, 4, 3, 3)), _ints("uint8", (4, 1, 1))
    a16, b16 = _ints("int16", (3, 5)), _ints("int16", (1, 5))
    b[1] = 0  # a zero divisor channel
    b16[0, :2] = 0
    cond = rng.integers(0, 2, (2, 1, 3, 3)).astype(bool)
    ratios = [(0.7, 3.1), (2.0**-9, 2.0**12)]  # different scales; a ratio far beyond the 8-bit range
    cases, want = [], []
    for ra, rb_ in ratios:
        (ma, sa), (mb, sb) = dyadic(ra), dyadic(rb_)
        ops = [*rb.VALUE_OPS, *rb.COMPARE_OPS] if ra == 0.7 else ["subtract", "less"]
        for op in ops:
            cases.append(lambda x, y, c, *_, op=op, ma=ma, sa=sa, mb=mb, sb=sb:
                         eb.common_scale(op, x, y, ma, sa, mb, sb, -128, 127, "int8"))
            want.append(rb.common_scale(op, a, b, ma, sa, mb, sb, -128, 127, "int8"))
        m, s = dyadic(ra / rb_ * 2.0**-23)
        cases.append(lambda x, y, *_, m=m, s=s: eb.divide(x, y, 23, m, s, 0, 255, "uint8"))
        want.append(rb.divide(a, b, 23, m, s, 0, 255, "uint8"))
        cases.append(lambda x, y, *_, m=m, s=s: eb.divide_by_reciprocal(x, y, 23, m, s, -128, 127, "int8"))
        want.append(rb.divide_by_reciprocal(a, b, 23, m, s, -128, 127, "int8"))
    (ma, sa), (mb, sb) = dyadic(0.7), dyadic(3.1)
    cases.append(lambda x, y, c, *_: eb.common_scale("where", x, y, ma, sa, mb, sb, -128, 127, "int8", cond=c))
    want.append(rb.common_scale("where", a, b, ma, sa, mb, sb, -128, 127, "int8", cond=cond))
    c = np.array([[5], [-300], [127]], np.int64)  # a constant operand, already at the common scale
    cases.append(lambda x, *_: eb.common_scale("add", x, eb.const(c, "int64"), ma, sa, None, None, -128, 127, "int8"))
    want.append(rb.common_scale("add", a, c, ma, sa, None, None, -128, 127, "int8"))
    m, s = dyadic(0.3 * 2.0**-15)
    cases.append(lambda *t: eb.divide(t[3], t[4], 15, m, s, -32768, 32767, "int16"))
    want.append(rb.divide(a16, b16, 15, m, s, -32768, 32767, "int16"))
    cases.append(lambda *t: eb.divide_by_reciprocal(t[3], t[4], 15, m, s, -32768, 32767, "int16"))
    want.append(rb.divide_by_reciprocal(a16, b16, 15, m, s, -32768, 32767, "int16"))
    cases.append(lambda x, y, *_: eb.multiply_acc(x, y))
    want.append(rb.multiply_acc(a, b))
    cases.append(lambda *t: eb.multiply_acc(t[3], t[4]))
    want.append(rb.multiply_acc(a16, b16))
    got = _run_many(lambda *xs: [f(*xs) for f in cases], [a, b, cond, a16, b16])
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"case {i}")
        assert g.dtype == w.dtype, f"case {i}"


def test_reduction_and_log_softmax_kernels_bitexact():
    x8, x16 = _ints("int8", (2, 6, 5)), _ints("int16", (3, 7, 4))
    x8[1, :, 1], x8[1, 2] = 7, -3  # ties along both arg axes
    x16[1] = 32767  # an all-equal row
    big = np.concatenate([rng.integers(1, 2**62, 40), [1, 2, 3, 2**16 - 1, 2**16, 2**30, 2**62 - 1]]).astype(np.int64)
    S, out = 0.02, 0.1
    m, s = (int(v) for v in dyadic(S * np.log2(np.e) * 2**16))
    (mo, so), (ml, sl) = dyadic(S / out * 256), dyadic(np.log(2) * 2.0**-16 / out * 256)
    cases = [
        (lambda x, *_: eb.reduce_sum(x, (1,), True), lambda: rb.reduce_sum(x8, (1,), True)),
        (lambda x, *_: eb.reduce_sum(x, (0, 2), False, 3), lambda: rb.reduce_sum(x8, (0, 2), False, 3)),
        (lambda _, y, *r: eb.reduce_sum(y, (0, 1, 2), False, 1), lambda: rb.reduce_sum(x16, (0, 1, 2), False, 1)),
        (lambda *t: eb.log2_fixed(t[2]), lambda: rb.log2_fixed(big)),
        (lambda x, *_: eb.cumsum(x, 1), lambda: rb.cumsum(x8, 1)),
        (lambda _, y, *r: eb.cumsum(y, 2, exclusive=True), lambda: rb.cumsum(x16, 2, exclusive=True)),
        (lambda x, *_: R.argmax(x, 1, False), lambda: np.argmax(x8, 1)),  # ties: the first index, as ONNX
        (lambda x, *_: R.argmin(x, 2, True), lambda: np.argmin(x8, 2)[:, :, None]),
    ] + [(lambda _, y, *r, ax=ax: eb.log_softmax(y, m, s, mo, so, ml, sl, -128, 127, "int8", axis=ax),
          lambda ax=ax: rb.log_softmax(x16, m, s, mo, so, ml, sl, -128, 127, "int8", axis=ax)) for ax in (0, 1, -1)]
    got = _run_many(lambda *xs: [f(*xs) for f, _ in cases], [x8, x16, big])
    for i, (g, (_, ref)) in enumerate(zip(got, cases)):
        w = ref()
        np.testing.assert_array_equal(g, w, err_msg=f"case {i}")
        assert g.dtype == w.dtype, f"case {i}"


def test_lowering_forms():
    """Structural: x * s of two activations is one int32 multiply, its mean one integer sum (no
    R.mean, no division), a positive [C,1,1] constant only changes scales, a compare gives a bool
    mask, and nothing float remains."""
    from passes import QuantizeToInteger, verify_integer_only

    bb = relax.BlockBuilder()
    x, s = relax.Var("x", relax.TensorType([1, 4, 3, 3], "float32")), relax.Var("s", relax.TensorType([1, 4, 1, 1],
                                                                                                       "float32"))
    with bb.function("main", [x, s]):
        with bb.dataflow():
            p = bb.emit(R.multiply(x, s), name_hint="p")
            m = bb.emit(R.mean(p, axis=[2, 3], keepdims=True), name_hint="m")
            c = bb.emit(R.multiply(m, relax.const(np.full((4, 1, 1), 0.5, "float32"))), name_hint="c")
            d = bb.emit(R.subtract(x, c), name_hint="d")
            out = bb.emit_output(relax.Tuple([d, bb.emit(R.less(x, s), name_hint="lt")]))
        bb.emit_func_output(out)
    ranges = {"x": (-2.0, 2.0), "s": (0.0, 1.0), "p": (-2.0, 2.0), "m": (-1.0, 1.0), "c": (-0.5, 0.5),
              "d": (-2.5, 2.5)}
    lowered = QuantizeToInteger(ranges)(bb.get())
    text = lowered.script()
    assert verify_integer_only(lowered).integer_only
    assert "R.mean" not in text and "divide" not in text and text.count("R.sum") == 1
    assert 'p: R.Tensor((1, 4, 3, 3), dtype="int32") = R.multiply(' in text  # the product, not requantized
    assert 'lt: R.Tensor((1, 4, 3, 3), dtype="bool") = R.less(' in text


def test_constant_factors_any_sign_and_axis():
    """x * 0, x * -2 and x / [1, -2, 4, -0.5] (a [C,1,1] constant in NCHW), each added back to x:
    exact for the scalars (the factor only changes the scale or negates the integers), <= 1 LSB
    for the per-channel one (each add branch rounds once)."""
    import tvm

    from passes import QuantConfig, QuantizeToInteger
    from targets import get_target

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4, 3, 3], "float32"))
    f = np.array([1.0, -2.0, 4.0, -0.5], "float32").reshape(4, 1, 1)
    with bb.function("main", [x]):
        with bb.dataflow():
            z = bb.emit(R.multiply(x, relax.const(0.0, "float32")), name_hint="z")
            n = bb.emit(R.multiply(x, relax.const(-2.0, "float32")), name_hint="n")
            k = bb.emit(R.divide(x, relax.const(f)), name_hint="k")
            sums = [bb.emit(R.add(v, x), name_hint=f"{name}x") for v, name in ((z, "z"), (n, "n"), (k, "k"))]
            out = bb.emit_output(relax.Tuple(sums))
        bb.emit_func_output(out)
    ranges = {"x": (-2.0, 2.0), "z": (0.0, 0.0), "n": (-4.0, 4.0), "k": (-4.0, 4.0), "zx": (-2.0, 2.0),
              "nx": (-2.0, 2.0), "kx": (-6.0, 6.0)}
    mod = QuantizeToInteger(ranges, QuantConfig(wide_outputs=False))(bb.get())  # errors in 8-bit steps
    boundary = json.loads(mod["main"].attrs["intq.boundary"])
    spec = get_target("x86")
    ex = tvm.compile(mod, target=spec.target(), relax_pipeline=spec.relax_pipeline(spec.target()))
    q = _ints("int8", (1, 4, 3, 3))
    xf = q * boundary["inputs"][0]["scale"]
    outs = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(q))
    for out, meta, want, tol in zip(outs, boundary["outputs"], [xf, -xf, xf / f + xf], [0, 0, 1]):
        scale = meta["scale"][0]
        assert np.abs(out.numpy() * scale - np.clip(want, -128 * scale, 127 * scale)).max() <= tol * scale + 1e-9


# Reference vs float: the only tolerances in this file.

def test_divide_reference_rounds_to_half_an_lsb():
    """The quotient at 2^-23 then one dyadic multiply: <= 0.5 LSB + 2^-23 |a/b| relative + the
    multiplier's 2^-31 relative error, i.e. 0.5 LSB + 1e-6 at 8 bits."""
    a, b = _ints("int8", (4096,)), _ints("int8", (4096,))
    sa, sb, so = 0.03, 0.011, 0.05
    m, s = dyadic(sa / (sb * so) * 2.0**-23)
    got = rb.divide(a, b, 23, m, s, *INT_RANGE["int32"], "int32").astype(np.float64)
    nz = b != 0
    exact = (a[nz] * sa) / (b[nz] * sb) / so
    assert np.abs(got[nz] - exact).max() <= 0.5 + 1e-6 * np.abs(exact).max()
    lo, hi = INT_RANGE["int32"]
    assert (got[~nz] == np.where(a[~nz] > 0, hi, np.where(a[~nz] < 0, lo, 0))).all()  # x / 0 saturates, 0 / 0 = 0


@pytest.mark.parametrize("dtype,frac", [("int8", 23), ("int16", 15)])
def test_division_by_a_reciprocal_is_the_division_but_at_ties(dtype, frac):
    """A broadcast divisor's reciprocal form: its quotient is round_div's except within 2^-14 of a
    tie (then one unit of the 2^-P quotient apart); every divisor of int16 and int8 against extreme
    and random numerators, zero divisors included; the lowering takes it where a divisor element
    serves 8 outputs or more."""
    a = np.concatenate([_ints(dtype, (64,)), [0, 1, -1]]).astype(np.int64)[:, None]
    b = np.arange(*INT_RANGE["int16"], 7, dtype=np.int64)[None, :]
    q_exact = rb.round_div(a << frac, np.where(b == 0, 1, b))
    r = rb.round_div(np.int64(1) << rb.RECIPROCAL_BITS, np.where(b == 0, 1, b))
    shift = rb.RECIPROCAL_BITS - frac
    q = ((np.abs(a) * np.abs(r) + (1 << (shift - 1))) >> shift) * np.sign(a) * np.sign(r)
    assert np.abs(q - q_exact).max() <= 1 and np.mean(q != q_exact) < 1e-3
    lo, hi = INT_RANGE["int32"]
    got = rb.divide_by_reciprocal(a, b, frac, 1 << 30, 30, lo, hi, "int32")  # m / 2^s = 1: the quotient itself
    np.testing.assert_array_equal(got, np.where(b == 0, np.where(a > 0, hi, np.where(a < 0, lo, 0)), q))


def test_log2_and_log_softmax_reference_accuracy():
    """log2_fixed: the quartic's 2.0e-4 plus floor shifts (2^-16 each). log_softmax at 8 bits: half
    an output LSB of rounding, 2 x 2^-9 LSB for its terms at S_out / 2^8, plus ln2 * 2.2e-4 and
    exp2_neg's 7.5e-5 relative error (< 0.01 LSB)."""
    v = np.unique(np.concatenate([rng.integers(1, 2**62, 2000), np.arange(1, 1000)])).astype(np.int64)
    assert np.abs(rb.log2_fixed(v) / 2**16 - np.log2(v.astype(np.float64))).max() < 2.5e-4
    x = rng.integers(-2000, 2000, (64, 10)).astype(np.int16)
    S, out = 0.01, 0.125
    m, s = (int(v) for v in dyadic(S * np.log2(np.e) * 2**16))
    got = rb.log_softmax(x, m, s, *dyadic(S / out * 256), *dyadic(np.log(2) * 2.0**-16 / out * 256), -128, 127,
                         "int8", axis=1)
    xf = x * S
    want = xf - xf.max(1, keepdims=True) - np.log(np.exp(xf - xf.max(1, keepdims=True)).sum(1, keepdims=True))
    inside = want > -127.5 * out  # beyond the output range both saturate
    assert np.abs(got * out - want)[inside].max() <= 0.51 * out
    assert (got[~inside] == -128).all()


def test_shifted_sum_reference_rounds():
    """A sum shifted right by k rounds half up: <= 0.5 LSB of the 2^k scale."""
    x = _ints("int16", (8, 300))
    assert np.abs(rb.reduce_sum(x, (1,), False, 4) * 16.0 - x.astype(np.int64).sum(1)).max() <= 8


# End to end: ONNX -> integer-only artifact, against onnxruntime in float.

def _model(path, nodes, inits, outputs, in_shape) -> str:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _w(name, *shape, scale=0.4):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _c(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _se_block(path) -> str:
    """Conv + ReLU, squeeze-excitation (ReduceMean, two 1x1 convs, a ReLU6/6 gate, Mul of two
    activations [1,8,8,8] x [1,8,1,1]), a per-channel [8,1,1] constant with a negative and a zero
    entry, a broadcast Add of two activations, GlobalAveragePool, Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["p"], axes=[2, 3], keepdims=1),
        helper.make_node("Conv", ["p", "w2"], ["z0"]), helper.make_node("Relu", ["z0"], ["z"]),
        helper.make_node("Conv", ["z", "w3", "b3"], ["g"]), helper.make_node("Clip", ["g", "zero", "six"], ["gc"]),
        helper.make_node("Mul", ["gc", "sixth"], ["s"]),
        helper.make_node("Mul", ["r", "s"], ["y1"]),
        helper.make_node("Mul", ["y1", "chan"], ["y2"]),
        helper.make_node("Add", ["y2", "p"], ["y3"]),
        helper.make_node("GlobalAveragePool", ["y3"], ["gap"]), helper.make_node("Flatten", ["gap"], ["f"]),
        helper.make_node("Gemm", ["f", "wfc"], ["out"], transB=1),
    ]
    chan = np.linspace(-1.5, 2.0, 8).astype(np.float32).reshape(8, 1, 1)
    chan[3] = 0.0
    inits = [_w("w1", 8, 3, 3, 3), _w("w2", 4, 8, 1, 1), _w("w3", 8, 4, 1, 1), _c("b3", np.full(8, 3.0)),
             _c("zero", 0.0), _c("six", 6.0), _c("sixth", 1 / 6), _c("chan", chan), _w("wfc", 5, 8)]
    outs = [("out", TensorProto.FLOAT, [1, 5]), ("y3", TensorProto.FLOAT, [1, 8, 8, 8])]
    return _model(path, nodes, inits, outs, [1, 3, 8, 8])


def _misc_ops(path) -> str:
    """Two conv branches at different scales combined by Sub, Div (divisor clipped to >= 0.5), Min,
    Max, Greater + Where, a negative scalar Mul, a broadcast Add, reductions on several axes both
    keepdims, ArgMax, Softmax and LogSoftmax over the channel axis."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["a", "b"], ["sub"]),
        helper.make_node("Clip", ["b", "half", "six"], ["bp"]), helper.make_node("Div", ["a", "bp"], ["div"]),
        helper.make_node("Min", ["a", "b"], ["mn"]), helper.make_node("Max", ["a", "b"], ["mx"]),
        helper.make_node("Greater", ["a", "b"], ["gt"]), helper.make_node("Mul", ["b", "neg"], ["bn"]),
        helper.make_node("Where", ["gt", "a", "b"], ["wh"]),
        helper.make_node("ReduceSum", ["sub", "ax1"], ["rsum"], keepdims=1),
        helper.make_node("Add", ["rsum", "bn"], ["radd"]),
        helper.make_node("ReduceMax", ["mx"], ["rmax"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMin", ["mn"], ["rmin"], axes=[1], keepdims=0),
        helper.make_node("ArgMax", ["wh"], ["am"], axis=1, keepdims=0),
        helper.make_node("Softmax", ["mx"], ["sm"], axis=1),
        helper.make_node("LogSoftmax", ["wh"], ["lsm"], axis=1),
    ]
    inits = [_w("wa", 6, 4, 3, 3, scale=0.3), _w("wb", 6, 4, 3, 3, scale=0.9), _c("half", 0.5), _c("six", 6.0),
             _c("neg", -0.5), _c("ax1", [1], np.int64)]
    full, f = [1, 6, 6, 6], TensorProto.FLOAT
    outs = [("radd", f, full), ("rmax", f, [1, 6]), ("rmin", f, [1, 6, 6]), ("sm", f, full), ("lsm", f, full),
            ("div", f, full), ("wh", f, full), ("am", TensorProto.INT64, [1, 6, 6])]
    return _model(path, nodes, inits, outs, [1, 4, 6, 6])


# Tolerances in LSBs of each output's scale. Calibration includes the test inputs, so that no
# intermediate saturates (a clipped maximum shifts a whole log-softmax row: calibration's business,
# not the kernels'); outputs are compared with float clipped to their range. Each 8-bit activation is
# rounded once (0.5 LSB of its own scale) and requantized once more per op (0.5 LSB):
# - max/min/where and reductions of them: 0.5 LSB of an operand's own scale, up to 2x the output's
#   (wh = max(a, b) drops a's negative extremes), plus 0.5 for the requantization: 2;
# - log-softmax: its input's error (<= 2 LSB of a similar scale) plus the 2e-4 log2: 3;
# - a sum of six 8-bit channels (6 x 0.5 LSB of its input, ~2 LSB here) plus a broadcast add: 4;
# - the squeeze-excitation product r * s (two 8-bit factors) times per-channel constants: 3;
# - a division: its inputs' errors amplified by 1 / |b| and |a / b| / |b| (b >= 0.5: x2 and up to
#   x12); the divisor, a conv of the 8-bit input, is itself off by up to ~5 LSB of its scale: 16;
# - int32 logits (out): 8% of their largest value over the samples: they read the global average
#   of the 8-bit y3, which keeps y3's per-channel rounding (the broadcast p is rounded once for all
#   64 pixels of a channel, up to 1 LSB of y3), and the averages span ~1/6 of y3's range;
# - softmax probabilities (int16 at 2^-15): 0.08 absolute: a logit error e moves p by at most
#   2 p (1 - p) e <= e / 2, and the 8-bit logits' rounding reaches 1 LSB = 0.15 here;
# - int32 sums, means, running sums and products of 8-bit values (rm, s3, cs, act): 3% of their largest value (each
#   term carries its 8-bit rounding, 0.4% of its range; measured <= 2%);
# - ReduceL2 (a square table, an integer sum, a sqrt table) and min(a, 0.3) (a table): 2 LSB.
TOL = {"y3": ("lsb", 3), "radd": ("lsb", 4), "rmax": ("lsb", 2), "rmin": ("lsb", 2), "wh": ("lsb", 2),
       "lsm": ("lsb", 3), "div": ("lsb", 16), "l2": ("lsb", 2), "wle": ("lsb", 2),
       "out": ("rel", 0.08), "rm": ("rel", 0.03), "s3": ("rel", 0.03), "act": ("rel", 0.03), "cs": ("rel", 0.03),
       "sm": ("abs", 0.08), "smx": ("abs", 0.08)}


def _error(name, got, want, quant) -> float:
    """The error in units of its tolerance (<= 1 passes)."""
    unit, tol = TOL[name]
    if unit == "rel":
        return float(np.abs(got - want).max() / np.abs(want).max() / tol)
    if unit == "abs":
        return float(np.abs(got - want).max() / tol)
    scale = quant["scale"][0]
    lo, hi = INT_RANGE[quant["dtype"]]
    return float(np.abs(got - np.clip(want, lo * scale, hi * scale)).max() / scale / tol)


def _more_ops(path) -> str:
    """ReduceL2, LessOrEqual against a constant + Where with a constant branch, ArgMin, ReduceMean
    over channels (keepdims 0), Sum of three activations, a Mul by a full constant tensor, Softmax
    over a spatial axis, an exclusive CumSum along the width. (FuseUnaryChains makes min(a, 0.3) one table: where/compare against a
    constant, and c / x, reach this compiler as tables, not as common-scale ops.)"""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceL2", ["a"], ["l2"], axes=[2, 3], keepdims=0),
        helper.make_node("LessOrEqual", ["a", "thr"], ["le"]), helper.make_node("Where", ["le", "a", "thr"], ["wle"]),
        helper.make_node("ArgMin", ["wle"], ["amin"], axis=2, keepdims=1),
        helper.make_node("ReduceMean", ["b"], ["rm"], axes=[1], keepdims=0),
        helper.make_node("Sum", ["a", "b", "ar"], ["s3"]),
        helper.make_node("Mul", ["a", "ct"], ["act"]),
        helper.make_node("Softmax", ["b"], ["smx"], axis=2),
        helper.make_node("CumSum", ["b", "axis3"], ["cs"], exclusive=1),
    ]
    inits = [_w("wa", 6, 4, 3, 3, scale=0.3), _w("wb", 6, 4, 3, 3, scale=0.9), _c("thr", 0.3),
             _w("ct", 6, 6, 6, scale=1.0), numpy_helper.from_array(np.array(3, np.int64), "axis3")]
    full, f = [1, 6, 6, 6], TensorProto.FLOAT
    outs = [("l2", f, [1, 6]), ("amin", TensorProto.INT64, [1, 6, 1, 6]), ("wle", f, full), ("rm", f, [1, 6, 6]),
            ("s3", f, full), ("act", f, full), ("smx", f, full), ("cs", f, full)]
    return _model(path, nodes, inits, outs, [1, 4, 6, 6])


@pytest.mark.parametrize("build", [_se_block, _misc_ops, _more_ops])
def test_onnx_model_integer_only_matches_onnxruntime(build, tmp_path):
    import onnxruntime as ort

    import runtime
    from passes import QuantConfig
    from runtime import compile_model

    path = build(tmp_path / f"{build.__name__.strip('_')}.onnx")
    shape = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    calib = tmp_path / "calib.npz"
    samples = rng.standard_normal((32, *shape)).astype(np.float32)
    np.savez(calib, x=samples)
    # tolerances are in LSBs of each op's 8-bit output grid: no measured promotion to 16 bits here
    art = compile_model(path, "x86", tmp_path / "model.artifact", calib=str(calib), progress=False,
                        config=QuantConfig(sensitivity_tol=None, wide_outputs=False))
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["integer_only"] and not manifest["allow_float"]
    quant = {o["name"]: o["quant"] for o in manifest["outputs"]}
    model, sess = runtime.load(art), ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    runs = []
    for x in samples[:4]:
        runs.append((model.run({"x": x}), dict(zip(names, sess.run(None, {"x": x})))))
    got, want = ({n: np.stack([r[i][n] for r in runs]) for n in names} for i in (0, 1))
    for name in (n for n in names if n in TOL):
        assert _error(name, got[name], want[name], quant[name]) <= 1.0, name
    for index, source, axis in (("am", "wh", 1), ("amin", "wle", 2)):  # (sample axis 0 added by stacking)
        if index not in names:
            continue
        ranked = np.sort(want[source] if index == "am" else -want[source], axis=axis + 1)
        clear = np.take(ranked, -1, axis + 1) - np.take(ranked, -2, axis + 1) > 2 * quant[source]["scale"][0]
        got_i, want_i = (v.reshape(clear.shape) for v in (got[index], want[index]))  # keepdims either way
        assert (got_i[clear] == want_i[clear]).all() and clear.mean() > 0.5, index


def test_exact_integer_operands_mix_with_activations(tmp_path):
    """x + float(m) and (x + float(m)) * float(m), m an int64 input (a mask or count): integer-only."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from runtime import compile_model, load

    nodes = [helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "mf"], ["s"]), helper.make_node("Mul", ["s", "mf"], ["y"])]
    graph = helper.make_graph(nodes, "mix", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                                             helper.make_tensor_value_info("m", TensorProto.INT64, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "mix.onnx"))
    rng = np.random.default_rng(0)
    x, m = rng.standard_normal((16, 1, 8)).astype(np.float32), rng.integers(0, 3, (16, 1, 8))
    np.savez(tmp_path / "calib.npz", x=x, m=m)
    art = load(compile_model(tmp_path / "mix.onnx", "x86", tmp_path / "mix.artifact", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(tmp_path / "mix.onnx"), providers=["CPUExecutionProvider"])
    for i in range(4):
        ref = session.run(None, {"x": x[i], "m": m[i]})[0]
        out = art.run({"x": x[i], "m": m[i]})["y"]
        # two roundings: the sum at its 8-bit scale (range ~6: 0.025), times m <= 2
        np.testing.assert_allclose(out, ref, atol=0.06)


def test_argmax_of_logits_reads_them_unrounded(tmp_path):
    """ArgMax and TopK over a matmul's logits (a greedy decoder's next token) read the int32
    accumulator, or 16 bits where its scale varies along the axis: on 8 bits near ties round to
    one integer, the first index wins, and the index disagreed with the model's own logits output
    (36 of 2000 inputs; g2p_en's decoder fed back other tokens)."""
    import runtime
    from runtime import compile_model

    rng_ = np.random.default_rng(0)
    w = rng_.normal(0, 1, (64, 74)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("ArgMax", ["logits"], ["token"], axis=1, keepdims=0),
             helper.make_node("TopK", ["logits", "k"], ["top", "top_i"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 74]),
                               helper.make_tensor_value_info("token", TensorProto.INT64, [1]),
                               helper.make_tensor_value_info("top_i", TensorProto.INT64, [1, 2])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2], np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "argmax.onnx")
    onnx.save(model, path)
    np.savez(tmp_path / "calib.npz", x=rng_.normal(0, 1, (16, 1, 64)).astype(np.float32))
    compiled = runtime.load(compile_model(path, "x86", tmp_path / "a.artifact", calib=tmp_path / "calib.npz",
                                          progress=False))
    token_off = top_off = 0
    for x in rng_.normal(0, 1, (500, 1, 64)).astype(np.float32):
        got = compiled.run({"x": x})
        order = np.argsort(-got["logits"][0], kind="stable")
        token_off += int(got["token"][0] != order[0])
        top_off += int(set(got["top_i"][0]) != set(order[:2]))
    assert token_off <= 2 and top_off <= 4, (token_off, top_off)


def test_written_out_instance_norm_divides_once_per_channel(tmp_path):
    """(x - mean) / sqrt(var + eps) per channel, as exporters write instance norm out: the divisor is
    one value per channel, so its reciprocal is taken once per channel and every pixel multiplied
    (a style-transfer net divided 2M times per norm: 1.4x onnxruntime's time). Integer-only, close to
    onnxruntime, and no division of full-size tensors in the lowered module."""
    import re

    import onnxruntime as ort

    import runtime
    from runtime import compile_model

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c"], ["mu"], axes=[2, 3], keepdims=1),
        helper.make_node("Sub", ["c", "mu"], ["d"]), helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[2, 3], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["y"]),
    ]
    path = _model(tmp_path / "inorm.onnx", nodes, [_w("w", 8, 3, 3, 3), _c("eps", 1e-5)],
                  [("y", TensorProto.FLOAT, [1, 8, 16, 16])], [1, 3, 16, 16])
    samples = rng.standard_normal((16, 1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=samples)
    art = compile_model(path, "x86", tmp_path / "m.artifact", calib=str(tmp_path / "calib.npz"), progress=False)
    assert json.loads((art / "manifest.json").read_text())["integer_only"]
    divisions = re.findall(r"R\.Tensor\(\(([\d, ]*)\).*= R\.floor_divide", (art / "model.relax.py").read_text())
    # per channel: one value per channel, [1, 8, 1, 1], or [1, 8, 1] where the norm is fused as a LayerNorm over
    # the trailing axes (passes/fuse_written_layernorm.py), whose rows are the channels
    assert divisions and all(int(np.prod([int(d) for d in shape.split(",")])) == 8 for shape in divisions), divisions
    got = runtime.load(art).run({"x": samples[0]})["y"]
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": samples[0]})[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999


def test_constant_varying_per_channel_over_an_activation(tmp_path):
    """gamma / std with gamma one per channel (Flax's exact-variance norm, a per-channel temperature): not a
    unary function of the activation, so no table; the constant is the dividend as int16 at its own scale.
    Refused before ('FuseUnaryChains makes it a table', which it could not); integer-only now, close to float."""
    import onnxruntime as ort

    import runtime
    from runtime import compile_model

    gamma = np.where(np.arange(8) % 3 == 0, -1.0, 1.0) * rng.uniform(0.2, 2.0, 8)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "c"], ["c2"]),
        helper.make_node("ReduceMean", ["c2"], ["ms"], axes=[2, 3], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["me"]), helper.make_node("Sqrt", ["me"], ["rms"]),
        helper.make_node("Div", ["gamma", "rms"], ["g"]),  # [1, 8, 1, 1] constant / [1, 8, 1, 1] activation
        helper.make_node("Mul", ["c", "g"], ["y"]),
    ]
    path = _model(tmp_path / "cdiv.onnx", nodes, [_w("w", 8, 3, 3, 3), _c("eps", 1e-3),
                                                  _c("gamma", gamma.reshape(1, 8, 1, 1))],
                  [("y", TensorProto.FLOAT, [1, 8, 12, 12])], [1, 3, 12, 12])
    samples = rng.standard_normal((16, 1, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=samples)
    art = compile_model(path, "x86", tmp_path / "m.artifact", calib=str(tmp_path / "calib.npz"), progress=False)
    assert json.loads((art / "manifest.json").read_text())["integer_only"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    model = runtime.load(art)
    for x in rng.standard_normal((3, 1, 3, 12, 12)).astype(np.float32):
        got, want = model.run({"x": x})["y"], session.run(None, {"x": x})[0]
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
