"""Cut elementwise chains that would nest more than MAX_NESTED requantizations in one kernel, before FuseOps.

A sum of many requantized terms, `acc = clip(rq(acc) + rq(f_i))` once per term (N-BEATS adds
every block's forecast to the running one; any long residual sum does), is one chain of
single-use elementwise ops, and FuseOps makes it one kernel with one expression: each term's
windowed requantization (`requant.py`) nested inside the next. TVM's arithmetic simplifier
(`StmtSimplify`) costs about 8-16x more per nesting level: 4 levels 1 s, 5 levels 16 s, 6 levels
a compile that had not finished after 15 minutes (N-BEATS, 6 blocks). Here, where a requantization
would be the (MAX_NESTED + 1)-th along a chain of single-use elementwise bindings, the dataflow
block is cut before it (`split_dataflow.split_at`): fusion does not cross a cut, so the chain
becomes two kernels, with the same integers. Chains through a value with other readers do not
count (FuseOps stops there too), so residual nets, whose skip tensor has two readers, never cut.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .split_dataflow import split_at, split_blocks

MAX_NESTED = 4
FUSABLE = 2  # FuseOps' kInjective and below: elementwise, broadcast, injective


def _callee(mod, value):
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.call_tir":
        gv = value.args[0]
        func = mod[gv] if isinstance(gv, tvm.ir.GlobalVar) and gv in mod.functions else None
        return gv.name_hint, func
    return None, None


def _pattern(func) -> int:
    attrs = getattr(func, "attrs", None)
    return int(attrs["op_pattern"]) if attrs is not None and "op_pattern" in attrs else 8


def _cuts(mod, block: relax.DataflowBlock) -> list[int]:
    """Indices of the bindings that end a part: the binding just before each too-deep requantization."""
    bindings = list(block.bindings)
    index = {b.var: i for i, b in enumerate(bindings)}
    uses: dict = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            uses[v] = uses.get(v, 0) + 1
    depth, cuts, floor = {}, [], -1
    for i, b in enumerate(bindings):
        name, func = _callee(mod, b.value)
        if func is None or _pattern(func) > FUSABLE:
            continue
        d = max((depth.get(v, 0) for v in relax.analysis.free_vars(b.value)
                 if index.get(v, -1) > floor and uses.get(v, 0) == 1), default=0)
        if "requant" in name:
            d += 1
            if d > MAX_NESTED and i > 0:
                cuts.append(i - 1)
                floor, d = i - 1, 1
        depth[b.var] = d
    return cuts


@tvm.transform.module_pass(opt_level=0, name="CutRequantChains")
def cut_requant_chains(mod, _ctx):
    """Each dataflow block cut before every requantization that would nest too deep in one kernel."""
    def parts(block: relax.DataflowBlock) -> list:
        cuts = _cuts(mod, block)
        return split_at(block, cuts) if cuts and all(isinstance(b, relax.VarBinding) for b in block.bindings) \
            else [block]

    return split_blocks(mod, parts)
