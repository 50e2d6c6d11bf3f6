"""The calibrated range of a tensor that only tables read, cut to where their functions still move.

    x in [-136, 68] -> sigmoid        ==>  x quantized over [-6.2, 6.2] (saturating beyond)

A sigmoid, tanh or exp (or a fused chain of them) is flat past some input: its table entries there
round to one output integer. Quantizing its input over the whole calibrated range spends the grid
on those flat tails, and where the range is wide the part that moves gets a few levels: a DB text
detector's logits in [-136, 68] put 0.8 logit between levels (its probability map took 9 values),
a tf2onnx softmax's `exp(x - max)` over [-85, 0] took 18. Cut to the region where the output
integer changes (one input step of margin each side), the same bits resolve that region, and the
values beyond saturate onto an entry equal to theirs: exact, no accuracy traded.

Applies when every reader of the tensor is such a table (intq.unary or a table op), judged at the
output width each reader will have (16 bits for a wide one, `QuantConfig.wide_tensors`).
"""

from __future__ import annotations

import copy

import numpy as np
import tvm
from tvm import relax

from .chain_calls import UNARY_CALL
from .fuse_unary_chains import chain_step, program_json
from .lowering.integer_inputs import vars_read
from .reference import unary as ref

SAMPLES = 1 << 12  # points of the calibrated range on which the flat tails are found (an unrolled
# BiLSTM has thousands of gate tables: 0.15 ms each at this size, 1.7 ms at 65536)
MIN_GAIN = 2.0  # narrow only where the grid gets at least this much finer: a finer grid also takes a tensor
# off the coarse-grid list (`sensitivity.coarse_grids`), and at 1.5x PP-OCRv4 det lost more there than it gained


def _program(call: relax.Call) -> str | None:
    """The table program a binding computes from its one float input, or None."""
    if not isinstance(call.op, tvm.ir.Op):
        return None
    if call.op.name == "relax.call_pure_packed":
        callee = call.args[0]
        return str(call.args[2].value) if isinstance(callee, relax.ExternFunc) and \
            callee.global_symbol == UNARY_CALL else None
    if call.op.name in ref.TABLE_OPS:
        found = chain_step(call, {}, call.ty)
        if found is not None:
            source, members, step, _ = found
            return program_json(source, members, {}, step)
    return None


def _moving(program: str, lo: float, hi: float, out_range, wide: bool) -> tuple[float, float] | None:
    """The sub-range of [lo, hi] outside which `program`'s table entries are constant, or None."""
    xs = np.linspace(lo, hi, SAMPLES)
    image = ref.evaluate(program, xs)
    if not np.all(np.isfinite(image)):
        return None
    scale, dtype = ref.output_params(image, out_range, wide=wide)
    q = ref.build_table(image, scale, dtype)
    changed = np.flatnonzero(q != q[0])
    if changed.size == 0:
        return None  # constant over the whole range: nothing to resolve
    first = changed[0] - 1
    last = np.flatnonzero(q != q[-1])[-1] + 1
    step = (hi - lo) / (SAMPLES - 1)
    return float(xs[first] - step), float(xs[last] + step)


def table_tensors(func: relax.Function) -> set[str]:
    """Names of the tensors that table lookups alone read (a gate's sigmoid input) or that a table
    lookup makes (the gate): a table's output wanted at 16 bits reads its input at 16 bits too."""
    readers: dict[str, list] = {}
    made = set()
    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call) and _program(b.value) is not None:
                made.add(b.var.name)
            for arg in vars_read(b.value):
                readers.setdefault(arg.name, []).append(b.value)
    return made | {name for name, values in readers.items()
                   if all(isinstance(v, relax.Call) and _program(v) is not None for v in values)}


def narrow_table_inputs(func: relax.Function, ranges: dict, wide: frozenset[str] | set[str]) -> dict:
    """A copy of `ranges` (its attributes kept) with the range of every tensor that only tables
    read cut to where they move; `ranges` itself when nothing narrows."""
    readers: dict[str, list] = {}
    bindings = [b for block in func.body.blocks for b in block.bindings]
    for b in bindings:
        for arg in vars_read(b.value):
            readers.setdefault(arg.name, []).append(b)
    # inputs keep their range: the runtime quantizes them and warns of values far past their grid
    outputs = {v.name for v in vars_read(func.body.body)} | {p.name for p in func.params}
    narrowed = {}
    for name, users in readers.items():
        if name in outputs or name not in ranges:
            continue
        lo, hi = (float(v) for v in ranges[name])
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
            continue
        cuts = []
        for b in users:
            program = _program(b.value) if isinstance(b.value, relax.Call) else None
            if program is None or b.var.name not in ranges:
                break
            cut = _moving(program, lo, hi, ranges[b.var.name], b.var.name in wide)
            if cut is None:
                break
            cuts.append(cut)
        else:
            a, z = max(lo, min(c[0] for c in cuts)), min(hi, max(c[1] for c in cuts))
            if max(abs(lo), abs(hi)) >= MIN_GAIN * max(abs(a), abs(z), 1e-30):  # the symmetric grid's gain
                narrowed[name] = (a, z)
    if not narrowed:
        return ranges
    out = copy.copy(ranges)
    out.update(narrowed)
    return out
