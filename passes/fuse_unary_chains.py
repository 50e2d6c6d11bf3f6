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
(`chain_as_ops`, in `float_taps.py`): TVM's fused float kernels, where the NumPy twin
(`intq.unary`, registered here for whoever runs the module as it is) took 0.5 s a call on a
fingerprint net's 1 x 64 x 128 x 104 GELUs, 13 s of its 15 s float run. The call never reaches an
artifact: every one is lowered to a table.
"""

from __future__ import annotations

import json

import tvm
from tvm import relax

from .reference.unary import CHAIN_OPS, FLOAT_OPS, OP_ATTRS, TABLE_OPS, evaluate

_OPS_BY_NAME = {"relax.clip": lambda x, lo, hi: relax.op.clip(x, lo, hi)}

UNARY_CALL = "intq.unary"
COMPARISONS = frozenset(op for op in CHAIN_OPS if op.startswith(("relax.greater", "relax.less")))


@tvm.register_global_func(UNARY_CALL, override=True)
def _run_unary(x, program):
    return tvm.runtime.tensor(evaluate(str(program), x.numpy()).astype(str(x.dtype)))


def _number(expr):
    """A scalar constant operand as a Python number, else None."""
    if isinstance(expr, tvm.ir.GenericConst):
        v = expr.value.numpy()
        return v.reshape(()).item() if v.size == 1 else None
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)):
        return value
    return _number(value) if value is not None and value is not expr else None


def _shape(ty):
    try:
        return tuple(int(d) for d in ty.shape)
    except (TypeError, AttributeError):
        return None


def _attr(value):
    return float(value) if isinstance(value, (int, float)) or hasattr(value, "__float__") else str(value)


def chain_step(call: relax.Call, chains: dict, out_ty) -> tuple | None:
    """(source var, ordered chain vars, step, table?) if `call` is one elementwise step on a single
    float tensor (the source, or a chain from it) and scalar constants; else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) or call.op.name not in FLOAT_OPS:
        return None
    dtype = str(getattr(out_ty, "dtype", ""))
    if not dtype.startswith(("float", "bool")) or _shape(out_ty) is None:
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
        elif (n := _number(arg)) is not None:
            operands.append(n)
        else:
            return None
        table |= call.op.name == "relax.divide" and i == 1 and isinstance(arg, relax.Var)
    n_vars = sum(isinstance(o, list) for o in operands)
    if len(sources) != 1 or n_vars == 0:
        return None
    source = sources.pop()
    if _shape(source.ty) != _shape(out_ty):  # a constant that broadcasts to more dims: not elementwise
        return None
    table |= n_vars > 1
    attrs = {k: _attr(getattr(call.attrs, k)) for k in OP_ATTRS.get(call.op.name, ())}
    return source, members, (call.op.name, operands, attrs), table


def program_json(source, members: list, steps: dict, last_step: tuple) -> str:
    """The JSON program of a chain: operands refer to earlier steps by index (-1: the source)."""
    index = {m: i for i, m in enumerate(members)}
    index[source] = -1

    def encode(step):
        op, operands, attrs = step
        return [op, [["v", index[o[1]]] if isinstance(o, list) else o for o in operands], attrs]

    return json.dumps([encode(steps[m]) for m in members] + [encode(last_step)])


def unary_call(source: relax.Expr, program: str, out_ty) -> relax.Expr:
    return relax.op.call_pure_packed(UNARY_CALL, source, tvm.ir.StringImm(program), ty_args=out_ty)


@tvm.transform.module_pass(opt_level=0, name="FuseUnaryChains")
def fuse_unary_chains(mod, _ctx):
    """Replace every float binding that is a table-worthy function of one input by one call."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            mod[gv] = _fuse(func)
    return mod


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


def unary_parts(value) -> tuple[relax.Expr, str] | None:
    """(source, program) of an `intq.unary` call, else None."""
    if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.call_pure_packed"
            and isinstance(value.args[0], relax.ExternFunc) and value.args[0].global_symbol == UNARY_CALL):
        return value.args[1], str(value.args[2].value)
    return None


def _relax_op(name: str):
    if name in _OPS_BY_NAME:
        return _OPS_BY_NAME[name]
    op = relax.op
    for part in name.split(".")[1:]:  # "relax.nn.softplus" -> relax.op.nn.softplus
        op = getattr(op, part)
    return op


def chain_as_ops(call: relax.Call, new_var) -> tuple[list[relax.VarBinding], relax.Expr] | None:
    """The Relax ops an `intq.unary` call stands for: (bindings of all steps but the last, the last
    step's call), or None if `call` is not one. `new_var(name, ty)` makes each step's variable.
    Scalar operands become constants of the dtype of the step's tensor operand."""
    parts = unary_parts(call)
    if parts is None:
        return None
    source, program = parts[0], json.loads(parts[1])
    bb, values, bindings, expr = relax.BlockBuilder(), {-1: source}, [], None
    for i, (name, operands, attrs) in enumerate(program):
        if expr is not None:  # the previous step, bound: this one reads it
            values[i - 1] = new_var(f"step{i - 1}", expr.ty)
            bindings.append(relax.VarBinding(values[i - 1], expr))
        tensors = [values[o[1]] for o in operands if isinstance(o, list)]
        dtype = str(tensors[0].ty.dtype)
        args = [values[o[1]] if isinstance(o, list)
                else o if name == "relax.clip" else relax.const(o, dtype) for o in operands]
        if name == "relax.power" and not isinstance(operands[1], list) and float(operands[1]) in (2.0, 3.0, 4.0):
            # x * x * x: the same values, without TVM's pow (slow, and a warning per kernel)
            expr = bb.normalize(relax.op.multiply(args[0], args[0]))
            for k in range(int(operands[1]) - 2):
                bindings.append(relax.VarBinding(power := new_var(f"step{i}_{k}", expr.ty), expr))
                expr = bb.normalize(relax.op.multiply(power, args[0]))
        else:
            expr = bb.normalize(_relax_op(name)(*args, **attrs))
    return bindings, expr
