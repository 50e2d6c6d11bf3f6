"""Recurrent layers: the ONNX-level unrolling of LSTM/GRU/RNN (`frontends/onnx_rnn.py`) equals
onnxruntime's op in float, and small stacked bidirectional LSTM/GRU models compile integer-only
(gates as tables, gate products as int32, the cell state int16) and agree with onnxruntime."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_rnn import GATES, unroll_recurrent

DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _layer(kind, name, x, hidden, inputs, direction, rng, bias=True, states=(), **attrs):
    """(node, initializers): one recurrent node reading `x` of `inputs` features, uniform weights."""
    d, g = DIRECTIONS[direction], GATES[kind]
    scale = 1.0 / np.sqrt(hidden)
    inits = [numpy_helper.from_array((rng.uniform(-1, 1, s) * scale).astype(np.float32), f"{name}_{k}")
             for k, s in (("W", (d, g * hidden, inputs)), ("R", (d, g * hidden, hidden)), ("B", (d, 2 * g * hidden)))]
    ins = [x, f"{name}_W", f"{name}_R", f"{name}_B" if bias else "", "", *states]
    outs = [f"{name}_Y", f"{name}_Yh"] + ([f"{name}_Yc"] if kind == "LSTM" else [])
    node = helper.make_node(kind, ins, outs, name=name, hidden_size=hidden, direction=direction, **attrs)
    return node, inits[:3] if bias else inits[:2]


def single(kind, direction, steps=5, batch=2, inputs=3, hidden=4, bias=True, states=True, seed=0,
           layout=0, peepholes=False, weights_as_inputs=False, sequence_lens=False, **attrs):
    """(model, feeds): one node with all its outputs; initial states as graph inputs when `states`;
    `weights_as_inputs`: W, R, B (and P) graph inputs fed at run time, as onnx's node tests have them."""
    rng = np.random.default_rng(seed)
    d = DIRECTIONS[direction]
    names = (["h0", "c0"] if kind == "LSTM" else ["h0"]) if states else []
    node, inits = _layer(kind, "rnn", "x", hidden, inputs, direction, rng, bias, names, **attrs)
    if layout:
        node.attribute.append(helper.make_attribute("layout", 1))
    if peepholes:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, (d, 3 * hidden)).astype(np.float32), "rnn_P"))
        node.input.extend([""] * (7 - len(node.input)) + ["rnn_P"])
    if sequence_lens:
        node.input[4] = "lens"
    state_shape = [batch, d, hidden] if layout else [d, batch, hidden]
    x_shape = [batch, steps, inputs] if layout else [steps, batch, inputs]
    y_shape = [batch, steps, d, hidden] if layout else [steps, d, batch, hidden]
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32),
             **{n: rng.standard_normal(state_shape).astype(np.float32) for n in names}}
    extra_inputs = [helper.make_tensor_value_info("lens", TensorProto.INT32, [batch])] if sequence_lens else []
    if sequence_lens:  # True: every sequence full length; else the lengths
        feeds["lens"] = np.full(batch, steps, np.int32) if sequence_lens is True else np.asarray(sequence_lens, np.int32)
    if weights_as_inputs:
        extra_inputs += [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in inits]
        feeds.update({i.name: numpy_helper.to_array(i) for i in inits})
        inits = []
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                      *(helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shape) for n in names), *extra_inputs],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, y_shape),
         *(helper.make_tensor_value_info(o, TensorProto.FLOAT, state_shape) for o in node.output[1:])], inits)
    return _model(graph), feeds


