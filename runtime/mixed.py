"""`--bits mixed`: choose each layer's weight bits (4 or 8) for `compile_model`.

    sensitivity (Hutchinson, on the first calibration samples; cached)
      -> latency table (only with --max-latency; measured on the target; cached)
      -> ILP (`passes.mixed_precision.allocate_bits`) under the given limits
      -> QuantConfig.layer_bits, a per-layer table (layers.md) and a Pareto plot (pareto.png)

Layers are the conv2d/matmul bindings with constant weights that the integer lowering
records (`ctx.layers`), matched to their ONNX weights by fingerprint. Limits bound what the
ILP sees: the weight bytes of those layers (MB = 1e6 bytes), their BOPS, and the sum of their
kernels' latencies from the table (requantization, pooling and adds are not in it). No two
layers share a weight scale here (per-channel scales, one per layer), so no layers are tied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from frontends.errors import CompileError

BITS_CHOICES = ("8", "4", "mixed")
TABLE_FILE = "layers.md"
PARETO_FILE = "pareto.png"


@dataclass(frozen=True)
class Precision:
    """Weight bit-widths: uniform 8, uniform 4, or mixed under limits (validated)."""

    bits: str = "8"
    max_size_mb: float | None = None
    max_gbops: float | None = None
    max_latency_ms: float | None = None
    pin_first: bool = True  # first layer kept at 8 bits
    pin_last: bool = True  # last layer kept at 8 bits
    sensitivity_samples: int = 16  # calibration samples the Hessian traces are estimated on
    latency_rpc: str | None = None  # HOST:PORT of the board's RPC server (or tracker, with latency_key)
    latency_key: str | None = None
    latency_threads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "bits", str(self.bits))
        if self.bits not in BITS_CHOICES:
            raise CompileError(f"--bits {self.bits}: allowed {', '.join(BITS_CHOICES)}")
        limits = {"--max-size": self.max_size_mb, "--max-bops": self.max_gbops, "--max-latency": self.max_latency_ms}
        given = [flag for flag, v in limits.items() if v is not None]
        if self.bits != "mixed" and given:
            raise CompileError(f"{', '.join(given)}: limits for --bits mixed; with --bits {self.bits} every layer "
                               "has the same bits")
        if self.bits == "mixed" and not given:
            raise CompileError("--bits mixed needs at least one limit: --max-size MB, --max-bops G or "
                               "--max-latency MS (without one, every layer would stay at 8 bits)")
        for flag, v in limits.items():
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise CompileError(f"{flag} {v}: must be a positive number")
        if self.sensitivity_samples < 1:
            raise CompileError(f"--sensitivity-samples {self.sensitivity_samples}: must be >= 1")
        if self.latency_key and not self.latency_rpc:
            raise CompileError("--latency-key needs --latency-rpc naming the tracker")
        if self.latency_threads is not None and self.latency_threads < 1:
            raise CompileError(f"--latency-threads {self.latency_threads}: must be >= 1")

    @property
    def weight_bits(self) -> int:
        return 4 if self.bits == "4" else 8

    def limits(self):
        from passes.mixed_precision import Limits

        return Limits(self.max_size_mb, self.max_gbops, self.max_latency_ms)

    def limits_dict(self) -> dict:
        return {"max_size_mb": self.max_size_mb, "max_gbops": self.max_gbops, "max_latency_ms": self.max_latency_ms}


@dataclass
class MixedChoice:
    """The chosen bits, with what the table, the manifest and the plot need."""

    layer_bits: dict[str, int]  # binding name -> bits
    rows: list[dict]  # one per layer, in graph order: the table's columns
    allocation: object  # passes.mixed_precision.Allocation
    front: list = field(default_factory=list)
    metric: object = None  # the Pareto plot's x axis
    pinned: dict[str, int] = field(default_factory=dict)
    report: object = None  # the SensitivityReport
    costs: list = field(default_factory=list)  # the ILP's LayerCosts (benchmarks compare other allocations)

    def annotate(self, layers: list[dict]) -> list[dict]:
        """The manifest's layer rows with the ONNX weight name, sensitivity and latency added."""
        extra = {r["name"]: r for r in self.rows}
        return [{**lay, **{k: extra[lay["name"]][k] for k in ("onnx_weight", "sensitivity", "latency_ms")
                           if lay["name"] in extra}} for lay in layers]

    def manifest(self, precision: Precision) -> dict:
        a = self.allocation
        return {"limits": precision.limits_dict(), "pinned": self.pinned,
                "allocation": {"size_mb": round(a.size_mb, 6), "gbops": round(a.gbops, 6),
                               "latency_ms": None if a.latency_ms is None else round(a.latency_ms, 6),
                               "summed_sensitivity": a.objective},
                "sensitivity": {"method": self.report.method, "loss": self.report.loss,
                                "samples": self.report.samples, "iterations": self.report.iterations,
                                "converged": self.report.converged},
                "table": TABLE_FILE, "pareto": PARETO_FILE}

    def table(self) -> str:
        """Markdown: one row per layer."""
        head = ("| # | layer | ONNX weight | op | shape | bits | sensitivity Omega(b) | Omega(8) / Omega(4) | params | "
                "size kB | latency ms |\n|---|---|---|---|---|---|---|---|---|---|---|")
        lines = [head]
        for i, r in enumerate(self.rows):
            lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.4f}"
            sens = "-" if r["sensitivity"] is None else f"{r['sensitivity']:.3e}"
            both = "-" if r["sensitivity"] is None else f"{r['omega'][8]:.2e} / {r['omega'][4]:.2e}"
            lines.append(f"| {i} | {r['name']} | {r['onnx_weight'] or '-'} | {r['op']} | "
                         f"{'x'.join(map(str, r['shape']))} | {r['bits']}{' (pinned)' if r['name'] in self.pinned else ''}"
                         f" | {sens} | {both} | {r['params']} | {r['params'] * r['bits'] / 8 / 1e3:.2f} | {lat} |")
        a = self.allocation
        lat = "" if a.latency_ms is None else f", latency {a.latency_ms:.3f} ms"
        lines.append(f"\nTotal: {sum(r['bits'] == 4 for r in self.rows)} of {len(self.rows)} layers at 4 bits, "
                     f"weights {a.size_mb:.4f} MB, {a.gbops:.3f} GBOPs{lat}, summed sensitivity {a.objective:.4e}")
        return "\n".join(lines)

    def write(self, directory: Path) -> None:
        """layers.md and pareto.png into `directory` (the artifact's temporary directory)."""
        from passes.mixed_precision import plot_pareto

        (directory / TABLE_FILE).write_text(f"# Per-layer weight bits\n\n{self.table()}\n")
        plot_pareto(self.front, directory / PARETO_FILE, chosen=self.allocation, metric=self.metric)


