"""Split dataflow blocks longer than MAX_BINDINGS into consecutive blocks, before FuseOps.

TVM's FuseOps costs about the square of a dataflow block's length: an LSTM unrolled over 50
steps (16,000 bindings) fused in 1.5 s, over 300 steps (96,000) in 45 s, in calibration's float
build and in the integer build alike. Blocks of at most MAX_BINDINGS keep it linear in the model's
size; a value read across a cut becomes the block's output (a plain Var). The last binding before
each cut goes into a (non-dataflow) binding block of its own: adjacent dataflow blocks are merged
back by Relax's normalizer. Fusion does not cross a cut, so a chain split there becomes two
kernels: a few in a model this long, and the same values.
"""

from __future__ import annotations

import tvm
from tvm import relax

from frontends.relax_rewrite import Substitute

MAX_BINDINGS = 4096


def _split(block: relax.DataflowBlock) -> list[relax.BindingBlock]:
    bindings = list(block.bindings)
    if len(bindings) <= MAX_BINDINGS or not all(isinstance(b, relax.VarBinding) for b in bindings):
        return [block]
    return split_at(block, list(range(MAX_BINDINGS - 1, len(bindings) - 1, MAX_BINDINGS)))


def split_at(block: relax.DataflowBlock, ends: list[int]) -> list[relax.BindingBlock]:
    """`block` (of VarBindings) cut after each binding index in `ends` (ascending, before the last):
    the parts as dataflow blocks, each part's last binding but the final one's in a plain block."""
    bindings = list(block.bindings)
    starts = [0] + [e + 1 for e in ends]
    chunks = [bindings[a:b] for a, b in zip(starts, starts[1:] + [len(bindings)]) if b > a]
    owner = {b.var: k for k, chunk in enumerate(chunks) for b in chunk}
    mapping = {chunk[-1].var: relax.Var(chunk[-1].var.name, chunk[-1].var.ty) for chunk in chunks[:-1]
               if isinstance(chunk[-1].var, relax.DataflowVar)}
    for k, chunk in enumerate(chunks):
        for i, b in enumerate(chunk):
            moved = i == len(chunk) - 1 and k < len(chunks) - 1  # outside the dataflow block: reads outputs
            for v in relax.analysis.free_vars(b.value):
                if isinstance(v, relax.DataflowVar) and (moved or owner.get(v, k) < k) and v not in mapping:
                    mapping[v] = relax.Var(v.name, v.ty)
    rename = Substitute(mapping)
    blocks = []
    for k, chunk in enumerate(chunks):
        renamed = [relax.VarBinding(mapping.get(b.var, b.var), rename.visit_expr(b.value)) for b in chunk]
        last = k == len(chunks) - 1
        blocks.append(relax.DataflowBlock(renamed if last else renamed[:-1]))
        if not last:
            blocks.append(relax.BindingBlock(renamed[-1:]))
    return blocks


def split_blocks(mod: tvm.IRModule, parts) -> tvm.IRModule:
    """`mod` with each dataflow block of each Relax function replaced by `parts(block)` (a list of
    blocks; `[block]` keeps it), functions rebuilt only where a block was split."""
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if not (isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr)):
            continue
        blocks = [part for block in func.body.blocks
                  for part in (parts(block) if isinstance(block, relax.DataflowBlock) else [block])]
        if len(blocks) != len(func.body.blocks):
            body = relax.SeqExpr(blocks, func.body.body)
            out[gv] = relax.BlockBuilder().normalize(
                relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span))
    return out


@tvm.transform.module_pass(opt_level=0, name="SplitDataflowBlocks")
def split_dataflow_blocks(mod, _ctx):
    """Every dataflow block of more than MAX_BINDINGS bindings, cut into blocks of at most that many."""
    return split_blocks(mod, _split)
