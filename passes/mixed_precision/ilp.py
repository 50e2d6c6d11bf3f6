"""Per-layer weight bit-widths by integer linear programming (HAWQ-V3; DESIGN.md section 2).

    minimise    sum_l sum_b Omega_l(b) x[l, b]                x[l, b] in {0, 1}
    subject to  sum_b x[l, b] = 1                             one bit-width per layer
                x[l, 8] = 1 for the first and last layer       (and any other pins)
                x[l, b] = x[t, b] for l tied to t              layers that share a scale
                sum params_l * b / 8 / 1e6 * x[l, b] <= max_size_mb
                sum macs_l * b * a / 1e9   * x[l, b] <= max_gbops   (a: activation bits)
                sum latency_l(b)           * x[l, b] <= max_latency_ms

solved with `scipy.optimize.milp` (HiGHS). A limit that cannot be met raises CompileError
naming the limit and the smallest value that can (found by minimising that quantity under
the pins, ties and the other limits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from frontends.errors import CompileError


class Metric(Enum):
    SIZE = "size"
    BOPS = "bops"
    LATENCY = "latency"

    @property
    def label(self) -> str:
        return {"size": "model size", "bops": "BOPS", "latency": "latency"}[self.value]

    @property
    def unit(self) -> str:
        return {"size": "MB", "bops": "GBOPs", "latency": "ms"}[self.value]


@dataclass(frozen=True)
class LayerCost:
    """What the ILP knows of one layer; `latency_ms` maps bits to measured milliseconds."""

    name: str
    params: int
    macs: int
    sensitivity: Mapping[int, float]
    latency_ms: Mapping[int, float] | None = None

    @classmethod
    def from_report(cls, report, latency: Mapping[str, Mapping[int, float]] | None = None) -> list[LayerCost]:
        """Layers of a `SensitivityReport`, with an optional latency table {name: {bits: ms}}."""
        bits = sorted(report.layers[0].perturbation) if report.layers else []
        return [cls(lay.name, lay.params, lay.macs, {b: lay.sensitivity(b) for b in bits},
                    None if latency is None else latency.get(lay.name)) for lay in report.layers]

    def value(self, metric: Metric, bits: int, activation_bits: int = 8) -> float:
        if metric is Metric.SIZE:
            return self.params * bits / 8 / 1e6
        if metric is Metric.BOPS:
            return self.macs * bits * activation_bits / 1e9
        return float(self.latency_ms[bits])


@dataclass(frozen=True)
class Limits:
    max_size_mb: float | None = None
    max_gbops: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self):
        for name, value in self.by_metric().items():
            if not value > 0 or not math.isfinite(value):
                raise CompileError(f"Limits: {name.label} limit {value!r} must be a positive number")

    def by_metric(self) -> dict[Metric, float]:
        values = {Metric.SIZE: self.max_size_mb, Metric.BOPS: self.max_gbops, Metric.LATENCY: self.max_latency_ms}
        return {m: v for m, v in values.items() if v is not None}


@dataclass(frozen=True)
class Allocation:
    """The chosen bits per layer (in layer order), the summed sensitivity and the totals."""

    bits: dict[str, int]
    objective: float
    size_mb: float
    gbops: float
    latency_ms: float | None
    limits: Limits = field(default_factory=Limits)

    def total(self, metric: Metric) -> float | None:
        return {Metric.SIZE: self.size_mb, Metric.BOPS: self.gbops, Metric.LATENCY: self.latency_ms}[metric]


class _Problem:
    """Variables x[l * B + j] for layer l, candidate bits[j]; pins as bounds, ties as equalities."""

    def __init__(self, layers: Sequence[LayerCost], candidates: Sequence[int], pinned: Mapping[str, int],
                 tied: Sequence[Sequence[str]], activation_bits: int):
        from scipy.optimize import LinearConstraint

        self.layers, self.bits, self.act = list(layers), sorted(set(candidates)), activation_bits
        index = {lay.name: i for i, lay in enumerate(self.layers)}
        if len(index) != len(self.layers):
            raise CompileError("allocate_bits: layer names are not unique")
        for lay in self.layers:
            missing = [b for b in self.bits if b not in lay.sensitivity]
            if missing:
                raise CompileError(f"layer {lay.name!r}: no sensitivity for {missing} bits")
        unknown = sorted(({n for group in tied for n in group} | set(pinned)) - set(index))
        if unknown:
            raise CompileError(f"allocate_bits: pinned or tied layers {unknown} are not among the layers")
        n, nb = len(self.layers), len(self.bits)
        self.lb, self.ub = np.zeros(n * nb), np.ones(n * nb)
        for name, b in pinned.items():
            if b not in self.bits:
                raise CompileError(f"layer {name!r} pinned to {b} bits; candidates are {self.bits}")
            row = index[name] * nb
            self.ub[row:row + nb] = 0
            self.lb[row + self.bits.index(b)] = self.ub[row + self.bits.index(b)] = 1
        rows = [np.kron(np.eye(n)[i], np.ones(nb)) for i in range(n)]
        for group in tied:
            first = index[group[0]]
            for other in group[1:]:
                for j in range(nb):
                    row = np.zeros(n * nb)
                    row[first * nb + j], row[index[other] * nb + j] = 1, -1
                    rows.append(row)
        self.equalities = LinearConstraint(np.array(rows), [1] * n + [0] * (len(rows) - n),
                                           [1] * n + [0] * (len(rows) - n))

    def coefficients(self, metric: Metric | None) -> np.ndarray:
        if metric is None:
            return np.array([lay.sensitivity[b] for lay in self.layers for b in self.bits], np.float64)
        if metric is Metric.LATENCY:
            missing = [lay.name for lay in self.layers if not lay.latency_ms or any(
                b not in lay.latency_ms for b in self.bits)]
            if missing:
                raise CompileError(f"a latency limit needs a latency table entry for bits {self.bits} of every "
                                   f"layer; missing for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return np.array([lay.value(metric, b, self.act) for lay in self.layers for b in self.bits], np.float64)

    def solve(self, objective: Metric | None, limits: Mapping[Metric, float]) -> dict[str, int] | None:
        """The minimising bits per layer, or None if infeasible."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        constraints = [self.equalities]
        for metric, limit in limits.items():  # scaled by the limit: HiGHS tolerances are absolute
            constraints.append(LinearConstraint(self.coefficients(metric) / limit, -np.inf, 1 + 1e-9))
        c = self.coefficients(objective)
        scale = np.abs(c).max()
        res = milp(c / scale if scale > 0 else c, integrality=np.ones_like(c), bounds=Bounds(self.lb, self.ub),
                   constraints=constraints)
        if res.status == 2:
            return None
        if not res.success:
            raise CompileError(f"bit allocation: the ILP solver failed ({res.message})")
        x = np.round(res.x).reshape(len(self.layers), len(self.bits))
        return {lay.name: self.bits[int(np.argmax(row))] for lay, row in zip(self.layers, x)}

    def total(self, bits: dict[str, int], metric: Metric) -> float:
        return sum(lay.value(metric, bits[lay.name], self.act) for lay in self.layers)

    def allocation(self, bits: dict[str, int], limits: Limits) -> Allocation:
        has_latency = all(lay.latency_ms and bits[lay.name] in lay.latency_ms for lay in self.layers)
        total = {m: self.total(bits, m) for m in Metric if m is not Metric.LATENCY or has_latency}
        return Allocation(bits, sum(lay.sensitivity[bits[lay.name]] for lay in self.layers), total[Metric.SIZE],
                          total[Metric.BOPS], total.get(Metric.LATENCY), limits)