def choose_bits(model_path, float_mod, layers: list[dict], samples, precision: Precision, spec,
                input_shapes=None, progress: bool = True, log=print) -> MixedChoice:
    """Bits per layer for `layers` (the `ctx.layers` rows of an all-8-bit lowering of
    `float_mod`) under `precision`'s limits; CompileError if they cannot be met."""
    try:
        import torch  # noqa: F401  (the sensitivity estimator runs the float model in torch)
    except ImportError:
        raise CompileError("--bits mixed estimates Hessian traces with torch, which is not installed: "
                           "pip install -e '.[examples]' (it pins torch==2.13.0, a CPU build)") from None
    from passes.mixed_precision import (
        LayerCost,
        Metric,
        allocate_bits,
        compute_sensitivity,
        match_relax_layers,
        pareto_front,
    )

    if not layers:
        raise CompileError(f"{model_path}: no conv/matmul layer with constant weights: nothing to choose bits for")
    used = samples[:precision.sensitivity_samples]
    log(f"sensitivity: Hutchinson Hessian traces on {len(used)} calibration sample(s) (cached after the first run)")
    from passes.mixed_precision import sensitivity

    report = compute_sensitivity(model_path, used, input_shapes=input_shapes, progress=progress,
                                 cache_dir=sensitivity.CACHE_DIR)
    onnx_names = match_relax_layers(report, float_mod)
    by_onnx = {lay.name: lay for lay in report.layers}
    latency = None
    if precision.max_latency_ms is not None:
        latency = _latency(layers, precision, spec, progress, log)
    costs, pinned = [], {}
    for row in layers:
        sens = by_onnx.get(onnx_names.get(row["name"]))
        omega = {b: sens.sensitivity(b) for b in (4, 8)} if sens else {4: 0.0, 8: 0.0}
        macs = sens.macs if sens else 0
        if sens is None:
            pinned[row["name"]] = 8  # no sensitivity (weight changed by a pass): kept at 8 bits
            log(f"layer {row['name']}: no matching ONNX weight for its sensitivity; kept at 8 bits")
        costs.append(LayerCost(row["name"], int(row["params"]), macs, omega,
                               None if latency is None else latency[row["name"]]))
    if precision.pin_first:
        pinned.setdefault(layers[0]["name"], 8)
    if precision.pin_last:
        pinned.setdefault(layers[-1]["name"], 8)
    try:
        allocation = allocate_bits(costs, precision.limits(), pin_ends=False, pinned=pinned)
    except CompileError as err:
        raise CompileError(f"{err}. Layers pinned to 8 bits: {_describe_pins(layers, pinned, precision)}") from None
    metric = Metric.LATENCY if precision.max_latency_ms is not None else Metric.SIZE
    front = pareto_front(costs, metric, points=24, pin_ends=False, pinned=pinned)
    rows = []
    for row, cost in zip(layers, costs):
        b = allocation.bits[row["name"]]
        rows.append({"name": row["name"], "onnx_weight": onnx_names.get(row["name"]), "op": row["op"],
                     "shape": row["shape"], "bits": b, "params": int(row["params"]),
                     "sensitivity": cost.sensitivity[b] if row["name"] in onnx_names else None,
                     "omega": dict(cost.sensitivity),
                     "latency_ms": None if latency is None else latency[row["name"]][b]})
    return MixedChoice(dict(allocation.bits), rows, allocation, front, metric, pinned, report, costs)


def _describe_pins(layers, pinned, precision) -> str:
    notes = []
    for name in pinned:
        if name == layers[0]["name"] and precision.pin_first:
            notes.append(f"{name} (the first layer; --no-pin-first frees it)")
        elif name == layers[-1]["name"] and precision.pin_last:
            notes.append(f"{name} (the last layer; --no-pin-last frees it)")
        else:
            notes.append(f"{name} (no sensitivity)")
    return ", ".join(notes) or "none"


def _latency(layers, precision: Precision, spec, progress: bool, log):
    from . import layer_latency
    from .remote import connect

    session, where = None, "local"
    if precision.latency_rpc:
        session = connect(precision.latency_rpc, precision.latency_key)
        where = f"rpc:{precision.latency_key or precision.latency_rpc}"
    log(f"latency table: every layer at 8 and 4 bits on {spec.name} ({where})")
    return layer_latency.latency_table(layers, spec, session=session, where=where,
                                       threads=precision.latency_threads, progress=progress,
                                       cache_dir=layer_latency.CACHE_DIR)
