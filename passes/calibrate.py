"""Calibration: run the float Relax model on real inputs and observe every float tensor.

The model is compiled once for the host with a tap on every tensor (`float_taps.py`) and run
per sample; observers turn the tapped values into ranges {name: (lo, hi)}. The max |x| per
last-axis channel of every constant-weight matmul's input rides along
(`CalibratedRanges.channel_amax`, used by the lowering's outlier smoothing; of every float input
too: tabular features of their own ranges get a scale each), so does the mean per
channel of every constant-weight conv's and matmul's input (`CalibratedRanges.channel_mean`, the
lowering's bias correction), so do every tensor's
sum of squares and nonzero count (`CalibratedRanges.moments`: how coarse its 8-bit grid is), and so does a
`SensitivityProbe` on the first samples (`CalibratedRanges.probe`: which tensors lose the
signal at 8 bits, `passes/sensitivity.py`), which runs the same compiled model.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from .float_taps import TappedModel
from .observers import ChannelAbsMaxObserver, ChannelMeanObserver, Finite, MomentsObserver, make_observer
from .recurrent_steps import step_groups
from .sensitivity import PROBE_SAMPLES, SensitivityProbe


class CalibratedRanges(dict):
    """{tensor name: (lo, hi)}, plus `channel_amax` {tensor name: (max |x| per last-axis channel,
    the number of values each maximum was taken over)}, `moments` {tensor name: (sum of squares,
    nonzero count)}, `channel_mean` {(tensor name, axis): mean per channel along axis}, `whole`
    (the tensors cast to integers, and the float inputs, that held whole numbers only: floor(x * 4) before
    an index; counts),
    `nonfinite` (the tensors that held infinities or NaN), `sentinels` {tensor name: a value compared
    for equality that was left out of its range, `_set_apart`}, and `probe`, the float model ready to
    measure the output error of putting tensors on their 8-bit grids (None: not measurable)."""

    def __init__(self, ranges: dict, channel_amax: dict[str, tuple[np.ndarray, int]] | None = None,
                 probe: SensitivityProbe | None = None, moments: dict[str, tuple[float, int]] | None = None,
                 nonfinite: frozenset[str] = frozenset(),
                 channel_mean: dict[tuple[str, int], np.ndarray] | None = None,
                 whole: frozenset[str] = frozenset()):
        super().__init__(ranges)
        self.whole = whole  # tensors cast to integers, and float inputs, that held whole numbers only
        self.channel_amax = channel_amax or {}
        self.channel_mean = channel_mean or {}
        self.probe = probe
        self.moments = moments or {}
        self.nonfinite = nonfinite  # tensors that held infinities or NaN
        self.steps: list[list[str]] = []  # corresponding tensors of an unrolled recurrence's steps (tied)
        self.sentinels: dict[str, float] = {}  # tensor: the sentinel left out of its range, at a grid end


def _weighted_inputs(mod: tvm.IRModule) -> dict[str, set[int]]:
    """{tensor: channel axes} of the tensors a constant-weight conv (axis 1) or matmul (last
    axis) reads: the only ones whose per-channel statistics the lowering uses; observing every
    tensor's cost a pass per sample."""
    found = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
                    and v.op.name in ("relax.matmul", "relax.nn.conv2d", "relax.nn.conv2d_transpose")
                    and isinstance(v.args[0], relax.Var) and isinstance(v.args[1], tvm.ir.GenericConst)):
                found.setdefault(v.args[0].name, set()).add(-1 if v.op.name == "relax.matmul" else 1)
    return found


def _cast_inputs(mod: tvm.IRModule) -> set[str]:
    """The float tensors the graph casts to integers."""
    return {b.value.args[0].name for block in mod["main"].body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
            and b.value.op.name == "relax.astype" and isinstance(b.value.args[0], relax.Var)
            and not str(b.value.ty.dtype).startswith(("float", "bool"))}


