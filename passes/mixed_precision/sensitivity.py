"""Hessian-trace sensitivity of every quantizable layer (HAWQ-V3; DESIGN.md section 2).

    Omega_l(b) = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2       for b in the candidate bits

Layers: Conv, and MatMul/Gemm whose weight (second input) is an initializer, in the graph
the compiler imports (the file read, input shapes fixed, onnxruntime's basic clean-up:
`frontends.onnx_import`), named by the weight's initializer name. `Q_b` is the compiler's
symmetric per-output-channel quantizer (`quantize_weights`; output axis 0 for conv OIHW
and Gemm transB=1, 1 for MatMul/Gemm [K, N] weights). `H_l` is the Hessian block of a
label-free loss on the calibration samples with respect to `W_l`:

- `Loss.CROSS_ENTROPY` (the default for a single [N, C] output): cross-entropy against the
  float model's own argmax, the standard label-free choice for classifiers;
- `Loss.MSE` (the default otherwise): mean squared error to the float model's outputs.

Both are evaluated on stacked samples (mean over samples). Two Hutchinson estimators,
both with seeded Rademacher vectors, running means stopped when every layer's relative
change drops below `tolerance` (or at `max_iterations`):

- `Method.HESSIAN`: `v^T H v` with Hessian-vector products by double backward; one `v`
  over all layers at once, so `v_l . (Hv)_l` is an unbiased estimate of each block's trace.
- `Method.GAUSS_NEWTON` (default): `Tr(J_l^T A J_l) = E ||J_l^T B z||^2` with `B B^T = A`
  the loss Hessian in output space and `z` Rademacher over the outputs; one backward per
  iteration instead of a double backward, no cross-layer noise, always >= 0 (EfficientNet-
  Lite0, 4 images, 2 loaded cores: 3.3 s vs 34 s per iteration; after 15 iterations
  HESSIAN still gave 10 of 50 layers a negative trace), and equal to the exact `Tr(H_l)`
  for networks piecewise linear in each layer's weights (conv/matmul followed by ReLU,
  ReLU6, max-pool, add, average: MobileNets, EfficientNet-Lite, ResNets). Elsewhere (GELU, attention) it is the
  Gauss-Newton part of the Hessian, the usual positive semi-definite approximation.

Results are cached as JSON under `~/.cache/intq/sensitivity/` keyed by the sha256 of the
ONNX file, the samples and the settings.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from frontends.errors import CompileError
from frontends.onnx_import import _basic_optimize, _fix_input_shapes, _read

from ..reference.kernels import quantize_weights

CACHE_DIR = Path.home() / ".cache" / "intq" / "sensitivity"
CACHE_VERSION = 1


class Loss(Enum):
    AUTO = "auto"
    CROSS_ENTROPY = "cross_entropy"
    MSE = "mse"


class Method(Enum):
    GAUSS_NEWTON = "gauss_newton"
    HESSIAN = "hessian"


@dataclass(frozen=True)
class SensitivityConfig:
    """Estimator settings; part of the cache key."""

    bits: tuple[int, ...] = (4, 8)
    loss: Loss = Loss.AUTO
    method: Method = Method.GAUSS_NEWTON
    tolerance: float = 1e-3
    max_iterations: int = 50
    seed: int = 0
    batch_size: int = 16  # samples stacked per forward pass

    def __post_init__(self):
        if not self.bits or any(b not in range(2, 9) for b in self.bits):
            raise CompileError(f"SensitivityConfig.bits={self.bits}: allowed values 2..8")
        if not 0 < self.tolerance < 1:
            raise CompileError(f"SensitivityConfig.tolerance={self.tolerance}: must be in (0, 1)")
        if self.max_iterations < 2:
            raise CompileError(f"SensitivityConfig.max_iterations={self.max_iterations}: must be >= 2")
        if self.batch_size < 1:
            raise CompileError(f"SensitivityConfig.batch_size={self.batch_size}: must be >= 1")


@dataclass(frozen=True)
class LayerSensitivity:
    """One quantizable layer: `name` is its ONNX weight initializer in the optimised graph."""

    name: str
    node: str
    op: str  # "conv" or "matmul"
    shape: tuple[int, ...]
    out_axis: int  # the weight's output-channel axis in `shape`
    params: int
    macs: int  # multiply-accumulates per inference at the model's input shapes
    fingerprint: str  # weight_fingerprint(weight, out_axis)
    trace: float  # Hutchinson estimate of Tr(H_l)
    perturbation: dict[int, float]  # bits -> ||Q_b(W) - W||^2

    @property
    def trace_per_param(self) -> float:
        return self.trace / self.params

    def sensitivity(self, bits: int) -> float:
        return self.trace_per_param * self.perturbation[bits]


@dataclass(frozen=True)
class SensitivityReport:
    layers: tuple[LayerSensitivity, ...]
    loss: str
    method: str
    samples: int
    iterations: int
    converged: bool
    seconds: float
    config: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityReport:
        data = json.loads(text)
        layers = tuple(LayerSensitivity(**{**row, "shape": tuple(row["shape"]),
                                           "perturbation": {int(k): v for k, v in row["perturbation"].items()}})
                       for row in data.pop("layers"))
        return cls(layers=layers, **data)

    def table(self) -> str:
        bits = sorted(self.layers[0].perturbation) if self.layers else []
        head = f"{'#':>3} {'layer':<28} {'op':<6} {'shape':<18} {'params':>8} {'trace/n':>10} " + " ".join(
            f"{'Omega@' + str(b):>10}" for b in bits)
        rows = [f"{i:>3} {lay.name[:28]:<28} {lay.op:<6} {'x'.join(map(str, lay.shape)):<18} {lay.params:>8} "
                f"{lay.trace_per_param:>10.3e} " + " ".join(f"{lay.sensitivity(b):>10.3e}" for b in bits)
                for i, lay in enumerate(self.layers)]
        return "\n".join([head, *rows])


def weight_fingerprint(w: np.ndarray, out_axis: int) -> str:
    """Hash of a weight with its output-channel axis first: an ONNX Gemm weight [N, K] and
    the [K, N] constant TVM's importer makes of it get the same fingerprint."""
    w = np.ascontiguousarray(np.moveaxis(np.asarray(w, np.float32), out_axis, 0))
    return hashlib.sha256(repr(w.shape).encode() + w.tobytes()).hexdigest()[:16]


