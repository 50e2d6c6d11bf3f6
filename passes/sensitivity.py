"""Which activations lose the signal at 8 bits: a sensitivity measurement on the calibration data.

    probe = SensitivityProbe(tapped_model, samples)     (calibrate() attaches one to its ranges)
    probe.error({name: (scale, qlo, qhi)})  -> output error with those tensors alone on their 8-bit grid
    find_sensitive(probe, grids, tol)       -> the tensors whose 8-bit grid alone costs more than tol
    coarse_grids(grids, moments, tol)       -> the tensors whose 8-bit grid loses more than tol of their
                                               own values (no run: the calibration's sums of squares)

It runs calibration's compiled float model (`float_taps.py`), whose taps put the measured set on
its 8-bit grid, `clip(floor(x / S_i + 1/2), lo_i, hi_i) * S_i`, and leave every other tensor in
float: no second build, and any subset can be measured. The error of a set
is max over outputs of mean over samples of ||y - y_float||^2 / ||y_float||^2 (the squared
relative L2 error; 1 - cosine ~ half of it). Parts of outputs are measured as well
(`output_parts`): the logits of an output that a softmax or sigmoid makes (on the samples where
the model is sure, the probabilities do not move whatever the logits' noise, and the samples
where it is not are the ones that noise flips), and each part that a concat joins into an
output (a YOLO head's box sizes beside its box centres and class scores).

Search: quantization noise of independent tensors adds up in power, so a set whose error is
below tol^2 holds no tensor whose error alone exceeds tol^2, and the errors of disjoint sets add
up to about that of their union. Starting from all candidates, the set with the largest error is
split in two halves (graph order) and each is measured, down to single tensors (`find_sensitive`):
one run per sample when nothing is sensitive, about 2 log2(N) sets per sensitive tensor otherwise,
at most MAX_SETS. Typical finds: squares and sums of squares feeding a sqrt (an STFT magnitude),
the input of a regression head whose outputs cancel (box offsets), PReLU outputs with large slopes.
"""

from __future__ import annotations

import heapq
import time
from typing import Callable, Sequence

import numpy as np

from .float_taps import TappedModel

Replace = Callable[[np.ndarray, dict], np.ndarray]  # a tensor's value, kept copies -> what the probe's run uses
PROBE_SAMPLES = 2  # calibration samples the probe keeps (the error is their mean)
MAX_SETS = 48  # sets measured per search, at most (each one model run per sample)
MAX_ELEMENTS = 3e9  # tensor elements the measured runs pass through their taps, at most (what was found by
# then is kept): the search's cost in work, not seconds, so that the same model compiles the same on
# every machine and under any load (a 20 s limit made PP-OCRv5's result depend on both: cosine 0.980
# or 0.985). ~100M elements/s on a 2-core Zen 4: PP-OCRv5 at 320x320 passes 23M per run, 2.3e9 in
# its 48 sets (23 s); a YOLOX-style detector at 416x416 spent 90 s here without a limit (about
# 1 s per float run) and found nothing; the tensors that matter (a sqrt's input, a regression head)
# sit in small models, found within a few sets

MAX_MACS = 1e11  # multiply-accumulates of the measured runs' convs and matmuls, at most: elements alone
# undercount compute-heavy nets (VGG16 at 240x240, 18 GMAC per run: 144 s of search on 2 cores)


def model_macs(mod) -> int:
    """Multiply-accumulates of one run of `mod`'s main: output elements times the reduction of every
    conv2d and matmul with static shapes (what dominates a float run's time)."""
    import tvm
    from tvm import relax

    total = 0
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name in ("relax.nn.conv2d", "relax.matmul", "relax.nn.conv1d")):
                continue
            try:
                out = int(np.prod([int(d) for d in binding.var.ty.shape]))
                weight = [int(d) for d in call.args[1].ty.shape]
            except (TypeError, AttributeError):  # symbolic or unknown shapes: not counted
                continue
            if call.op.name == "relax.matmul":  # a 1-D second operand is a vector: its one dim is the reduction
                reduction = weight[-2] if len(weight) > 1 else weight[0]
            else:
                reduction = int(np.prod(weight[1:]))
            total += out * reduction
    return total