def _sentinels(mod: tvm.IRModule) -> dict[str, float]:
    """{float tensor: c} of the tensors the graph compares for equality with a constant c (one value,
    finite): a sentinel such as Keras' `Masking(mask_value=c)` padding, which calibration leaves out of
    the tensor's range (`calibrate`)."""
    found = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
                    and v.op.name in ("relax.equal", "relax.not_equal")):
                continue
            x, c = v.args
            if isinstance(x, tvm.ir.GenericConst):
                x, c = c, x
            if isinstance(x, relax.Var) and isinstance(c, tvm.ir.GenericConst) and \
                    str(x.ty.dtype).startswith("float"):
                value = c.value.numpy()
                if value.size and np.all(value == value.flat[0]) and np.isfinite(value.flat[0]):
                    found[x.name] = float(value.flat[0])
    return found


def _far(c: float, values: np.ndarray) -> bool:
    """Is `c` outside the finite `values` by more than their span (a sentinel, not an extreme value)?"""
    values = values[np.isfinite(values)]
    if not values.size:
        return False
    lo, hi = float(values.min()), float(values.max())
    return c < lo - (hi - lo) or c > hi + (hi - lo)


SENTINEL_STEPS = 2  # a sentinel above a tensor's range: its top widened by this many 8-bit steps, so that
# only the sentinel saturates to the top code (below: a signed grid's lowest code is unused by the range)


def _set_apart(ranges: CalibratedRanges, sentinels: dict[str, float]) -> CalibratedRanges:
    """`ranges` with each sentinel outside its tensor's other values given a code of its own: the
    lowest of a signed grid (the range made signed) or the top one (the range widened), where the
    input quantizer saturates it and an equality test finds it (`binary._compare_code`).
    Mask padding at -4.2e6 beside values in [0.005, 0.9] had set an input's grid to 128 per step,
    and every real value became 0 (mhcnuggets' peptide LSTMs)."""
    for name, c in sentinels.items():
        if name not in ranges or ranges[name] is None or not _far(c, np.asarray(ranges[name], np.float64)):
            continue
        lo, hi = ranges[name]
        amax = max(abs(lo), abs(hi))
        if c < lo:
            ranges[name] = (min(lo, -amax / 127), hi)
        elif c > hi:
            ranges[name] = (lo, hi + SENTINEL_STEPS * amax / 127)
        ranges.sentinels[name] = c
    return ranges


def calibrate(mod: tvm.IRModule, samples: Sequence[dict[str, np.ndarray]] | Iterable[dict[str, np.ndarray]],
              observer: str = "minmax", target=None, progress: bool = True, pipeline=None,
              build=None) -> CalibratedRanges:
    """Ranges of every float tensor of `main` (inputs and bindings) over `samples`.

    `mod` must have its weights bound (its `main` takes only the model inputs). `target`
    and `pipeline` (a Relax pipeline) say how the float model is compiled to run, or
    `build(mod) -> executable` compiles it.
    """
    model = TappedModel(mod, target, pipeline, build)
    observers = [make_observer(observer) for _ in model.names]
    moments = [MomentsObserver() for _ in model.names]
    weighted = _weighted_inputs(mod)
    inputs = {p.name for p in mod["main"].params if isinstance(p.ty, relax.TensorType)
              and str(p.ty.dtype).startswith("float") and p.ty.ndim >= 1}  # features of their own ranges
    channels = {i: ChannelAbsMaxObserver() for i, name in enumerate(model.names)
                if -1 in weighted.get(name, ()) or name in inputs}
    means = {i: [ChannelMeanObserver(axis) for axis in weighted[name]] for i, name in enumerate(model.names)
             if name in weighted}

    cast = _cast_inputs(mod) | inputs  # and inputs: whole-number features (counts, levels) get an exact grid
    casts = {i for i, name in enumerate(model.names) if name in cast}
    fractional: set[int] = set()  # of them, those that held a fraction
    sentinel_of = _sentinels(mod)
    sentinels = {i: sentinel_of[name] for i, name in enumerate(model.names) if name in sentinel_of}

    apart: dict[str, float] = {}  # the tensors whose sentinel was left out

    def observe(index: int, value: np.ndarray) -> None:
        if index in sentinels:  # a sentinel is not a value: left out (as 0) of every statistic
            hit = value == np.asarray(sentinels[index], value.dtype)
            if hit.any() and not hit.all() and _far(sentinels[index], value[~hit]):
                value = np.where(hit, np.zeros((), value.dtype), value)
                apart[model.names[index]] = sentinels[index]
        if index in casts and index not in fractional and not np.array_equal(value, np.round(value)):
            fractional.add(index)
        finite = Finite(value)  # min, max and the finite values, found once for both observers
        observers[index].update(finite)
        moments[index].update(finite)
        if index in channels:
            channels[index].update(value)
        for mean in means.get(index, ()):
            mean.update(value, finite.nonfinite)

    total = len(samples) if hasattr(samples, "__len__") else None
    kept = []  # the first samples, for the sensitivity probe
    for sample in tqdm(samples, total=total, desc="calibrating", unit="sample", disable=not progress):
        if len(kept) < PROBE_SAMPLES:
            kept.append(sample)
        model.run(sample, observe)
    ranges = _tied(CalibratedRanges({name: obs.range() for name, obs in zip(model.names, observers)},
                            {model.names[i]: (c.range(), c.rows) for i, c in channels.items()
                             if c.range() is not None},
                            SensitivityProbe(model, kept) if kept else None,
                            {name: m.moments() for name, m in zip(model.names, moments)},
                            frozenset(name for name, m in zip(model.names, moments) if m.nonfinite),
                            {(model.names[i], m.axis): m.mean() for i, ms in means.items() for m in ms
                             if m.mean() is not None},
                            frozenset(model.names[i] for i in casts - fractional)), step_groups(mod["main"]))
    return _set_apart(ranges, apart)


