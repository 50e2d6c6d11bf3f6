"""Measured-sensitive activations at 16 bits (passes/sensitivity.py): the search finds what it
should in few measurements; int16 x int8 convs and matmuls equal their NumPy twins bit for bit;
an STFT-magnitude model (sqrt of a sum of squares) that 8 bits ruin gets its squares and their
sum promoted and agrees with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.lowering import emit
from passes.reference import kernels as ref
from passes.reference import unary as ref_unary
from passes.sensitivity import coarse_grids, find_sensitive

rng = np.random.default_rng(12)


class _AdditiveProbe:
    """A probe whose error is the sum of fixed per-tensor errors (noise powers add up)."""

    samples, runs, seconds, elements = (None,), 0, 0.0, 0  # measuring costs nothing here, unless
    run_elements = macs = run_macs = 0  # run_elements or run_macs is set

    def __init__(self, errors: dict[str, float]):
        self.errors, self.sets = errors, 0

    def error(self, grids) -> float:
        self.sets += 1
        self.macs += self.run_macs
        return sum(self.errors[n] for n in grids)


def test_search_finds_the_sensitive_tensors_in_few_measurements():
    errors = {f"t{i}": 1e-6 for i in range(200)}
    errors.update(t17=0.5, t150=0.01, t151=2e-3)  # above tol^2 = 9e-4, worst first
    probe = _AdditiveProbe(errors)
    found = find_sensitive(probe, {n: (1.0, -128, 127) for n in errors}, tol=0.03, limit=16, goal=0.05)
    assert list(found) == ["t17", "t150", "t151"]
    assert probe.sets <= 3 * 2 * 8 + 1  # ~2 log2(N) sets per find, not N
    quiet = _AdditiveProbe({f"t{i}": 1e-6 for i in range(200)})
    assert find_sensitive(quiet, {n: (1.0, -128, 127) for n in quiet.errors}, 0.03, 16, 0.05) == {}
    assert quiet.sets == 1  # nothing sensitive: one measurement
    slow = _AdditiveProbe(errors)  # out of work after the first measurement: nothing found, no more measured
    slow.run_elements = 1
    assert find_sensitive(slow, {n: (1.0, -128, 127) for n in errors}, 0.03, 16, 0.05, work=0.0) == {}
    assert slow.sets == 1
    heavy = _AdditiveProbe(errors)  # few elements but compute-heavy runs (VGG16): the MAC budget stops it
    heavy.run_macs = 4e10
    assert len(find_sensitive(heavy, {n: (1.0, -128, 127) for n in errors}, 0.03, 16, 0.05)) <= 1
    assert heavy.sets <= 3


def test_model_macs_counts_convs_and_matmuls():
    from tvm import relax

    from conftest import relax_main
    from passes.sensitivity import model_macs

    w = relax.const(np.ones((8, 3, 3, 3), np.float32))
    m = relax.const(np.ones((8 * 14 * 14, 10), np.float32))
    mod = relax_main(lambda x: relax.op.matmul(relax.op.reshape(relax.op.nn.conv2d(x, w), (1, 8 * 14 * 14)), m),
                     [np.ones((1, 3, 16, 16), np.float32)])
    assert model_macs(mod) == 8 * 14 * 14 * 27 + 10 * 8 * 14 * 14


def test_search_lowers_the_bar_when_many_small_losses_add_up():
    errors = {f"t{i}": 6e-4 for i in range(8)}  # each below tol^2, together above goal^2 = 2.5e-3
    errors.update({f"u{i}": 1e-7 for i in range(56)})
    found = find_sensitive(_AdditiveProbe(errors), {n: (1.0, -128, 127) for n in errors}, 0.03, limit=16, goal=0.05)
    assert set(found) <= {f"t{i}" for i in range(8)} and len(found) >= 4
    capped = find_sensitive(_AdditiveProbe(errors), {n: (1.0, -128, 127) for n in errors}, 0.03, limit=2, goal=0.05)
    assert len(capped) == 2


def test_a_recurrence_group_is_measured_and_found_whole():
    """An LSTM state over 40 steps: each step's tensor costs a tenth of tol^2 alone, all of them 4x
    tol^2 together, beside 200 quiet tensors and one sensitive one. The group is one candidate:
    found whole (each member at the group's error), counted once against the limit."""
    steps = [f"h{t}" for t in range(40)]
    errors = {**{n: 9e-5 for n in steps}, **{f"t{i}": 1e-7 for i in range(200)}, "t7": 0.01}
    grids = {n: (1.0, -128, 127) for n in [*steps[:20], *errors.keys() - set(steps), *steps[20:]]}
    found = find_sensitive(_AdditiveProbe(errors), grids, 0.03, limit=2, goal=0.05, groups=[steps, ["x", "y"]])
    assert set(found) == {"t7", *steps} and found["h3"] == pytest.approx(40 * 9e-5)
    assert find_sensitive(_AdditiveProbe(errors), grids, 0.03, limit=2, goal=0.05) == {"t7": 0.01}  # apart: one


@pytest.mark.parametrize("case", [
    dict(shape=(1, 16, 9, 9), w=(8, 16, 3, 3), strides=(1, 1), padding=(1, 1, 1, 1), groups=1),
    dict(shape=(1, 32, 6, 6), w=(4, 32, 1, 1), strides=(1, 1), padding=(0, 0, 0, 0), groups=1),  # a box head
    dict(shape=(1, 8, 10, 10), w=(8, 1, 3, 3), strides=(2, 2), padding=(0, 0, 1, 1), groups=8),
])
def test_int16_conv_bitexact(case):
    """int16 activations x int8 weights (what a promoted conv input runs), extremes included."""
    from conftest import run_relax

    x = rng.integers(-32768, 32768, case["shape"]).astype(np.int16)
    x.flat[:2] = [-32768, 32767]
    x[0, :, 0, 0] = -32768  # a full reduction at the extremes: |acc| = K * 2^15 * 128 < 2^31
    w = rng.integers(-128, 128, case["w"]).astype(np.int8)
    w[:, :, 0, 0] = 127 if case["groups"] == 1 else w[:, :, 0, 0]
    m, s = ref.dyadic(rng.uniform(1e-6, 1e-4, case["w"][0]))
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)

    class Attrs:
        strides, padding, dilation, groups = case["strides"], case["padding"], (1, 1), case["groups"]
        data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"

    acc = ref.conv2d_acc(x, w, case["strides"], case["padding"], groups=case["groups"])
    assert np.array_equal(run_relax(lambda a: emit.conv2d_acc(a, w, Attrs), [x]), acc)
    want = ref.requantize(acc, m, s, -32768, 32767, "int16")
    got = run_relax(lambda a: emit.requantize(emit.conv2d_acc(a, w, Attrs), m, s, -32768, 32767, "int16"), [x])
    np.testing.assert_array_equal(got, want)