def optimized_graph(path: str | Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """The ONNX graph `frontends.onnx_import.load_onnx` hands to TVM (before its import)."""
    path = Path(path)
    model = _read(path)
    _fix_input_shapes(model, dict(input_shapes or {}), path)
    return _basic_optimize(model, path)


def quantizable_layers(model: onnx.ModelProto) -> list[dict]:
    """Conv/MatMul/Gemm nodes with an initializer weight, in graph order (no traces yet)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output]}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            op, out_axis, reduction = "conv", 0, int(np.prod(w.shape[1:]))
        elif w.ndim == 2:
            out_axis = 0 if node.op_type == "Gemm" and attrs.get("transB", 0) else 1
            op, reduction = "matmul", w.shape[1 - out_axis]
        else:
            continue
        out = shapes.get(node.output[0])
        if not out or min(out) <= 0:
            raise CompileError(f"node {node.name!r}: output shape unknown after shape inference; "
                               "fix dynamic input dimensions with input_shapes")
        layers.append({"name": node.input[1], "node": node.name, "op": op, "shape": tuple(w.shape),
                       "out_axis": out_axis, "params": int(w.size), "macs": int(np.prod(out)) * int(reduction),
                       "fingerprint": weight_fingerprint(w, out_axis), "weight": w})
    return layers


def perturbation(w: np.ndarray, bits: int, out_axis: int) -> float:
    """||Q_b(W) - W||^2 with the compiler's symmetric per-output-channel quantizer."""
    q, scale = quantize_weights(w, bits, out_axis)
    shape = [1] * w.ndim
    shape[out_axis] = -1
    return float(np.sum((q * scale.reshape(shape) - np.asarray(w, np.float64)) ** 2))


def _stack(samples: Sequence[Mapping[str, np.ndarray]], batch_size: int) -> list[dict[str, np.ndarray]]:
    chunks = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    return [{k: np.concatenate([s[k] for s in chunk]) for k in chunk[0]} for chunk in chunks]


def _settings(config: SensitivityConfig) -> dict:
    return {**asdict(config), "bits": list(config.bits), "loss": config.loss.value, "method": config.method.value}


def _cache_key(path: Path, samples, config: SensitivityConfig, input_shapes) -> str:
    h = hashlib.sha256(path.read_bytes())
    for sample in samples:
        for k in sorted(sample):
            h.update(k.encode() + np.ascontiguousarray(sample[k]).tobytes())
    settings = {**_settings(config), "input_shapes": {k: list(v) for k, v in sorted((input_shapes or {}).items())}, "v": CACHE_VERSION}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def compute_sensitivity(path: str | Path, samples: Sequence[Mapping[str, np.ndarray]],
                        config: SensitivityConfig = SensitivityConfig(),
                        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                        cache_dir: str | Path | None = CACHE_DIR, progress: bool = True) -> SensitivityReport:
    """Per-layer traces and sensitivities of the ONNX model at `path` on `samples` (dicts
    name -> array with the model's input shape, as `runtime.compiler.load_calibration`
    returns them). `cache_dir=None` disables the cache."""
    from .hutchinson import estimate_traces

    path = Path(path)
    if not samples:
        raise CompileError("compute_sensitivity: no calibration samples given")
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{_cache_key(path, samples, config, input_shapes)}.json"
        if cache.is_file():
            return SensitivityReport.from_json(cache.read_text())
    start = time.perf_counter()
    model = optimized_graph(path, input_shapes)
    layers = quantizable_layers(model)
    if not layers:
        raise CompileError(f"{path}: no Conv/MatMul/Gemm layer with a constant weight to quantize")
    names = [lay["name"] for lay in layers]
    try:
        traces, loss, iterations, converged = estimate_traces(model, names, _stack(samples, config.batch_size),
                                                              config, progress)
    except (CompileError, RuntimeError, IndexError):
        if config.batch_size == 1:
            raise
        # stacked samples do not run as one batch (a shape fixed to batch 1: a transformer's mask
        # Expand, position ids gathered for one row): one sample at a time
        traces, loss, iterations, converged = estimate_traces(model, names, _stack(samples, 1),
                                                              replace(config, batch_size=1), progress)
    report = SensitivityReport(
        layers=tuple(LayerSensitivity(**{k: v for k, v in lay.items() if k != "weight"}, trace=traces[lay["name"]],
                                      perturbation={b: perturbation(lay["weight"], b, lay["out_axis"])
                                                    for b in config.bits}) for lay in layers),
        loss=loss.value, method=config.method.value, samples=len(samples), iterations=iterations,
        converged=converged, seconds=round(time.perf_counter() - start, 2),
        config=_settings(config))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(report.to_json())
        tmp.replace(cache)
    return report


def match_relax_layers(report: SensitivityReport, mod) -> dict[str, str]:
    """{Relax binding name: ONNX weight name} for the conv2d/matmul bindings with a constant
    weight in `mod` (the float module after `passes.bind_weights`, whose binding names the
    lowering records in `ctx.layers`), matched by weight fingerprint. Layers that do not
    match (a weight changed by a pass) are left out; compare the lengths to detect it."""
    import tvm
    from tvm import relax

    by_print = {lay.fingerprint: lay.name for lay in report.layers}
    found = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not hasattr(call.op, "name") or len(call.args) < 2:
                continue
            if call.op.name not in ("relax.nn.conv2d", "relax.matmul") or not isinstance(
                    call.args[1], tvm.ir.GenericConst):
                continue
            w = call.args[1].value.numpy()
            if call.op.name == "relax.matmul" and w.ndim != 2:
                continue
            key = weight_fingerprint(w, 0 if call.op.name == "relax.nn.conv2d" else 1)
            if key in by_print:
                found[binding.var.name] = by_print[key]
    return found


def main(argv=None) -> int:
    """Print the per-layer sensitivity table of an ONNX model (progress on stderr)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m passes.mixed_precision.sensitivity", description=main.__doc__,
                                epilog="example: python -m passes.mixed_precision.sensitivity model.onnx calib.npz")
    p.add_argument("model")
    p.add_argument("calib", help=".npz: keys are the input names, axis 0 indexes samples")
    p.add_argument("--method", choices=[m.value for m in Method], default=Method.GAUSS_NEWTON.value)
    p.add_argument("--max-iterations", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in _read(Path(args.model)).graph.input}
        data = dict(np.load(args.calib, allow_pickle=False))
        count = len(next(iter(data.values())))
        samples = [{k: v[i][None] if v[i].ndim == ranks.get(k, 0) - 1 else v[i] for k, v in data.items()}
                   for i in range(count)]
        config = SensitivityConfig(method=Method(args.method), max_iterations=args.max_iterations, seed=args.seed)
        report = compute_sensitivity(args.model, samples, config)
    except (CompileError, OSError, ValueError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    print(f"{report.method}, loss {report.loss}, {report.samples} samples, {report.iterations} iterations "
          f"(converged: {report.converged}), {report.seconds} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
