"""Passes: BatchNorm folding, observers, integer lowering and the integer-only verifier."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from frontends import UnsupportedModelError, load_onnx
from passes import QuantConfig, QuantizeToInteger, bind_weights, calibrate, fold_batchnorm, verify_integer_only
from passes.observers import MinMaxObserver, MSEObserver, PercentileObserver, make_observer

R = relax.op


def _function(build, shapes_dtypes):
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(s, d)) for i, (s, d) in enumerate(shapes_dtypes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _conv_bn(bias: bool):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype("float32")
    b = rng.standard_normal((1, 4, 1, 1)).astype("float32")
    stats = [relax.const(rng.uniform(0.5, 1.5, 4).astype("float32")) for _ in range(4)]

    def build(bb, x):
        y = bb.emit(R.nn.conv2d(x, relax.const(w), padding=[1, 1]))
        if bias:
            y = bb.emit(R.add(y, relax.const(b)))
        bn = bb.emit(R.nn.batch_norm(y, *stats, axis=1, epsilon=1e-3))
        return relax.TupleGetItem(bn, 0)

    return _function(build, [((1, 3, 8, 8), "float32")])


@pytest.mark.parametrize("bias", [False, True])
def test_fold_batchnorm(bias):
    from conftest import run_relax  # noqa: F401  (same host target as the other tests)

    mod = _conv_bn(bias)
    folded = relax.transform.DeadCodeElimination()(fold_batchnorm(mod))
    text = folded.script()
    assert "batch_norm" not in text and text.count("R.nn.conv2d") == 1 and text.count("R.add") == 1
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype("float32")
    run = lambda m: relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(run(folded), run(mod), rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_does_not_fire_without_conv():
    stats = [relax.const(np.ones(3, "float32")) for _ in range(4)]
    mod = _function(lambda bb, x: relax.TupleGetItem(bb.emit(R.nn.batch_norm(x, *stats, axis=1)), 0),
                    [((1, 3, 4, 4), "float32")])
    tvm.ir.assert_structural_equal(fold_batchnorm(mod), mod)


def test_observers():
    x = np.concatenate([np.linspace(-1, 1, 100001), [50.0]])
    mm = MinMaxObserver()
    mm.update(x)
    assert mm.range() == (-1.0, 50.0)
    p = PercentileObserver(99.9)
    p.update(x[: len(x) // 2])
    p.update(x[len(x) // 2:])  # range grows: bins merge
    lo, hi = p.range()
    assert lo == -1.0 and 0.9 < hi < 1.2  # the outlier is clipped
    mse = MSEObserver()
    mse.update(np.concatenate([np.random.default_rng(0).standard_normal(10**6), [50.0]]))
    assert 3 < mse.range()[1] < 10  # among 10^6 normal values, clipping the lone outlier is cheaper
    with pytest.raises(Exception, match="unknown observer 'max'"):
        make_observer("max")
    for observer in (MinMaxObserver(), PercentileObserver(100.0), MSEObserver()):  # log(0) = -inf saturates
        observer.update(np.array([-np.inf, -3.0, 2.0, np.nan, np.inf], np.float32))
        assert np.all(np.isfinite(observer.range())) and observer.range()[0] >= -3.0
    from passes.observers import Finite, MomentsObserver

    moments, big = MomentsObserver(), np.array([0.0, 3e19, -4e19, np.inf], np.float32)  # float32 squares overflow
    finite = Finite(big)  # found once, read by every observer of the tensor
    moments.update(finite)
    mm = MinMaxObserver()
    mm.update(finite)
    assert moments.nonfinite and moments.moments() == (pytest.approx(9e38 + 16e38, rel=1e-6), 2)
    assert mm.range() == (pytest.approx(-4e19), pytest.approx(3e19))


def test_verifier_names_float_ops():
    mod = _function(lambda bb, x: R.astype(R.multiply(R.astype(x, "float32"), relax.const(0.5, "float32")), "int8"),
                    [((4,), "int8")])
    report = verify_integer_only(mod)
    assert not report.integer_only
    assert "relax.astype" in str(report) and "relax.multiply" in str(report) and "float32" in str(report)
    ok = _function(lambda bb, x: R.right_shift(R.astype(x, "int32"), relax.const(1, "int32")), [((4,), "int8")])
    assert verify_integer_only(ok).integer_only


def test_verifier_finds_float_inside_integer_kernels():
    """Integer tensors in and out, float inside: a bilinear resize's coordinates. Two equal calls are
    legalized once (passes/legalize_once.py) and reported as the one kernel they share."""
    mod = _function(lambda bb, x: R.add(R.image.resize2d(x, (8, 8), method="linear"),
                                        R.image.resize2d(x, (8, 8), method="linear")), [((1, 2, 4, 4), "int32")])
    report = verify_integer_only(mod)
    assert report.offenders == ["kernel resize2d uses float32"], report


def _lowered(path, samples=8, config=QuantConfig()):
    m = load_onnx(path)
    mod = bind_weights(m.mod, m.params)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((1, 3, 16, 16)).astype("float32")} for _ in range(samples)]
    return m, mod, QuantizeToInteger(calibrate(mod, data, progress=False), config)(mod)


def test_lowering_is_integer_only_and_folds_activations(small_cnn_path):
    _, _, int_mod = _lowered(small_cnn_path)
    assert verify_integer_only(int_mod).integer_only
    text = int_mod.script()
    assert "R.maximum" not in text and "R.minimum" not in text  # ReLU/ReLU6 folded into clamps
    assert "R.nn.conv2d" in text and 'out_dtype="int32"' in text and 'dtype="uint8"' in text


def test_unsupported_relax_op_lists_all():
    mod = _function(lambda bb, x: R.cumprod(R.sort(x, axis=1), axis=1), [((1, 4), "float32")])
    with pytest.raises(UnsupportedModelError) as err:
        QuantizeToInteger({"x0": (-1.0, 1.0)})(mod)
    assert "relax.sort" in str(err.value) and "relax.cumprod" in str(err.value)


def test_float_fallback_is_reported_by_verifier():
    mod = _function(lambda bb, x: R.cumprod(x, axis=1), [((1, 4), "float32")])
    ranges = {"x0": (-1.0, 1.0), "gv": (-1.0, 1.0)}
    out = QuantizeToInteger(ranges, QuantConfig(allow_float=True))(mod)
    report = verify_integer_only(out)
    assert not report.integer_only and "relax.cumprod" in str(report)


def test_conv1x1_as_matmul_is_exact_and_selective():

    from passes.conv1x1_as_matmul import conv1x1_as_matmul

    rng = np.random.default_rng(3)
    w1 = rng.integers(-128, 128, (6, 8, 1, 1)).astype("int8")
    w3 = rng.integers(-128, 128, (6, 8, 3, 3)).astype("int8")

    def build(bb, x):
        a = bb.emit(R.nn.conv2d(x, relax.const(w1), out_dtype="int32"))
        b = bb.emit(R.nn.conv2d(x, relax.const(w3), padding=[1, 1], out_dtype="int32"))
        c = bb.emit(R.nn.conv2d(x, relax.const(w1), strides=[2, 2], out_dtype="int32"))
        return relax.Tuple([a, b, c])

    for batch in (1, 3):  # a batch too: the weight broadcast over it
        mod = _function(build, [((batch, 8, 6, 6), "uint8")])
        new = conv1x1_as_matmul(mod)
        text = new.script()
        assert text.count("R.matmul") == 1 and text.count("R.nn.conv2d") == 2  # only the pointwise stride-1 one
        x = rng.integers(0, 256, (batch, 8, 6, 6)).astype("uint8")
        run = lambda m: [t.numpy() for t in relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](  # noqa: E731
            tvm.runtime.tensor(x))]
        for got, want in zip(run(new), run(mod)):
            np.testing.assert_array_equal(got, want)


def _instance_norm_model(path) -> str:
    """Conv, GroupNorm(2 groups) as the legacy exporter writes it (Reshape, InstanceNormalization,
    Reshape, per-channel Mul/Add), ReLU, InstanceNorm2d with affine parameters."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("w", rng.standard_normal((8, 3, 3, 3)) * 0.4), ("g_shape", None), ("ones", np.ones(2)), ("zeros", np.zeros(2)),
        ("gamma", rng.uniform(0.6, 1.4, (8, 1, 1))), ("beta", rng.normal(0, 0.2, (8, 1, 1))),
        ("s2", rng.uniform(0.6, 1.4, 8)), ("b2", rng.normal(0, 0.2, 8))) if v is not None]
    inits += [numpy_helper.from_array(np.array([1, 2, -1], np.int64), "grouped"),
              numpy_helper.from_array(np.array([1, 8, 14, 14], np.int64), "back")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Reshape", ["c", "grouped"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["n"], epsilon=1e-5),
             helper.make_node("Reshape", ["n", "back"], ["nb"]),
             helper.make_node("Mul", ["nb", "gamma"], ["m"]), helper.make_node("Add", ["m", "beta"], ["a"]),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("InstanceNormalization", ["h", "s2", "b2"], ["y"], epsilon=1e-5)]
    graph = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 14, 14])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_instance_and_group_norm_lower_to_integer_layernorm(tmp_path):
    """InstanceNormalization (GroupNorm as exported by the legacy exporter, wav2vec2's feature extractor;
    InstanceNorm2d) becomes an integer LayerNorm over the flattened trailing axes; agrees with onnxruntime."""
    import onnxruntime as ort

    from runtime import compile_model, load

    path = _instance_norm_model(tmp_path / "gn.onnx")
    m, mod, int_mod = _lowered(path)
    assert verify_integer_only(int_mod).integer_only
    assert "R.variance" not in int_mod.script()
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32))
    model = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for _ in range(3):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        a, b = model.run({"x": x})["y"].ravel(), session.run(None, {"x": x})[0].ravel()
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.99


