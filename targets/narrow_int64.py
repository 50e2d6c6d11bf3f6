"""Narrow the int64 arithmetic of integer kernels where value ranges prove it exact.

The lowering computes Shiftmax, ShiftGELU, I-LayerNorm and other fixed-point chains in int64
(`passes/lowering/emit_transformer.py`), and AVX2 has no 64 x 64-bit multiply, no 64-bit
arithmetic shift and no 64-bit min/max: LLVM emulates each (three `vpmuludq` and shifts per
multiply, compares and blends per shift), and MiniLM's softmax took 9% of its time so.

Here an interval analysis walks each function's bindings (constants give their values, casts
their source dtype's range, and add/multiply/shift/min/max/clip/and/where/sum/max/floor_divide
propagate; `max(x) - x` along an axis is >= 0) and rewrites an int64

    multiply   of operands within int32 ->  on sign-extended int32 values (`vpmuldq`, 1 uop),
               or within uint32 and >= 0 ->  on zero-extended ones (`vpmuludq`);
    right_shift of a value >= 0           ->  a logical shift (`vpsrlq` / `vpsrlvq`),
               of a value within int32    ->  an int32 shift (`vpsrad`);
    minimum / maximum / clip within int32 ->  int32 (`vpminsd`, `vpmaxsd`).

and, first, any add / subtract / multiply / shift / where / bitwise_and / floor_divide / negative
and sum / max / min reduction whose operands and result are all within int32, one operand a value
of at most 32 bits cast to int64, into that op on int32 values cast back to int64 (`INT32_EXACT`).
A consumer that narrows its operand then reads the int32 value itself (`_to` looks through the
cast), so such a chain stays int32 from kernel to kernel: Shiftmax's masked scores and
exponentials were int64 tensors between its kernels, twice the memory traffic.

Each rewrite only adds casts that are the identity on the proven range, so the integers are
those of the int64 chain bit for bit (the transformer kernels' tests compare them with the
NumPy reference). Runs on the integer Relax module, after `requant.py`, for CPU targets.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te
from tvm.relax.expr_functor import PyExprMutator, mutator


R = relax.op
Range = tuple[int, int]

_DTYPES = {"bool": (0, 1), **{f"int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
           **{f"uint{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)}}
I32 = _DTYPES["int32"]
_KEEP_VALUES = {"reshape", "permute_dims", "expand_dims", "squeeze", "broadcast_to", "flatten", "strided_slice",
                "take", "concat", "repeat", "tile"}  # the result holds (some of) the data's values only


def widening_multiply_te(x: te.Tensor, y: te.Tensor, wide: str) -> te.Tensor:
    """x * y (32-bit, broadcast) as `wide` (64-bit): the casts are in the kernel, where LLVM sees
    the sign or zero extensions (a constant cast in Relax is folded back to int64, and
    `share_kernels` then passes it as an opaque int64 argument)."""
    rank = max(len(x.shape), len(y.shape))
    dims = [[1] * (rank - len(t.shape)) + list(t.shape) for t in (x, y)]
    shape = [b if _one(a) else a for a, b in zip(*dims)]

    def at(t, index):  # numpy broadcasting: missing leading dims, size-1 dims (symbolic ones too)
        skip = rank - len(t.shape)
        return t[tuple(0 if _one(d) else index[skip + k] for k, d in enumerate(t.shape))]

    return te.compute(shape, lambda *i: at(x, i).astype(wide) * at(y, i).astype(wide), name="widening_multiply")


def _one(dim) -> bool:
    return isinstance(dim, (int, tvm.tirx.IntImm)) and int(dim) == 1


def _within(r: Range | None, bounds: Range) -> bool:
    return r is not None and bounds[0] <= r[0] and r[1] <= bounds[1]


def _name(call) -> str | None:
    if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name.startswith("relax."):
        return call.op.name[len("relax."):]
    return None


def _corners(f, a: Range, b: Range) -> Range:
    values = [f(x, y) for x in a for y in b]
    return min(values), max(values)


class _Ranges:
    """The values each integer binding of a function may take (the analysis of the module doc)."""

    def __init__(self, func: relax.Function):
        self.ranges: dict = {}  # var -> Range
        self.values: dict = {}  # var -> its bound expression
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.values[b.var] = b.value
                    if isinstance(b.value, relax.Call):
                        found = self._infer(b.value)
                        if found is not None:
                            self.ranges[b.var] = found

    def of(self, expr) -> Range | None:
        """The values `expr` may take (None: not an integer tensor)."""
        dtype = str(getattr(getattr(expr, "ty", None), "dtype", ""))
        if dtype not in _DTYPES:
            return None
        if isinstance(expr, tvm.ir.GenericConst):
            values = expr.value.numpy()
            return (int(values.min()), int(values.max())) if values.size else _DTYPES[dtype]
        return self.ranges.get(expr, _DTYPES[dtype]) if isinstance(expr, relax.Var) else _DTYPES[dtype]

    def _infer(self, call: relax.Call) -> Range | None:
        name, dtype = _name(call), str(getattr(call.ty, "dtype", ""))
        if dtype not in _DTYPES:
            return None
        full = _DTYPES[dtype]
        args = [self.of(a) for a in call.args]
        a, b = (args + [None, None])[:2]
        found = None
        if name == "astype":
            found = a
        elif name in ("add", "subtract", "multiply") and a and b:
            if name == "subtract" and self._is_max_of(call.args[0], call.args[1]):
                found = (0, a[1] - b[0])
            else:
                found = _corners({"add": lambda x, y: x + y, "subtract": lambda x, y: x - y,
                                  "multiply": lambda x, y: x * y}[name], a, b)
        elif name in ("right_shift", "left_shift") and a and b and 0 <= b[0] and b[1] < 64:
            op = (lambda x, s: x >> s) if name == "right_shift" else (lambda x, s: x << s)
            found = _corners(op, a, b)
        elif name in ("minimum", "maximum") and a and b:
            pick = min if name == "minimum" else max
            found = (pick(a[0], b[0]), pick(a[1], b[1]))
        elif name == "clip" and a:
            lo, hi = int(call.args[1].value), int(call.args[2].value)
            found = (min(max(a[0], lo), hi), min(max(a[1], lo), hi))
        elif name == "bitwise_and" and a and b and (a[0] >= 0 or b[0] >= 0):
            found = (0, min(r[1] for r in (a, b) if r[0] >= 0))
        elif name == "where" and len(args) == 3 and args[1] and args[2]:
            found = (min(args[1][0], args[2][0]), max(args[1][1], args[2][1]))
        elif name in ("max", "min") and a:
            found = a
        elif name == "sum" and a:
            count = _reduced(call)
            found = (count * a[0], count * a[1]) if count else None
        elif name == "floor_divide" and a and b and b[0] > 0:
            found = _corners(lambda x, y: x // y, a, b)
        elif name == "negative" and a:
            found = (-a[1], -a[0])
        elif name in _KEEP_VALUES:
            data = [r for r in args if r is not None] if name == "concat" else [a]
            if data and all(data):
                found = (min(r[0] for r in data), max(r[1] for r in data))
        return found if _within(found, full) else full  # beyond the dtype: it wraps, say nothing

    def _is_max_of(self, reduced, x) -> bool:
        """`reduced` = max(x) along some axes, keepdims (so reduced - x >= 0)."""
        bound = self.values.get(reduced) if isinstance(reduced, relax.Var) else None
        return _name(bound) == "max" and bound.args[0].same_as(x) and bool(bound.attrs.keepdims)


def _reduced(call) -> int | None:
    """How many values a reduction sums (static shapes only)."""
    shape = getattr(call.args[0].ty, "shape", None)
    if shape is None or any(not isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    dims = [int(d) for d in shape]
    axes = range(len(dims)) if call.attrs.axis is None else [int(x) % len(dims) for x in call.attrs.axis]
    return int(np.prod([dims[x] for x in axes]))


# ops exact on int32 values wherever their operands and result are within int32 (a sum's partial
# sums may wrap: two's complement gives the right total when that is within range)
INT32_EXACT = {"add", "subtract", "multiply", "right_shift", "left_shift", "where", "bitwise_and", "floor_divide",
               "negative", "sum", "max", "min"}


@mutator
class _Narrow(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.ranges = None  # _Ranges of the function being rewritten
        self.bound = None  # the variable whose value is being visited (ranges are the original function's)

    def visit_var_binding_(self, binding) -> None:
        self.bound = binding.var
        super().visit_var_binding_(binding)

    def visit_call_(self, call: relax.Call):
        original = self.ranges.values.get(self.bound)
        call = super().visit_call_(call)
        if str(getattr(call.ty, "dtype", "")) != "int64":
            return call
        name = _name(call)
        # the operands' ranges as the analysis found them: a rewritten operand is a new variable
        same = _name(original) == name and len(original.args) == len(call.args)  # the binding's own call
        args = [self.ranges.of(a) for a in (original.args if same else call.args)]
        result = self.ranges.ranges.get(self.bound) if same else None
        if name in INT32_EXACT and self._int32_exact(name, args, result) and any(
                self._narrow_source(a) is not None for a in call.args):
            # (a value of an int64 chain, cast down for one op and up for the next, cost a kernel more)
            operands = [a if str(getattr(a.ty, "dtype", "")) == "bool" else self._to(a, "int32") for a in call.args]
            return R.astype(self._emit(relax.Call(call.op, operands, call.attrs, call.ty_args)), "int64")
        if name in ("sum", "max", "min") and _within(args[0], I32):
            source = self._narrow_source(call.args[0])
            if source is not None:  # the 32-bit value read and widened in the reduction's own kernel
                wide = self._emit(R.astype(self._to(source, "int32"), "int64"))
                return relax.Call(call.op, [wide], call.attrs, call.ty_args)
        if name == "multiply" and all(args):
            return self._multiply(call, *args)
        if name == "right_shift" and all(args):
            return self._shift(call, *args)
        if name in ("minimum", "maximum") and all(_within(r, I32) for r in args):
            return R.astype(self._emit(getattr(R, name)(*(self._to(a, "int32") for a in call.args))), "int64")
        lo, hi = (int(v.value) for v in call.args[1:]) if name == "clip" else (0, 0)
        if name == "clip" and _within(args[0], I32) and lo <= min(hi, I32[1]) and hi >= I32[0]:
            # bounds beyond int32 on the far side clip nothing of an int32 value
            lo, hi = max(lo, I32[0]), min(hi, I32[1])
            return R.astype(self._emit(R.clip(self._to(call.args[0], "int32"), lo, hi)), "int64")
        return call

    def _narrow_source(self, expr):
        """The value of at most 32 bits that `expr` is a cast of, or None."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if _name(bound) != "astype":
            return None
        return bound.args[0] if _within(_DTYPES.get(str(getattr(bound.args[0].ty, "dtype", ""))), I32) else None

    @staticmethod
    def _int32_exact(name: str, args: list, result: Range | None) -> bool:
        """Every integer operand and the result within int32 (shift counts below 32)."""
        values = args[1:] if name == "where" else args
        if not values or not all(_within(r, I32) for r in values):
            return False
        if name in ("right_shift", "left_shift") and not 0 <= args[1][0] <= args[1][1] < 32:
            return False
        return _within(result, I32)

    def _multiply(self, call, a: Range, b: Range):
        for small, wide in (("int32", "int64"), ("uint32", "uint64")):
            if all(_within(r, _DTYPES[small]) for r in (a, b)):
                x, y = (self._to(e, small) for e in call.args)
                product = self.builder_.call_te(widening_multiply_te, x, y, wide, primfunc_name_hint="multiply")
                return product if wide == "int64" else R.astype(product, "int64")
        return call

    def _shift(self, call, x: Range, s: Range):
        if x[0] >= 0:
            return R.astype(self._emit(R.right_shift(self._to(call.args[0], "uint64"),
                                                     self._to(call.args[1], "uint64"))), "int64")
        if _within(x, I32) and s[1] < 32:
            return R.astype(self._emit(R.right_shift(self._to(call.args[0], "int32"),
                                                     self._to(call.args[1], "int32"))), "int64")
        return call

    def _emit(self, expr):
        return self.builder_.emit(expr)

    def _to(self, expr, dtype: str):
        """`expr` (within `dtype`'s range) as `dtype`: a constant converted, a value that was cast to
        int64 from `dtype` read as it was (from a narrower dtype: cast from that), anything else cast."""
        if isinstance(expr, tvm.ir.GenericConst):
            return relax.const(expr.value.numpy().astype(dtype), dtype)
        if str(getattr(expr.ty, "dtype", "")) == dtype:
            return expr
        source = self._narrow_source(expr)
        if source is not None and str(source.ty.dtype) == dtype:
            return source
        if source is not None and _within(_DTYPES.get(str(source.ty.dtype)), _DTYPES[dtype]):
            expr = source
        return self._emit(R.astype(expr, dtype))


@tvm.transform.module_pass(opt_level=0, name="NarrowInt64")
def narrow_int64(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite int64 multiplies, shifts and min/max whose operands' ranges allow it (module doc)."""
    from frontends.relax_rewrite import drop_unused_bindings

    narrow = _Narrow(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            narrow.ranges = _Ranges(func)
            narrow.builder_.update_func(gv, narrow.visit_expr(func))
    return drop_unused_bindings(narrow.builder_.get())  # the int64 casts whose readers all took the int32 value
