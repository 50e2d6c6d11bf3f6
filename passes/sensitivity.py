"""Which activations lose the signal at 8 bits: a sensitivity measurement on the calibration data.

    probe = SensitivityProbe(float_mod, samples)        (calibrate() attaches one to its ranges)
    probe.error({name: (scale, qlo, qhi)})  -> output error with those tensors alone on their 8-bit grid
                                               (the first call names every candidate)
    find_sensitive(probe, grids, tol)       -> the tensors whose 8-bit grid alone costs more than tol

The float model is compiled once more with a fake quantizer after every candidate binding,
`clip(floor(x / S_i + 1/2), lo_i, hi_i) * S_i`, whose grids are inputs, so that any subset can be
put on its 8-bit grid without recompiling (the others get a grid 2^16 times finer and wider). The error of a set
is max over outputs of mean over samples of ||y - y_float||^2 / ||y_float||^2 (the squared
relative L2 error; 1 - cosine ~ half of it).

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
from typing import Sequence

import numpy as np
import tvm
from tvm import relax

PROBE_SAMPLES = 2  # calibration samples the probe keeps (the error is their mean)
MAX_SETS = 48  # sets measured per search, at most (each one model run per sample)
OFF_BITS = 16  # a fake quantizer switched off: 2^16 times finer and wider than the 8-bit grid (~float32)


class SensitivityProbe:
    """The float model with switchable fake quantizers after every float binding (compiled on first use)."""

    def __init__(self, mod: tvm.IRModule, samples: Sequence[dict[str, np.ndarray]], target=None, pipeline=None):
        self.mod, self.target, self.pipeline = mod, target, pipeline
        self.samples = [dict(s) for s in list(samples)[:PROBE_SAMPLES]]
        self.runs = 0  # model runs so far (one per sample per measured set)
        self._vm = self._names = self._reference = None
        self._memo: dict = {}

    def _build(self, candidates):
        func = self.mod["main"]
        names = [b.var.name for block in func.body.blocks for b in block.bindings
                 if isinstance(b.var.ty, relax.TensorType) and str(b.var.ty.dtype) == "float32"
                 and b.var.name in candidates]
        index = {n: i for i, n in enumerate(names)}
        grid = [relax.Var(f"intq_fq_{g}_{i}", relax.TensorType((), "float32")) for i in range(len(names))
                for g in ("scale", "lo", "hi")]
        blocks, half = [], relax.const(0.5, "float32")
        for block in func.body.blocks:
            bindings = []
            for b in block.bindings:
                i = index.get(b.var.name) if isinstance(b, relax.VarBinding) else None
                if i is None:
                    bindings.append(b)
                    continue
                dataflow = isinstance(block, relax.DataflowBlock)  # (keeps the fake quantizer fused)
                raw = (relax.DataflowVar if dataflow else relax.Var)(b.var.name + "_float", b.var.ty)
                bindings.append(relax.VarBinding(raw, b.value))
                scale, lo, hi = grid[3 * i:3 * i + 3]  # 0-d inputs
                q = relax.op.maximum(relax.op.minimum(relax.op.floor(relax.op.add(relax.op.divide(raw, scale), half)),
                                                      hi), lo)  # (floor compiles faster than round)
                fq = relax.op.multiply(q, scale)
                bindings.append(relax.VarBinding(b.var, fq))  # later uses of b.var read the fake-quantized value
            blocks.append((relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock)(
                bindings))
        new = relax.Function([*func.params, *grid], relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                             func.is_pure, func.attrs)
        mod = tvm.IRModule({gv: f for gv, f in self.mod.functions_items() if gv.name_hint != "main"})
        mod["main"] = new
        target = self.target or tvm.target.Target({"kind": "llvm"})
        self._vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=self.pipeline or "default"),
                                        tvm.cpu())
        self._names, self._index = names, index
        self._inputs = [p.name for p in func.params]

    def _run(self, grids: dict[str, tuple[float, int, int]]) -> list[list[np.ndarray]]:
        extra = []
        for name in self._names:
            scale, lo, hi = grids[name] if name in grids else self._off[name]
            extra += [tvm.runtime.tensor(np.asarray(v, np.float32)) for v in (scale, lo, hi)]
        outs = []
        for sample in self.samples:
            args = [tvm.runtime.tensor(np.require(sample[n], requirements="C")) for n in self._inputs]
            res = self._vm["main"](*args, *extra)
            res = list(res) if isinstance(res, (list, tuple)) or type(res).__name__ == "Array" else [res]
            outs.append([r.numpy().astype(np.float64) for r in res if hasattr(r, "numpy")])
            self.runs += 1
        return outs

    def error(self, grids: dict[str, tuple[float, int, int]]) -> float:
        """Max over outputs of the mean squared relative L2 error with `grids` {binding: (S, lo, hi)} applied."""
        if self._vm is None:  # the first call names every candidate: only those get a fake quantizer
            self._build(set(grids))
            k = 2.0**OFF_BITS
            self._off = {n: (s / k, -max(abs(lo), hi) * k, max(abs(lo), hi) * k) for n, (s, lo, hi) in grids.items()}
            self._reference = self._run({})
        grids = {k: v for k, v in grids.items() if k in self._index}
        key = tuple(sorted(grids))
        if key not in self._memo:
            outs = self._run(grids) if grids else self._reference
            per_output = np.mean([[float(np.sum((y - r) ** 2) / max(np.sum(r ** 2), 1e-30))
                                   for y, r in zip(ys, rs)] for ys, rs in zip(outs, self._reference)], axis=0)
            self._memo[key] = float(np.max(per_output, initial=0.0))
        return self._memo[key]


def find_sensitive(probe: SensitivityProbe, grids: dict[str, tuple[float, int, int]], tol: float,
                   limit: int, goal: float, budget: int = MAX_SETS) -> dict[str, float]:
    """{name: error alone} of the candidates to carry at 16 bits, the worst first.

    Best first: the measured set with the largest error is split in two halves (graph order) and
    both are measured; a single tensor popped is a find. It stops at `limit` finds, after `budget`
    measured sets, or when the largest set left costs at most tol^2 and all sets left together
    (their errors add up) at most goal^2, or, whatever the total, at most (tol / 8)^2.
    """
    names = list(grids)
    if not names:
        return {}
    heap = [(-probe.error(grids), 0, names)]
    found: dict[str, float] = {}
    sets, order = 1, 1
    while heap and len(found) < limit and sets < budget:
        err, _, part = heapq.heappop(heap)
        err, rest = -err, -err - sum(e for e, _, _ in heap)
        if err <= (tol / 8) ** 2 or (err <= tol**2 and rest <= goal**2):
            break
        if len(part) == 1:
            found[part[0]] = err
            continue
        half = len(part) // 2
        for piece in (part[:half], part[half:]):
            heapq.heappush(heap, (-probe.error({n: grids[n] for n in piece}), order, piece))
            sets, order = sets + 1, order + 1
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))