def _up(value: float) -> str:
    """`value` rounded up to 6 significant digits: a limit given as printed is feasible."""
    if value <= 0:
        return f"{value:.6g}"
    step = 10.0 ** (math.floor(math.log10(value)) - 5)
    return f"{math.ceil(value / step * (1 - 1e-12)) * step:.6g}"


def _problem(layers, candidates, pin_ends, pinned, tied, activation_bits) -> _Problem:
    if not layers:
        raise CompileError("allocate_bits: no layers")
    pins = dict(pinned or {})
    if pin_ends:
        top = max(candidates)
        pins.setdefault(layers[0].name, top)
        pins.setdefault(layers[-1].name, top)
    return _Problem(layers, candidates, pins, [list(g) for g in tied if len(g) > 1], activation_bits)


def allocate_bits(layers: Sequence[LayerCost], limits: Limits = Limits(), candidates: Sequence[int] = (4, 8),
                  pin_ends: bool = True, pinned: Mapping[str, int] | None = None,
                  tied: Sequence[Sequence[str]] = (), activation_bits: int = 8) -> Allocation:
    """Bits per layer minimising the summed sensitivity within `limits`.

    `pin_ends` pins the first and last layer (in the given order) to the largest candidate;
    `pinned` pins more; each group in `tied` gets one common bit-width."""
    problem = _problem(layers, candidates, pin_ends, pinned, tied, activation_bits)
    if problem.solve(None, {}) is None:
        raise CompileError(f"bit allocation: the pins {dict(pinned or {})} and ties {list(tied)} contradict each "
                           "other (tied layers pinned to different bits)")
    active = limits.by_metric()
    where = "with the first and last layers at 8 bits and tied layers sharing bits" if pin_ends else \
        "with the given pins and ties"
    for metric, limit in active.items():
        smallest = problem.total(problem.solve(metric, {}), metric)
        if smallest > limit * (1 + 1e-9):
            raise CompileError(f"{metric.label} limit {limit:g} {metric.unit} cannot be met: the smallest feasible "
                               f"{metric.label} {where} is {_up(smallest)} {metric.unit}")
    bits = problem.solve(None, active)
    if bits is None:
        for metric, limit in active.items():
            others = {m: v for m, v in active.items() if m is not metric}
            best = problem.solve(metric, others)
            if best is not None:
                smallest = problem.total(best, metric)
                names = ", ".join(f"{m.label} <= {v:g} {m.unit}" for m, v in others.items())
                raise CompileError(f"{metric.label} limit {limit:g} {metric.unit} cannot be met together with "
                                   f"{names}: the smallest feasible {metric.label} under those is "
                                   f"{_up(smallest)} {metric.unit}")
        raise CompileError(f"bit allocation: the limits {limits} cannot be met together")
    return problem.allocation(bits, limits)


