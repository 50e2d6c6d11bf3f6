"""SumOverStack: a sum over the axis that a Concat stacked its inputs on -> an add of the inputs.

    s = concat((x_1, ..., x_n), axis=k)     (each x_i of size 1 along k)
    [s = intq.unary(s, P)]                  (an elementwise chain, e.g. the square)
    y = sum(s, axis=[k])                    ==>  y = P(x_1) + ... + P(x_n)

TF/Keras exports write a power spectrum as stack(re, im) -> square -> reduce_sum (basic-pitch's
CQT): the Concat puts re and im on one grid before the square, and the sum is of a stack. As an
add of squares, each square is an exact int32 product of its own input and their sum a
nonnegative int32 (`lowering.binary.sum_of_squares`), which a log then reads by octaves. Fires
only where the Concat (and the chain) have no other reader.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .call_rewrite import is_op, rewrite_functions
from .chain_calls import unary_call, unary_parts as _unary
from .unary_chains_through_layout import uses_of, with_bindings

MAX_TERMS = 8


@tvm.transform.module_pass(opt_level=0, name="SumOverStack")
def sum_over_stack(mod, _ctx):
    """Rewrite every sum over a stacking Concat's axis (see the module docstring)."""
    return rewrite_functions(mod, _rewrite)


def _rewrite(func: relax.Function) -> relax.Function:
    uses = uses_of(func)
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    new = {}  # var -> the bindings replacing its own
    for var, value in bound.items():
        if not is_op(value, "relax.sum") or value.attrs.axis is None or len(value.attrs.axis) != 1:
            continue
        src, program = value.args[0], None
        chain = _unary(bound.get(src)) if isinstance(src, relax.Var) else None
        if chain is not None and uses.get(src) == 1:
            src, program = chain
        stack = bound.get(src) if isinstance(src, relax.Var) else None
        if not is_op(stack, "relax.concat") or uses.get(src) != 1:
            continue
        rank = len(var.ty.shape) + (0 if value.attrs.keepdims else 1)
        axis = int(value.attrs.axis[0]) % rank
        parts = list(stack.args[0].fields)
        if (int(stack.attrs.axis) % rank != axis or not 1 < len(parts) <= MAX_TERMS
                or any(int(p.ty.shape[axis]) != 1 for p in parts)):
            continue
        df = isinstance(var, relax.DataflowVar)
        bindings, terms = [], []

        def bind(call, shape, name="stack_term"):
            v = (relax.DataflowVar if df else relax.Var)(name, relax.TensorType(shape, str(var.ty.dtype)))
            bindings.append(relax.VarBinding(v, call))
            return v

        for p in parts:
            shape = [int(d) for d in p.ty.shape]
            if not value.attrs.keepdims:  # the part without the stacked axis: what expand_dims added
                inner = bound.get(p) if isinstance(p, relax.Var) else None
                shape = shape[:axis] + shape[axis + 1:]
                p = inner.args[0] if is_op(inner, "relax.expand_dims") and [int(a) for a in inner.attrs.axis] == [
                    axis] else bind(relax.op.squeeze(p, [axis]), shape)
            terms.append(bind(unary_call(p, program, relax.TensorType(shape, str(var.ty.dtype))), shape)
                         if program else p)
        total = terms[0]
        for k, t in enumerate(terms[1:]):
            last = k == len(terms) - 2
            call = relax.op.add(total, t)
            if last:
                bindings.append(relax.VarBinding(var, call))
            else:
                total = bind(call, [int(d) for d in var.ty.shape])
        new[var] = bindings
    return with_bindings(func, new)  # the terms, then the sum's variable bound to their total

