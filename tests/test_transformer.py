"""Transformer lowering end to end: a real attention + MLP block exported by torch (opset 17:
LayerNormalization, Softmax, erf-GELU, activation x activation MatMuls), an opset-20 Gelu
and LayerNorms with zero and negative gammas, against onnxruntime in float."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import runtime
from passes import fuse_gelu


def _block_model(path, opset=17):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d=64, h=4, ff=128):
            super().__init__()
            self.h = h
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = (y.reshape(b, t, self.h, d // self.h).transpose(1, 2) for y in self.qkv(self.ln1(x)).chunk(3, -1))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.h), -1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))

    torch.manual_seed(0)
    with torch.no_grad():
        torch.onnx.export(Block().eval(), torch.randn(1, 16, 64), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"])
    return path


def _delta_cosines(artifact, onnx_path, shape, count=4, seed=1):
    model, session = runtime.load(artifact), ort.InferenceSession(str(onnx_path))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal(shape).astype(np.float32)
        y, r = model.run({"x": x})["y"] - x, session.run(None, {"x": x})[0] - x  # the block's own contribution
        out.append(float(y.ravel() @ r.ravel() / np.linalg.norm(y) / np.linalg.norm(r)))
    return out


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    work = tmp_path_factory.mktemp("block")
    onnx_path = _block_model(work / "block.onnx")
    np.savez(work / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 1, 16, 64)).astype(np.float32))
    artifact = runtime.compile_model(onnx_path, "x86", work / "block.artifact", calib=work / "calib.npz",
                                     progress=False)
    return onnx_path, artifact


def test_block_is_integer_only_with_16bit_residuals(block):
    _, artifact = block
    manifest = runtime.load(artifact).manifest
    assert manifest["integer_only"] is True and manifest["inputs"][0]["quant"]["dtype"] == "int16"
    text = (artifact / "model.relax.py").read_text()
    for op in ("softmax", "gelu", "layer_norm", "erf", '"float'):  # '"float': any float dtype
        assert op not in text
    assert text.count("R.matmul") == 6  # qkv, Q.K^T, attention.V, proj, fc1, fc2


def test_block_matches_float(block):
    onnx_path, artifact = block
    assert min(_delta_cosines(artifact, onnx_path, (1, 16, 64))) > 0.995


@pytest.mark.parametrize("form", ["torchscript", "dynamo", "half_first", "times_inverse_sqrt2"])
def test_fuse_gelu_only_on_the_exact_decomposition(form):
    # torch.onnx.export's x * (1 + erf(x / sqrt 2)) * 0.5, the dynamo exporter's x * ((erf(x / sqrt 2) + 1) * 0.5),
    # 0.5 * x * (1 + erf(...)), and erf(x * (1 / sqrt 2)); a wrong constant leaves the graph as it was
    def build(c):
        k = lambda v: relax.const(v, "float32")  # noqa: E731
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((4, 8), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                arg = relax.op.multiply(x, k(1 / c)) if form == "times_inverse_sqrt2" else relax.op.divide(x, k(c))
                inner = bb.emit(relax.op.add(bb.emit(relax.op.erf(bb.emit(arg))), k(1.0)))
                if form == "dynamo":
                    y = relax.op.multiply(x, bb.emit(relax.op.multiply(inner, k(0.5))))
                elif form == "half_first":
                    y = relax.op.multiply(bb.emit(relax.op.multiply(k(0.5), x)), inner)
                else:
                    y = relax.op.multiply(bb.emit(relax.op.multiply(x, inner)), k(0.5))
                out = bb.emit_output(bb.emit(y))
            bb.emit_func_output(out)
        return bb.get()

    assert "R.nn.gelu" in fuse_gelu(build(math.sqrt(2))).script()
    before = build(1.5)
    tvm.ir.assert_structural_equal(fuse_gelu(before), before)


def _single_op_model(path, node, inits, opset, shape):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def _compile_and_compare(tmp_path, onnx_path, shape, scale=1.0):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "c.npz", x=(rng.standard_normal((8, *shape)) * scale).astype(np.float32))
    artifact = runtime.compile_model(onnx_path, "x86", tmp_path / "a.artifact", calib=tmp_path / "c.npz",
                                     progress=False)
    model, session = runtime.load(artifact), ort.InferenceSession(str(onnx_path))
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    return model.run({"x": x})["y"], session.run(None, {"x": x})[0], model.manifest


def test_opset20_gelu(tmp_path):
    path = _single_op_model(tmp_path / "gelu.onnx", helper.make_node("Gelu", ["x"], ["y"]), [], 20, (2, 256))
    got, want, manifest = _compile_and_compare(tmp_path, path, (2, 256), scale=3.0)
    assert manifest["integer_only"] is True
    assert np.abs(got - want).max() < 0.1 and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999


def test_layernorm_with_zero_and_negative_gamma(tmp_path):
    gamma = np.linspace(-2, 2, 32).astype(np.float32)
    gamma[[3, 17]] = 0.0
    beta = np.linspace(1, -1, 32).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
    path = _single_op_model(tmp_path / "ln.onnx", node, [numpy_helper.from_array(gamma, "g"),
                                                          numpy_helper.from_array(beta, "b")], 17, (4, 32))
    got, want, manifest = _compile_and_compare(tmp_path, path, (4, 32), scale=5.0)
    assert manifest["integer_only"] is True
    np.testing.assert_allclose(got[:, [3, 17]], want[:, [3, 17]], atol=1e-3)  # gamma 0: beta exactly (1 LSB)
    assert np.abs(got - want).max() < 0.02


@pytest.mark.parametrize("form", ["t5", "llama", "t5 without eps"])
def test_written_out_rmsnorm_is_exact_for_every_row(tmp_path, form):
    """T5's `w * (x / sqrt(mean(x^2) + eps))` and LLaMA's `x * (1 / sqrt(mean(x * x) + eps)) * w` become one
    rms_norm, normalised per row from the row's own integers: rows 1000x apart in scale come out equally
    right (one grid for mean(x^2) rounded the small rows' variance to 0 and their output to x / sqrt(eps);
    the input's own 16-bit grid, ~40 steps for the smallest row, bounds the error). Without its eps (a
    float16 file's eps below 6e-8 is 0, and onnxruntime folds the + 0 away) it was left 8-bit ReduceMeans."""
    from onnx import TensorProto

    from frontends import load_onnx
    from passes import bind_weights

    w = np.linspace(0.5, 2.0, 64).astype(np.float32)
    square = (helper.make_node("Pow", ["x", "two"], ["sq"]) if form.startswith("t5")
              else helper.make_node("Mul", ["x", "x"], ["sq"]))
    tail = ([helper.make_node("Div", ["x", "root"], ["n"]), helper.make_node("Mul", ["w", "n"], ["y"])]
            if form.startswith("t5") else
            [helper.make_node("Reciprocal", ["root"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["n"]),
             helper.make_node("Mul", ["n", "w"], ["y"])])
    nodes = [square, helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["v"]), helper.make_node("Sqrt", ["v"], ["root"]), *tail]
    if form == "t5 without eps":
        nodes[1:4] = [nodes[1], helper.make_node("Sqrt", ["ms"], ["root"])]
    inits = [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1e-6), "eps"),
             numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "rms.onnx")
    rows = np.array([0.5, 1.0, 10.0, 100.0, 3.0, 30.0], np.float32).reshape(6, 1)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "c.npz", x=(rng.standard_normal((8, 6, 64)) * rows).astype(np.float32))
    artifact = runtime.compile_model(tmp_path / "rms.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                     progress=False)
    model_ = runtime.load(artifact)
    assert model_.manifest["integer_only"] is True
    imported = load_onnx(tmp_path / "rms.onnx")
    assert "R.nn.rms_norm" in bind_weights(imported.mod, imported.params).script(show_meta=False)
    x = (rng.standard_normal((6, 64)) * rows).astype(np.float32)
    got, want = model_.run({"x": x})["y"], ort.InferenceSession(str(tmp_path / "rms.onnx")).run(None, {"x": x})[0]
    for g, v in zip(got, want):  # every row, whatever its scale
        assert np.abs(g - v).max() < 0.05 * np.abs(v).max()


def test_decomposed_layernorm_block(tmp_path):
    """opset 16 exports LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add."""
    onnx_path = _block_model(tmp_path / "block16.onnx", opset=16)
    assert "LayerNormalization" not in {n.op_type for n in onnx.load(onnx_path).graph.node}
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 1, 16, 64)).astype(np.float32))
    artifact = runtime.compile_model(onnx_path, "x86", tmp_path / "a.artifact", calib=tmp_path / "calib.npz",
                                     progress=False)
    assert runtime.load(artifact).manifest["integer_only"] is True
    assert min(_delta_cosines(artifact, onnx_path, (1, 16, 64))) > 0.995


