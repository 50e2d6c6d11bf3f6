"""FuseUnaryChains: every elementwise float computation of ONE input -> one call.

    y = f_k(... f_1(x) ...)   (any DAG of the ops in reference.unary.FLOAT_OPS whose only
                               tensor input is x, constants scalar)
    ==>  y = call_pure_packed("intq.unary", x, "<program>")

The program (JSON, see `passes.reference.unary`) is the chain itself, so the integer lowering
(`passes/lowering/unary.py`) turns it into ONE 256 (or 65536) entry table, whatever the number of
ops ONNX's importer used: HardSwish arrives as add/clip/divide/multiply, Mish as
exp/add/log/tanh/multiply, Elu, Selu, Softplus, Softsign and ThresholdedRelu as 4-7 ops, and
`x * sigmoid(x)` (SiLU/Swish) as two. Fuses only where the DAG holds something a table is for
(an op of TABLE_OPS, a comparison, a division by the chain, or two operands from the chain):
alone, clamps and scalar rescales stay as they are, since the existing lowerings fold them into
a requantization. Runs after FuseGelu and FuseLayerNorm, which own their erf/sqrt patterns.

Why a pass and not a composite or a lowering-time fusion: the decompositions end in add,
multiply, clip... whose lowerings belong to other modules, so only a rewrite before lowering
sees the whole chain; a composite function call is not an op the lowering dispatches on, and
the program travels inside the call, so the lowering needs no side channel. Calibration still
runs the float module, with each call expanded back into the Relax ops it stands for
(`chain_calls.chain_as_ops`). The call never reaches an artifact: every one is lowered to a table.
"""

from __future__ import annotations

import json

import tvm
from tvm import relax

from .call_rewrite import rewrite_functions
from .chain_calls import UNARY_CALL, chain_as_ops, unary_call, unary_parts  # noqa: F401  (re-exported)
from .reference.unary import CHAIN_OPS, FLOAT_OPS, OP_ATTRS, TABLE_OPS


COMPARISONS = frozenset(op for op in CHAIN_OPS if op.startswith(("relax.greater", "relax.less")))


def scalar_number(expr):
    """A scalar constant operand as a Python number, else None."""
    if isinstance(expr, tvm.ir.GenericConst):
        v = expr.value.numpy()
        return v.reshape(()).item() if v.size == 1 else None
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)):
        return value
    return scalar_number(value) if value is not None and value is not expr else None


def static_shape(ty):
    try:
        return tuple(int(d) for d in ty.shape)
    except (TypeError, AttributeError):
        return None


def attr_value(value):
    return float(value) if isinstance(value, (int, float)) or hasattr(value, "__float__") else str(value)


def chain_step(call: relax.Call, chains: dict, out_ty) -> tuple | None:
    """(source var, ordered chain vars, step, table?) if `call` is one elementwise step on a single
    float tensor (the source, or a chain from it) and scalar constants; else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) or call.op.name not in FLOAT_OPS:
        return None
    dtype = str(getattr(out_ty, "dtype", ""))
    if not dtype.startswith(("float", "bool")) or static_shape(out_ty) is None:
        return None
    sources, members, operands, table = set(), [], [], call.op.name in TABLE_OPS or call.op.name in COMPARISONS
    for i, arg in enumerate(call.args):
        if isinstance(arg, relax.Var) and arg in chains:
            src, prior, _, prior_table = chains[arg]
            sources.add(src)
            members += [m for m in prior + [arg] if m not in members]
            operands.append(["v", arg])
            table |= prior_table
        elif isinstance(arg, relax.Var) and str(getattr(arg.ty, "dtype", "")).startswith("float"):
            sources.add(arg)
            operands.append(["v", arg])
        elif (n := scalar_number(arg)) is not None:
            if call.op.name == "relax.where":  # a constant branch is a mask's fill (-inf, -1e4, float32's min):
                return None  # left to the mask lowerings
            operands.append(n)
        else:
            return None
        table |= call.op.name == "relax.divide" and i == 1 and isinstance(arg, relax.Var)
    n_vars = sum(isinstance(o, list) for o in operands)
    if len(sources) != 1 or n_vars == 0:
        return None
    source = sources.pop()
    if static_shape(source.ty) != static_shape(out_ty):  # a constant that broadcasts to more dims: not elementwise
        return None
    table |= n_vars > 1
    attrs = {k: attr_value(getattr(call.attrs, k)) for k in OP_ATTRS.get(call.op.name, ())}
    return source, members, (call.op.name, operands, attrs), table


def program_json(source, members: list, steps: dict, last_step: tuple) -> str:
    """The JSON program of a chain: operands refer to earlier steps by index (-1: the source)."""
    index = {m: i for i, m in enumerate(members)}
    index[source] = -1

    def encode(step):
        op, operands, attrs = step
        return [op, [["v", index[o[1]]] if isinstance(o, list) else o for o in operands], attrs]

    return json.dumps([encode(steps[m]) for m in members] + [encode(last_step)])


@tvm.transform.module_pass(opt_level=0, name="FuseUnaryChains")
def fuse_unary_chains(mod, _ctx):
    """Replace every float binding that is a table-worthy function of one input by one call."""
    return rewrite_functions(mod, _fuse)


def _fuse(func: relax.Function) -> relax.Function:
    chains, steps, blocks, changed = {}, {}, [], False
    bb = relax.BlockBuilder()
    for block in func.body.blocks:
        bindings = []
        for b in block.bindings:
            found = chain_step(b.value, chains, b.var.ty) if isinstance(b, relax.VarBinding) else None
            if found is not None:
                source, members, step, table = found
                chains[b.var], steps[b.var] = (source, members, step, table), step
                if table and str(b.var.ty.dtype).startswith("float"):
                    b = relax.VarBinding(b.var, bb.normalize(unary_call(source, program_json(
                        source, members, steps, step), b.var.ty)))
                    changed = True
            bindings.append(b)
        blocks.append(relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock)
                      else relax.BindingBlock(bindings))
    if not changed:
        return func
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