def stacked(layers=(("LSTM", {}), ("GRU", {})), steps=8, features=8, hidden=16, seed=0):
    """A model of bidirectional `layers` ((kind, attrs) each) on x [T, 1, F], each fed the previous
    one's Y [T, 2, 1, H] reshaped to [T, 1, 2H], then a linear head on every step (CRNN-style logits)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, inputs = [], [], "x", features
    shape = numpy_helper.from_array(np.array([steps, 1, 2 * hidden], np.int64), "yshape")
    for k, (kind, attrs) in enumerate(layers):
        node, w = _layer(kind, f"l{k}", x, hidden, inputs, "bidirectional", rng, **attrs)
        nodes += [node, helper.make_node("Transpose", [node.output[0]], [f"l{k}_t"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"l{k}_t", "yshape"], [f"l{k}_out"])]
        inits += w
        x, inputs = f"l{k}_out", 2 * hidden
    head = numpy_helper.from_array(rng.standard_normal((2 * hidden, 10)).astype(np.float32) * 0.3, "head")
    nodes.append(helper.make_node("MatMul", [x, "head"], ["logits"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [steps, 1, 10])],
                              inits + [shape, head])
    return _model(graph)


def _model(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _reference(model, feeds):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


CASES = [(kind, direction, {}) for kind in GATES for direction in DIRECTIONS] + [
    ("GRU", "bidirectional", {"linear_before_reset": 1}),
    ("GRU", "forward", {"linear_before_reset": 1, "states": False}),
    ("LSTM", "bidirectional", {"bias": False, "states": False}), ("GRU", "reverse", {"bias": False}),
    ("RNN", "bidirectional", {"states": False})]


@pytest.mark.parametrize("kind,direction,extra", CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={int(x)}" for k, x in v.items()) or "default")
def test_unrolled_equals_onnxruntime(kind, direction, extra):
    model, feeds = single(kind, direction, **extra)
    want = _run(model, feeds)
    assert unroll_recurrent(model) == 1 and kind not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    got = _run(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 12])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_unrolled_in_opsets_before_13(kind, opset):
    # Squeeze/Unsqueeze/Split took attributes before opset 13 (DeepFilterNet's GRUs are opset 12):
    # an axes input there is ignored, and a squeeze of every 1-dim drops the batch of 1
    model, feeds = single(kind, "bidirectional", batch=1, **({"linear_before_reset": 1} if kind == "GRU" else {}))
    model.opset_import[0].version = opset
    want = _run(model, feeds)
    assert unroll_recurrent(model) == 1
    onnx.checker.check_model(model, full_check=True)
    for g, w in zip(_run(model, feeds), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# the spec's other forms: activations with their alpha/beta, clip, coupled input/forget gates,
# peepholes, batch-first layout, weights as graph inputs (as onnx's own node tests give them)
VARIANTS = [
    ("LSTM", "bidirectional", {"clip": 0.7}),
    ("GRU", "forward", {"activations": ["HardSigmoid", "Relu"], "activation_alpha": [0.3], "activation_beta": [0.4]}),
    ("GRU", "bidirectional", {"activations": ["Sigmoid", "Affine", "Sigmoid", "ScaledTanh"],
                              "activation_alpha": [0.5, 1.5], "activation_beta": [0.1, 0.8], "clip": 2.0}),
    ("LSTM", "forward", {"activations": ["Sigmoid", "LeakyRelu", "Softsign"], "activation_alpha": [0.2]}),
    ("LSTM", "reverse", {"activations": ["HardSigmoid", "Elu", "Softplus"]}),
    ("RNN", "forward", {"activations": ["ThresholdedRelu"], "activation_alpha": [0.1]}),
    ("LSTM", "forward", {"input_forget": 1}),
    ("LSTM", "bidirectional", {"peepholes": True}),
    ("LSTM", "bidirectional", {"layout": 1}),
    ("GRU", "reverse", {"layout": 1, "linear_before_reset": 1}),
    ("RNN", "bidirectional", {"layout": 1}),
    ("LSTM", "bidirectional", {"weights_as_inputs": True, "peepholes": True}),
    ("GRU", "bidirectional", {"weights_as_inputs": True}),
    ("GRU", "forward", {"weights_as_inputs": True, "linear_before_reset": 1}),
    ("RNN", "reverse", {"weights_as_inputs": True}),
    ("LSTM", "bidirectional", {"sequence_lens": [5, 2, 3], "batch": 3, "peepholes": True}),
    ("GRU", "bidirectional", {"sequence_lens": [1, 5], "linear_before_reset": 1}),
    ("GRU", "reverse", {"sequence_lens": [3, 4], "states": False}),
    ("RNN", "forward", {"sequence_lens": [4, 2], "states": False}),
]


@pytest.mark.parametrize("kind,direction,extra", VARIANTS,
                         ids=[f"{k}-{d}-{'-'.join(e)}" for k, d, e in VARIANTS])
def test_unrolled_spec_variants_equal_onnxruntime(kind, direction, extra):
    model, feeds = single(kind, direction, **extra)
    run = _run if not extra.get("layout") else _reference  # onnxruntime has no batch-first layout
    want = run(model, feeds)
    assert unroll_recurrent(model) == 1 and kind not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    for g, w in zip(run(model, feeds), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_not_unrolled_where_semantics_differ():
    model, _ = single("GRU", "forward", activations=["Sigmoid", "Gelu"])  # not one of the spec's activations
    assert unroll_recurrent(model) == 0
    model, _ = single("LSTM", "forward")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"  # a free length: bind it first
    assert unroll_recurrent(model) == 0


def test_cell_state_is_16_bit():
    """Structural: the LSTM cell's c = sig(f) c0 + sig(i) tanh(g) is an int16 common-scale add of two
    int32 gate products; an add of two plain activations stays 8 bits; nothing float remains. (128 wide: tensors
    of at most 64 elements are all carried at 16 bits.)"""
    from tvm import relax

    from passes import QuantizeToInteger, verify_integer_only

    R, bb = relax.op, relax.BlockBuilder()
    ins = [relax.Var(n, relax.TensorType([1, 128], "float32")) for n in ("i", "o", "f", "g", "c0")]
    with bb.function("main", ins):
        with bb.dataflow():
            i, o, f, g, c0 = ins
            e = {n: bb.emit(v, name_hint=n) for n, v in (("si", R.sigmoid(i)), ("so", R.sigmoid(o)),
                                                           ("sf", R.sigmoid(f)), ("tg", R.tanh(g)))}
            fc = bb.emit(R.multiply(e["sf"], c0), name_hint="fc")
            ic = bb.emit(R.multiply(e["si"], e["tg"]), name_hint="ic")
            c = bb.emit(R.add(fc, ic), name_hint="c")
            h = bb.emit(R.multiply(e["so"], bb.emit(R.tanh(c), name_hint="tc")), name_hint="h")
            r = bb.emit(R.add(i, f), name_hint="r")  # an ordinary sum (not an output: outputs are 16-bit)
            out = bb.emit_output(relax.Tuple([h, c, bb.emit(R.multiply(r, r), name_hint="rr")]))
        bb.emit_func_output(out)
    ranges = {**{n: (-4.0, 4.0) for n in "iofg"}, "c0": (-3.0, 3.0), "si": (0.0, 1.0), "so": (0.0, 1.0),
              "sf": (0.0, 1.0), "tg": (-1.0, 1.0), "fc": (-3.0, 3.0), "ic": (-1.0, 1.0), "c": (-4.0, 4.0),
              "tc": (-1.0, 1.0), "h": (-1.0, 1.0), "r": (-8.0, 8.0),
              "rr": (0.0, 64.0)}
    lowered = QuantizeToInteger(ranges)(bb.get())
    text = lowered.script()
    assert verify_integer_only(lowered).integer_only
    for name, dtype in (("fc", "int32"), ("ic", "int32"), ("c", "int16"), ("r", "int8")):
        assert f'{name}: R.Tensor((1, 128), dtype="{dtype}")' in text, name


def test_sum_of_products_kernel_bitexact():
    """The cell-state kernel (two int32 products rescaled to one scale, added, clamped to int16)
    compiled equals `passes.reference.binary.common_scale`, extremes and a saturating ratio included."""
    import tvm
    from tvm import relax

    from conftest import relax_main
    from passes.lowering import emit_binary as eb
    from passes.reference import binary as rb
    from passes.reference.kernels import dyadic
    from targets import get_target

    rng = np.random.default_rng(3)
    a = rng.integers(-2**23, 2**23, (4, 16)).astype(np.int32)  # uint8 x int16 products
    b = rng.integers(-2**14, 2**14, (4, 16)).astype(np.int32)  # uint8 x int8 products
    a[0, :3], b[0, :3] = [2**23, -2**23, 0], [2**14, -2**14, 0]
    cases = [(dyadic(2.0**-8 * 0.9), dyadic(0.37)), (dyadic(2.0**-2), dyadic(3.0))]  # the second saturates
    spec = get_target("x86")
    mod = relax_main(lambda x, y: relax.Tuple([eb.common_scale("add", x, y, ma, sa, mb, sb, -32768, 32767, "int16")
                                               for (ma, sa), (mb, sb) in cases]), [a, b])
    ex = tvm.compile(mod, target=spec.target(), relax_pipeline=spec.relax_pipeline(spec.target()))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b))
    for g, ((ma, sa), (mb, sb)) in zip(got, cases):
        want = rb.common_scale("add", a, b, ma, sa, mb, sb, -32768, 32767, "int16")
        np.testing.assert_array_equal(g.numpy(), want)
        assert g.numpy().dtype == np.int16
    assert np.abs(want).max() == 32767  # the saturating case reached the clamp


def _sequences(count, steps, seed):
    """Smooth random walks [count, T, 1, 8]: feature sequences with structure over time."""
    walk = np.cumsum(np.random.default_rng(seed).standard_normal((count, steps, 1, 8)), axis=1)
    return (0.3 * walk).astype(np.float32)


def test_lstm_and_gru_layers_compile_integer_only(tmp_path):
    """A bidirectional LSTM layer, then a bidirectional GRU layer (PyTorch's linear_before_reset), hidden
    16, 8 steps, compiled in one model (one compile keeps the test short): integer-only without
    allow_float, int16 states in the module, logits within cosine 0.999 of onnxruntime float on
    held-out sequences (measured 0.9997-0.9998 on each kind alone: 8-bit gates and matmul inputs)."""
    import runtime
    from runtime.compiler import compile_model

    model = stacked((("LSTM", {}), ("GRU", {"linear_before_reset": 1})))
    onnx.save(model, tmp_path / "rnn.onnx")
    np.savez(tmp_path / "calib.npz", x=_sequences(16, 8, 1))
    art = runtime.load(compile_model(tmp_path / "rnn.onnx", output=tmp_path / "rnn.artifact",
                                     calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    assert 'dtype="int16"' in (tmp_path / "rnn.artifact" / "model.relax.py").read_text()
    for x in _sequences(4, 8, 2):
        want, got = _run(model, {"x": x})[0], art.run({"x": x})["logits"]
        cos = float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got)))
        assert cos >= 0.999, cos


def test_spec_variants_compile_integer_only(tmp_path):
    """The spec's other forms lower like the defaults: a clipped LSTM with coupled input/forget gates
    and HardSigmoid/Softsign activations, then a GRU with Relu candidates; integer-only, logits within
    cosine 0.99 of onnxruntime float (the table activations are 8-bit like Sigmoid/Tanh)."""
    import runtime
    from runtime.compiler import compile_model

    model = stacked((("LSTM", {"clip": 1.5, "input_forget": 1, "activations": ["HardSigmoid", "Tanh", "Softsign"] * 2}),
                     ("GRU", {"activations": ["Sigmoid", "Relu"] * 2})), steps=6, hidden=8)
    onnx.save(model, tmp_path / "rnn.onnx")
    np.savez(tmp_path / "calib.npz", x=_sequences(16, 6, 1))
    art = runtime.load(compile_model(tmp_path / "rnn.onnx", output=tmp_path / "rnn.artifact",
                                     calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    for x in _sequences(3, 6, 2):
        want, got = _run(model, {"x": x})[0], art.run({"x": x})["logits"]
        cos = float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got)))
        assert cos >= 0.99, cos


def test_sequence_lens_compile_integer_only(tmp_path):
    """sequence_lens given at run time (an int32 input), with peepholes: the step masks are exact
    integers, the model integer-only, the outputs past each sequence's end exactly zero and each
    output within cosine 0.99 of onnxruntime float."""
    import runtime
    from runtime.compiler import compile_model

    model, feeds = single("LSTM", "forward", sequence_lens=[5, 3], peepholes=True, states=False)
    onnx.save(model, tmp_path / "lens.onnx")
    rng = np.random.default_rng(7)  # calibration: other sequences and lengths
    calib = [{**{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in feeds.items() if k != "lens"},
              "lens": rng.integers(1, 6, 2).astype(np.int32)} for _ in range(16)]
    np.savez(tmp_path / "calib.npz", **{k: np.stack([c[k] for c in calib]) for k in feeds})
    art = runtime.load(compile_model(tmp_path / "lens.onnx", output=tmp_path / "lens.artifact",
                                     calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    feeds = {**feeds, "lens": np.array([2, 4], np.int32)}
    got = art.run(feeds)
    assert not got["rnn_Y"][2:, :, 0].any() and not got["rnn_Y"][4:, :, 1].any()
    for spec, want in zip(art.manifest["outputs"], _run(model, feeds)):
        g = got[spec["name"]]
        # 0.998-0.9999 measured: Y_h's 8 values include one just past the calibrated range
        assert float(g.ravel() @ want.ravel() / (np.linalg.norm(g) * np.linalg.norm(want))) >= 0.99, spec["name"]


def _distinct_constants(mod) -> int:
    """How many different integer constants (by dtype, shape and bytes) the module's calls read."""
    import tvm
    from tvm import relax

    seen = set()
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            for a in getattr(b.value, "args", ()):
                if isinstance(a, tvm.ir.GenericConst) and hasattr(a.value, "numpy"):
                    v = a.value.numpy()
                    seen.add((v.dtype.str, v.shape, v.tobytes()))
    assert seen
    return len(seen)


def test_steps_of_a_recurrence_share_one_calibration(tmp_path, monkeypatch):
    """Each group of corresponding tensors of an unrolled layer's steps gets one range
    (passes/recurrent_steps.py), so the integer module's constants (scales, gate tables, smoothed
    recurrent weights) hardly grow with the steps: 249 at 12 steps, 380 at 24; calibrated step by
    step they were 722 and 1339 (all tied, 247 and 272: the random walks' early steps, on less than
    half their group's range, keep their own, `calibrate.TIED_SPAN`)."""
    from frontends import load_onnx
    from passes import QuantizeToInteger, bind_weights, calibrate, verify_integer_only
    from passes.recurrent_steps import step_groups

    counts = []
    for steps in (12, 24):
        model = stacked((("LSTM", {}), ("GRU", {"linear_before_reset": 1})), steps=steps)
        onnx.save(model, tmp_path / "rnn.onnx")
        m = load_onnx(tmp_path / "rnn.onnx")
        mod = bind_weights(m.mod, m.params)
        groups = step_groups(mod["main"])
        # 2 directions x 2 layers, steps 2.. tied (step 0 reads the initial state, step 1 reads step 0)
        assert len({len(g) for g in groups}) == 1 and len(groups[0]) == steps - 2, [len(g) for g in groups]
        samples = [{"x": x} for x in _sequences(4, steps, 1)]
        ranges = calibrate(mod, samples, progress=False)
        assert ranges.steps and all(len({ranges[n] for n in g}) == 1 for g in ranges.steps)
        lowered = QuantizeToInteger(ranges)(mod)
        assert verify_integer_only(lowered).integer_only
        counts.append(_distinct_constants(lowered))
        assert sum(map(len, ranges.steps)) >= 0.9 * sum(map(len, groups))  # 1491 of 1584 at 24 steps
    assert counts[1] - counts[0] < 200, counts
    # the steps' temporaries cycle through a few planned views, each built once
    # (targets/reuse_tensor_views.py): 564 kernel calls at 24 steps built 564 views, now 99
    import targets.merge_step_kernels as msk
    from targets import get_target

    monkeypatch.setattr(msk, "MAX_CALLS", 1)  # the steps' kernels one by one (merged: test_recurrent_speed.py)
    spec = get_target("x86")
    with spec.target():
        final = spec.relax_pipeline(spec.target())(lowered).script(show_meta=False)
    kernels = len(re.findall(r"^ +(?:cls\.)?[A-Za-z_]\w*\(", final, re.M))  # destination-passing kernel calls
    views = final.count("R.vm.alloc_tensor(")
    assert views * 4 < kernels, (views, kernels)


@pytest.mark.slow
def test_long_sequence_compiles(tmp_path):
    """120 steps of a bidirectional LSTM and a GRU (~12,000 Relax bindings once unrolled): the long
    graphs' build costs stay near linear (targets/concat_tree.py, split_dataflow.py,
    legalize_once.py; 300 steps of a real BiLSTM never finished building before them), and the
    result is integer-only and agrees with onnxruntime."""
    import runtime
    from runtime.compiler import compile_model

    steps = 120
    model = stacked((("LSTM", {}), ("GRU", {"linear_before_reset": 1})), steps=steps)
    onnx.save(model, tmp_path / "rnn.onnx")
    np.savez(tmp_path / "calib.npz", x=_sequences(4, steps, 1))
    art = runtime.load(compile_model(tmp_path / "rnn.onnx", output=tmp_path / "rnn.artifact",
                                     calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    x = _sequences(1, steps, 2)[0]
    want, got = _run(model, {"x": x})[0], art.run({"x": x})["logits"]
    assert float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got))) >= 0.99