def _lowered_block(tmp_path, **config):
    from frontends import load_onnx
    from passes import QuantConfig, QuantizeToInteger, bind_weights, calibrate

    imported = load_onnx(_block_model(tmp_path / "block.onnx"))
    float_mod = bind_weights(imported.mod, imported.params)
    samples = [{"x": x} for x in np.random.default_rng(0).standard_normal((4, 1, 16, 64)).astype(np.float32)]
    ranges = calibrate(float_mod, samples, progress=False)
    return ranges, QuantizeToInteger(ranges, QuantConfig(residual_bits=16, **config))(float_mod)


def _matmul_operand_dtypes(mod) -> list[tuple[str, str]]:
    return [(str(b.value.args[0].ty.dtype), str(b.value.args[1].ty.dtype))
            for block in mod["main"].body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.matmul"]


def test_attention_uses_16bit_probabilities_and_values(tmp_path):
    _, mod = _lowered_block(tmp_path)
    dtypes = _matmul_operand_dtypes(mod)
    assert ("int16", "int16") in dtypes  # attention @ V: bound (2^15 + 16 / 2) * 2^15 < 2^31
    assert all(d in ("int8", "uint8") for pair in dtypes if pair != ("int16", "int16") for d in pair)


def test_calibration_keeps_channel_maxima(tmp_path):
    ranges, _ = _lowered_block(tmp_path)
    ln = [n for n, (a, rows) in ranges.channel_amax.items() if a.shape == (64,)]
    assert ln and all(np.all(ranges.channel_amax[n][0] <= max(map(abs, ranges[n])) + 1e-6) for n in ln)
    assert all(ranges.channel_amax[n][1] == 4 * 16 for n in ln)  # 4 samples of 16 tokens


def _ln_matmul(gamma: np.ndarray, w: np.ndarray):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((32, gamma.size), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.layer_norm(x, relax.const(gamma), relax.const(np.zeros_like(gamma)), axes=[-1]))
            out = bb.emit_output(relax.op.matmul(y, relax.const(w)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("samples", [32, 8, 2])
def test_smoothing_folds_outlier_channels_into_the_weights(samples):
    """A LayerNorm output with one outlier channel (gamma 60) feeding a matmul: per-channel input
    scales folded into the weights lose far less than one int8 scale for the whole tensor. With
    1024 or 256 calibration rows; not with 64 (too few for per-channel maxima: SMOOTH_MIN_ROWS)."""
    from passes import QuantConfig, QuantizeToInteger, calibrate
    from passes.lowering.context import SMOOTH_MIN_ROWS

    rng = np.random.default_rng(3)
    gamma = np.ones(64, np.float32)
    gamma[5] = 60.0
    w = rng.standard_normal((64, 48)).astype(np.float32) / 8
    mod = _ln_matmul(gamma, w)
    ranges = calibrate(mod, [{"x": rng.standard_normal((32, 64)).astype(np.float32)} for _ in range(samples)],
                       progress=False)
    smoothed = samples * 32 >= SMOOTH_MIN_ROWS
    x = rng.standard_normal((32, 64)).astype(np.float32)
    want = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    errors = {}
    for alpha in (None, 0.5):
        # both at 8 bits: without smoothing the outlier input would be measured sensitive and kept 16-bit
        lower = QuantizeToInteger(ranges, QuantConfig(residual_bits=16, smooth_alpha=alpha, sensitivity_tol=None),
                                  trace=True)
        int_mod = lower(mod)
        boundary = __import__("json").loads(str(int_mod["main"].attrs["intq.boundary"]))
        vm = relax.VirtualMachine(tvm.compile(int_mod, target="llvm"), tvm.cpu())
        q = np.clip(np.round(x / boundary["inputs"][0]["scale"]), -32768, 32767).astype(np.int16)
        got = vm["main"](tvm.runtime.tensor(q))[0].numpy() * np.asarray(boundary["outputs"][0]["scale"])
        errors[alpha] = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert any(t.requant.endswith("-smooth") for t in lower.traced) == (alpha is not None and smoothed)
    assert not smoothed or (errors[0.5] < 0.25 * errors[None] and errors[0.5] < 0.02)


def test_gelu_output_reaches_a_matmul_as_uint8_with_its_offset_as_bias():
    """GELU(x) >= -0.17: the lowering passes GELU + 0.171 to the next constant-weight matmul as
    uint8 (one more bit, the fast u8 x s8 form) and subtracts 0.171 * sum(W) there."""
    from passes import QuantConfig, QuantizeToInteger, calibrate

    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 32)).astype(np.float32) / 8
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((16, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            g = bb.emit(relax.op.nn.gelu(x))
            out = bb.emit_output(relax.op.matmul(g, relax.const(w)))
        bb.emit_func_output(out)
    mod = bb.get()
    samples = [{"x": (rng.standard_normal((16, 64)) * 3).astype(np.float32)} for _ in range(64)]  # 1024 rows
    int_mod = QuantizeToInteger(calibrate(mod, samples, progress=False), QuantConfig(residual_bits=16))(mod)
    assert ("uint8", "int8") in _matmul_operand_dtypes(int_mod)
    boundary = __import__("json").loads(str(int_mod["main"].attrs["intq.boundary"]))
    xt = (rng.standard_normal((16, 64)) * 3).astype(np.float32)
    q = np.clip(np.round(xt / boundary["inputs"][0]["scale"]), -32768, 32767).astype(np.int16)
    got = relax.VirtualMachine(tvm.compile(int_mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(q)).numpy()
    got = got * np.asarray(boundary["outputs"][0]["scale"])
    want = (0.5 * xt * (1 + np.vectorize(math.erf)(xt / math.sqrt(2)))) @ w
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.012


def test_16bit_tensors_keep_headroom(tmp_path):
    """int16 scales cover twice the calibrated range: inputs unlike the calibration data must not
    clip where a bit is free (`to_8bit` of such a tensor still covers just the calibrated range)."""
    from passes.lowering.context import WIDE_HEADROOM

    ranges, mod = _lowered_block(tmp_path)
    boundary = __import__("json").loads(str(mod["main"].attrs["intq.boundary"]))
    amax = max(map(abs, ranges["x"]))
    assert boundary["inputs"][0]["dtype"] == "int16" and WIDE_HEADROOM == 2.0
    assert boundary["inputs"][0]["scale"] == pytest.approx(WIDE_HEADROOM * amax / 32767)


def test_to_8bit_covers_each_int16_values_own_range():
    """Only activations quantized with headroom keep it out of their 8-bit form: an int16
    embedding (full table range) or an int8 value widened to int16 keep their whole range."""
    from passes.lowering.context import LoweringContext, QuantConfig, calibrated_qmax
    from passes.lowering.values import Quantized

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "int16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            ctx = LoweringContext(bb, {}, QuantConfig(residual_bits=16))
            table = ctx.to_8bit(Quantized(x, 1e-3, "int16"))
            activation = ctx.to_8bit(Quantized(x, 1e-3, "int16", qmax=calibrated_qmax("int16")))
            widened = ctx.to_8bit(Quantized(x, 1e-3, "int16", qmax=127))
            out = bb.emit_output(x)
        bb.emit_func_output(out)
    assert table.scale == pytest.approx(1e-3 * 32767 / 127)
    assert activation.scale == pytest.approx(1e-3 * 32767 / 127 / 2)
    assert widened.scale == pytest.approx(1e-3)


def _outlier_stream_model(path, d=64, ff=256, layers=3):
    """A T5-style pre-RMSNorm stack whose residual stream carries one massive activation (token 0,
    channel 5: +3000, as T5's and LLMs' outlier tokens) beside ordinary values near 1."""
    import torch
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.linspace(0.5, 1.5, d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            spike = torch.zeros(1, 16, d)
            spike[0, 0, 5] = 3000.0
            self.register_buffer("spike", spike)
            self.norms = nn.ModuleList(RMSNorm() for _ in range(layers + 1))
            self.wi = nn.ModuleList(nn.Linear(d, ff, bias=False) for _ in range(layers))
            self.wo = nn.ModuleList(nn.Linear(ff, d, bias=False) for _ in range(layers))

        def forward(self, x):
            x = x + self.spike
            for norm, wi, wo in zip(self.norms, self.wi, self.wo):
                x = x + wo(torch.nn.functional.gelu(wi(norm(x))))
            return self.norms[-1](x)

    torch.manual_seed(0)
    with torch.no_grad():
        torch.onnx.export(Stack().eval(), torch.randn(1, 16, d), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return path


def test_residual_stream_with_outlier_tokens(tmp_path):
    """The residual stream is an int32 Accumulator (binary.residual_sum) and RMSNorm normalizes its
    integers: with one token at 3000, a 16-bit stream gave the other tokens ~3 steps of their ~1-sized
    values (a T5 encoder: cosine 0.43-0.72 to float); now every token agrees."""
    path = _outlier_stream_model(tmp_path / "stack.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 16, 64)).astype(np.float32))
    artifact = runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False)
    model, session = runtime.load(artifact), ort.InferenceSession(str(path))
    assert model.manifest["integer_only"] is True
    for _ in range(3):
        x = rng.standard_normal((1, 16, 64)).astype(np.float32)
        got, want = model.run({"x": x})["y"][0], session.run(None, {"x": x})[0][0]
        for g, w in zip(got, want):  # every token, the outlier's and the ordinary ones
            assert g @ w / np.linalg.norm(g) / np.linalg.norm(w) > 0.99