def test_int16_matmul_bitexact():
    from conftest import run_relax

    x = rng.integers(-32768, 32768, (5, 200)).astype(np.int16)
    x[0] = -32768
    w = rng.integers(-128, 128, (200, 24)).astype(np.int8)
    w[:, 0] = -128
    np.testing.assert_array_equal(run_relax(lambda a: emit.matmul_acc(a, w), [x]), ref.matmul_acc(x, w))


def test_wide_table_output_is_int16_within_half_an_lsb():
    grid = ref_unary.grid("int16") * 2.0**-10
    image = np.sqrt(np.abs(grid))
    scale, dtype = ref_unary.output_params(image, (0.0, 2.0), wide=True)
    assert dtype == "int16" and scale == pytest.approx(4.0 / 32767)  # 2x the calibrated range
    table = ref_unary.build_table(image, scale, dtype)
    inside = image <= 4.0
    assert np.abs(table[inside] * scale - image[inside]).max() <= 0.5 * scale + 1e-12


def _magnitude_model(path) -> str:
    """x[1, 128] -> |DFT| (real and imaginary parts as matmuls, Pow 2, Add, Sqrt) -> a linear layer."""
    n = np.arange(128)
    k = np.arange(65)
    window = np.hanning(128)
    re = (np.cos(2 * np.pi * np.outer(n, k) / 128) * window[:, None]).astype(np.float32)
    im = (-np.sin(2 * np.pi * np.outer(n, k) / 128) * window[:, None]).astype(np.float32)
    out = (rng.standard_normal((65, 8)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "re"], ["r"]), helper.make_node("MatMul", ["x", "im"], ["i"]),
             helper.make_node("Pow", ["r", "two"], ["r2"]), helper.make_node("Pow", ["i", "two"], ["i2"]),
             helper.make_node("Add", ["r2", "i2"], ["p"]), helper.make_node("Sqrt", ["p"], ["mag"]),
             helper.make_node("MatMul", ["mag", "out"], ["y"])]
    inits = [numpy_helper.from_array(a, name) for a, name in
             ((re, "re"), (im, "im"), (out, "out"), (np.array(2.0, np.float32), "two"))]
    graph = helper.make_graph(nodes, "magnitude", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _voiced(count: int, seed: int) -> np.ndarray:
    """Frames of a pulse train (harmonics of 100-250 Hz at 16 kHz): a few strong bins, many weak ones."""
    r = np.random.default_rng(seed)
    t = np.arange(128) / 16000.0
    frames = []
    for _ in range(count):
        f0, phase = r.uniform(100, 250), r.uniform(0, 2 * np.pi)
        y = sum(np.sin(2 * np.pi * h * f0 * t + h * phase) / h**1.5 for h in range(1, 30))
        frames.append(0.5 * y / np.abs(y).max() + 0.005 * r.standard_normal(128))
    return np.asarray(frames, np.float32)[:, None, :]


def test_sum_of_squares_before_a_sqrt_needs_no_promotion(tmp_path):
    """An STFT magnitude: 8 bits for the squares of an STFT and their sum lost the weak bins (their
    sqrt is steep at 0), and the probe used to promote them. Now the squares are exact int32 products
    of 16-bit parts, their sum stays int32 and the sqrt reads it through an octave table: the model
    agrees with onnxruntime without any measurement, and the probe finds nothing left to widen."""
    import onnxruntime as ort

    import runtime
    from passes import QuantConfig
    from runtime import compile_model

    path = _magnitude_model(tmp_path / "magnitude.onnx")
    np.savez(tmp_path / "calib.npz", x=_voiced(16, 0))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    frames = _voiced(6, 1)

    def cosine(art) -> float:
        model = runtime.load(art)
        got = np.concatenate([model.run({"x": x})["y"].ravel() for x in frames])
        want = np.concatenate([session.run(None, {"x": x})[0].ravel() for x in frames])
        return float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))

    from frontends import load_onnx
    from passes import QuantizeToInteger, bind_weights, calibrate
    from passes.quantize_to_integer import WIDE_ATTR
    from runtime.compiler import load_calibration

    imported = load_onnx(path)
    float_mod = bind_weights(imported.mod, imported.params)
    ranges = calibrate(float_mod, load_calibration(tmp_path / "calib.npz", imported.inputs), progress=False)
    lowered = QuantizeToInteger(ranges)(float_mod)
    assert json.loads(str(lowered["main"].attrs[WIDE_ATTR])) == {}
    assert "int16" in lowered["main"].script(show_meta=False)  # the squares' parts
    narrow = compile_model(path, "x86", tmp_path / "narrow.artifact", calib=tmp_path / "calib.npz", progress=False,
                           config=QuantConfig(sensitivity_tol=None))
    assert json.loads((narrow / "manifest.json").read_text())["integer_only"]
    assert cosine(narrow) >= 0.995