@pytest.mark.parametrize("gamma_shape", [(3, 20), (1, 20)])
def test_layer_norm_over_trailing_axes_compiles_integer_only(tmp_path, gamma_shape):
    """ONNX LayerNormalization with axis=-2 (PESTO's pitch encoder: gamma [1, 219]) normalizes the
    last two axes together: it becomes a LayerNorm over their merged axis; agrees with onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from runtime import compile_model, load

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=gamma_shape).astype(np.float32), n) for n in ("s", "b")]
    graph = helper.make_graph([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-2)], "ln",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, gamma_shape[0], 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, gamma_shape[0], 20])], inits)
    path = str(tmp_path / "ln.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    shape = (4, gamma_shape[0], 20)
    np.savez(tmp_path / "calib.npz", x=(3 * rng.standard_normal((8, *shape)) + 1).astype(np.float32))
    model = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    x = (3 * rng.standard_normal(shape) + 1).astype(np.float32)
    a, b = model.run({"x": x})["y"].ravel(), ort.InferenceSession(path).run(None, {"x": x})[0].ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.999


@pytest.mark.parametrize("layer", ["conv2d", "matmul"])
def test_near_dead_channel_bias_fits_by_its_weight_scale(layer):
    """A channel with tiny weights and a large (folded BatchNorm) bias: its weight scale is raised
    until the bias fits int32 at the accumulator scale, so no output element pays a rounding shift
    of the accumulator, and the integer model still agrees with float to within an output step."""
    from conftest import run_relax  # noqa: F401  (same host target as the other tests)

    rng = np.random.default_rng(5)
    if layer == "conv2d":
        w = rng.standard_normal((4, 3, 3, 3)).astype("float32")
        w[2] *= 1e-9  # near-dead
        b = np.array([0.1, -0.2, 3.0, 0.3], "float32").reshape(1, 4, 1, 1)
        shape, make = (1, 3, 8, 8), lambda bb, x: bb.emit(R.nn.conv2d(x, relax.const(w), padding=[1, 1]))
    else:
        w = rng.standard_normal((16, 4)).astype("float32")
        w[:, 2] *= 1e-9
        b = np.array([0.1, -0.2, 3.0, 0.3], "float32")
        shape, make = (5, 16), lambda bb, x: bb.emit(R.matmul(x, relax.const(w)))
    mod = _function(lambda bb, x: R.add(make(bb, x), relax.const(b)), [(shape, "float32")])
    data = [{"x0": rng.standard_normal(shape).astype("float32")} for _ in range(4)]
    int_mod = QuantizeToInteger(calibrate(mod, data, progress=False))(mod)
    assert verify_integer_only(int_mod).integer_only
    assert "right_shift" not in int_mod.script(show_meta=False)
    import json

    from runtime.boundary import dequantize, quantize

    boundary = json.loads(int_mod["main"].attrs["intq.boundary"])
    x, (i, o) = data[0]["x0"], (boundary["inputs"][0], boundary["outputs"][0])
    run = lambda m, v: relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(v)).numpy()
    want = run(mod, x)
    scale = np.asarray(o["scale"])
    if o["axis"] is not None:  # the int32 sums as output: per channel
        scale = scale.reshape([-1 if a == o["axis"] % want.ndim else 1 for a in range(want.ndim)])
    got = dequantize(run(int_mod, quantize(x, i["scale"], i["dtype"])), scale)
    cos = float((got * want).sum() / np.sqrt((got * got).sum() * (want * want).sum()))
    assert cos > 0.9999 and np.abs(got[:, 2] - want[:, 2]).max() < 1e-3  # the dead channel: its bias


def test_fuse_rmsnorm_leaves_a_reciprocal_times_gamma():
    """TF's LayerNorm over channels, `Reciprocal(Sqrt(var + eps)) * gamma` (afis's fingerprint net):
    `1 / r * gamma` has the RMSNorm's shape with the constant 1 in x's place; it is left alone (it
    crashed reading the channels of the rank-0 constant)."""
    from passes.fuse_rmsnorm import fuse_rmsnorm

    gamma = relax.const(np.linspace(0.5, 2, 8).reshape(1, 8, 1, 1).astype("float32"))

    def build(bb, x):
        var = bb.emit(R.mean(R.multiply(x, x), axis=[1], keepdims=True))
        inv = bb.emit(R.divide(relax.const(1.0, "float32"), R.sqrt(R.add(var, relax.const(1e-3, "float32")))))
        return R.multiply(inv, gamma)

    mod = _function(build, [((1, 8, 4, 4), "float32")])
    tvm.ir.assert_structural_equal(fuse_rmsnorm(mod), mod)


def _residual_model(path, skip: bool) -> str:
    """y = concat(x[:, :8] + conv(x[:, :8]), x[:, 8:]) (an audio watermarker's encoder adds a small
    residual to part of its input and copies the rest); without `skip`, y = conv(x[:, :8]) alone."""
    import onnx
    from onnx import TensorProto, helper as h, numpy_helper as nh

    w = (np.random.default_rng(3).standard_normal((8, 8, 3)) * 0.003).astype(np.float32)
    consts = {"w": w, "s0": np.array([0]), "s1": np.array([8]), "s2": np.array([64]), "ax": np.array([1])}
    nodes = [h.make_node("Slice", ["x", "s0", "s1", "ax"], ["sub"]),
             h.make_node("Conv", ["sub", "w"], ["res"], kernel_shape=[3], pads=[1, 1])]
    if skip:
        nodes += [h.make_node("Slice", ["x", "s1", "s2", "ax"], ["rest"]), h.make_node("Add", ["sub", "res"], ["wm"]),
                  h.make_node("Concat", ["wm", "rest"], ["y"], axis=1)]
    out = [1, 64, 50] if skip else [1, 8, 50]
    graph = h.make_graph(nodes, "residual", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 50])],
                         [h.make_tensor_value_info("y" if skip else "res", TensorProto.FLOAT, out)],
                         [nh.from_array(v if v.dtype == np.float32 else v.astype(np.int64), k) for k, v in consts.items()])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    return str(path)


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
def test_input_passed_to_an_output_enters_at_16_bits(tmp_path, skip):
    """An input that a path of copies, slices, concats and adds takes to an output enters at 16 bits: at 8
    its rounding (half a step of the whole input) drowned the residual the model computes (1 dB SNR). An
    input that only feeds a conv stays 8-bit."""
    import onnxruntime as ort

    import runtime
    from runtime.compiler import compile_model

    model = _residual_model(tmp_path / "r.onnx", skip)
    xs = np.random.default_rng(4).uniform(0, 1.1, (8, 1, 64, 50)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs[:6])
    art = runtime.load(compile_model(model, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["inputs"][0]["quant"]["dtype"] == ("int16" if skip else "int8")
    if not skip:
        return
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for x in xs[6:]:
        want, got = session.run(None, {"x": x})[0], art.run({"x": x})["y"]
        assert np.abs(got[:, 8:] - x[:, 8:]).max() < 2e-4  # the copied part: float's exactly, but for 16-bit rounding
        r_want, r_got = (want - x)[:, :8].ravel(), (got - x)[:, :8].ravel()
        assert r_want @ r_got / np.linalg.norm(r_want) / np.linalg.norm(r_got) > 0.99  # was 0.77 at 8 bits


def test_written_out_softmax_becomes_one(tmp_path):
    """exp(x) / sum(exp(x)) (a hand-written attention's or classifier's softmax) is fused into one softmax
    (passes/fuse_softmax.py): a row of low logits, [-35, -31], came out all zeros from exp's one grid."""
    import onnxruntime as ort
    from onnx import TensorProto, helper as h, numpy_helper as nh

    import onnx
    import runtime
    from runtime.compiler import compile_model

    graph = h.make_graph([h.make_node("Exp", ["x"], ["e"]), h.make_node("ReduceSum", ["e", "ax"], ["s"], keepdims=1),
                          h.make_node("Div", ["e", "s"], ["y"])], "softmax",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
                         [nh.from_array(np.array([-1], np.int64), "ax")])
    model = str(tmp_path / "softmax.onnx")
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), model)
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(-3, 5, (5, 1, 6)), rng.uniform(-40, -30, (1, 1, 6))]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = runtime.load(compile_model(model, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for x in (xs[0], np.array([[-35, -33, -38, -31, -36, -34]], np.float32)):
        np.testing.assert_allclose(art.run({"x": x})["y"], session.run(None, {"x": x})[0], atol=0.01)


def test_wide_gemm_keeps_as_many_input_bits_as_its_sums_allow(tmp_path):
    """A 4096 -> 16 Gemm whose int8 weights sum to ~1.2e5 per column, over features of scale 0.05 with
    three outliers at 20 (that the weights ignore): at 16 bits the int32 sums could overflow, and at 8
    (a step of 0.16) nearly every feature rounded to zero (a captcha head's Dense after Flatten: cosine 0.58). The input keeps
    +-(2^31 - 1) // L1 levels instead (about 12 bits), clipped so that the sums hold."""
    import onnxruntime as ort
    from onnx import TensorProto, helper as h, numpy_helper as nh

    import onnx
    import runtime
    from runtime.compiler import compile_model

    rng = np.random.default_rng(8)
    k = 4096
    w = rng.normal(0, 0.1, (k, 16)).astype(np.float32)
    w[:3] = 0.0  # the outliers only widen the input's range
    graph = h.make_graph([h.make_node("Gemm", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [nh.from_array(w, "w")])
    path = str(tmp_path / "g.onnx")
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    xs = rng.normal(0, 0.05, (12, 1, k)).astype(np.float32)
    xs[:, 0, :3] = 20.0
    np.savez(tmp_path / "calib.npz", x=xs[:8])
    art = compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                        config=QuantConfig(activation_bits=16))
    text = (art / "model.relax.py").read_text()
    clip = re.search(r"R\.clip\(\w+, -(\d+), (\d+)\)", text)  # the input narrowed to +-(2^31 - 1) // L1
    assert clip and clip[1] == clip[2] and 255 <= int(clip[1]) < 2**15 - 1
    assert re.search(r'Tensor\(\(1, 4096\), dtype="int16"\) = R\.astype', text)
    model, session = runtime.load(art), ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for x in xs[8:]:
        want, got = session.run(None, {"x": x})[0].ravel(), model.run({"x": x})["y"].ravel()
        assert want @ got / np.linalg.norm(want) / np.linalg.norm(got) > 0.99  # 8 bits: ~0.3
