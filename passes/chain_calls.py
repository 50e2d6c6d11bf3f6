"""The packed calls that stand for fused elementwise chains, made by `fuse_unary_chains.py` and
`fuse_binary_chains.py` and lowered to tables (`lowering/unary.py`, `lowering/pair_table.py`):

    intq.unary(x, program)        a function of one tensor
    intq.binary(x, y, program)    a function of two tensors of one shape

`program` is JSON (`passes.reference.unary`). The float model calibration runs computes each call
as the Relax ops it stands for (`chain_as_ops`, used by `float_taps.py`): TVM's fused float kernels.
The NumPy twins registered here (float64) serve whoever runs a module as it is; as a callback
from the VM they took 0.5 s a call on a fingerprint net's 1 x 64 x 128 x 104 GELUs, 13 of its 15 s.
"""

from __future__ import annotations

import json

import tvm
from tvm import relax

from .reference.unary import evaluate

UNARY_CALL = "intq.unary"
BINARY_CALL = "intq.binary"
_OPS_BY_NAME = {"relax.clip": lambda x, lo, hi: relax.op.clip(x, lo, hi)}


@tvm.register_global_func(UNARY_CALL, override=True)
def _run_unary(x, program):
    return tvm.runtime.tensor(evaluate(str(program), x.numpy()).astype(str(x.dtype)))


@tvm.register_global_func(BINARY_CALL, override=True)
def _run_binary(x, y, program):
    return tvm.runtime.tensor(evaluate(str(program), x.numpy(), y.numpy()).astype(str(x.dtype)))


def unary_call(source: relax.Expr, program: str, out_ty) -> relax.Expr:
    return relax.op.call_pure_packed(UNARY_CALL, source, tvm.ir.StringImm(program), ty_args=out_ty)


def binary_call(x: relax.Expr, y: relax.Expr, program: str, out_ty) -> relax.Expr:
    return relax.op.call_pure_packed(BINARY_CALL, x, y, tvm.ir.StringImm(program), ty_args=out_ty)


def chain_parts(value) -> tuple[list[relax.Expr], str] | None:
    """([x] or [x, y], program) of an `intq.unary` or `intq.binary` call, else None."""
    if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.call_pure_packed"
            and isinstance(value.args[0], relax.ExternFunc) and value.args[0].global_symbol in (UNARY_CALL, BINARY_CALL)):
        return list(value.args[1:-1]), str(value.args[-1].value)
    return None


def unary_parts(value) -> tuple[relax.Expr, str] | None:
    """(source, program) of an `intq.unary` call, else None."""
    parts = chain_parts(value)
    return (parts[0][0], parts[1]) if parts is not None and len(parts[0]) == 1 else None


def _relax_op(name: str):
    if name in _OPS_BY_NAME:
        return _OPS_BY_NAME[name]
    op = relax.op
    for part in name.split(".")[1:]:  # "relax.nn.softplus" -> relax.op.nn.softplus
        op = getattr(op, part)
    return op


def chain_as_ops(call: relax.Call, bind) -> relax.Expr | None:
    """The Relax ops an `intq.unary` or `intq.binary` call stands for: each step but the last bound
    by `bind(name, expr) -> var`, the last step's call returned; None if `call` is not one. Scalar
    operands become constants of the dtype of the step's tensor operand."""
    parts = chain_parts(call)
    if parts is None:
        return None
    sources, program = parts[0], json.loads(parts[1])
    bb, values, expr = relax.BlockBuilder(), dict(zip((-1, -2), sources)), None
    for i, (name, operands, attrs) in enumerate(program):
        if expr is not None:  # the previous step, bound: this one reads it
            values[i - 1] = bind(f"step{i - 1}", expr)
        # a where's scalar branch takes its other branch's dtype, not its condition's (bool)
        tensors = [values[o[1]] for o in (operands[1:] if name == "relax.where" else operands) if isinstance(o, list)]
        dtype = str(tensors[0].ty.dtype) if tensors else "float32"
        const_dtype = lambda k: "bool" if name == "relax.where" and k == 0 else dtype  # noqa: E731
        args = [values[o[1]] if isinstance(o, list) else o if name == "relax.clip" else relax.const(o, const_dtype(k))
                for k, o in enumerate(operands)]
        if name == "relax.power" and not isinstance(operands[1], list) and float(operands[1]) in (2.0, 3.0, 4.0):
            # x * x * x: the same values, without TVM's pow (slow, and a warning per kernel)
            expr = bb.normalize(relax.op.multiply(args[0], args[0]))
            for k in range(int(operands[1]) - 2):
                expr = bb.normalize(relax.op.multiply(bind(f"step{i}_{k}", expr), args[0]))
        else:
            expr = bb.normalize(_relax_op(name)(*args, **attrs))
    return expr
