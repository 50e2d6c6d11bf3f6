"""SplitOfConcat: the pieces of a split that undoes a concat -> the concat's parts themselves.

    c = concat((a, b), axis=k)
    [t = permute_dims(c, perm)]             (the split's axis is k after the permutation)
    s = split(t, [size_a], axis=k')
    y0 = s[0];  y1 = s[1]                   ==>  y0 = permute_dims(a, perm);  y1 = permute_dims(b, perm)

A detector head concatenates its boxes (pixels, hundreds) and its class scores (sigmoid, [0, 1]) into one
output, and an NMS-free postprocess (ultralytics' YOLOv10 / YOLO26 end-to-end export: TopK, GatherElements)
transposes it and splits them apart again. One concat is one grid: the scores took the boxes' step (0.023 at
16 bits, 43 levels for [0, 1]), and the class index, concatenated with them at the output, read 64.99 for 65.
Split back, each piece keeps its own grid. A piece spanning several consecutive parts is their concat. Fires
wherever the split's boundaries fall on the concat's; the concat stays for any other reader.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .call_rewrite import is_op, rewrite_functions
from .unary_chains_through_layout import with_bindings


@tvm.transform.module_pass(opt_level=0, name="SplitOfConcat")
def split_of_concat(mod, _ctx):
    """Rewrite every split that undoes a concat (see the module docstring)."""
    return rewrite_functions(mod, _rewrite)


def _boundaries(split: relax.Call, length: int) -> list[int] | None:
    """The split's piece boundaries [0, ..., length] along its axis, or None."""
    sections = split.attrs.indices_or_sections
    if isinstance(sections, tvm.tirx.IntImm):
        n = int(sections)
        return None if n <= 0 or length % n else list(range(0, length + 1, length // n))
    return [0, *(int(i) for i in sections), length]


def _source(bound: dict, value: relax.Call):
    """(concat call, permutation or None, the concat's axis the split cuts) under a split, or None."""
    src, perm = value.args[0], None
    rank = len(value.args[0].ty.shape)
    axis = int(value.attrs.axis) % rank
    inner = bound.get(src) if isinstance(src, relax.Var) else None
    if is_op(inner, "relax.permute_dims"):
        perm = [int(a) for a in inner.attrs.axes] if inner.attrs.axes is not None else list(range(rank))[::-1]
        axis, src = perm[axis], inner.args[0]
        inner = bound.get(src) if isinstance(src, relax.Var) else None
    if not is_op(inner, "relax.concat") or not isinstance(inner.args[0], relax.Tuple):
        return None
    return (inner, perm, axis) if int(inner.attrs.axis) % rank == axis else None


def _pieces(concat: relax.Call, axis: int, cuts: list[int]) -> list[list] | None:
    """The concat's parts grouped by the split's pieces, or None where a cut falls inside a part."""
    parts = list(concat.args[0].fields)
    if any(not isinstance(d, tvm.tirx.IntImm) for p in parts for d in [p.ty.shape[axis]]):
        return None
    ends = list(np.cumsum([int(p.ty.shape[axis]) for p in parts]))
    if not set(cuts[1:]) <= set(ends) or cuts[-1] != ends[-1]:
        return None
    groups, start = [], 0
    for cut in cuts[1:]:
        stop = ends.index(cut) + 1
        groups.append(parts[start:stop])
        start = stop
    return groups


def _rewrite(func: relax.Function) -> relax.Function:
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    new = {}  # var -> the bindings replacing its own
    for var, value in bound.items():
        if not is_op(value, "relax.split"):
            continue
        found = _source(bound, value)
        if found is None:
            continue
        concat, perm, axis = found
        length = int(concat.ty.shape[axis])
        cuts = _boundaries(value, length)
        groups = _pieces(concat, axis, cuts) if cuts else None
        if groups is None:
            continue
        for item, item_value in bound.items():
            if not (isinstance(item_value, relax.TupleGetItem) and item_value.tuple_value.same_as(var)):
                continue
            new[item] = _piece(item, groups[int(item_value.index)], axis, perm)
    return with_bindings(func, new)


def _piece(var: relax.Var, parts: list, axis: int, perm: list[int] | None) -> list:
    """Bindings giving `var` the concat of `parts` along `axis`, permuted by `perm`."""
    bindings, dtype = [], str(var.ty.dtype)
    piece = parts[0]
    if len(parts) > 1:
        shape = [int(d) for d in parts[0].ty.shape]
        shape[axis] = sum(int(p.ty.shape[axis]) for p in parts)
        kind = relax.DataflowVar if isinstance(var, relax.DataflowVar) else relax.Var
        piece = kind("split_piece", relax.TensorType(shape, dtype))
        bindings.append(relax.VarBinding(piece, relax.op.concat(parts, axis=axis)))
    # unpermuted, a reshape to its own shape: the piece as a call (a binding of one variable to another would
    # need CanonicalizeBindings, which also rewrites what this pass does not touch)
    call = relax.op.permute_dims(piece, perm) if perm is not None else relax.op.reshape(piece, var.ty.shape)
    return [*bindings, relax.VarBinding(var, call)]
