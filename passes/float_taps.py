"""The float model compiled once with a tap on every tensor: what calibration and the sensitivity probe run.

    model = TappedModel(float_mod)                       (compiled for the host on first use)
    outputs = model.run(sample, tap)                     tap(index, value) -> None, or a replacement
                                                         (value: a view, valid during the call only)

Every input and every float binding of `main` is passed through `intq.float_tap` (a packed call
into Python) before anything reads it; `model.names[index]` is its name. Calibration's tap
observes the value, the probe's tap puts chosen tensors on their 8-bit grid and passes the rest
through untouched, so neither has to compile the model again. Ops stay unfused (the tapped values
are materialized anyway), which keeps the build short: identical kernels are compiled once; but
each fused elementwise chain (`intq.unary`) runs as the Relax ops it stands for, fused by TVM, and
float convs run as torch's (`float_convs.py`: TVM's untuned float convs took 10-20x as long).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from .chain_calls import chain_as_ops
from .float_convs import Convs

TAP = "intq.float_tap"
Tap = Callable[[int, np.ndarray], "np.ndarray | None"]
_current = threading.local()


def _dispatch(value, index):
    tap = getattr(_current, "tap", None)
    out = tap(int(index), np.from_dlpack(value)) if tap is not None else None  # a view: no copy
    # a fresh tensor either way: the VM's memory plan reuses the input's storage once this call returns
    # np.require, not np.ascontiguousarray: a 0-d tensor (a scalar Clip bound) must stay 0-d
    return value.copyto(tvm.cpu()) if out is None else tvm.runtime.tensor(np.require(out, requirements="C"))


tvm.register_global_func(TAP, _dispatch, override=True)


def _tapped(mod: tvm.IRModule, convs: Convs) -> tuple[tvm.IRModule, list[str]]:
    """`main` with a tap after every input and float binding, its float convs run by `convs`; the
    names of the tapped tensors."""
    func = mod["main"]
    names: list[str] = []

    def tap(var: relax.Var, source: relax.Expr) -> relax.VarBinding:
        names.append(var.name)
        return relax.VarBinding(var, relax.op.call_pure_packed(TAP, source, relax.prim_value(len(names) - 1),
                                                               ty_args=var.ty))

    # the original parameter vars become the tapped values, so no use of them needs rewriting
    params = [relax.Var(p.name, p.ty) for p in func.params]
    first = [tap(old, new) for old, new in zip(func.params, params) if isinstance(old.ty, relax.TensorType)]
    blocks = []
    for i, block in enumerate(func.body.blocks):
        bindings = first if i == 0 else []
        # dataflow blocks stay dataflow (the tap is pure): there the pipeline turns a reshape into a
        # view instead of a copy kernel, which took a fifth of a detector's float run
        flow = isinstance(block, relax.DataflowBlock)
        new_var = relax.DataflowVar if flow else relax.Var
        for b in block.bindings:
            ty = b.var.ty
            value = b.value
            def bind(name, expr, prefix=b.var.name):
                bindings.append(relax.VarBinding(var := new_var(f"{prefix}_{name}", expr.ty), expr))
                return var

            # a fused chain as the ops it stands for: TVM's kernels, not the NumPy twin's callback
            expanded = chain_as_ops(value, bind) if isinstance(b, relax.VarBinding) else None
            value = value if expanded is None else expanded
            if isinstance(b, relax.VarBinding):
                value = convs.rewrite(value)
            if isinstance(b, relax.VarBinding) and isinstance(ty, relax.TensorType) and \
                    str(ty.dtype).startswith("float"):
                raw = new_var(b.var.name + "_untapped", ty)
                bindings += [relax.VarBinding(raw, value), tap(b.var, raw)]
            elif not value.same_as(b.value):
                bindings.append(relax.VarBinding(b.var, value))
            else:
                bindings.append(b)
        blocks.append(relax.DataflowBlock(bindings) if flow else relax.BindingBlock(bindings))
    if not blocks:
        blocks = [relax.BindingBlock(first)]
    if len(set(names)) != len(names):
        raise AssertionError("binding names are not unique; cannot key calibration ranges")
    new = relax.Function(params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs)
    tapped = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
    tapped["main"] = new  # keep the PrimFuncs `main` calls (the importer's emit_te kernels)
    return tapped, names


@contextmanager
def _one_tvm_thread():
    """This thread's TVM pool at one thread, then as it was: between two of the tapped model's kernels
    Python runs the tap (an observer's pass over the tensor) while TVM's worker spins for its next task,
    beside torch's conv threads (`float_convs.py`). On 2 cores, EfficientNet-Lite0's calibration took
    13 s with two TVM threads, 7-8 s with one, and its sensitivity probe 4.7 s against 1.3 s."""
    pool = tvm.get_global_func("runtime.NumThreads")()
    configure = tvm.get_global_func("runtime.config_threadpool")
    mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    configure(0, 1)
    try:
        yield
    finally:
        configure(0, pool)
        if mask is not None:  # configuring pins the calling thread to one core
            os.sched_setaffinity(0, mask)


class TappedModel:
    """The float Relax model (weights bound) with a tap on every tensor, compiled for `target` with
    `pipeline`, or by `build(mod) -> executable` (the caller's compiler) when given."""

    def __init__(self, mod: tvm.IRModule, target=None, pipeline=None, build=None):
        self.mod, self.target, self.pipeline, self.build = mod, target, pipeline, build
        self.inputs = [p.name for p in mod["main"].params]
        self._convs = Convs()
        self._tapped, self.names = _tapped(mod, self._convs)
        self._vm = None

    def run(self, sample: dict[str, np.ndarray], tap: Tap | None = None) -> list[np.ndarray]:
        """The model's outputs on `sample`, every tensor passed through `tap` on the way."""
        if self._vm is None:
            if self.build is not None:
                executable = self.build(self._tapped)
            else:
                executable = tvm.compile(self._tapped, target=self.target or tvm.target.Target({"kind": "llvm"}),
                                         relax_pipeline=self.pipeline or "default")
            self._vm = relax.VirtualMachine(executable, tvm.cpu())
        # np.require, not np.ascontiguousarray: a 0-d input (a sample rate) must stay 0-d
        args = [tvm.runtime.tensor(np.require(sample[n], requirements="C")) for n in self.inputs]
        _current.tap = tap
        try:
            with self._convs.active(), _one_tvm_thread():
                res = self._vm["main"](*args)
        finally:
            _current.tap = None
        res = list(res) if isinstance(res, (list, tuple)) or type(res).__name__ == "Array" else [res]
        return [r.numpy() for r in res if hasattr(r, "numpy")]