def test_coarse_grid_estimate_matches_rounding():
    """The grid error estimated from a sum of squares and a nonzero count is what rounding costs."""
    from passes.observers import MomentsObserver

    x = np.concatenate([rng.standard_normal(20000) * 0.01, [5.0]]).astype(np.float32)  # one outlier sets the range
    relu = np.maximum(rng.standard_normal(20000), 0).astype(np.float32)  # zeros round exactly
    grids, moments = {}, {}
    for name, v, lo in (("outlier", x, -128), ("relu", relu, 0)):
        scale = float(np.abs(v).max()) / (127 if lo else 255)
        obs = MomentsObserver()
        for part in np.array_split(v, 3):
            obs.update(part)
        grids[name], moments[name] = (scale, lo, 127 if lo else 255), obs.moments()
        actual = np.linalg.norm(np.round(v / scale) * scale - v) / np.linalg.norm(v)
        estimate = scale * np.sqrt(moments[name][1] / 12 / moments[name][0])
        assert abs(estimate - actual) < 0.25 * actual, (name, estimate, actual)
    assert list(coarse_grids(grids, moments, 0.03)) == ["outlier"]  # ~1.1 (0.04 / 0.01 / sqrt 12 ...)
    assert coarse_grids(grids, moments, 2.0) == {}


