"""FoldConstantCalls: TVM's FoldConstant, run only on the calls it can fold.

`relax.transform.FoldConstant` legalizes every call of a function to TE before it looks at
the arguments (~1.3 ms a call): 25 s on an LSTM unrolled over 300 steps, of which a handful
of calls have only constant arguments (or use an argument only by its static shape:
shape_of, eye_like, zeros_like). This pass gathers those calls (and the calls on their
results) into a function of their own, folds that with FoldConstant, and puts each folded
constant back in place of its variable; the dead bindings go with DeadCodeElimination. Integer
and bool arithmetic, gathers and shapes as tensors are folded by NumPy first (`_in_numpy`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_rewrite import drop_unused_bindings, mutate_functions

# ops whose result depends on their first argument's shape only
_SHAPE_ONLY = {"relax.shape_of", "relax.eye_like", "relax.zeros_like", "relax.ones_like", "relax.full_like"}
_MAX_STAND_IN = 1 << 22  # elements of the zeros that stand in for such an argument while folding
_LITERAL = (tvm.ir.GenericConst, relax.ShapeExpr, tvm.ir.StringImm, tvm.tirx.IntImm, tvm.tirx.FloatImm)


def _constant_bindings(func: relax.Function) -> tuple[dict, list]:
    """The variables of `func` bound to a constant, and the bindings whose value is an op call on
    literals or on variables bound to either."""
    bound, found, known = {}, [], set()

    def literal(arg) -> bool:
        if isinstance(arg, relax.Tuple):
            return all(literal(a) for a in arg.fields)
        return isinstance(arg, _LITERAL) or (isinstance(arg, relax.Var) and arg in known)

    for block in getattr(func.body, "blocks", []):
        for binding in block.bindings:
            value = getattr(binding, "value", None)
            if isinstance(value, tvm.ir.GenericConst):
                bound[binding.var] = value
                known.add(binding.var)
            elif (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                    and all(literal(a) or isinstance(a, tvm.ir.GlobalVar) or _shape_only(value, i)
                            for i, a in enumerate(value.args))):
                found.append(binding)
                known.add(binding.var)
    return bound, found


def _shape_only(call: relax.Call, index: int) -> bool:
    """Whether argument `index` of `call` enters only by its shape, and that shape is static."""
    if index != 0 or call.op.name not in _SHAPE_ONLY:
        return False
    shape = getattr(call.args[0].ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return False
    return call.op.name == "relax.shape_of" or np.prod([int(d) for d in shape]) <= _MAX_STAND_IN


def _stand_in(call: relax.Call):
    """`call` with its shape-only argument replaced by a literal of that shape (zeros)."""
    if call.op.name == "relax.shape_of":
        return relax.ShapeExpr([int(d) for d in call.args[0].ty.shape])
    ty = call.args[0].ty
    zeros = relax.const(np.zeros([int(d) for d in ty.shape], str(ty.dtype)), str(ty.dtype))
    return relax.Call(call.op, [zeros, *call.args[1:]], call.attrs, call.ty_args)


def _fold(mod: tvm.IRModule, bound: dict, bindings: list) -> dict:
    """Variable -> folded constant, for those of `bindings` that FoldConstant folds (it folds only
    inside dataflow blocks, so the calls go into one, their results out as one tuple)."""
    fresh = dict(bound)

    def arg(a):
        return relax.Tuple([arg(f) for f in a.fields]) if isinstance(a, relax.Tuple) else fresh.get(a, a)

    def literal_arg(a):
        return isinstance(a, _LITERAL) or a in fresh

    block = []
    for b in bindings:
        fresh[b.var] = relax.DataflowVar(b.var.name, b.var.ty)
        call = b.value
        if _shape_only(call, 0) and not literal_arg(call.args[0]):
            call = _stand_in(call)
        value = call if isinstance(call, relax.ShapeExpr) else relax.Call(
            call.op, [arg(a) for a in call.args], call.attrs, call.ty_args)
        block.append(relax.VarBinding(fresh[b.var], value))
    out_ty = relax.TupleType([b.var.ty for b in bindings])
    out = relax.Var("folded", out_ty)
    block.append(relax.VarBinding(out, relax.Tuple([fresh[b.var] for b in bindings])))
    func = relax.Function([], relax.SeqExpr([relax.DataflowBlock(block)], out), out_ty)
    kernels = {gv: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}  # for call_tir
    folded = relax.transform.FoldConstant()(tvm.IRModule({**kernels, tvm.ir.GlobalVar("main"): func}))["main"].body
    values = [bd.value for blk in folded.blocks for bd in blk.bindings if bd.var.same_as(folded.body)]
    fields = values[0].fields if values and isinstance(values[0], relax.Tuple) else []
    return {b.var: v for b, v in zip(bindings, fields) if isinstance(v, (tvm.ir.GenericConst, relax.ShapeExpr))}


@mutator
class _Substitute(PyExprMutator):
    def __init__(self, mod, constants: dict):
        super().__init__(mod)
        self.constants = constants

    def visit_var_(self, var):
        return self.constants.get(var, var)

    def visit_dataflow_var_(self, var):
        return self.constants.get(var, var)


_EXACT = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
          "relax.maximum": np.maximum, "relax.minimum": np.minimum, "relax.less": np.less, "relax.greater": np.greater,
          "relax.less_equal": np.less_equal, "relax.greater_equal": np.greater_equal, "relax.equal": np.equal,
          "relax.not_equal": np.not_equal, "relax.logical_and": np.logical_and, "relax.logical_or": np.logical_or,
          "relax.logical_not": np.logical_not, "relax.where": np.where}


def _in_numpy(call: relax.Call, args: list) -> np.ndarray | None:
    """The value of a call on integer/bool constants (or a gather of any constant, a shape as a tensor) by
    NumPy, exactly as TVM computes it; None for anything else. TVM's FoldConstant compiles each call it
    folds (~20 ms): ONNX Gather at a constant index brings six such calls (negative-index normalization),
    and 1,800 of them (a 300-step recurrence) took 220 s to import."""
    op, ty = call.op.name, call.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or not all(
            isinstance(d, tvm.tirx.IntImm) for d in ty.shape):
        return None
    dtype = str(ty.dtype)
    if op == "relax.shape_to_tensor" and isinstance(args[0], relax.ShapeExpr):
        value = np.array([int(d) for d in args[0].values], np.int64)
    elif not all(isinstance(a, tvm.ir.GenericConst) for a in args):
        return None
    elif op == "relax.take" and str(call.attrs.mode) in ("wrap", "clip", "fast"):
        data, index = (a.value.numpy() for a in args)
        mode = "wrap" if str(call.attrs.mode) == "wrap" else "clip"  # fast: in range anyway
        value = np.take(data, index, axis=int(call.attrs.axis), mode=mode)
    elif op in _EXACT and all(np.dtype(str(a.ty.dtype)).kind in "biu" for a in args) and \
            np.dtype(dtype).kind in "biu":
        value = _EXACT[op](*(a.value.numpy() for a in args))
    else:
        return None
    if list(value.shape) != [int(d) for d in ty.shape]:
        return None
    return value.astype(dtype)


def _fold_in_numpy(bound: dict, bindings: list) -> tuple[dict, list]:
    """(variable -> constant folded by NumPy, the bindings left for TVM), in order: a call on results
    folded here reads them as constants."""
    folded, left = {}, []
    for b in bindings:
        if isinstance(b.value, relax.Call) and _shape_only(b.value, 0) and b.value.op.name == "relax.shape_of":
            folded[b.var] = _stand_in(b.value)  # the static shape itself
            continue
        args = [folded.get(a, bound.get(a, a)) for a in b.value.args]
        value = _in_numpy(b.value, args) if isinstance(b.value, relax.Call) else None
        if value is None:
            left.append(b)
        else:
            folded[b.var] = relax.const(value, str(value.dtype))
    return folded, left


@tvm.transform.module_pass(opt_level=0, name="FoldConstantCalls")
def fold_constant_calls(mod, _ctx):
    """Fold the calls on constants only (see the module docstring)."""
    constants = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            bound, bindings = _constant_bindings(func)
            constants.update(bound)
            folded, bindings = _fold_in_numpy(bound, bindings)
            constants.update(folded)
            if bindings:
                constants.update(_fold(mod, {**bound, **folded}, bindings))
    if not constants:
        return mod
    # the dead bindings in one sweep first: TVM's pass alone took 6 s on a 300-step recurrence's 100,000
    return relax.transform.DeadCodeElimination()(drop_unused_bindings(mutate_functions(_Substitute(mod, constants), mod)))
