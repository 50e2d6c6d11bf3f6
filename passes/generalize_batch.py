"""GeneralizeBatch: the integer module lowered at batch 1 -> one module for every batch size.

    main(x: int8[1, 3, H, W]) -> int32[1, 10]   ==>   main(x: int8[n, 3, H, W]) -> int32[n, 10]

Why after lowering: import, onnxruntime's shape folding, calibration and every lowering
work on static shapes (scales, tables, VNNI tiles come from them); a batch does not change
any of them, since the integer kernels treat samples independently. So the model is imported,
calibrated and lowered at batch 1, and only then is its leading dim made symbolic.

Invariant, checked binding by binding: every tensor computed from a generalized input has
leading dim `n * L` (L: its leading dim at batch 1) and its other dims unchanged, and sample
s owns rows [s*L, (s+1)*L), a contiguous slab. Reshapes keep slabs contiguous, so a target
(d0, ...) becomes (n * d0, ...) (a (1, 16, 64) -> (16, 64) reshape becomes (n, 16, 64) ->
(n*16, 64)), and so do squeeze, expand_dims, flatten, a broadcast's target and a permutation
that moves only axes of size 1; one that moves the batch only past axes of size 1 takes the
batch first; a constant concatenated beside batch rows, or one with a sample's L rows beside
them in an elementwise op, is repeated per sample; constant gather / gather_nd indices are
offset per sample; a strided slice that keeps all of axis 0 (end INT_MAX) slices the other
axes only; every other call is re-emitted as is and Relax infers its shape. Hence each
sample's integers are exactly what the batch-1 model computes for it.

Refused (CompileError naming the binding): ops that would mix samples or move the batch
(an axis attribute that includes 0 other than a stack along a new axis 0 that only a reduction
over it reads: ONNX's Max / Min / Sum / Mean of several tensors; a permutation that moves axis
0; a reduction over all axes or a reshape of one element to a scalar, unless float onnxruntime
agrees that it does not mix samples: then a per-sample scalar, [n, 1, ..., 1]; a
batch-dependent right-hand matmul operand of rank 2; padding of axis 0; TIR kernel calls
(4-bit weights, float fallbacks) other than the elementwise octave lookup, emitted again at
batch n; a constant whose leading dim would broadcast against the batch), and any result
whose inferred shape breaks the invariant. A gather along axis 0 with constant indices
(within a sample's rows at batch 1) gets them offset per sample.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from frontends.errors import CompileError
from frontends.onnx_origins import origin
from passes.lowering.unary import OCTAVE_KERNEL, octave_call

UPPER_BOUND_ATTR = "tir_var_upper_bound"  # Relax's memory planner sizes buffers by it
WHOLE_SAMPLE_ATTR = "intq_whole_sample"  # bindings that take a whole sample as one: the compile checks float does too
PAST_ANY_BATCH = 10 ** 9  # a slice's end at least this keeps the whole batch axis (jax2tf writes 10^9)


def _axes(attrs, rank: int) -> list[int] | None:
    """The normalized axis/axes attribute of a call, [] if it has none, None if 'all axes'."""
    if attrs is None:
        return []
    for key in ("axis", "axes"):
        if hasattr(attrs, key):
            value = getattr(attrs, key)
            if value is None:
                return None
            values = [value] if isinstance(value, (int, tvm.tirx.IntImm)) else list(value)
            return [int(a) % max(rank, 1) for a in values]
    return []


def _mixes_samples(call: relax.Call, dependent: list[bool]) -> str | None:
    """Why `call` (whose arguments `dependent` says are batch-dependent) would mix samples."""
    op = call.op.name
    first = call.args[0].ty
    first = first.fields[0] if isinstance(first, relax.TupleType) else first  # concat's tuple
    rank = len(first.shape) if isinstance(first, relax.TensorType) and first.shape is not None else 0
    if op == "relax.permute_dims":
        axes = call.attrs.axes
        return None if axes is not None and int(axes[0]) == 0 else "it moves the batch axis (axis 0)"
    if op == "relax.matmul":
        if dependent[1] and len(call.args[1].ty.shape) < 3:
            return "its right-hand operand depends on the batch and is contracted along axis 0"
        return None
    if op == "relax.tile":
        repeats = [int(r) for r in call.attrs.repeats]
        return "it repeats along the batch axis" if len(repeats) >= rank and repeats[-rank] != 1 else None
    if op == "relax.nn.pad":
        return "it pads the batch axis" if any(int(p) for p in list(call.attrs.pad_width)[:2]) else None
    if op in ("relax.take", "relax.reshape", "relax.expand_dims") and not dependent[0]:
        return None  # an embedding lookup of batch-dependent ids; reshapes are rewritten
    if op.startswith("relax.nn.") and hasattr(call.attrs, "data_layout"):
        return None if str(call.attrs.data_layout).startswith("N") else "its layout does not lead with the batch"
    axes = _axes(call.attrs, rank)
    if axes is None:
        return "it reduces over every axis, the batch included"
    if 0 in axes and op not in ("relax.reshape", "relax.expand_dims"):
        return "it works along axis 0, the batch"
    return None


_RESHAPES = ("relax.squeeze", "relax.expand_dims", "relax.flatten")  # order-keeping, as a reshape


def _rows(shape, n) -> relax.ShapeExpr:
    """A reshape target at batch n for `shape` at batch 1: n times its leading dim (samples are slabs)."""
    dims = [int(d) for d in shape]
    return relax.ShapeExpr([n * dims[0] if dims[0] != 1 else n, *dims[1:]])


def _slice_spec(call: relax.Call) -> tuple[list[int], ...] | None:
    """(axes, begin, end, strides) of a strided_slice as ints (axes normalized), or None where one is
    computed at run time."""
    rank = len(call.args[0].ty.shape)
    try:
        axes, begin, end = ([int(f.value) for f in t.fields] for t in call.args[1:4])
        strides = [int(f.value) for f in call.args[4].fields] if len(call.args) > 4 else [1] * len(axes)
    except (AttributeError, TypeError):  # a Var or a ShapeExpr of run-time values
        return None
    return [a % rank for a in axes], begin, end, strides


def _keeps_the_batch(call: relax.Call) -> bool:
    """Does a strided slice with axis 0 among its axes keep all of it at any batch (from 0, step 1, to an
    end past any batch: torch's INT64_MAX, jax2tf's 10^9)? One whose end is a number of rows (`0:1`, a shape
    folded at batch 1) would keep those rows of the batch in the float model, not each sample: not generalized."""
    spec = _slice_spec(call)
    if spec is None or 0 not in spec[0]:
        return False
    at = spec[0].index(0)
    return spec[1][at] == 0 and spec[3][at] == 1 and spec[2][at] >= PAST_ANY_BATCH


_ELEMENTWISE = {f"relax.{o}" for o in ("add", "subtract", "multiply", "divide", "floor_divide", "maximum", "minimum",
                                        "right_shift", "left_shift", "bitwise_and", "bitwise_or", "bitwise_xor",
                                        "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                                        "where", "power", "logical_and", "logical_or", "mod", "floor_mod")}
_REDUCTIONS = ("relax.max", "relax.min", "relax.sum", "relax.mean", "relax.prod", "relax.variance", "relax.std")


def _over_whole_samples(call: relax.Call) -> bool:
    """Does a reduction reduce every axis, the batch of 1 included? At batch 1 it reduces one sample's
    elements; at batch n it reduces each sample's, over the other axes. (One over axis 0 and only some
    others reduces across samples in the float model: refused as working along axis 0.)"""
    rank = len(call.args[0].ty.shape)
    axes = _axes(call.attrs, rank)
    return rank >= 2 and int(call.args[0].ty.shape[0]) == 1 and (axes is None or len(set(axes)) == rank)


def _one_element_to_scalar(call: relax.Call) -> bool:
    """Is a reshape one of a tensor of one element ([1, 1] at batch 1) to a scalar? (an If's condition
    computed from the sample: openWakeWord's hey-jarvis)"""
    target = call.args[1]
    return isinstance(target, relax.ShapeExpr) and not target.values and all(
        int(d) == 1 for d in call.args[0].ty.shape) and len(call.args[0].ty.shape) >= 1


def _kernel_name(call: relax.Call) -> str:
    """The name of the PrimFunc a call_tir calls ('' if none)."""
    return call.args[0].name_hint if isinstance(call.args[0], tvm.ir.GlobalVar) else ""


def _moves_unit_axes_only(call: relax.Call) -> bool:
    """Does a permutation keep the order of every axis but those of size 1 (axis 0, the batch's rows,
    counted among the others)? Then it is a reshape at any batch, and samples stay slabs: MobileViT folds
    its patches back as reshape([1, 96, 1, 4] -> [96, 1, 2, 2]), then permute [1, 0, 2, 3] -> [1, 96, 2, 2]."""
    axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else []
    shape = call.args[0].ty.shape
    kept = [a for a in axes if a == 0 or int(shape[a]) != 1]
    return bool(axes) and axes[0] != 0 and kept == sorted(kept)


def _unit_axes_first(call: relax.Call) -> bool:
    """Does a permutation that moves axis 0 (the batch) move it only past axes of size 1? Then it keeps
    each sample's elements where they were, as the permutation with the batch first does (SVTR's and
    timm's attention: q = permute(slice(qkv [1, N, 3, h, d]), [2, 0, 3, 1, 4]) is [1, 1, h, N, d])."""
    axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else []
    shape = call.args[0].ty.shape
    return bool(axes) and axes[0] != 0 and all(int(shape[a]) == 1 for a in axes[:axes.index(0)])


class _Generalizer:
    def __init__(self, free: dict[str, tuple[str, int | None]], rest: tvm.IRModule):
        self.free = free  # input name -> (dim name, upper bound)
        self.rest = rest  # the module's other functions: kernels emitted again at batch n join them
        self.vars = {name: tvm.tirx.Var(name, "int64") for name, _ in free.values()}
        self.env: dict = {}  # old var -> new expr
        self.dependent: set = set()  # new vars that depend on the batch
        self.scale: dict = {}  # new var -> the batch var its leading dim scales with
        self.analyzer = tvm.sym.Analyzer()
        self.func: relax.Function | None = None  # the batch-1 function (its bindings' ONNX origins)
        self.whole: list[str] = []  # bindings (and their ONNX nodes) that take each sample as one: per-sample scalars
        self.stacked: set = set()  # new vars of stack(parts, axis=0): [k, n * L, ...], the batch on axis 1

    def sub(self, expr):
        if isinstance(expr, relax.Var):
            return self.env.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.sub(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self.sub(expr.tuple_value), expr.index)
        return expr

    def depends(self, expr) -> bool:
        if isinstance(expr, relax.Tuple):
            return any(self.depends(f) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self.depends(expr.tuple_value)
        return isinstance(expr, relax.Var) and expr in self.dependent

    def batch_of(self, expr):
        if isinstance(expr, relax.Tuple):
            return next((self.batch_of(f) for f in expr.fields if self.depends(f)), None)
        if isinstance(expr, relax.TupleGetItem):
            return self.batch_of(expr.tuple_value)
        return self.scale.get(expr)

    def origin(self, name: str) -> str | None:
        """The ONNX node binding `name` came from, where known."""
        return origin(self.func, name) if self.func is not None else None

    def where(self, name: str) -> str:
        """A binding by name and, where known, the ONNX node it came from."""
        where = self.origin(name)
        return f"{name!r}{' (' + where + ')' if where else ''}"

    def fail(self, name: str, op: str, why: str):
        where = self.origin(name)
        raise CompileError(f"symbolic batch: binding {name!r} ({op}{', ' + where if where else ''}): {why} (the batch "
                           "must stay the leading dim of every tensor, each sample on its own rows)")

    def rebuild(self, name: str, value: relax.Expr):
        """The new value of a binding, and the batch var it scales with (None if batch-independent)."""
        args = [self.sub(a) for a in value.args] if isinstance(value, relax.Call) else None
        if isinstance(value, relax.Call):
            dependent = [self.depends(a) for a in args]
            if not any(dependent):
                return relax.Call(value.op, args, value.attrs, value.ty_args), None
            op = value.op.name if isinstance(value.op, tvm.ir.Op) else str(value.op)
            n = next(self.batch_of(a) for a, d in zip(args, dependent) if d)
            if op == "relax.call_tir" and _kernel_name(value).startswith(OCTAVE_KERNEL):
                return octave_call(self.bb, *args[1].fields), n  # elementwise: the same kernel at batch n
            if not isinstance(value.op, tvm.ir.Op) or op.startswith(("relax.call_", "relax.builtin")):
                self.fail(name, op, "a compiled kernel call has a static shape (4-bit weights and float "
                                    "fallbacks are compiled for batch 1)")
            if any(a in self.stacked for a in args):
                return self.reduce_stack(name, value, args), n
            if self.stacks_samples(value):
                return relax.Call(value.op, args, value.attrs, value.ty_args), n
            if op == "relax.take" and dependent == [True, False] and value.attrs.axis is not None and int(
                    value.attrs.axis) % len(value.args[0].ty.shape) == 0:
                args[1] = self.sample_indices(name, value, args[1], n)
                return relax.Call(value.op, args, value.attrs, value.ty_args), n
            if op in _ELEMENTWISE:
                args = self.rows_per_sample(value, args, dependent, n)
            if op == "relax.concat" and isinstance(args[0], relax.Tuple):
                args[0] = relax.Tuple([f if self.depends(f) else self.per_sample(f, n) for f in args[0].fields])
            if op in _RESHAPES and dependent[0]:  # a reshape in another form: one of the rows' shape
                return relax.op.reshape(args[0], _rows(value.ty.shape, n)), n
            if op == "relax.permute_dims" and dependent[0] and _moves_unit_axes_only(value):
                return relax.op.reshape(args[0], _rows(value.ty.shape, n)), n
            if op == "relax.permute_dims" and dependent[0] and _unit_axes_first(value):
                axes = [int(a) for a in value.attrs.axes]
                return relax.op.permute_dims(args[0], [0, *[a for a in axes if a != 0]]), n
            if op == "relax.strided_slice" and dependent[0] and _keeps_the_batch(value):
                return self.slice_rows(value, args[0]), n
            if op in _REDUCTIONS and dependent[0] and _over_whole_samples(value):
                self.whole.append(self.where(name))
                return self.per_sample_reduction(value, args[0]), n
            if op == "relax.gather_nd" and dependent == [True, False] and int(value.attrs.batch_dims) == 0:
                args[1] = self.sample_nd_indices(name, value, args[1], n)
                return relax.Call(value.op, args, value.attrs, value.ty_args), n
            why = _mixes_samples(value, dependent)
            if why:
                self.fail(name, op, why)
            if op == "relax.reshape" and _one_element_to_scalar(value):
                self.whole.append(self.where(name))
                return args[0], n  # a per-sample scalar: [n, 1, ..., 1] as it is
            if op == "relax.reshape":
                if not isinstance(args[1], relax.ShapeExpr) or not args[1].values:
                    self.fail(name, op, "its target shape is computed at run time or has no leading dim")
                dims = list(args[1].values)
                args[1] = relax.ShapeExpr([n * dims[0] if int(dims[0]) != 1 else n, *dims[1:]])
            if op == "relax.broadcast_to" and dependent[0]:
                args[1] = self.broadcast_target(name, value, args[1], n, len(args[0].ty.shape))
            return relax.Call(value.op, args, value.attrs, value.ty_args), n
        new = self.sub(value)
        return new, self.batch_of(new) if self.depends(new) else None

    def broadcast_target(self, name: str, call: relax.Call, target: relax.Expr, n, rank: int) -> relax.ShapeExpr:
        """The target of a broadcast of a batch-dependent tensor at batch n: its leading dim times n.
        The importer folds an Expand's shape at batch 1 (a sentence embedding's mean pooling expands
        the mask [1, L, 1] to the token states' [1, L, 384]), so the target kept the 1 and the whole
        batch ran per sample. Only a broadcast that leaves the leading dim as it is (same rank, same
        rows) keeps each sample on its own rows; one that repeats a sample's rows would mix them."""
        rows = call.args[0].ty.shape
        dims = list(target.values) if isinstance(target, relax.ShapeExpr) else None
        if not rows and dims and len(dims) == rank and int(dims[0]) == 1:  # a per-sample scalar [n, 1, ...]
            return relax.ShapeExpr([n, *dims[1:]])
        if dims is None or len(dims) != len(rows) or int(dims[0]) != int(rows[0]):
            self.fail(name, "relax.broadcast_to", "it broadcasts along the batch axis (its target "
                      f"{[int(d) for d in dims] if dims is not None else 'is computed at run time'}, its input "
                      f"{[int(d) for d in rows]} at batch 1)")
        return relax.ShapeExpr([n * dims[0] if int(dims[0]) != 1 else n, *dims[1:]])

    def rows_per_sample(self, call: relax.Call, args: list, dependent: list[bool], n) -> list:
        """The operands of an elementwise op at batch n, a constant one with a sample's L > 1 rows
        ([L, ...], the rank of the batch-dependent ones, which have L rows at batch 1) repeated per
        sample: Swin's shifted-window mask and position bias [nW, h, T, T], added to the attention of a
        batch's B * nW windows, were folded at batch 1 onto the nW windows of one sample."""
        olds = [a.ty for a in call.args]
        rows = {(len(t.shape), int(t.shape[0])) for t, d in zip(olds, dependent)
                if d and t.shape is not None and len(t.shape)}
        if len(rows) != 1 or next(iter(rows))[1] < 2:
            return args
        rank, lead = next(iter(rows))
        return [self.per_sample(a, n) if not d and isinstance(t, relax.TensorType) and t.shape is not None
                and len(t.shape) == rank and int(t.shape[0]) == lead else a for a, t, d in zip(args, olds, dependent)]

    def per_sample(self, const: relax.Expr, n) -> relax.Expr:
        """A batch-independent part of a concatenation, repeated for each of n samples: [L, ...] ->
        [n * L, ...]. A ViT's class token is `cls.expand(B, -1, -1)` concatenated before the patches;
        at batch 1 the Expand folds away, leaving a [1, 1, C] constant beside [n, P, C] patches."""
        dims = list(const.ty.shape)
        if dims and int(dims[0]) == 1:
            return self.bb.emit(relax.op.broadcast_to(const, relax.ShapeExpr([n, *dims[1:]])))
        stacked = self.bb.emit(relax.op.broadcast_to(relax.op.expand_dims(const, [0]), relax.ShapeExpr([n, *dims])))
        return self.bb.emit(relax.op.reshape(stacked, relax.ShapeExpr([n * dims[0], *dims[1:]])))

    def stacks_samples(self, value: relax.Expr) -> bool:
        """Is `value` (a batch-1 binding) a stack of batch-dependent tensors along a new axis 0? At batch n,
        [k, n * L, ...]: each sample's rows of every part stay apart, and only a reduction over axis 0 may
        read it (reduce_stack)."""
        if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.stack")
                and int(value.attrs.axis) == 0 and isinstance(value.args[0], relax.Tuple)):
            return False
        return all(self.depends(self.sub(f)) for f in value.args[0].fields)

    def reduce_stack(self, name: str, call: relax.Call, args: list) -> relax.Expr:
        """The one use of a stack along a new axis 0 that keeps samples apart: a reduction over that axis
        (TVM imports ONNX's elementwise Max / Min / Sum / Mean of several tensors as stack + reduce)."""
        rank = len(call.args[0].ty.shape)
        if call.op.name not in _REDUCTIONS or _axes(call.attrs, rank) != [0] or call.attrs.keepdims:
            self.fail(name, call.op.name, "it reads a stack of tensors along a new axis 0 other than by reducing it")
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def slice_rows(self, call: relax.Call, x: relax.Expr) -> relax.Expr:
        """A strided slice of a batch-dependent tensor that keeps all of axis 0 at any batch (tf2onnx's
        StridedSlice over every axis, `0:10^9` on the batch: Magika), at batch n: a slice of the other
        axes only. TVM would clip the end to `min(10^9, n)`, which it cannot prove is n."""
        axes, begin, end, strides = _slice_spec(call)
        keep = [i for i, a in enumerate(axes) if a != 0]
        if not keep:
            return relax.op.reshape(x, relax.ShapeExpr(list(x.ty.shape)))  # every element: the identity
        return relax.op.strided_slice(x, *([v[i] for i in keep] for v in (axes, begin, end, strides)),
                                      assume_inbound=bool(call.attrs.assume_inbound))

    def per_sample_reduction(self, call: relax.Call, x: relax.Expr) -> relax.Expr:
        """A reduction over a sample's every element (openWakeWord's log-mel spectrogram clips at its
        max - 80 dB: ReduceMax to a scalar), at batch n: over every axis but the batch, keeping them,
        [n, 1, ..., 1]. A scalar result stays that shape, a per-sample scalar: it broadcasts against its
        sample's tensors of that rank, and `check` refuses it anywhere else."""
        rank = len(call.args[0].ty.shape)
        return getattr(relax.op, call.op.name.removeprefix("relax."))(x, list(range(1, rank)), keepdims=True)

    def sample_indices(self, name: str, take: relax.Call, idx: relax.Expr, n) -> relax.Expr:
        """Constant indices of a gather along axis 0 of a batch-dependent tensor (at batch 1 they
        pick among the sample's own L rows: the Shiftmax mask's transpose), offset by s * L for
        sample s: idx[1, ...] + L * arange(n)[n, 1, ...]."""
        shape = [int(d) for d in idx.ty.shape]
        if not shape or shape[0] != 1:
            self.fail(name, "relax.take", "it gathers along axis 0, the batch, with indices that have no batch axis")
        rows = int(take.args[0].ty.shape[0])
        start = relax.op.arange(0, n * rows, rows, dtype=str(idx.ty.dtype))
        start = self.bb.emit(relax.op.reshape(start, relax.ShapeExpr([n, *[1] * (len(shape) - 1)])))
        return self.bb.emit(relax.op.add(start, idx))

    def sample_nd_indices(self, name: str, gather: relax.Call, idx: relax.Expr, n) -> relax.Expr:
        """Constant indices [1, ..., k] of a gather_nd from a batch-dependent tensor: at batch 1 their
        first component picks among the sample's own L rows; at batch n, sample s's copy is offset by
        s * L in that component. torch's dynamo export indexes the attention mask so
        (mask[arange(B)[:, None, None, None], arange(L)], a GatherND): MiniLM then ran per sample."""
        shape = [int(d) for d in idx.ty.shape]
        if len(shape) < 2 or shape[0] != 1:
            self.fail(name, "relax.gather_nd", "its indices have no batch axis of 1 to give each sample")
        rows, dtype = int(gather.args[0].ty.shape[0]), str(idx.ty.dtype)
        start = relax.op.arange(0, n * rows, rows, dtype=dtype)
        start = self.bb.emit(relax.op.reshape(start, relax.ShapeExpr([n, *[1] * (len(shape) - 1)])))
        first = relax.const(np.eye(1, shape[-1])[0].astype(dtype), dtype)  # [1, 0, ...]: the first component
        return self.bb.emit(relax.op.add(idx, relax.op.multiply(start, first)))

    def check(self, name: str, op: str, old_ty, new_ty, n) -> None:
        """The invariant: leading dim n * L, the others unchanged."""
        if isinstance(old_ty, relax.TupleType):
            for o, t in zip(old_ty.fields, new_ty.fields):
                self.check(name, op, o, t, n)
            return
        if not isinstance(old_ty, relax.TensorType) or old_ty.shape is None:
            return
        shape = new_ty.shape if isinstance(new_ty, relax.TensorType) else None
        old = [int(d) for d in old_ty.shape]
        if not old and shape is not None and len(shape) >= 1 and self.analyzer.can_prove_equal(shape[0], n) and all(
                self.analyzer.can_prove_equal(d, 1) for d in list(shape)[1:]):
            return  # a per-sample scalar (per_sample_reduction, _one_element_to_scalar)
        if shape is None or len(shape) != len(old) or not old:
            self.fail(name, op, f"its result shape {new_ty} is not {old} with a batch leading dim")
        lead_ok = self.analyzer.can_prove_equal(shape[0], n * old[0])
        if not lead_ok or any(not self.analyzer.can_prove_equal(d, o) for d, o in zip(list(shape)[1:], old[1:])):
            self.fail(name, op, f"at batch {n} its shape would be {list(shape)}, not [{n}*{old[0]}, "
                                f"{', '.join(map(str, old[1:]))}] (at batch 1: {old})")

    def run(self, func: relax.Function) -> tvm.IRModule:
        """The module: `rest`, `main` generalized and the kernels it emitted again."""
        self.func, params = func, []
        for p in func.params:
            if p.name in self.free:
                dims = [int(d) for d in p.ty.shape]
                if not dims or dims[0] != 1:
                    raise CompileError(f"symbolic batch: input {p.name!r} has shape {dims} at batch 1; its "
                                       "leading dim must be the batch (1)")
                n = self.vars[self.free[p.name][0]]
                new = relax.Var(p.name, relax.TensorType([n, *dims[1:]], p.ty.dtype))
                self.dependent.add(new)
                self.scale[new] = n
            else:
                new = p
            self.env[p] = new
            params.append(new)
        bb = self.bb = relax.BlockBuilder(self.rest)
        try:
            with bb.function("main", params):
                with bb.dataflow():
                    for block in func.body.blocks:
                        for b in block.bindings:
                            self.emit(bb, b)
                    result = self.sub(func.body.body)
                    fields = result.fields if isinstance(result, relax.Tuple) else [result]
                    if any(isinstance(t, relax.TensorType) and t.shape is not None and not len(t.shape) for t in (
                            func.ret_ty.fields if isinstance(func.ret_ty, relax.TupleType) else [func.ret_ty])):
                        raise CompileError("symbolic batch: an output of the model is a scalar (at batch n, one "
                                           "value for each sample would not be the model's shape)")
                    if not all(self.depends(f) for f in fields):
                        raise CompileError("symbolic batch: an output of the model does not depend on the batched "
                                           "inputs (a constant)")
                    out = bb.emit_output(result)
                bb.emit_func_output(out)
        except CompileError:
            _close_blocks(bb)  # else TVM warns of a builder destroyed with open blocks when the batch runs per sample
            raise
        out = bb.get()
        new = out["main"]
        for key, value in (func.attrs or {}).items():
            new = new.with_attr(key, value)
        if self.whole:
            new = new.with_attr(WHOLE_SAMPLE_ATTR, self.whole)
        bounds = {name: hi for name, hi in self.free.values() if hi is not None}
        out.update_func(out.get_global_var("main"), new.with_attr(UPPER_BOUND_ATTR, bounds) if bounds else new)
        return out

    def emit(self, bb: relax.BlockBuilder, b) -> None:
        name = b.var.name
        value, n = self.rebuild(name, b.value)
        op = b.value.op.name if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op) else "value"
        try:
            var = bb.emit(value, name) if isinstance(b.var, relax.DataflowVar) else bb.emit_output(value, name)
        except Exception as err:  # noqa: BLE001  (TVM raises its shape-inference errors as several types)
            self.fail(name, op, f"TVM cannot infer its shape at batch n ({str(err).strip().splitlines()[-1]})")
        self.env[b.var] = var
        if n is not None and self.stacks_samples(b.value):  # [k, n * L, ...]: its parts are checked
            self.stacked.add(var)
            self.dependent.add(var)
            self.scale[var] = n
        elif n is not None:
            self.check(name, op, b.var.ty, var.ty, n)
            self.dependent.add(var)
            self.scale[var] = n