_SQUASHING = ("relax.nn.softmax", "relax.nn.log_softmax", "relax.sigmoid")
_PASS_THROUGH = ("relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten")


def scaled_input(value):
    """The tensor that `value` multiplies by a constant or divides by one (the same relative
    error), else None."""
    import tvm
    from tvm import relax

    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and value.op.name in ("relax.multiply", "relax.divide") and len(value.args) == 2):
        return None
    x, c = value.args
    if value.op.name == "relax.multiply" and isinstance(x, tvm.ir.GenericConst):
        x, c = c, x
    return x if isinstance(x, relax.Var) and isinstance(c, tvm.ir.GenericConst) else None


def output_parts(mod) -> list[str]:
    """The float tensors the probe measures beside the graph outputs: the logits that a softmax
    or sigmoid turns into an output, and each part that a concat joins into one (a YOLO head's
    box sizes, a few pixels, beside its box centres, hundreds, and its class scores: the error
    of the whole hides theirs), back through layout ops and scaling by constants."""
    import tvm
    from tvm import relax

    func = mod["main"]
    values = {b.var.name: b.value for block in func.body.blocks for b in block.bindings}

    def source(expr):  # back through layout ops and scaling by a constant
        while isinstance(expr, relax.Var) and isinstance(value := values.get(expr.name), relax.Call) \
                and isinstance(value.op, tvm.ir.Op):
            if value.op.name in _PASS_THROUGH and isinstance(value.args[0], relax.Var):
                expr = value.args[0]
            elif scaled_input(value) is not None:
                expr = scaled_input(value)
            else:
                break
        return expr

    def tensors(expr) -> list:
        value = values.get(expr.name) if isinstance(expr, relax.Var) else expr
        return list(value.fields) if isinstance(value, relax.Tuple) else [expr]

    found: list[str] = []

    def visit(expr, top: bool):
        expr = source(expr)
        if not isinstance(expr, relax.Var) or expr.name in found:
            return
        if not top:
            found.append(expr.name)
        value = values.get(expr.name)
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            if value.op.name in _SQUASHING and isinstance(value.args[0], relax.Var):
                visit(value.args[0], False)
            elif value.op.name == "relax.concat":
                for part in tensors(value.args[0]):
                    visit(part, False)

    for out in tensors(func.body.body):
        visit(out, True)
    return found


