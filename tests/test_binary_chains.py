"""Elementwise functions of two tensors that mix them before a nonlinearity (tf2onnx's Atan2): the
fusion pass (what it takes and what it leaves), the pair-table kernel against its NumPy twin (bit
for bit), and an ONNX model with tf2onnx's Atan2 end to end against onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from passes import fuse_binary_chains
from passes.chain_calls import chain_parts
from passes.lowering import LoweringContext, QuantConfig, Quantized
from passes.lowering.pair_table import pair_table_lookup
from passes.reference import unary as ref

R = relax.op
rng = np.random.default_rng(11)


def _module(build, shape=(1, 8)):
    bb = relax.BlockBuilder()
    x, y = (relax.Var(n, relax.TensorType(list(shape), "float32")) for n in ("x", "y"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x, y))
        bb.emit_func_output(out)
    return bb.get()


def _fused(mod) -> str:
    return relax.transform.DeadCodeElimination()(fuse_binary_chains(mod)).script()


def test_fuses_a_nonlinearity_of_a_quotient_through_reshapes():
    def build(bb, x, y):  # atan(y / x) with x seen through a reshape pair, then a fix-up by sign(x)
        flat = bb.emit(R.reshape(x, [8, 1]))
        back = bb.emit(R.reshape(flat, [1, 8]))
        a = bb.emit(R.atan(bb.emit(R.divide(y, back))))
        return R.add(a, bb.emit(R.multiply(bb.emit(R.sign(x)), relax.const(0.5, "float32"))))

    mod = relax.transform.DeadCodeElimination()(fuse_binary_chains(_module(build)))
    text = mod.script()
    assert text.count("intq.binary") == 1 and "R.atan" not in text and "R.divide" not in text
    calls = [chain_parts(b.value) for b in mod["main"].body.blocks[0].bindings if chain_parts(b.value)]
    sources, program = calls[0]
    assert [s.name for s in sources] == ["y", "x"]  # in order of first use
    x, y = rng.standard_normal((2, 64))
    np.testing.assert_allclose(ref.evaluate(program, y, x), np.arctan(y / x) + 0.5 * np.sign(x))


def test_leaves_sums_gates_and_one_input_chains():
    cases = {
        "gate": lambda bb, x, y: R.multiply(x, bb.emit(R.sigmoid(y))),  # a table of y alone, then a product
        "sum": lambda bb, x, y: R.tanh(bb.emit(R.add(x, y))),  # a requantized add, then a table
        "one input": lambda bb, x, y: R.sigmoid(bb.emit(R.multiply(x, x))),
        "quotient alone": lambda bb, x, y: R.divide(y, x),  # the exact integer division
    }
    for name, build in cases.items():
        assert "intq.binary" not in _fused(_module(build)), name


def test_pair_table_bitexact():
    """Every pair of 8-bit integers (int8 x uint8 and int8 x int8) through the compiled table equals
    `reference.unary.pair_lookup`; the table is f on the two grids, rounded."""
    from conftest import run_relax

    program = json.dumps([["relax.divide", [["v", -2], ["v", -1]], {}], ["relax.atan", [["v", 0]], {}]])
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij")).reshape(2, 256, 256)
    for dx, dy, sx, sy in [("int8", "uint8", 0.05, 0.02), ("int8", "int8", 0.03, 0.1)]:
        qx = (grid[0] + ref.INT_RANGE[dx][0]).astype(dx)
        qy = (grid[1] + ref.INT_RANGE[dy][0]).astype(dy)
        made = []

        def build(x, y):
            ctx = LoweringContext(relax.BlockBuilder.current(), {"out": (-1.6, 1.6)}, QuantConfig())
            ctx.var = relax.Var("out", relax.TensorType([256, 256], "float32"))
            made.append(pair_table_lookup(ctx, Quantized(x, sx, dx), Quantized(y, sy, dy), program))
            return made[-1].expr

        got = run_relax(build, [qx, qy])
        image = ref.evaluate(program, (ref.grid(dx) * sx)[:, None], (ref.grid(dy) * sy)[None, :])
        scale, dtype = ref.output_params(image, (-1.6, 1.6))
        assert (made[0].scale, made[0].dtype) == (scale, dtype) and dtype == "int8"
        np.testing.assert_array_equal(got, ref.pair_lookup(qx, qy, ref.build_table(image.reshape(-1), scale, dtype),
                                                           dx, dy))


def test_scale_free_pair_table_normalizes_16_bit_inputs_bitexact():
    """A scale-free program (atan2 as torch writes it: Div, Atan, Greater / Less and Where) of two int16
    inputs on different scales: the compiled kernel (requantize the finer onto the coarser scale, shift
    the pair right together per element until the larger fits 7 bits, one 65536-entry table) equals
    `reference.unary.normalize_pair` then `pair_lookup`, bit for bit, edges included; a program that
    depends on the scale (tanh(x * y)) keeps one 8-bit grid per input."""
    from conftest import run_relax

    from passes.reference.kernels import dyadic, requantize

    atan2 = json.dumps([["relax.divide", [["v", -2], ["v", -1]], {}], ["relax.atan", [["v", 0]], {}],
                        ["relax.greater", [["v", -2], 0.0], {}], ["relax.add", [["v", 1], np.pi], {}],
                        ["relax.subtract", [["v", 1], np.pi], {}], ["relax.where", [["v", 2], ["v", 3], ["v", 4]], {}],
                        ["relax.less", [["v", -1], 0.0], {}], ["relax.where", [["v", 6], ["v", 5], ["v", 1]], {}]])
    assert ref.scale_free(atan2) and not ref.scale_free(json.dumps(
        [["relax.multiply", [["v", -1], ["v", -2]], {}], ["relax.tanh", [["v", 0]], {}]]))
    edges = np.array([-32768, -32767, -32640, -255, -128, -127, -1, 0, 1, 127, 128, 254, 255, 256, 32639, 32767])
    qx = np.concatenate([np.repeat(edges, edges.size), rng.integers(-32768, 32768, 4000)]).astype("int16")
    qy = np.concatenate([np.tile(edges, edges.size), rng.integers(-32768, 32768, 4000)]).astype("int16")
    qy[-1000:] = (qy[-1000:] // 997).astype("int16")  # pairs of very different sizes
    sx, sy = 3e-5, 1e-5
    made = []

    def build(x, y):
        ctx = LoweringContext(relax.BlockBuilder.current(), {"out": (-3.2, 3.2)}, QuantConfig())
        ctx.var = relax.Var("out", relax.TensorType([qx.size], "float32"))
        made.append(pair_table_lookup(ctx, Quantized(x, sx, "int16"), Quantized(y, sy, "int16"), atan2))
        return made[-1].expr

    got = run_relax(build, [qx, qy])
    m, s = dyadic(sy / sx)
    a, b = ref.normalize_pair(qx.astype(np.int32), requantize(qy.astype(np.int64), m, s, -2**31, 2**31 - 1, "int32"))
    image = ref.evaluate(atan2, (ref.grid("int8") * sx)[:, None], (ref.grid("int8") * sx)[None, :])
    scale, dtype = ref.output_params(image, (-3.2, 3.2))
    assert (made[0].scale, made[0].dtype) == (scale, dtype)
    np.testing.assert_array_equal(got, ref.pair_lookup(a, b, ref.build_table(image.reshape(-1), scale, dtype),
                                                       "int8", "int8"))
    want = np.arctan2(qy * sy, qx * sx)
    sized = np.maximum(np.abs(qx * sx), np.abs(qy * sy)) >= 8 * sx  # 8 steps of the common grid or more
    err = np.abs(np.angle(np.exp(1j * (got * scale - want))))[sized]
    assert err.max() < 0.07, err.max()  # 7 significant bits of the larger of the pair, whatever its size


def _tf2onnx_atan2(x: str, y: str, out: str) -> list:
    """tf2onnx's Atan2(y, x) decomposition, node for node (as in afis's fingerprint net)."""
    n = helper.make_node
    return [
        n("Sign", [x], ["sx"]), n("Sign", [y], ["sy"]),
        n("Mul", ["sx", "sx"], ["sx2"]), n("Sub", ["sx2", "one"], ["sx2m1"]),
        n("Add", [x, "sx2m1"], ["xs"]), n("Div", [y, "xs"], ["ratio"]), n("Atan", ["ratio"], ["atan0"]),
        n("Mul", ["sx2", "atan0"], ["atan"]),
        n("Mul", ["sy", "sy"], ["sy2"]), n("Sub", ["sy2", "one"], ["sy2m1"]), n("Mul", ["sx", "sy2m1"], ["sxsy2m1"]),
        n("Add", ["sy", "sxsy2m1"], ["sysxsy2m1"]), n("Sub", ["sx", "one"], ["sxm1"]),
        n("Mul", ["sysxsy2m1", "sxm1"], ["m1"]), n("Mul", ["m1", "halfpi"], ["pip"]), n("Add", ["atan", "pip"], [out]),
    ]


def test_atan2_model_end_to_end(tmp_path):
    """A conv making two channels, tf2onnx's Atan2 of them (via Transpose-like reshapes and a Squeeze),
    compiled integer-only: one pair table, and the angle within a few 8-bit steps of onnxruntime's
    (one grid for y / x put it 30-45 degrees off on a fingerprint net)."""
    import onnxruntime as ort

    import runtime
    from runtime import compile_model

    n = helper.make_node
    nodes = [n("Conv", ["inp", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             n("Slice", ["c", "s0", "e0", "ax"], ["cy"]), n("Slice", ["c", "s1", "e1", "ax"], ["cx"]),
             n("Squeeze", ["cy", "ax"], ["y"]), n("Squeeze", ["cx", "ax"], ["x"]),
             *_tf2onnx_atan2("x", "y", "angle")]
    inits = [numpy_helper.from_array(a, name) for name, a in [
        ("w", rng.standard_normal((2, 3, 3, 3)).astype(np.float32) * 0.4), ("b", np.zeros(2, np.float32)),
        ("s0", np.array([0])), ("e0", np.array([1])), ("s1", np.array([1])), ("e1", np.array([2])),
        ("ax", np.array([1])), ("one", np.array(1.0, np.float32)), ("halfpi", np.array(-np.pi / 2, np.float32))]]
    graph = helper.make_graph(nodes, "atan2", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("angle", TensorProto.FLOAT, [1, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "atan2.onnx")
    data = rng.standard_normal((40, 1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", inp=data[:32])
    art = compile_model(tmp_path / "atan2.onnx", "x86", tmp_path / "atan2.artifact", calib=tmp_path / "calib.npz",
                        progress=False)
    compiled = runtime.load(art)
    assert compiled.manifest["integer_only"] is True
    text = open(art / compiled.manifest["relax"]).read()
    assert text.count("R.take") == 1 and "call_pure_packed" not in text
    session = ort.InferenceSession(str(tmp_path / "atan2.onnx"), providers=["CPUExecutionProvider"])
    errors = []
    for x in data[32:]:
        got, want = compiled.run({"inp": x})["angle"], session.run(None, {"inp": x})[0]
        errors.append(np.abs(np.angle(np.exp(1j * (got - want)))).ravel())  # wrapped: -pi and pi are one angle
    errors = np.concatenate(errors)
    # the conv's own 8-bit error moves the angle by ~|d| / r, large near the origin. Measured: median
    # 0.011 rad, 98% within 0.1; with one grid for y / x instead (no fusion), median 0.053
    assert np.median(errors) < 0.025 and np.mean(errors < 0.1) > 0.95, (np.median(errors), np.mean(errors < 0.1))


def test_float_fallback_runs_a_chain_as_its_float_ops():
    """With --allow-float, a chain call whose lowering refused runs as the float ops it stands for:
    the artifact has no NumPy twin to call back into."""
    from conftest import run_relax
    from passes.chain_calls import binary_call
    from passes.lowering.float_fallback import float_fallback

    program = json.dumps([["relax.divide", [["v", -1], ["v", -2]], {}], ["relax.atan", [["v", 0]], {}]])
    qx, qy = (rng.integers(-128, 128, (4, 16)).astype(np.int8) for _ in range(2))

    def build(x, y):
        ctx = LoweringContext(relax.BlockBuilder.current(), {"out": (-1.6, 1.6)}, QuantConfig(allow_float=True))
        ctx.var = relax.Var("out", relax.TensorType([4, 16], "float32"))
        call = binary_call(relax.Var("a", ctx.var.ty), relax.Var("b", ctx.var.ty), program, ctx.var.ty)
        out = float_fallback(ctx, call, [call.args[0], Quantized(x, 0.05, "int8"), Quantized(y, 0.1, "int8"),
                                         call.args[3]])
        assert relax.BlockBuilder.current().lookup_binding(out.expr).op.name == "relax.atan"
        return out.expr

    got = run_relax(build, [qx, qy])
    np.testing.assert_allclose(got, np.arctan((qx * 0.05) / (qy * 0.1)), rtol=1e-5, atol=1e-6)