def _sparse_outlier_model(path) -> str:
    """x [1, 4, 16, 16] -> 1x1 conv -> times a constant map that is 150 at 4 of 256 positions -> Softsign ->
    1x1 conv -> y. The outliers set the product's 8-bit range, leaving the typical values a few levels,
    and the Softsign then compresses them: the output is made of the typical values (re-parameterized
    convs and learnable affine blocks make such tensors). Softsign, not Tanh: a Tanh is flat past 3, so
    its input would be quantized over [-3, 3] alone (passes/narrow_table_inputs.py)."""
    w1 = (rng.standard_normal((8, 4, 1, 1)) * 0.3).astype(np.float32)
    w2 = rng.standard_normal((3, 8, 1, 1)).astype(np.float32)
    gain = np.ones((1, 1, 16, 16), np.float32)
    gain[0, 0, [2, 7, 11, 13], [5, 1, 9, 14]] = 150.0
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Mul", ["h", "gain"], ["g"]),
             helper.make_node("Softsign", ["g"], ["t"]), helper.make_node("Conv", ["t", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                               numpy_helper.from_array(gain, "gain")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def test_coarse_grid_is_widened_without_measuring(tmp_path):
    """The product with outliers is carried at 16 bits for its coarse grid alone, before the probe
    measures anything, and the model then agrees with onnxruntime where 8 bits do not."""
    import onnxruntime as ort

    import runtime
    from passes import QuantConfig
    from passes.quantize_to_integer import COARSE_ATTR
    from runtime import compile_model

    path = _sparse_outlier_model(tmp_path / "outlier.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 1, 4, 16, 16)).astype(np.float32))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    xs = rng.standard_normal((4, 1, 4, 16, 16)).astype(np.float32)

    def cosine(art) -> float:
        model = runtime.load(art)
        got = np.concatenate([model.run({"x": x})["y"].ravel() for x in xs])
        want = np.concatenate([session.run(None, {"x": x})[0].ravel() for x in xs])
        return float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))

    art = compile_model(path, "x86", tmp_path / "wide.artifact", calib=tmp_path / "calib.npz", progress=False)
    narrow = compile_model(path, "x86", tmp_path / "narrow.artifact", calib=tmp_path / "calib.npz", progress=False,
                           config=QuantConfig(sensitivity_tol=None))
    assert json.loads((art / "manifest.json").read_text())["integer_only"]
    c_wide, c_narrow = cosine(art), cosine(narrow)
    assert c_wide >= 0.995 and c_narrow < 0.95, (c_wide, c_narrow)

    from frontends import load_onnx
    from passes import QuantizeToInteger, bind_weights, calibrate
    from runtime.compiler import load_calibration

    imported = load_onnx(path)
    float_mod = bind_weights(imported.mod, imported.params)
    ranges = calibrate(float_mod, load_calibration(tmp_path / "calib.npz", imported.inputs), progress=False)
    ranges.probe = None  # no model run: the sums of squares alone
    coarse = json.loads(str(QuantizeToInteger(ranges)(float_mod)["main"].attrs[COARSE_ATTR]))
    ops = {b.var.name: b.value.op.name for block in float_mod["main"].body.blocks for b in block.bindings
           if hasattr(b.value, "op")}
    assert [ops[n] for n in coarse["tensors"]] == ["relax.multiply"] and coarse["kept"] and coarse["error"] is None


def test_tap_replaces_a_0d_tensor():
    """A tap may replace a 0-d tensor (a scalar Clip bound, a sample rate) and it stays 0-d: the
    probe's fake quantizer made it 1-d, the VM refused it, and the measurement was skipped."""
    import tvm
    from tvm import relax

    from passes.float_taps import TappedModel

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((), "float32"))
    v = relax.Var("v", relax.TensorType((3,), "float32"))
    with bb.function("main", [x, v]):
        with bb.dataflow():
            s = bb.emit(relax.op.multiply(x, relax.const(2.0, "float32")))
            out = bb.emit_output(relax.op.add(v, s))
        bb.emit_func_output(out)
    model = TappedModel(bb.get())
    sample = {"x": np.float32(1.25) * np.ones((), np.float32), "v": np.zeros(3, np.float32)}
    np.testing.assert_allclose(model.run(sample)[0], [2.5, 2.5, 2.5])
    index = model.names.index(s.name)
    got = model.run(sample, lambda i, value: np.floor(value) if i == index else None)[0]
    np.testing.assert_allclose(got, [2.0, 2.0, 2.0])