def _close_blocks(bb: relax.BlockBuilder) -> None:
    """End every binding block a failed build left open."""
    for _ in range(8):
        try:
            bb._end_block()
        except RuntimeError:  # none left open
            return


def generalize_batch(mod: tvm.IRModule, free: dict[str, tuple[str, int | None]]) -> tvm.IRModule:
    """`main` of `mod` with the leading dim of each input in `free` ({input: (dim name, upper
    bound or None)}) symbolic; raises CompileError where a binding would mix samples."""
    if not free:
        return mod
    rest = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
    return relax.transform.DeadCodeElimination()(_Generalizer(free, rest).run(mod["main"]))


def whole_sample_bindings(mod: tvm.IRModule) -> list[str]:
    """The bindings of a generalized `main` that take a whole sample as one (at batch 1: a reduction over
    every axis, a reshape of one element to a scalar); in the float model they may take the whole batch."""
    return [str(r) for r in (mod["main"].attrs or {}).get(WHOLE_SAMPLE_ATTR, [])]


def dim_names(ty) -> list:
    """A tensor type's shape for the manifest: ints, and symbolic dims as text ("n", "n*16")."""
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else str(d).replace(" ", "").replace("T.int64(", "")
            .replace(")", "") for d in ty.shape]


def output_shapes(mod: tvm.IRModule) -> list[list]:
    ret = mod["main"].ret_ty
    return [dim_names(t) for t in (ret.fields if isinstance(ret, relax.TupleType) else [ret])]




def input_shapes_of(mod: tvm.IRModule) -> list[list]:
    return [dim_names(p.ty) for p in mod["main"].params]
