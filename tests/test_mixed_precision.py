"""Mixed precision: the bit-allocation ILP against brute force, and the Hutchinson
Hessian-trace sensitivity against closed forms (passes/mixed_precision)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.errors import CompileError
from passes.mixed_precision.ilp import (
    LayerCost,
    Limits,
    Metric,
    allocate_bits,
    pareto_front,
    plot_pareto,
)
from passes.mixed_precision.sensitivity import (
    Loss,
    Method,
    SensitivityConfig,
    compute_sensitivity,
    optimized_graph,
    quantizable_layers,
    weight_fingerprint,
)

# ---------------------------------------------------------------- ILP


def _layers(n=7, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n):
        params = int(rng.integers(1, 9)) * 1000
        s8 = float(rng.uniform(0.01, 1))
        layers.append(LayerCost(f"l{i}", params, params * int(rng.integers(10, 100)),
                                {4: s8 * float(rng.uniform(5, 500)), 8: s8},
                                {4: float(rng.uniform(0.1, 1)), 8: float(rng.uniform(0.5, 2))}))
    return layers


def _brute(layers, limits: Limits, pins=None, tied=()):
    """(objective, bits) of the best feasible allocation by enumeration; None if none."""
    pins = {layers[0].name: 8, layers[-1].name: 8} if pins is None else pins
    best = None
    for choice in itertools.product((4, 8), repeat=len(layers)):
        bits = {lay.name: b for lay, b in zip(layers, choice)}
        if any(bits[n] != b for n, b in pins.items()) or any(len({bits[n] for n in g}) > 1 for g in tied):
            continue
        totals = {m: sum(lay.value(m, bits[lay.name]) for lay in layers) for m in Metric}
        if any(totals[m] > v * (1 + 1e-9) for m, v in limits.by_metric().items()):
            continue
        objective = sum(lay.sensitivity[bits[lay.name]] for lay in layers)
        if best is None or objective < best[0]:
            best = (objective, bits)
    return best


@pytest.mark.parametrize("fraction", [1.0, 0.8, 0.65, 0.55])
def test_ilp_matches_brute_force(fraction):
    layers = _layers()
    full = sum(lay.params for lay in layers) / 1e6  # all 8-bit, MB
    for limits in (Limits(max_size_mb=full * fraction),
                   Limits(max_size_mb=full * fraction, max_gbops=sum(lay.macs for lay in layers) * 64 / 1e9 * 0.8),
                   Limits(max_latency_ms=sum(lay.latency_ms[8] for lay in layers) * fraction)):
        expected = _brute(layers, limits)
        if expected is None:
            with pytest.raises(CompileError):
                allocate_bits(layers, limits)
            continue
        got = allocate_bits(layers, limits)
        assert got.objective == pytest.approx(expected[0], rel=1e-9)
        assert got.size_mb <= (limits.max_size_mb or np.inf) * (1 + 1e-9)
        assert got.bits[layers[0].name] == got.bits[layers[-1].name] == 8
        assert got.size_mb == pytest.approx(sum(lay.params * got.bits[lay.name] / 8e6 for lay in layers))


def test_ilp_without_limits_takes_the_least_sensitive_bits():
    layers = _layers()
    got = allocate_bits(layers)
    assert all(b == 8 for b in got.bits.values())  # Omega(4) > Omega(8) everywhere
    assert got.latency_ms == pytest.approx(sum(lay.latency_ms[8] for lay in layers))


def test_ilp_pins_first_and_last_layers():
    layers = _layers()
    smallest_pinned = (sum(lay.params for lay in layers) + layers[0].params + layers[-1].params) / 2e6
    got = allocate_bits(layers, Limits(max_size_mb=smallest_pinned))
    assert [got.bits[lay.name] for lay in layers] == [8] + [4] * (len(layers) - 2) + [8]
    free = allocate_bits(layers, Limits(max_size_mb=sum(lay.params for lay in layers) / 2e6), pin_ends=False)
    assert set(free.bits.values()) == {4}
    pinned = allocate_bits(layers, Limits(max_size_mb=smallest_pinned * 1.5), pinned={"l3": 4})
    assert pinned.bits["l3"] == 4
    assert pinned.objective == pytest.approx(_brute(layers, Limits(max_size_mb=smallest_pinned * 1.5),
                                                    {"l0": 8, "l6": 8, "l3": 4})[0])


def test_ilp_infeasible_limit_names_the_smallest_feasible_value():
    layers = _layers()
    smallest = (sum(lay.params for lay in layers) + layers[0].params + layers[-1].params) / 2e6
    with pytest.raises(CompileError, match=rf"model size limit .* is {smallest:.6g} MB"):
        allocate_bits(layers, Limits(max_size_mb=smallest * 0.99))
    smallest_latency = min(_brute_metric(layers, Metric.LATENCY))
    with pytest.raises(CompileError, match=r"latency limit 0\.01 ms cannot be met") as err:
        allocate_bits(layers, Limits(max_latency_ms=0.01))
    shown = float(re.search(r"is ([0-9.e+-]+) ms", str(err.value)).group(1))
    assert smallest_latency <= shown <= smallest_latency * (1 + 1e-5)  # rounded up: feasible as printed
    with pytest.raises(CompileError, match="latency table"):
        allocate_bits([LayerCost("a", 10, 10, {4: 1, 8: 0})], Limits(max_latency_ms=1))


def _brute_metric(layers, metric):
    for choice in itertools.product((4, 8), repeat=len(layers) - 2):
        bits = dict(zip([lay.name for lay in layers], (8, *choice, 8)))
        yield sum(lay.value(metric, bits[lay.name]) for lay in layers)


def test_ilp_jointly_infeasible_limits():
    """Each limit alone is feasible; together they are not: 4 bits halve the size but
    double the latency of the middle layers."""
    layers = [LayerCost(f"l{i}", 1000, 1000, {4: 2.0, 8: 1.0}, {4: 1.0, 8: 0.5}) for i in range(4)]
    limits = Limits(max_size_mb=0.003, max_latency_ms=2.5)
    assert _brute(layers, Limits(max_size_mb=0.003)) and _brute(layers, Limits(max_latency_ms=2.5))
    assert _brute(layers, limits) is None
    with pytest.raises(CompileError, match=r"model size limit 0\.003 MB cannot be met together with "
                                           r"latency <= 2\.5 ms: .* is 0\.0035 MB"):
        allocate_bits(layers, limits)


def test_ilp_tied_layers_share_bits():
    layers = _layers()
    tied = [("l1", "l4"), ("l2", "l3", "l5")]
    limits = Limits(max_size_mb=sum(lay.params for lay in layers) / 1e6 * 0.7)
    got = allocate_bits(layers, limits, tied=tied)
    assert got.bits["l1"] == got.bits["l4"] and got.bits["l2"] == got.bits["l3"] == got.bits["l5"]
    assert got.objective == pytest.approx(_brute(layers, limits, tied=tied)[0])
    with pytest.raises(CompileError, match="contradict"):
        allocate_bits(layers, tied=[("l0", "l1")], pinned={"l1": 4})
    with pytest.raises(CompileError, match="not among the layers"):
        allocate_bits(layers, tied=[("l1", "nope")])


def test_pareto_front_and_plot(tmp_path):
    layers = _layers()
    front = pareto_front(layers, points=12)
    sizes, objectives = [a.size_mb for a in front], [a.objective for a in front]
    assert sizes == sorted(sizes) and objectives == sorted(objectives, reverse=True)
    assert objectives[-1] == pytest.approx(allocate_bits(layers).objective)
    for a in front:  # every point is the optimum at its own size
        assert a.objective == pytest.approx(_brute(layers, Limits(max_size_mb=a.size_mb))[0])
    pytest.importorskip("matplotlib")
    png = plot_pareto(front, tmp_path / "pareto.png", chosen=front[len(front) // 2])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_limits_are_validated():
    with pytest.raises(CompileError, match="model size limit -1"):
        Limits(max_size_mb=-1)


# ---------------------------------------------------------------- sensitivity


def _linear_onnx(path, w: np.ndarray):
    """y = x @ W: the MSE Hessian with respect to W is (2 / (R N)) I_N (x) X^T X."""
    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("method", list(Method))
def test_hutchinson_exact_on_orthogonal_inputs(tmp_path, method):
    """Rows and columns of a Hadamard matrix are orthogonal: every Rademacher draw gives
    the trace exactly, 2 * mean ||x||^2 = 2 * 8 * 0.5^2 = 4, for either estimator."""
    h = np.array([[1.0]])
    for _ in range(3):
        h = np.block([[h, h], [h, -h]])
    x = 0.5 * h
    path = _linear_onnx(tmp_path / "lin.onnx", np.random.default_rng(0).standard_normal((8, 3)))
    config = SensitivityConfig(loss=Loss.MSE, method=method, max_iterations=5)
    report = compute_sensitivity(path, [{"x": row[None].astype(np.float32)} for row in x], config,
                                 cache_dir=None, progress=False)
    (layer,) = report.layers
    assert (layer.name, layer.op, layer.shape, layer.out_axis, layer.macs) == ("w", "matmul", (8, 3), 1, 24)
    assert layer.trace == pytest.approx(4.0, rel=1e-5)
    assert report.converged and report.iterations == 2


@pytest.mark.parametrize("method", list(Method))
def test_hutchinson_close_to_closed_form(tmp_path, method):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 6)).astype(np.float32)
    path = _linear_onnx(tmp_path / "lin.onnx", rng.standard_normal((6, 4)))
    config = SensitivityConfig(loss=Loss.MSE, method=method, max_iterations=400, tolerance=1e-9)
    report = compute_sensitivity(path, [{"x": row[None]} for row in x], config, cache_dir=None, progress=False)
    exact = 2 * np.mean(np.sum(x.astype(np.float64) ** 2, axis=1))
    assert report.iterations == 400 and not report.converged
    assert report.layers[0].trace == pytest.approx(exact, rel=0.1)
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    lay = report.layers[0]
    assert lay.sensitivity(4) > lay.sensitivity(8) > 0
    assert lay.sensitivity(8) == pytest.approx(lay.trace / w.size * lay.perturbation[8])


def _samples(count, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


def test_sensitivity_reproducible_and_cached(tmp_path, small_cnn_path, monkeypatch):
    config = SensitivityConfig(max_iterations=6)
    a = compute_sensitivity(small_cnn_path, _samples(4), config, cache_dir=None, progress=False)
    b = compute_sensitivity(small_cnn_path, _samples(4), config, cache_dir=None, progress=False)
    c = compute_sensitivity(small_cnn_path, _samples(4), SensitivityConfig(max_iterations=6, seed=1),
                            cache_dir=None, progress=False)
    assert [lay.trace for lay in a.layers] == [lay.trace for lay in b.layers]
    assert [lay.trace for lay in a.layers] != [lay.trace for lay in c.layers]
    assert a.loss == "cross_entropy"  # one [1, 10] output: a classifier
    first = compute_sensitivity(small_cnn_path, _samples(4), config, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")
    monkeypatch.setattr("passes.mixed_precision.hutchinson.estimate_traces", boom)
    again = compute_sensitivity(small_cnn_path, _samples(4), config, cache_dir=tmp_path, progress=False)
    assert again == first
    with pytest.raises(AssertionError, match="recomputed"):  # other samples: another key
        compute_sensitivity(small_cnn_path, _samples(4, seed=5), config, cache_dir=tmp_path, progress=False)


def test_layers_are_those_the_compiler_sees(small_cnn_path):
    """Names and weights come from the onnxruntime-optimised graph (BatchNorm folded into
    conv1's weight), and each maps to a Relax binding of the imported float module."""
    from frontends.onnx_import import load_onnx
    from passes import bind_weights
    from passes.mixed_precision.sensitivity import match_relax_layers

    model = optimized_graph(small_cnn_path)
    layers = quantizable_layers(model)
    assert [lay["op"] for lay in layers] == ["conv", "conv", "conv", "conv", "matmul"]
    assert layers[0]["name"] != "w1" and layers[-1]["out_axis"] == 0  # folded; Gemm transB=1
    assert layers[0]["macs"] == 8 * 8 * 8 * 27
    report = compute_sensitivity(small_cnn_path, _samples(2), SensitivityConfig(max_iterations=2),
                                 cache_dir=None, progress=False)
    imported = load_onnx(small_cnn_path)
    mapping = match_relax_layers(report, bind_weights(imported.mod, imported.params))
    assert sorted(mapping.values()) == sorted(lay.name for lay in report.layers)


def test_fingerprint_ignores_output_axis_position():
    w = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    assert weight_fingerprint(w, 0) == weight_fingerprint(w.T.copy(), 1) != weight_fingerprint(w, 1)


def test_torch_evaluator_matches_onnxruntime(small_cnn_path):
    import onnxruntime as ort
    import torch

    from passes.mixed_precision.onnx_torch import TorchGraph

    model = optimized_graph(small_cnn_path)
    x = _samples(1)[0]["x"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    with torch.no_grad():
        got = TorchGraph(model).run({"x": x})[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # stacked samples follow the constant Reshape shapes
        stacked = TorchGraph(model).run({"x": np.concatenate([x, x])})[0].numpy()
    np.testing.assert_allclose(stacked, np.concatenate([expected, expected]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op, attrs, kind", [
    *[(op, {"keepdims": keep}, "reduce") for op in ("ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                                                     "ReduceSumSquare", "ReduceLogSumExp") for keep in (0, 1)],
    *[(op, {}, "positive") for op in ("Log", "Reciprocal", "Sign", "Floor", "Ceil", "Softplus", "Softsign", "Sin")],
    ("LeakyRelu", {"alpha": 0.2}, "float"), ("Elu", {}, "float"), ("HardSigmoid", {"alpha": 0.3}, "float"),
    ("HardSwish", {}, "float"), *[(op, {}, "bool") for op in ("And", "Or", "Xor")],
    ("GreaterOrEqual", {}, "pair"), ("LessOrEqual", {}, "pair"), ("Expand", {}, "expand"),
    ("Flatten", {"axis": 3}, "float"), ("Flatten", {"axis": -1}, "float"), ("Gather", {"axis": 1}, "gather")])
def test_torch_twins_equal_onnx_reference(op, attrs, kind):
    """The sensitivity's torch twins of whole op families (reductions, functions of one input,
    logic, Expand) equal onnx's reference evaluator: a BERT export with an attention mask (And,
    Expand) and in-graph L2 normalization (ReduceL2) was refused by `--bits mixed`, then failed on its
    Flatten(axis = rank) of the mask."""
    import torch
    from onnx.reference import ReferenceEvaluator

    from passes.mixed_precision.onnx_torch import _OPS

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    inputs = {"reduce": [x, np.array([0, 2], np.int64)], "positive": [np.abs(x) + 0.1], "float": [x],
              "bool": [x > 0, x > 0.5], "pair": [x, x[::-1].copy()],
              "expand": [x[:, :1], np.array([2, 3, 4], np.int64)],
              "gather": [x, np.array([[-1, 0], [2, -3]], np.int64)]}[kind]  # negative: from the end
    names = [f"i{k}" for k in range(len(inputs))]
    graph = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                               for n, v in zip(names, inputs)],
                              [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    want = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])).run(
        None, dict(zip(names, inputs)))[0]
    fn = _OPS[op]
    extra = {"op": op} if "op" in fn.__code__.co_varnames else {}
    got = fn([torch.tensor(v) for v in inputs], attrs, **extra).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-5, atol=1e-5)
