"""FuseBinaryChains: an elementwise float function of TWO tensors that mixes them before a table op -> one call.

    t = y / (x + ...);  a = atan(t);  ...;  out = a * s + p      (a DAG of reference.unary.FLOAT_OPS
                                                                    on x and y, scalar constants)
    ==>  out = call_pure_packed("intq.binary", x, y, "<program>")

Fused only where a table op (or a comparison) reads a value that *mixes* both tensors: a product,
quotient, power, maximum or minimum of operands that depend on different ones. tf2onnx's Atan2
is the case in point: `atan(y / x)` plus sign fix-ups, about 20 ops. The quotient is unbounded
where x is near 0. No 8-bit grid for it keeps the small ratios, and the angle came out 30-45
degrees off on a fingerprint net. The lowering (`lowering/pair_table.py`) instead looks up the
whole function of the two 8-bit inputs in one 65536-entry table. Sums do not mix: `(a + b)` into
a table stays a requantized add and a 256-entry table, and a gate `a * sigmoid(b)` stays a table
and a product of two activations.

Reshapes that keep the element order (reshape, expand_dims, squeeze, flatten) may sit anywhere in
the DAG (tf2onnx puts Transpose-as-Reshape and Squeeze between the steps): every value has the
output's number of elements, so the program runs on the inputs reshaped to the output's shape.
Runs before FuseUnaryChains, which would otherwise take the one-input parts (sign(x)^2) first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import tvm
from tvm import relax

from .call_rewrite import rewrite_functions
from .chain_calls import binary_call
from .fuse_unary_chains import COMPARISONS, attr_value, scalar_number, static_shape
from .reference.unary import FLOAT_OPS, OP_ATTRS, TABLE_OPS

VIEWS = ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten")
MIXING = ("relax.multiply", "relax.divide", "relax.power", "relax.maximum", "relax.minimum")


@dataclass(frozen=True)
class _Chain:
    sources: tuple  # the one or two source vars, in order of first use
    members: tuple  # the chain vars this value is computed from, in binding order
    step: tuple  # (op, operands, attrs); operand ["v", var] or a number
    mixed: bool  # depends on both sources through a MIXING op
    table: bool  # a table op has read a mixed value on the way


def _size(ty) -> int | None:
    shape = static_shape(ty)
    return None if shape is None else math.prod(shape)


@tvm.transform.module_pass(opt_level=0, name="FuseBinaryChains")
def fuse_binary_chains(mod, _ctx):
    """Replace every float binding that is a table-worthy function of two tensors by one call."""
    return rewrite_functions(mod, _fuse)


def _fuse(func: relax.Function) -> relax.Function:
    chains: dict = {}
    view_of: dict = {}  # a reshaped var -> what it reshapes (a chain var or a source)
    blocks, changed = [], False
    bb = relax.BlockBuilder()
    canon = lambda v: view_of.get(v, v)  # noqa: E731
    for block in func.body.blocks:
        flow = isinstance(block, relax.DataflowBlock)
        bindings = []
        for b in block.bindings:
            value = b.value if isinstance(b, relax.VarBinding) else None
            if _is_view(value, b.var):
                view_of[b.var] = canon(value.args[0])
            elif (found := _step(value, b.var.ty, chains, canon)) is not None:
                chains[b.var] = found
                if found.table and len(found.sources) == 2 and str(b.var.ty.dtype).startswith("float"):
                    args = []
                    for k, source in enumerate(found.sources):
                        if static_shape(source.ty) != static_shape(b.var.ty):
                            view = (relax.DataflowVar if flow else relax.Var)(f"{b.var.name}_in{k}", b.var.ty)
                            bindings.append(relax.VarBinding(view, bb.normalize(
                                relax.op.reshape(source, b.var.ty.shape))))
                            source = view
                        args.append(source)
                    b = relax.VarBinding(b.var, bb.normalize(binary_call(*args, _program(found, chains), b.var.ty)))
                    changed = True
            bindings.append(b)
        blocks.append(relax.DataflowBlock(bindings) if flow else relax.BindingBlock(bindings))
    if not changed:
        return func
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs)


def _is_view(value, var) -> bool:
    return (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in VIEWS
            and isinstance(value.args[0], relax.Var) and _size(var.ty) is not None
            and _size(var.ty) == _size(value.args[0].ty))


def _step(call, out_ty, chains: dict, canon) -> _Chain | None:
    """The chain `call` extends: one elementwise step on at most two float tensors (or chains of
    them) and scalar constants, every tensor of the output's size; else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) or call.op.name not in FLOAT_OPS:
        return None
    dtype, size = str(getattr(out_ty, "dtype", "")), _size(out_ty)
    if not dtype.startswith(("float", "bool")) or size is None:
        return None
    sources, members, operands, deps = [], [], [], []
    mixed = table = False
    for arg in call.args:
        if isinstance(arg, relax.Var):
            if _size(arg.ty) != size:
                return None  # a broadcast: not elementwise
            var = canon(arg)
            if var in chains:
                chain = chains[var]
                members += [m for m in chain.members + (var,) if m not in members]
                mixed, table = mixed or chain.mixed, table or chain.table
                reads = chain.sources
            elif str(getattr(var.ty, "dtype", "")).startswith("float"):
                reads = (var,)
            else:
                return None
            deps.append(set(reads))
            sources += [s for s in reads if s not in sources]
            operands.append(["v", var])
        elif (n := scalar_number(arg)) is not None:
            if call.op.name == "relax.where":  # a constant branch is a mask's fill (-inf, -1e4, float32's min):
                return None  # left to the mask lowerings
            operands.append(n)
        else:
            return None
    if not deps or len(sources) > 2:
        return None
    op = call.op.name
    table = table or ((op in TABLE_OPS or op in COMPARISONS) and mixed)  # reads a mixed operand
    mixed = mixed or (op in MIXING and len(sources) == 2 and len(deps) == 2 and deps[0] != deps[1])
    attrs = {k: attr_value(getattr(call.attrs, k)) for k in OP_ATTRS.get(op, ())}
    return _Chain(tuple(sources), tuple(members), (op, operands, attrs), mixed, table)


def _program(chain: _Chain, chains: dict) -> str:
    """The JSON program: operands refer to earlier steps by index, to the sources as -1 and -2."""
    index = {m: i for i, m in enumerate(chain.members)}
    index.update({s: -1 - k for k, s in enumerate(chain.sources)})

    def encode(step):
        op, operands, attrs = step
        return [op, [["v", index[o[1]]] if isinstance(o, list) else o for o in operands], attrs]

    return json.dumps([encode(chains[m].step) for m in chain.members] + [encode(chain.step)])