def pareto_front(layers: Sequence[LayerCost], metric: Metric = Metric.SIZE, points: int = 20,
                 candidates: Sequence[int] = (4, 8), pin_ends: bool = True, pinned: Mapping[str, int] | None = None,
                 tied: Sequence[Sequence[str]] = (), activation_bits: int = 8) -> list[Allocation]:
    """Optimal allocations at `points` limits on `metric`, from its smallest feasible value to
    that of the unconstrained optimum; duplicates dropped, sorted by `metric`."""
    problem = _problem(layers, candidates, pin_ends, pinned, tied, activation_bits)
    lo = problem.allocation(problem.solve(metric, {}), Limits())
    hi = problem.allocation(problem.solve(None, {}), Limits())
    field_name = {Metric.SIZE: "max_size_mb", Metric.BOPS: "max_gbops", Metric.LATENCY: "max_latency_ms"}[metric]
    front: dict[tuple, Allocation] = {}
    for limit in np.linspace(lo.total(metric), max(hi.total(metric), lo.total(metric)), points):
        limits = Limits(**{field_name: float(limit) * (1 + 1e-9)})
        bits = problem.solve(None, limits.by_metric())
        if bits is not None:
            front.setdefault(tuple(bits.values()), problem.allocation(bits, limits))
    return sorted(front.values(), key=lambda a: (a.total(metric), a.objective))


def plot_pareto(front: Sequence[Allocation], path: str | Path, chosen: Allocation | None = None,
                metric: Metric = Metric.SIZE, title: str = "mixed precision: Pareto front") -> Path:
    """PNG of `metric` against summed sensitivity for `front`, `chosen` marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([a.total(metric) for a in front], [a.objective for a in front], "o-", ms=4, label="ILP optimum")
    if chosen is not None:
        ax.plot([chosen.total(metric)], [chosen.objective], "r*", ms=14, label="chosen")
    if all(a.objective > 0 for a in front):
        ax.set_yscale("log")
    ax.set_xlabel(f"{metric.label} ({metric.unit})")
    ax.set_ylabel("summed sensitivity  sum Omega_l(b_l)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