def test_free_length_of_an_unrolled_layer_calibrates_each_bucket(tmp_path):
    """An unrolled GRU has as many ops as steps, so the ranges calibrated at one length cannot be
    taken over by binding name at another (it was refused): each bucket whose float graph differs
    is calibrated on the samples cut or edge-padded to its length. Each length then agrees with
    float onnxruntime; with no mask input only the compiled lengths run."""
    import runtime
    from frontends import InputError
    from frontends.onnx_import import FreeDim
    from runtime.compiler import compile_model

    node, inits = _layer("GRU", "rnn", "xt", 4, 3, "forward", np.random.default_rng(0))
    del node.output[1:]
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]), node],  # [1, T, 3] -> [T, 1, 3]
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 3])],
        [helper.make_tensor_value_info("rnn_Y", TensorProto.FLOAT, ["T", 1, 1, 4])], inits)
    model = _model(graph)
    onnx.save(model, tmp_path / "gru.onnx")
    def waves(n, t, seed):  # bounded, as features are: a random walk's range grows with the length
        rng = np.random.default_rng(seed)
        phase, freq = rng.uniform(0, 6, (n, 1, 1, 3)), rng.uniform(0.2, 1.0, (n, 1, 1, 3))
        return (np.sin(freq * np.arange(t)[None, None, :, None] + phase) + 0.1 * rng.standard_normal((n, 1, t, 3))
                ).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=waves(8, 12, 0))
    art = runtime.load(compile_model(tmp_path / "gru.onnx", output=tmp_path / "a", calib=tmp_path / "calib.npz",
                                     progress=False, input_shapes={"x": (1, FreeDim("seq", 1, 16), 3)},
                                     buckets=[8, 16]))
    assert art.manifest["integer_only"] is True and art.manifest["outputs"][0]["shape"] == ["seq", 1, 1, 4]
    for steps in (8, 16):
        x = waves(1, steps, steps)[0]
        want, got = _run(model, {"x": x})[0], art.run({"x": x})["rnn_Y"]
        assert got.shape == (steps, 1, 1, 4)
        assert float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got))) >= 0.999
    with pytest.raises(InputError, match=r"seq = 10: this artifact runs seq in \[8, 16\] only"):
        art.run({"x": waves(1, 10, 3)[0]})