class SensitivityProbe:
    """The calibrated float model (`TappedModel`) run with chosen tensors on their 8-bit grids."""

    def __init__(self, model: TappedModel, samples: Sequence[dict[str, np.ndarray]]):
        self.model = model
        self.samples = [dict(s) for s in list(samples)[:PROBE_SAMPLES]]
        self.runs = 0  # model runs so far (one per sample per measured set)
        self.seconds = 0.0  # spent in those runs
        self.elements = 0  # tensor elements the taps of measured (not reference) runs saw
        self.run_elements = 0  # of them, per run (known after the first measured run)
        self.run_macs = model_macs(model.mod)  # convs' and matmuls' multiply-accumulates per run
        self.macs = 0  # of the measured runs
        self._tapped = set(model.names)
        parts = set(output_parts(model.mod))
        self._parts = [i for i, n in enumerate(model.names) if n in parts]  # measured beside the outputs
        self._part_set = frozenset(self._parts)  # the taps ask per tensor per run
        self._reference = None
        self._memo: dict = {}
        self._values: dict[str, np.ndarray] = {}  # rows of tensors `values` captured

    def _run(self, replace: dict[str, Replace], keep: dict[str, int]) -> list[list[np.ndarray]]:
        """The outputs (and parts) per sample with each tensor of `replace` replaced by f(value, kept)."""
        by_index = {i: replace[n] for i, n in enumerate(self.model.names) if n in replace}
        keep_index = {i: (n, uses) for i, n in enumerate(self.model.names) if (uses := keep.get(n))}
        seen: dict[int, np.ndarray] = {}
        kept: dict[str, list] = {}  # name -> [copy, uses left]: freed after its last reader

        def perturb(index: int, x: np.ndarray):
            if by_index:
                self.elements += x.size
            if index in keep_index:
                name, uses = keep_index[index]
                kept[name] = [np.array(x), uses]
            if index in by_index:
                x = by_index[index](x, kept)
            if index in self._part_set:
                seen[index] = np.array(x, np.float64)
            return x if index in by_index else None

        outs, start = [], time.perf_counter()
        for sample in self.samples:
            seen.clear()
            kept.clear()
            ys = self.model.run(sample, perturb if by_index or self._parts else None)
            outs.append([y.astype(np.float64) for y in ys] + [seen[i] for i in self._parts if i in seen])
            self.runs += 1
            self.macs += self.run_macs if by_index else 0
            if by_index and not self.run_elements:
                self.run_elements = self.elements
        self.seconds += time.perf_counter() - start
        return outs

    def measure(self, key, replace: dict[str, Replace], keep: dict[str, int] | None = None) -> float:
        """Max over outputs of the mean squared relative L2 error with each tensor in `replace`
        replaced by f(value, kept) (memoized by `key`). `kept[name][0]` is a copy of each `keep`
        tensor {name: readers} seen earlier in the run; a replacement that reads one calls `release`."""
        if self._reference is None:
            self._reference = self._run({}, {})
        if key not in self._memo:
            outs = self._run(replace, keep or {}) if replace else self._reference
            per_output = np.mean([[float(np.sum((y - r) ** 2) / max(np.sum(r ** 2), 1e-30))
                                   for y, r in zip(ys, rs)] for ys, rs in zip(outs, self._reference)], axis=0)
            self._memo[key] = float(np.max(per_output, initial=0.0))
        return self._memo[key]

    def values(self, names, max_rows: int) -> dict[str, np.ndarray]:
        """{name: rows} of the named tensors over the probe's samples, as [rows, last axis] float32,
        at most `max_rows` of them evenly spaced (one run per sample, memoized per name)."""
        cache, names = self._values, list(names)
        missing = {n for n in names if n not in cache}  # once: a set built per tapped tensor made each call
        # O(tensors x names) (an unrolled BiLSTM's 1018 matmuls asking for ~1000 inputs among 18k taps: 89 ms
        # a call, 44 s of a 236 s compile, though every call after the first found them all cached)
        wanted = {i: n for i, n in enumerate(self.model.names) if n in missing} if missing else {}
        if wanted:
            got: dict[str, list] = {n: [] for n in wanted.values()}

            def capture(index: int, x: np.ndarray):
                if index in wanted and x.ndim:
                    rows = x.reshape(-1, x.shape[-1])
                    step = max(1, -(-len(rows) * len(self.samples) // max_rows))
                    got[wanted[index]].append(np.array(rows[::step], np.float32))

            start = time.perf_counter()
            for sample in self.samples:
                self.model.run(sample, capture)
                self.runs += 1
            self.seconds += time.perf_counter() - start
            cache.update({n: np.concatenate(v)[:max_rows] for n, v in got.items() if v})
        return {n: cache[n] for n in names if n in cache}

    def error(self, grids: dict[str, tuple]) -> float:
        """Max over outputs of the mean squared relative L2 error with `grids` {binding: (S, lo, hi)
        or (S, lo, hi, offset)} applied: S a scalar, or one scale per channel of the last axis (a
        matmul input smoothed per channel), the integers standing for x + offset."""
        names = tuple(sorted(n for n in grids if n in self._tapped))
        return self.measure(names, {n: _fake_quantize(*grids[n]) for n in names})


def release(kept: dict[str, list], name: str) -> np.ndarray:
    """The copy of `name` a replacement reads (`SensitivityProbe.measure`), freed after its last reader."""
    entry = kept[name]
    entry[1] -= 1
    if entry[1] <= 0:
        del kept[name]
    return entry[0]


def _fake_quantize(scale, lo: int, hi: int, offset: float = 0.0) -> Replace:
    scale, offset = np.asarray(scale, np.float32), np.float32(offset)

    def on_grid(x: np.ndarray, kept) -> np.ndarray:
        return (np.clip(np.floor((x + offset) / scale + np.float32(0.5)), lo, hi) * scale - offset).astype(x.dtype)

    return on_grid


def coarse_grids(grids: dict[str, tuple], moments: dict[str, tuple[float, int]],
                 tol: float) -> dict[str, float]:
    """{name: estimated relative error} of the tensors whose 8-bit grid alone loses more than `tol`
    of their own calibration values (L2), worst first: no model run needed.

    Rounding to a grid of step S costs each nonzero value about S^2 / 12 in square, so the relative
    error is S sqrt(nonzero / 12) / ||x||. It is large where a few outliers set the range and the
    typical values get a handful of levels (re-parameterized convs, PP-LCNetV3's learnable affine
    blocks: 5-12% on most of a text detector's tensors); the output may not show it in the two
    samples the probe measures, and the probe has no time to find dozens of such tensors one by one.
    """
    found = {}
    for name, (scale, *_) in grids.items():
        squares, nonzero = moments.get(name, (0.0, 0))
        if np.ndim(scale):  # a grid per channel: the moments are the whole tensor's
            continue
        if squares > 0.0 and nonzero:
            err = scale * float(np.sqrt(nonzero / 12.0 / squares))
            if err > tol:
                found[name] = err
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def find_sensitive(probe: SensitivityProbe, grids: dict[str, tuple], tol: float,
                   limit: int, goal: float, budget: int = MAX_SETS, work: float = MAX_ELEMENTS,
                   groups: Sequence[Sequence[str]] = ()) -> dict[str, float]:
    """{name: error alone} of the candidates to carry at 16 bits, the worst first.

    Each of `groups` (an unrolled recurrence's corresponding step tensors: `recurrent_steps.py`) is
    one candidate, measured with all its members on their grids and found whole: an LSTM's hidden
    state loses a little at each of 37 steps, below the tolerance at any one of them, and the
    sum flipped an intrusion detector's labels.

    Best first: the measured set with the largest error is split in two halves (graph order) and
    both are measured; a single tensor popped is a find. It stops at `limit` finds, after `budget`
    measured sets or `work` tensor elements through the taps, or the MAC budget scaled alike (a
    1024x1024 segmentation net runs for
    minutes per set: the finds so far are kept; a set is not started that would end past them), or when the largest set left costs at most tol^2 and all sets left
    together (their errors add up) at most goal^2, or, whatever the total, at most (tol / 8)^2.
    """
    members = {m[0]: m for g in groups if (m := [n for n in g if n in grids])}
    grouped = {n for g in members.values() for n in g[1:]}
    names = [n for n in grids if n not in grouped]
    if not names:
        return {}

    def error(part: list[str]) -> float:
        return probe.error({m: grids[m] for n in part for m in members.get(n, (n,))})

    heap = [(-error(names), 0, names)]
    found: dict[str, float] = {}
    sets, order = 1, 1
    def affordable() -> bool:  # one more set (a run per sample) stays within the work
        runs = len(probe.samples)
        return (probe.elements + probe.run_elements * runs <= work
                and probe.macs + probe.run_macs * runs <= MAX_MACS * work / MAX_ELEMENTS)

    finds = 0  # a group counts once
    while heap and finds < limit and sets < budget and affordable():
        err, _, part = heapq.heappop(heap)
        err, rest = -err, -err - sum(e for e, _, _ in heap)
        if err <= (tol / 8) ** 2 or (err <= tol**2 and rest <= goal**2):
            break
        if len(part) == 1:
            found.update({m: err for m in members.get(part[0], part)})
            finds += 1
            continue
        half = len(part) // 2
        for piece in (part[:half], part[half:]):
            heapq.heappush(heap, (-error(piece), order, piece))
            sets, order = sets + 1, order + 1
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))