TIED_SPAN = 0.5  # a step's tensor whose range spans less than this share of its group's widest keeps its own


def _span(r) -> float:
    return float(r[1] - r[0])


def _tied(ranges: CalibratedRanges, groups: list[list[str]]) -> CalibratedRanges:
    """`ranges` with each group of an unrolled recurrence's corresponding tensors given the
    statistics of all of them together (`recurrent_steps.py`): one range, the largest |x| per
    channel, the mean per channel, pooled moments. A step whose tensor spans less than TIED_SPAN of
    the group's widest keeps its own statistics (the first steps, while the state grows from zero):
    on the group's grid it would lose more than a bit. An ECG LSTM over 500 steps: score error to
    float 0.030 calibrated step by step, 0.052 all tied, 0.034 so (7.5, 3.9 and 4.2 ms)."""
    groups = [[n for n in g if n in ranges] for g in groups]
    widest = [max((_span(ranges[n]) for n in g), default=0.0) for g in groups]
    groups = [[n for n in g if _span(ranges[n]) >= TIED_SPAN * w] for g, w in zip(groups, widest)]
    ranges.steps = [g for g in groups if len(g) > 1]
    for g in ranges.steps:
        lo, hi = min(ranges[n][0] for n in g), max(ranges[n][1] for n in g)
        squares, nonzero = (sum(ranges.moments.get(n, (0.0, 0))[k] for n in g) for k in (0, 1))
        nonfinite, whole = any(n in ranges.nonfinite for n in g), all(n in ranges.whole for n in g)
        amax = [ranges.channel_amax[n] for n in g if n in ranges.channel_amax]
        amax = (np.max([a for a, _ in amax], axis=0), sum(r for _, r in amax)) if amax else None
        for n in g:
            ranges[n] = (lo, hi)
            ranges.moments[n] = (squares, nonzero)
            if amax is not None:
                ranges.channel_amax[n] = amax
        axes = {axis for (n, axis) in ranges.channel_mean if n == g[0]}
        for axis in axes:
            mean = np.mean([ranges.channel_mean[(n, axis)] for n in g if (n, axis) in ranges.channel_mean], axis=0)
            ranges.channel_mean.update({(n, axis): mean for n in g})
        ranges.nonfinite = ranges.nonfinite | set(g) if nonfinite else ranges.nonfinite
        ranges.whole = ranges.whole - set(g) if not whole else ranges.whole
    return ranges
