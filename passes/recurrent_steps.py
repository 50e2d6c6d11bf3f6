"""The corresponding tensors of an unrolled recurrence's steps, for calibration to tie.

A recurrence unrolled over T steps (`frontends/onnx_rnn.py`, `frontends/onnx_loops.py`) is one
layer applied T times. Calibrated step by step, each step's gates and state got ranges of their
own, hence scales, tables, requantization constants and smoothed weights of their own: an LSTM
150 -> 150 over 500 steps carried 90 KB of constants per step (its recurrent weight smoothed anew,
a 64 KB tanh table of its 16-bit cell state), 90 MB in all, read from memory at every step. With
one range per group of corresponding tensors the steps compute the same integer function, their
constants are equal (the VM pools equal constants once) and their kernels one.

Steps are found from their inputs: one `take(xs, t)` per step, at a constant t, of one tensor xs.
The bindings from one such take to the next are a step; consecutive steps whose bindings match one
for one (same op, attributes and type; each argument the same outside tensor, the binding at the
same place of this step or of the previous one, an equal constant or a scalar one) are one
recurrence, and the bindings at one place of its steps are a group. The first step, which reads
the initial state instead of a previous step, stays apart.
"""

from __future__ import annotations

import tvm
from tvm import relax

MIN_STEPS = 3  # a group needs this many steps: two could be any pair of equal layers


def _seed(value) -> tuple | None:
    """(tensor, axis) of a take of one constant index from a tensor; else None."""
    if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.take"
            and isinstance(value.args[0], relax.Var) and isinstance(value.args[1], tvm.ir.GenericConst)
            and value.args[1].value.numpy().ndim == 0):
        return value.args[0], int(value.attrs.axis)
    return None


class _Codes:
    """A binding's code relative to its step: equal codes at one place of two steps mean the same
    computation on the corresponding tensors."""

    def __init__(self, bindings: list):
        self.bindings = bindings
        self.index = {b.var: i for i, b in enumerate(bindings)}
        self._content: dict[int, tuple] = {}  # a constant tensor's (tensor, hash of its bytes): steps share weights

    def step(self, start: int, stop: int, previous: int | None) -> tuple:
        return tuple((self._expr(b.value, start, previous), str(b.var.ty)) for b in self.bindings[start:stop])

    def _expr(self, e, start: int, previous: int | None):
        if isinstance(e, relax.Var):
            p = self.index.get(e)
            if p is not None and p >= start:
                return "this", p - start
            if p is not None and previous is not None and p >= previous:
                return "prev", p - previous
            return "outside", e.name
        if isinstance(e, tvm.ir.GenericConst):  # scalars by type (a step's index), the rest by value (weights)
            return "const", str(e.ty), self._hash(e)
        if isinstance(e, relax.Call):
            op = e.op.name if isinstance(e.op, tvm.ir.Op) else getattr(e.op, "name_hint", None) or str(e.op)
            return ("call", op, str(e.attrs) if e.attrs is not None else "",
                    tuple(self._expr(a, start, previous) for a in e.args), tuple(str(s) for s in e.ty_args))
        if isinstance(e, relax.Tuple):
            return "tuple", tuple(self._expr(f, start, previous) for f in e.fields)
        if isinstance(e, relax.TupleGetItem):
            return "item", self._expr(e.tuple_value, start, previous), e.index
        return type(e).__name__, str(e)

    def _hash(self, const) -> int | None:
        if not hasattr(const.value, "numpy"):
            return None
        kept = self._content.get(hash(const.value))
        if kept is None or not kept[0].same_as(const.value):
            value = const.value.numpy()
            kept = self._content[hash(const.value)] = (const.value, None if value.size <= 1 else hash(value.tobytes()))
        return kept[1]


def step_groups(func: relax.Function) -> list[list[str]]:
    """Groups of binding names (one per step, in step order) that correspond across the steps of
    each unrolled recurrence of `func`'s body."""
    bindings = [b for block in func.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)]
    seeds: dict = {}
    for i, b in enumerate(bindings):
        key = _seed(b.value)
        if key is not None:
            seeds.setdefault((key[0], key[1]), []).append(i)
    codes, groups = _Codes(bindings), []
    for starts in seeds.values():
        if len(starts) < MIN_STEPS:
            continue
        length = starts[-1] - starts[-2]
        spans = list(zip(starts, starts[1:] + [min(starts[-1] + length, len(bindings))]))
        run: list[tuple[int, int]] = []
        code = None
        for k in range(1, len(spans)):  # step 0 reads the initial state
            start, stop = spans[k]
            this = codes.step(start, stop, spans[k - 1][0])
            if this != code:
                groups += _places(bindings, run)
                run, code = [], this
            run.append((start, stop))
        groups += _places(bindings, run)
    return groups


def _places(bindings: list, run: list[tuple[int, int]]) -> list[list[str]]:
    if len(run) < MIN_STEPS:
        return []
    return [[bindings[start + j].var.name for start, _ in run] for j in range(run[0][1] - run[0][0])]


def whole_groups(chosen: dict[str, float], groups: list[list[str]]) -> dict[str, float]:
    """`chosen` ({tensor: error}) with every group that has a member in it added whole, each
    member at the group's largest error: a step carried apart would compute another function."""
    out = dict(chosen)
    for g in groups:
        errors = [chosen[n] for n in g if n in chosen]
        if errors:
            out.update({n: max(errors) for n in g})
    return out