def test_free_batch_over_a_time_major_layer_runs_per_sample(tmp_path):
    """torch's export of a batch-first LSTM: Transpose to time-major, LSTM, Transpose back, plus a
    final state [D, N, H] whose batch is axis 1. The batch cannot be symbolic (the transposes move
    it; it was refused), so the artifact runs its batch-1 module per sample: each sample's integers
    are those it gets alone, every output joined along its own batch axis, on 1 or 2 workers."""
    import runtime
    from frontends.onnx_import import FreeDim
    from runtime.compiler import compile_model

    node, inits = _layer("LSTM", "rnn", "xt", 8, 3, "bidirectional", np.random.default_rng(0))
    del node.output[2:]
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]), node,  # [N, 6, 3] -> [6, N, 3]
         helper.make_node("Transpose", ["rnn_Y"], ["yt"], perm=[2, 0, 1, 3]),  # [6, 2, N, 8] -> [N, 6, 2, 8]
         helper.make_node("Reshape", ["yt", "shape"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 16]),
         helper.make_tensor_value_info("rnn_Yh", TensorProto.FLOAT, [2, "N", 8])],
        [*inits, numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape")])
    model = _model(graph)
    onnx.save(model, tmp_path / "lstm.onnx")
    walk = lambda n, seed: np.cumsum(np.random.default_rng(seed).standard_normal((n, 6, 3)), 1).astype(np.float32)  # noqa: E731
    np.savez(tmp_path / "calib.npz", x=walk(8, 1)[:, None])
    art = runtime.load(compile_model(tmp_path / "lstm.onnx", output=tmp_path / "a", calib=tmp_path / "calib.npz",
                                     progress=False, input_shapes={"x": (FreeDim("n", 1, 8), 6, 3)}))
    assert art.manifest["batch"] == "per-sample" and art.manifest["integer_only"] is True
    assert [o["shape"] for o in art.manifest["outputs"]] == [["n", 6, 16], [2, "n", 8]]
    x = walk(5, 2)
    alone = [art.run_integer(art.quantize_inputs({"x": x[i:i + 1]})) for i in range(5)]
    for workers in (1, 2):
        art.batch_workers = workers
        y, h = art.run_integer(art.quantize_inputs({"x": x}))
        assert y.shape == (5, 6, 16) and h.shape == (2, 5, 8)
        assert np.array_equal(y, np.concatenate([a[0] for a in alone]))
        assert np.array_equal(h, np.concatenate([a[1] for a in alone], axis=1))
    for want, got in zip(_run(model, {"x": x}), art.run({"x": x}).values()):
        assert float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got))) >= 0.999
