"""Calibration: run the float Relax model on real inputs and observe every float tensor.

The function is rewritten to return every binding next to its output, compiled once for
the host, and run per sample; observers turn the values into ranges {name: (lo, hi)}, and
the max |x| per last-axis channel of every tensor rides along (`CalibratedRanges.channel_amax`,
used by the lowering's outlier smoothing), and so does a `SensitivityProbe` on the first samples
(`CalibratedRanges.probe`: which tensors lose the signal at 8 bits, `passes/sensitivity.py`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from .observers import ChannelAbsMaxObserver, make_observer
from .sensitivity import PROBE_SAMPLES, SensitivityProbe


class CalibratedRanges(dict):
    """{tensor name: (lo, hi)}, plus `channel_amax` {tensor name: (max |x| per last-axis channel,
    the number of values each maximum was taken over)}, and `probe`, the float model ready to
    measure the output error of putting tensors on their 8-bit grids (None: not measurable)."""

    def __init__(self, ranges: dict, channel_amax: dict[str, tuple[np.ndarray, int]] | None = None,
                 probe: SensitivityProbe | None = None):
        super().__init__(ranges)
        self.channel_amax = channel_amax or {}
        self.probe = probe


def _expose_all(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[str]]:
    func = relax.transform.ToNonDataflow()(mod)["main"]
    names, tensors = [], []
    for p in func.params:
        names.append(p.name)
        tensors.append(p)
    for block in func.body.blocks:
        for b in block.bindings:
            ty = b.var.ty
            if isinstance(ty, relax.TensorType) and str(ty.dtype).startswith("float"):
                names.append(b.var.name)
                tensors.append(b.var)
    if len(set(names)) != len(names):
        raise AssertionError("binding names are not unique; cannot key calibration ranges")
    body = relax.SeqExpr(func.body.blocks, relax.Tuple(tensors))
    new = relax.Function(func.params, body, relax.TupleType([t.ty for t in tensors]), func.is_pure, func.attrs)
    exposed = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
    exposed["main"] = new  # keep the PrimFuncs `main` calls (the importer's emit_te kernels)
    return exposed, names


def calibrate(mod: tvm.IRModule, samples: Sequence[dict[str, np.ndarray]] | Iterable[dict[str, np.ndarray]],
              observer: str = "minmax", target=None, progress: bool = True, pipeline=None) -> CalibratedRanges:
    """Ranges of every float tensor of `main` (inputs and bindings) over `samples`.

    `mod` must have its weights bound (its `main` takes only the model inputs). `target`
    and `pipeline` (a Relax pipeline) say how the float model is compiled to run.
    """
    exposed, names = _expose_all(mod)
    target = target or tvm.target.Target({"kind": "llvm"})
    vm = relax.VirtualMachine(tvm.compile(exposed, target=target, relax_pipeline=pipeline or "default"), tvm.cpu())
    observers = [make_observer(observer) for _ in names]
    channels = [ChannelAbsMaxObserver() for _ in names]
    input_names = [p.name for p in mod["main"].params]
    total = len(samples) if hasattr(samples, "__len__") else None
    kept = []  # the first samples, for the sensitivity probe
    for sample in tqdm(samples, total=total, desc="calibrating", unit="sample", disable=not progress):
        # np.require, not np.ascontiguousarray: a 0-d input (a sample rate) must stay 0-d
        if len(kept) < PROBE_SAMPLES:
            kept.append(sample)
        outs = vm["main"](*[tvm.runtime.tensor(np.require(sample[n], requirements="C")) for n in input_names])
        for obs, chan, value in zip(observers, channels, outs):
            value = value.numpy()
            obs.update(value)
            chan.update(value)
    return CalibratedRanges({name: obs.range() for name, obs in zip(names, observers)},
                            {name: (c.range(), c.rows) for name, c in zip(names, channels) if c.range() is not None},
                            SensitivityProbe(mod, kept, target, pipeline) if kept else None)
