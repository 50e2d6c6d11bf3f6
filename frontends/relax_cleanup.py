"""Undo importer artefacts so that later passes see plain Relax ops.

`call_tir(maximum, (x, c))` -> `R.maximum(x, c)` (and `minimum`), where `c` is a scalar:
TVM's ONNX importer lowers Clip through `emit_te(topi.maximum/minimum)`, which hides the
clamp from pattern-based passes. Clip before opset 11 (min/max attributes, e.g. waifu2x's final
clamp to [0, 1]) bakes `c` into the PrimFunc: `call_tir(maximum, (x,))`; `c` is then read by
running it once on x = -inf (+inf for minimum) and checked on a probe, an infinite `c` (a missing
bound) dropping the clamp. Other `call_tir`s are left alone.
"""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_rewrite import mutate_functions

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_TOPI_CLAMP = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}


@mutator
class _ClipCallsToOps(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_, self.baked = mod, {}

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != _CALL_TIR or not isinstance(call.args[0], tvm.ir.GlobalVar):
            return call
        match = re.fullmatch(r"(maximum|minimum)\d*", call.args[0].name_hint)
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        if match is None:
            return call
        if len(args) == 1:
            return self._baked_clamp(call, match.group(1), args[0])
        if len(args) != 2 or len(args[1].ty.shape) != 0:
            return call
        return _TOPI_CLAMP[match.group(1)](args[0], args[1])

    def _baked_clamp(self, call, kind: str, x):
        """`call_tir(maximum, (x,))` with the bound inside the PrimFunc -> `R.maximum(x, c)`, or x."""
        try:
            shape = [int(d) for d in x.ty.shape]
        except TypeError:  # symbolic shape
            return call
        if str(x.ty.dtype) != "float32" or [int(d) for d in call.ty.shape] != shape or np.prod(shape) > 2**22:
            return call
        key = (call.args[0], tuple(shape))
        if key not in self.baked:
            from .te_calls_to_ops import _run

            prim, clamp = self.mod_[call.args[0]], {"maximum": np.maximum, "minimum": np.minimum}[kind]
            edge = np.full(shape, -np.inf if kind == "maximum" else np.inf, np.float32)
            c = np.float32(_run(prim, edge, shape).ravel()[0])
            probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 4
            ok = np.array_equal(_run(prim, probe, shape), clamp(probe, c)) and np.all(_run(prim, edge, shape) == c)
            self.baked[key] = c if ok else None
        c = self.baked[key]
        if c is None:
            return call
        if np.isinf(c):
            return x
        return _TOPI_CLAMP[kind](x, relax.const(float(c), "float32"))


@tvm.transform.module_pass(opt_level=0, name="ClipCallsToOps")
def clip_calls_to_ops(mod, _ctx):
    """Rewrite the importer's clamp `call_tir`s into `R.maximum` / `R.minimum`."""
    mutator_ = _ClipCallsToOps(mod)
    return mutate_functions(mutator_, mod)


def _empty(expr) -> bool:
    return _empty_type(getattr(expr, "ty", None))


def _empty_type(ty) -> bool:
    shape = getattr(ty, "shape", None)
    try:
        return shape is not None and any(int(d) == 0 for d in shape)
    except TypeError:  # symbolic
        return False


@mutator
class _DropEmptyConcatInputs(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.split"
                and not isinstance(call.ty, relax.TupleType)):
            return call.args[0]  # a split into one part (tf2onnx's unstack of a batch of 1): the importer
            # types it as a tensor, not a one-element tuple, which no later pass expects
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.concat" and
                isinstance(call.args[0], relax.Tuple)):
            return call
        fields = [f for f in call.args[0].fields if not _empty(f)]
        if len(fields) == len(call.args[0].fields) or not fields:
            return call
        return fields[0] if len(fields) == 1 else relax.op.concat(fields, axis=call.attrs.axis)

    def visit_tuple_getitem_(self, item):
        item = super().visit_tuple_getitem_(item)
        source = self.lookup_binding(item.tuple_value) if isinstance(item.tuple_value, relax.Var) else None
        if not (isinstance(source, relax.Call) and isinstance(source.op, tvm.ir.Op) and
                source.op.name == "relax.split"):
            return item
        fields = item.tuple_value.ty.fields
        x = source.args[0]
        if all(_empty_type(f) for k, f in enumerate(fields) if k != item.index) and \
                [int(d) for d in fields[item.index].shape] == [int(d) for d in x.ty.shape]:
            return x  # the one non-empty part of a split is its input
        return item


@tvm.transform.module_pass(opt_level=0, name="DropEmptyConcatInputs")
def drop_empty_concat_inputs(mod, _ctx):
    """Concat inputs with a zero-size dim (the empty pass-through part of a rotary embedding over the whole
    head) dropped, and a split into one full part and empty ones (or into one part) read as its input, so that dead-code
    elimination removes the zero-size ops: a kernel over an empty tensor fails to compile."""
    return mutate_functions(_DropEmptyConcatInputs(mod), mod)


@mutator
class _ClippedTakes(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.take" and call.attrs.mode == "fast":
            return relax.op.take(call.args[0], call.args[1], call.attrs.axis, mode="clip")
        return call


@tvm.transform.module_pass(opt_level=0, name="ClippedTakes")
def clipped_takes(mod, _ctx):
    """The importer's Gathers index in "fast" mode, which reads out of bounds (or crashes) on an index
    past the table, a token id past the vocabulary given at run time, and makes TVM warn about it once
    per kernel at build time; in "clip" mode such an index reads the last row."""
    return mutate_functions(_ClippedTakes(mod), mod)


_BOOL_REDUCTIONS = {"relax.max": relax.op.max, "relax.min": relax.op.min, "relax.argmax": relax.op.argmax,
                    "relax.argmin": relax.op.argmin}


@mutator
class _BoolReductions(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        op = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if op not in _BOOL_REDUCTIONS or str(getattr(call.args[0].ty, "dtype", "")) != "bool":
            return call
        widened = _BOOL_REDUCTIONS[op](relax.op.astype(call.args[0], "uint8"), call.attrs.axis, call.attrs.keepdims)
        return widened if op.startswith("relax.arg") else relax.op.astype(widened, "bool")


@tvm.transform.module_pass(opt_level=0, name="BoolReductions")
def bool_reductions(mod, _ctx):
    """Max / min (any / all) and arg-max / -min of a bool mask over uint8 0 / 1: TVM's reductions cannot
    build over bool ('Cannot decide min_value for bool'), and every later pass sees an integer op."""
    return mutate_functions(_BoolReductions(mod), mod)
