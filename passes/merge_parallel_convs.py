"""MergeParallelConvs: convs of one input whose outputs are summed are one conv (structural
re-parameterization, done by the compiler on the float graph):

    conv2d(x, W1) + b1 + conv2d(x, W2) + b2 + x * k + c + x + ...
    ==> conv2d(x, W) + b,   W = W1 + W2 (each kernel placed at its tap offset in the largest one)
                                + diag(k + 1) at the centre tap,   b = b1 + b2 + c

What RepVGG, MobileOne, FastViT and DBB-style blocks export in their training form (a 3x3 conv, a 1x1
conv and an identity BatchNorm summed; MobileOne-S0: 4 branches of 3x3 plus a 1x1 plus the identity,
191 convs and 212 adds): every branch was calibrated, requantized and added in integers on its
own, and compiled as its own kernel. One conv instead is exact in real arithmetic (float rounding
apart), quantizes once, and runs as one kernel. Also a conv plus its own input (a positional
depthwise conv `x + dwconv(x)`).

The add tree is flattened through adds whose result is used once; its leaves that are a conv2d of a
constant weight (NCHW/OIHW, used once), a per-channel multiply of the same input by a constant
(a decomposed identity BatchNorm, used once), or the input itself are merged when the convs
share strides, dilation and groups and their taps line up (pads that differ by a multiple of the
dilation: a 1x1 with no pad inside a 3x3 with pad 1). Constant leaves (biases) are summed into
one. Run after `fold_batchnorm` and `decompose_batchnorm`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .call_rewrite import ints, static_shape


def _op(expr) -> str:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A constant that broadcasts along axis 1 of an NCHW tensor only, as [channels]; else None."""
    if value.ndim == 0 or value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    shape = (1,) * (4 - value.ndim) + value.shape
    if len(shape) != 4 or shape[0] != 1 or shape[2:] != (1, 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


class _Tree:
    """The leaves of the add tree rooted at one binding: (var or const) expressions."""

    def __init__(self, values: dict, uses: Counter):
        self.values, self.uses = values, uses

    def leaves(self, expr, root: bool = True) -> list:
        value = self.values.get(expr) if isinstance(expr, relax.Var) else None
        if value is not None and _op(value) == "relax.add" and (root or self.uses[expr] == 1) \
                and self._float(expr):
            return self.leaves(value.args[0], False) + self.leaves(value.args[1], False)
        return [expr]

    @staticmethod
    def _float(expr) -> bool:
        ty = expr.ty
        return isinstance(ty, relax.TensorType) and str(ty.dtype) in ("float32", "float16")


def _conv(value) -> tuple | None:
    """(x, W, attrs) of a float NCHW/OIHW conv2d with a constant weight and static shapes."""
    if _op(value) != "relax.nn.conv2d" or not isinstance(value.args[1], tvm.ir.GenericConst):
        return None
    a = value.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW" \
            or static_shape(value.args[0]) is None or static_shape(value) is None \
            or str(value.ty.dtype) not in ("float32", "float16"):
        return None
    return value.args[0], value.args[1].value.numpy().astype(np.float64), a


def _merge(convs: list, scales: list[np.ndarray], out_shape: tuple) -> tuple | None:
    """(weight, strides, padding, dilation, groups) of the one conv equal to the sum of `convs`
    (x, W, attrs) and `scales` (per-channel multiples of x itself); None where the taps do not line up."""
    _, w0, a0 = convs[0]
    strides, dilation, groups = ints(a0.strides), ints(a0.dilation), int(a0.groups)
    x_shape = static_shape(convs[0][0])
    if any(ints(a.strides) != strides or ints(a.dilation) != dilation or int(a.groups) != groups
           or w.shape[:2] != w0.shape[:2] for _, w, a in convs[1:]):
        return None
    if scales and (strides != (1, 1) or w0.shape[0] != x_shape[1] or tuple(out_shape[1:]) != tuple(x_shape[1:])):
        return None
    pads, kernel, offsets = [], [], [[] for _ in convs]
    for axis in range(2):  # H, W
        d = dilation[axis]
        befores = [ints(a.padding)[axis] for _, _, a in convs]
        before = max(befores + ([0] if scales else []))
        if any((before - b) % d for b in befores) or (scales and before % d):
            return None
        for j, b in enumerate(befores):
            offsets[j].append((before - b) // d)
        size = max([o[axis] + w.shape[2 + axis] for o, (_, w, _) in zip(offsets, convs)]
                   + ([before // d + 1] if scales else []))
        after = max(0, (out_shape[2 + axis] - 1) * strides[axis] - before + d * (size - 1) - (x_shape[2 + axis] - 1))
        if (x_shape[2 + axis] + before + after - d * (size - 1) - 1) // strides[axis] + 1 != out_shape[2 + axis]:
            return None
        pads.append((before, after))
        kernel.append(size)
    weight = np.zeros((w0.shape[0], w0.shape[1], kernel[0], kernel[1]))
    for (oh, ow), (_, w, _) in zip(offsets, convs):
        weight[:, :, oh:oh + w.shape[2], ow:ow + w.shape[3]] += w
    if scales:  # x * k is the centre tap of a conv whose weight is k on the diagonal (within each group)
        per_group = w0.shape[1]
        channel = np.arange(w0.shape[0])
        centre = (pads[0][0] // dilation[0], pads[1][0] // dilation[1])
        weight[channel, channel % per_group, centre[0], centre[1]] += np.sum(scales, axis=0)
    padding = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    return weight, strides, padding, dilation, groups


@mutator
class _Merger(PyExprMutator):
    def __init__(self, mod, func):
        super().__init__(mod)
        self.values, uses = {}, Counter()
        for block in func.body.blocks:
            for binding in block.bindings:
                self.values[binding.var] = binding.value
                for var in relax.analysis.free_vars(binding.value):
                    uses[var] += 1
        for var in relax.analysis.free_vars(func.body.body):
            uses[var] += 1
        self.uses, self.tree, self.merged = uses, _Tree(self.values, uses), 0
        # adds folded into another add's tree (their one use is that add): not roots themselves
        self.interior = {arg for var, value in self.values.items() if _op(value) == "relax.add" and _Tree._float(var)
                         for arg in value.args if isinstance(arg, relax.Var) and uses[arg] == 1
                         and _op(self.values.get(arg)) == "relax.add"}

    def _rewrite(self, var, value):
        """The merged sum for the add bound to `var`, or None."""
        leaves = self.tree.leaves(var)
        if len(leaves) < 2:
            return None
        out_shape = static_shape(var)
        if out_shape is None or len(out_shape) != 4:
            return None
        consts = [leaf for leaf in leaves if isinstance(leaf, tvm.ir.GenericConst)]
        groups: dict = {}  # input var -> [(kind, leaf, payload)]
        for leaf in leaves:
            if not isinstance(leaf, relax.Var):
                continue
            bound = self.values.get(leaf)
            conv = _conv(bound) if bound is not None and self.uses[leaf] == 1 else None
            if conv is not None and isinstance(conv[0], relax.Var) and static_shape(leaf) == out_shape:
                groups.setdefault(conv[0], []).append(("conv", leaf, conv))
                continue
            if bound is not None and self.uses[leaf] == 1 and _op(bound) == "relax.multiply" \
                    and isinstance(bound.args[0], relax.Var) and isinstance(bound.args[1], tvm.ir.GenericConst) \
                    and static_shape(leaf) == out_shape and static_shape(bound.args[0]) == out_shape:
                k = _per_channel(bound.args[1].value.numpy().astype(np.float64), out_shape[1])
                if k is not None:
                    groups.setdefault(bound.args[0], []).append(("scale", leaf, k))
                    continue
            if static_shape(leaf) == out_shape:
                groups.setdefault(leaf, []).append(("identity", leaf, np.ones(out_shape[1])))
        plans = {}
        for x, terms in groups.items():
            convs = [t[2] for t in terms if t[0] == "conv"]
            scales = [t[2] for t in terms if t[0] != "conv"]
            if not convs or len(terms) < 2:
                continue
            merged = _merge(convs, scales, out_shape)
            if merged is not None:
                plans[x] = (terms, merged)
        if not plans:
            return None
        used = {id(t[1]) for terms, _ in plans.values() for t in terms}
        dtype = str(var.ty.dtype)
        parts = []
        for x, (terms, (weight, strides, padding, dilation, groups_)) in plans.items():
            out_dtype = next(t[2] for t in terms if t[0] == "conv")[2].out_dtype
            parts.append(relax.op.nn.conv2d(
                self.visit_expr(x), relax.const(weight.astype(dtype)), strides, padding, dilation, groups_,
                "NCHW", "OIHW", "NCHW", None if str(out_dtype) in ("", "void") else out_dtype))
        parts += [self.visit_expr(leaf) for leaf in leaves
                  if not isinstance(leaf, tvm.ir.GenericConst) and id(leaf) not in used]
        if consts:
            bias = sum(c.value.numpy().astype(np.float64) for c in consts)
            if np.broadcast_shapes(np.shape(bias), out_shape) != out_shape:
                return None
            parts.append(relax.const(np.asarray(bias).astype(dtype)))
        total = parts[0]
        for part in parts[1:]:
            total = relax.op.add(self.builder_.emit(total), part)
        self.merged += sum(len(terms) - 1 for terms, _ in plans.values())
        return total

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if _op(value) == "relax.add" and _Tree._float(binding.var) and binding.var not in self.interior:
            new = self._rewrite(binding.var, value)
            if new is not None:
                self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(new)))
                return
        super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="MergeParallelConvs")
def merge_parallel_convs(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Merge the convs of one input summed by an add tree into one conv (see module doc)."""
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function) or func.body is None \
                or not isinstance(func.body, relax.SeqExpr):
            continue
        merger = _Merger(mod, func)
        new = merger.visit_expr(func)
        if merger.merged:
            mod = mod.shallow_copy() if hasattr(mod, "shallow_copy") else mod
            mod[gv] = new
    return relax.transform.DeadCodeElimination()(mod)