def test_wide_table_output_reads_a_wide_input(tmp_path):
    """A table whose result is carried at 16 bits reads its input at 16 bits too (a 65536-entry
    table): from an 8-bit input it would take at most 256 values. PicoDet's first HardSwish, kept
    wide, fed a depthwise conv whose folded BatchNorm multiplies one channel by 50: with the 8-bit
    input the detector's scores came out at cosine 0.953, with the 16-bit one at 0.993."""
    import tvm

    import runtime
    from frontends import load_onnx
    from passes import QuantConfig, QuantizeToInteger, bind_weights, calibrate
    from runtime import compile_model
    from runtime.compiler import load_calibration

    def exact(shape, step):  # values on their own 8-bit grid (each row reaches 127 steps): no rounding
        q = rng.integers(-127, 128, size=shape)
        q.reshape(shape[0], -1)[:, 0] = 127
        return (q * step).astype(np.float32)

    w1, w2 = exact((8, 4, 1, 1), 2.0**-8), exact((3, 8, 1, 1), 2.0**-7)  # so that the table's input grid
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),  # alone errs
             helper.make_node("Conv", ["t", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "tanh.onnx")
    onnx.save(model, path)
    np.savez(tmp_path / "calib.npz", x=exact((8, 1, 4, 8, 8), 2.0**-6))

    imported = load_onnx(path)
    float_mod = bind_weights(imported.mod, imported.params)
    tanh = [b.var.name for block in float_mod["main"].body.blocks for b in block.bindings
            if isinstance(b.value, tvm.relax.Call) and "conv" not in str(b.value.op)
            and str(b.var.ty.dtype) == "float32" and len(b.var.ty.shape) == 4 and "add" not in str(b.value.op)]
    assert len(tanh) == 1, tanh
    config = QuantConfig(wide_tensors=tuple(tanh), sensitivity_tol=None)
    ranges = calibrate(float_mod, load_calibration(tmp_path / "calib.npz", imported.inputs), progress=False)
    lowered = QuantizeToInteger(ranges, config)(float_mod)["main"]
    tables = [b.value.args[0].ty for block in lowered.body.blocks for b in block.bindings
              if isinstance(b.value, tvm.relax.Call) and getattr(b.value.op, "name", "") == "relax.take"]
    assert [([int(d) for d in t.shape], str(t.dtype)) for t in tables] == [([65536], "int16")]  # the 16-bit input's table

    xs = np.clip(exact((4, 1, 4, 8, 8), 2.0**-6), -127 * 2.0**-6, 127 * 2.0**-6)
    h = np.einsum("oc,nchw->nohw", w1[:, :, 0, 0].astype(np.float64), xs[:, 0].astype(np.float64))
    want = np.einsum("oc,nchw->nohw", w2[:, :, 0, 0].astype(np.float64), np.tanh(h))

    def error(config) -> float:
        art = compile_model(path, "x86", tmp_path / f"{len(config.wide_tensors)}.artifact",
                            calib=tmp_path / "calib.npz", progress=False, config=config)
        model = runtime.load(art)
        got = np.stack([model.run({"x": x})["y"][0] for x in xs])
        return float(np.linalg.norm(got - want) / np.linalg.norm(want))

    wide, narrow = error(config), error(QuantConfig(sensitivity_tol=None))
    assert wide < 0.2 * narrow, (wide, narrow)


def _softmax_model(path) -> str:
    """x -> conv (logits over about [-140, 40]) -> a softmax written out with an epsilon, exp(z - max z) /
    (sum + 1e-9): not one a softmax op takes (passes/fuse_softmax.py), so its exp is a table."""
    w = (np.random.default_rng(0).standard_normal((3, 8, 3, 3)) * 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMax", ["z"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["z", "m"], ["d"]), helper.make_node("Exp", ["d"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1),
             helper.make_node("Add", ["s", "eps"], ["se"]), helper.make_node("Div", ["e", "se"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1]), "axes"),
                               numpy_helper.from_array(np.array(1e-9, np.float32), "eps")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def test_table_input_range_is_cut_to_where_the_table_moves(tmp_path):
    """exp(z - max z) over [-140, 0] is flat (0 at 8 bits) below about -6.2: its input is quantized
    over [-6.2, 0] (passes/narrow_table_inputs.py), and the probabilities take hundreds of values
    instead of a few dozen (a segmenter's mask IoU to float was 0.53 with 18 of them)."""
    import onnxruntime as ort

    import runtime
    from frontends import load_onnx
    from passes import bind_weights, calibrate
    from passes.narrow_table_inputs import narrow_table_inputs
    from runtime import compile_model
    from runtime.compiler import load_calibration

    path = _softmax_model(tmp_path / "softmax.onnx")
    data = np.random.default_rng(1).standard_normal((8, 1, 8, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data[:6])
    imported = load_onnx(path)
    float_mod = bind_weights(imported.mod, imported.params)
    ranges = calibrate(float_mod, load_calibration(tmp_path / "calib.npz", imported.inputs), progress=False)
    narrowed = narrow_table_inputs(float_mod["main"], ranges, set())
    changed = {n: narrowed[n] for n in ranges if narrowed[n] != ranges[n]}
    assert len(changed) == 1, changed  # the exp's input alone
    (name, (lo, hi)), = changed.items()
    assert ranges[name][0] < -60 and -7.0 < lo < -5.5 and hi == ranges[name][1] == 0.0
    assert narrowed.probe is ranges.probe  # the calibration's attributes kept

    model = runtime.load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = np.stack([model.run({"x": x})["y"] for x in data[6:]])
    want = np.stack([session.run(None, {"x": x})[0] for x in data[6:]])
    assert len(np.unique(got)) > 150
    assert float(got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want)) > 0.999


def test_probe_measures_logits_and_concatenated_parts(tmp_path):
    """Beside each output the probe measures the logits a softmax or sigmoid squashes and each part
    a concat joins (back through layout ops and scalings by constants): the error of the whole
    hides that of a small part (box sizes beside box centres) and of uncertain decisions."""
    import tvm

    from frontends import load_onnx
    from passes import bind_weights
    from passes.sensitivity import output_parts

    n = helper.make_node
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "w"), numpy_helper.from_array(np.float32(8.0), "k")]
    nodes = [n("MatMul", ["x", "w"], ["logits"]), n("Softmax", ["logits"], ["p"]),
             n("Mul", ["x", "k"], ["big"]), n("Sigmoid", ["x"], ["s"]), n("Concat", ["big", "s"], ["joined"], axis=1),
             n("Relu", ["x"], ["plain"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("p", "joined", "plain")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    imported = load_onnx(str(tmp_path / "m.onnx"))
    mod = bind_weights(imported.mod, imported.params)
    ops = {b.var.name: getattr(b.value.op, "name", "") for block in mod["main"].body.blocks for b in block.bindings
           if isinstance(b.value, tvm.relax.Call)}
    parts = output_parts(mod)
    kinds = sorted(ops.get(p, "input") for p in parts)  # the sigmoid may be a fused chain of one op
    assert len(parts) == 3 and kinds[0] == "input" and "relax.matmul" in kinds, (parts, ops)
    assert not {"relax.nn.softmax", "relax.concat", "relax.nn.relu", "relax.multiply"} & set(kinds), (parts, ops)


def test_moments_of_a_large_tensor_come_from_a_spread_sample():
    """A 3-D U-Net's 134 MB tensors: the moments are estimated from ~1M values in spread runs, within
    a percent of the whole tensor's, channels of different sizes and a dead half included."""
    from passes.observers import MOMENT_SAMPLE, MomentsObserver

    x = np.random.default_rng(5).standard_normal((1, 16, 64, 64, 64)).astype(np.float32)
    x *= np.arange(1, 17, dtype=np.float32)[None, :, None, None, None]
    x[:, :, :32] = np.maximum(x[:, :, :32], 0)
    whole = (float(np.sum(x.astype(np.float64) ** 2)), int(np.count_nonzero(x)))
    obs = MomentsObserver()
    obs.update(x)
    squares, nonzero = obs.moments()
    assert x.size >= 4 * MOMENT_SAMPLE
    assert squares == pytest.approx(whole[0], rel=0.01) and nonzero == pytest.approx(whole[1], rel=0.01)
