"""UnaryChainsThroughLayout: two unary chains with only a layout op between them -> one chain.

    a = intq.unary(x, P);  t = permute_dims(a);  y = intq.unary(t, Q)
    ==>  t = permute_dims(x);  y = intq.unary(t, P then Q)

Elementwise functions commute with moving values, so the chain can run after the move. One
chain is one table: a log-power spectrum written as sqrt, square, transpose, add eps, log
(basic-pitch's CQT) otherwise rounds the power to a linear 8/16-bit grid between the two
tables, flooring its weak bins, where one chain reads every octave of the power's int32
(`lowering.unary.octave_lookup`).

Where the first chain or the layout op has other readers, they keep them, and the second chain
reads its own copy of the layout op on the first chain's source:

    a = intq.unary(x, P);  t = squeeze(a);  y = intq.unary(t, Q);  s = sum(t)
    ==>  a = intq.unary(x, P);  t = squeeze(a);  t' = squeeze(x);  y = intq.unary(t', P then Q);  s = sum(t)

as FuseUnaryChains already does for a chain read without a layout op between: a spectral flatness
computed from dB values (PESTO's voicing confidence: power = exp(dB * ln 10 / 10), squeezed, then
summed, averaged and logged) otherwise takes the log of the power rounded to a linear grid, where
every bin 50 dB under the frame's peak is 0 and its log the table's floor; P then Q (exp then log)
is one table on the dB values, exact. The copy is a layout op on the source (a view for reshape,
squeeze, expand_dims, flatten).
"""

from __future__ import annotations

import json

import tvm
from tvm import relax

from .call_rewrite import rewrite_functions
from .chain_calls import unary_call, unary_parts as _unary

LAYOUT = ("relax.permute_dims", "relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten")


def compose(first: str, second: str) -> str:
    """The program that runs `first`, then `second` on its result."""
    a, b = json.loads(first), json.loads(second)
    shift = lambda o: ["v", len(a) - 1 if o[1] == -1 else o[1] + len(a)] if isinstance(o, list) else o  # noqa: E731
    return json.dumps(a + [[op, [shift(o) for o in operands], attrs] for op, operands, attrs in b])


@tvm.transform.module_pass(opt_level=0, name="UnaryChainsThroughLayout")
def unary_chains_through_layout(mod, _ctx):
    """Merge every chain -> layout op -> chain into layout op -> chain (see the module docstring)."""
    return rewrite_functions(mod, _merge)


def uses_of(func: relax.Function) -> dict:
    """Variable -> how many bindings (and the function's result) read it."""
    uses: dict = {}
    for block in func.body.blocks:
        for b in block.bindings:
            for v in relax.analysis.free_vars(b.value):
                uses[v] = uses.get(v, 0) + 1
    for v in relax.analysis.free_vars(func.body.body):
        uses[v] = uses.get(v, 0) + 1
    return uses


def _merge(func: relax.Function) -> relax.Function:
    uses = uses_of(func)
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    replace, extra, bb = {}, {}, relax.BlockBuilder()  # var -> its new value; var -> bindings in its place
    for var, value in bound.items():
        second = _unary(value)
        if second is None or not isinstance(second[0], relax.Var) or var in replace:
            continue
        moved = bound.get(second[0])
        if not (isinstance(moved, relax.Call) and isinstance(moved.op, tvm.ir.Op) and moved.op.name in LAYOUT
                and isinstance(moved.args[0], relax.Var)):
            continue
        first = _unary(bound.get(moved.args[0]))
        if first is None or moved.args[0] in replace or second[0] in replace:
            continue
        source, program = first
        if str(getattr(source.ty, "dtype", "")) != str(moved.args[0].ty.dtype):
            continue
        layout = bb.normalize(relax.Call(moved.op, [source, *moved.args[1:]], moved.attrs, moved.ty_args))
        if uses.get(second[0]) == 1 and uses.get(moved.args[0]) == 1:  # nothing else reads them: move in place
            replace[second[0]] = layout
            replace[var] = bb.normalize(unary_call(second[0], compose(program, second[1]), var.ty))
            bound[second[0]], bound[var] = replace[second[0]], replace[var]
            continue
        copy = type(second[0])(f"{second[0].name}_of_source", layout.ty)  # the others keep t
        extra[var] = [relax.VarBinding(copy, layout),
                      relax.VarBinding(var, bb.normalize(unary_call(copy, compose(program, second[1]), var.ty)))]
    new = {v: [relax.VarBinding(v, e)] for v, e in replace.items()}
    return with_bindings(func, {**new, **extra})


def with_bindings(func: relax.Function, new: dict) -> relax.Function:
    """`func` with each binding of a variable in `new` replaced by the bindings listed there."""
    if not new:
        return func
    blocks = []
    for block in func.body.blocks:
        bindings = [n for b in block.bindings for n in new.get(b.var, [b])]
        blocks.append(relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock)
                      else relax.BindingBlock(bindings))
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs)
