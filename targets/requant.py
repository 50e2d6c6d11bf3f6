"""Requantizations with a 32 x 32 -> 64-bit multiply: the int32 sum clamped to its window first.

`passes.lowering.emit.requantize` computes clip((int64(acc) * m + 2^(s-1)) >> s, lo, hi) with
int64 constants, so LLVM multiplies with `vpmullq` (3 uops on AVX-512) or, on AVX2, which has
no 64-bit multiply, a 6-instruction emulation. The value is a non-decreasing function f of acc
(m >= 0), so clamping acc first to [a_lo, a_hi] changes nothing, where

    a_lo = the largest acc with f(acc) <= lo,   a_hi = the smallest acc with f(acc) >= hi

(below a_lo and at it the result clips to lo, above a_hi and at it to hi). The clamp is the
last step before the widening, so LLVM knows that the int64 operand is a sign-extended int32
(an add would lose that: LLVM moves the sign extension through it), and so is m, an int32
buffer here (Relax folds a cast of a constant back to int64): `vpmuldq`, 1 uop, on AVX2
too. The sums and results are those of `passes.reference.kernels.requantize` bit for bit
(tests/test_requant_window.py).

Where the results over the window fit int32 (`offset_form`: every 8- and 16-bit output), the
shift is unsigned too: AVX2 has no 64-bit arithmetic shift (LLVM emulated it with compares and
blends: half of a depthwise conv's time). With f_lo = f(a_lo) and u = acc - a_lo >= 0,

    f(acc) = ((u * m + C) >> s) + f_lo,   C = (a_lo * m + rnd) mod 2^s

since a_lo * m + rnd = f_lo * 2^s + C; u * m + C < 2^63 is an unsigned 32 x 32 -> 64-bit
product (`vpmuludq`) and a logical shift (`vpsrlvq`), and the rest int32. Runs on the integer Relax module before legalization, for
CPU targets; the chain is matched from its clip back to the int32 value, or to an 8- or 16-bit
activation that a residual add or a concat rescales (widened to int32 first).

Where the accumulator cannot leave bounds known from constant weights (`passes/accumulator_bounds.py`)
the window narrows to them, and where u * m + C then stays below 2^32 on every element
(`passes/requant_windows.short_form`; `passes/short_multipliers.py` cuts the multipliers so that it
does), the product, its offset and the shift are uint32 (`short_requant_te`: `vpmulld`, one add, one
shift per vector; a_lo's subtraction folds into the offset modulo 2^32): EfficientNet-Lite0 3.94 ->
3.62 ms at 1 thread (Zen 4).

Two instructions per vector fewer where they can go (EfficientNet-Lite0 6.1 -> 5.8 ms at 1 thread):
a constant bias added to the sums moves the window instead (`_Rewriter._biased`), and where
f(a_lo) >= lo and f(a_hi) <= hi on every channel (every ratio <= 1) the final clip is left out.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from frontends.relax_rewrite import KernelCache, drop_unused_bindings
from passes.accumulator_bounds import accumulator_bounds
from passes.requant_windows import (U32, narrowed, offset_form, requant_chain, short_form,  # noqa: F401
                                    window)  # (tests import window here)


def _at(t: te.Tensor, index):
    """t broadcast to the rank of `index` (numpy rules: missing leading dims, size-1 dims)."""
    skip = len(index) - len(t.shape)
    return t[tuple(0 if int(t.shape[d]) == 1 else index[skip + d] for d in range(len(t.shape)))]


def windowed_requant_te(acc: te.Tensor, m: te.Tensor, rnd: te.Tensor, s: te.Tensor, a_lo: te.Tensor,
                        a_hi: te.Tensor, lo: int, hi: int) -> te.Tensor:
    """clip((int64(clamp(acc, a_lo, a_hi)) * int64(m) + rnd) >> s, lo, hi), int64 (m: int32)."""
    def body(*i):
        x = tirx.max(tirx.min(acc[i].astype("int32"), _at(a_hi, i)), _at(a_lo, i))
        y = (x.astype("int64") * _at(m, i).astype("int64") + _at(rnd, i)) >> _at(s, i)
        return tirx.max(tirx.min(y, tirx.const(hi, "int64")), tirx.const(lo, "int64"))

    return te.compute(acc.shape, body, name="windowed_requant")


def offset_requant_te(acc: te.Tensor, m: te.Tensor, c: te.Tensor, s: te.Tensor, a_lo: te.Tensor,
                      a_hi: te.Tensor, f_lo: te.Tensor | int, lo: int, hi: int, bounded: bool = False,
                      base: te.Tensor | None = None) -> te.Tensor:
    """`windowed_requant_te` in the unsigned form: clip(((u * m + c) >> s) + f_lo, lo, hi) with
    u = clamp(acc, a_lo, a_hi) - a_lo (uint32), m uint32, c and s uint64; int64 like the chain.
    `bounded`: f(a_lo) >= lo and f(a_hi) <= hi everywhere, so the window alone keeps the result
    in [lo, hi] and the clip is left out; an `f_lo` of zeros comes as 0 (no add; an int in the
    kernel's signature would stop an unrolled recurrence's steps from sharing one kernel). `base`
    (uint32, modulo 2^32) is subtracted instead of a_lo where a bias was folded into the window."""
    def body(*i):
        x = tirx.max(tirx.min(acc[i].astype("int32"), _at(a_hi, i)), _at(a_lo, i))
        u = x.astype("uint32") - _at(a_lo if base is None else base, i).astype("uint32")
        q = (u.astype("uint64") * _at(m, i).astype("uint64") + _at(c, i)) >> _at(s, i)
        r = q.astype("int32") + (tirx.const(f_lo, "int32") if isinstance(f_lo, int) else _at(f_lo, i))
        if bounded:
            return r.astype("int64")
        return tirx.max(tirx.min(r, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype("int64")

    return te.compute(acc.shape, body, name="windowed_requant")


def short_requant_te(acc: te.Tensor, m: te.Tensor, d: te.Tensor, s: te.Tensor, a_lo: te.Tensor, a_hi: te.Tensor,
                      f_lo: te.Tensor | int, lo: int, hi: int, bounded: bool = False) -> te.Tensor:
    """`offset_requant_te` in 32 bits: clip(((x * m + d) mod 2^32 >> s) + f_lo, lo, hi) with x =
    clamp(acc, a_lo, a_hi) and m, d, s uint32, where `short_form` proved (x - base) * m + c < 2^32
    (d = c - base * m modulo 2^32, so the subtraction of the window's base folds into d)."""
    def body(*i):
        x = tirx.max(tirx.min(acc[i].astype("int32"), _at(a_hi, i)), _at(a_lo, i))
        q = (x.astype("uint32") * _at(m, i) + _at(d, i)) >> _at(s, i)
        r = q.astype("int32") + (tirx.const(f_lo, "int32") if isinstance(f_lo, int) else _at(f_lo, i))
        if bounded:
            return r.astype("int64")
        return tirx.max(tirx.min(r, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype("int64")

    return te.compute(acc.shape, body, name="windowed_requant")


def _into(shape: tuple, static: list) -> bool:
    """Whether a constant of `shape` broadcasts into the accumulator's (static) shape, not beyond."""
    rank = len(static)
    return len(shape) <= rank and all(d == 1 or d == static[rank - len(shape) + k] for k, d in enumerate(shape))


def _bounded(m, rnd, s, a_hi, f_lo, lo: int, hi: int) -> bool:
    """Whether the window alone keeps every result within [lo, hi] (f(a_lo) >= lo, f(a_hi) <= hi): no clip.
    f(a_hi) < 2^62 + 2^61: int64 holds it (m < 2^31, s <= 62)."""
    return bool(np.all(f_lo >= lo) and np.all(((a_hi.astype(np.int64) * m + rnd) >> s) <= hi))


_SOURCES = ("int32", "int16", "uint16", "int8", "uint8")  # rescaled activations too (residual adds, concat)


def _is(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == f"relax.{name}"


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.kernels = KernelCache(self.builder_)
        self.forms = {}  # (m, rnd, s, lo, hi) -> (a_lo, a_hi, offset form): an unrolled recurrence's steps repeat them

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

    def _biased(self, acc, rank: int, static: list) -> tuple:
        """(x, bias) where `acc` is x + a constant int32 bias that broadcasts into x's shape (a
        conv's or matmul's bias), else (acc, None): the window takes the bias (bounds and base
        moved by it, see offset_requant_te), one add less per output. Where a bound moved past
        int32 that side cannot bind (x + bias does not overflow), and u is right modulo 2^32."""
        add = self._bound(acc)
        bias = _const(add.args[1]) if _is(add, "add") else None
        x = add.args[0] if bias is not None else None
        if (bias is None or str(bias.dtype) != "int32" or str(x.ty.dtype) != "int32" or bias.ndim > rank
                or [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in x.ty.shape] != static
                or any(d != 1 and d != static[rank - bias.ndim + k] for k, d in enumerate(bias.shape))):
            return acc, None
        return x, bias.astype(np.int64)

    def _moved(self, acc, a_lo, a_hi, rank: int, static: list) -> tuple:
        """(acc, bias, base, a_lo, a_hi): the window's base a_lo (int64), and where `acc` is x + a constant
        bias (`_biased`), x with the window and base moved by it:
        clamp(x + bias, a_lo, a_hi) - a_lo == clamp(x, a_lo - bias, a_hi - bias) - (a_lo - bias)."""
        base = a_lo.astype(np.int64)
        acc, bias = self._biased(acc, rank, static)
        if bias is not None:
            i32 = np.iinfo(np.int32)
            base = base - bias
            a_lo, a_hi = np.clip(base, i32.min, i32.max), np.clip(a_hi.astype(np.int64) - bias, i32.min, i32.max)
        return acc, bias, base, a_lo, a_hi

    def _short(self, acc, m, rnd, s, a_lo, a_hi, form, lo: int, hi: int, rank: int, static: list) -> relax.Expr:
        """The 32-bit form (`short_requant_te`) over the narrowed window [a_lo, a_hi]."""
        c, f_lo = form
        bounded = _bounded(m, rnd, s, a_hi, f_lo, lo, hi)
        acc, _, base, a_lo, a_hi = self._moved(acc, a_lo, a_hi, rank, static)
        full = np.broadcast_shapes(*(np.shape(v) for v in (m, s, c, f_lo, a_lo, a_hi, base)))
        wide = [np.broadcast_to(v, full).astype(object) for v in (c, base, m)]
        d = np.asarray((wide[0] - wide[1] * wide[2]) % U32, np.uint64)  # u * m + c == x * m + d modulo 2^32
        const = lambda v, dtype: relax.const(np.ascontiguousarray(np.broadcast_to(v, full)).astype(dtype), dtype)
        return self.kernels.call_te(short_requant_te, acc, const(m, "uint32"), const(d, "uint32"), const(s, "uint32"),
                                    const(a_lo, "int32"), const(a_hi, "int32"),
                                    0 if not np.any(f_lo) else const(f_lo, "int32"), lo, hi, bounded,
                                    primfunc_name_hint="windowed_requant")

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        chain = requant_chain(call, self.lookup_binding)
        if chain is None or str(chain[0].ty.dtype) not in _SOURCES or getattr(chain[0].ty, "shape", None) is None:
            return call
        acc, m, rnd, s, lo, hi = chain
        rank = len(acc.ty.shape)
        static = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in acc.ty.shape]
        if not all(_into(np.shape(c), static) for c in (m, rnd, s)):
            return call
        key = (*((v.shape, v.tobytes()) for v in (m, rnd, s)), lo, hi)
        if key not in self.forms:
            a_lo, a_hi = window(m, rnd, s, lo, hi)
            self.forms[key] = a_lo, a_hi, offset_form(m, rnd, s, a_lo, a_hi)
        a_lo, a_hi, offset = self.forms[key]
        full = np.broadcast_shapes(m.shape, rnd.shape, s.shape)
        const = lambda v, dtype: relax.const(np.ascontiguousarray(np.broadcast_to(v, full)).astype(dtype), dtype)
        bounds = accumulator_bounds(acc, self.lookup_binding) if offset is not None else None
        if bounds is not None and all(_into(np.shape(b), static) for b in bounds):
            narrow_lo, narrow_hi = narrowed(a_lo, a_hi, *bounds)
            short_key = (key, narrow_lo.shape, narrow_lo.tobytes(), narrow_hi.tobytes())
            if short_key not in self.forms:
                self.forms[short_key] = short_form(m, rnd, s, narrow_lo, narrow_hi)
            short = self.forms[short_key]
            if short is not None:
                return self._short(acc, m, rnd, s, narrow_lo, narrow_hi, short, lo, hi, rank, static)
        if offset is not None:
            c, f_lo = offset
            bounded = _bounded(m, rnd, s, a_hi, f_lo, lo, hi)
            acc, bias, base, a_lo, a_hi = self._moved(acc, a_lo, a_hi, rank, static)
            if bias is not None:
                full = np.broadcast_shapes(full, bias.shape)
                base = const(np.mod(base, 2**32), "uint32")
            args = (acc, const(m, "uint32"), const(c, "uint64"), const(s, "uint64"), const(a_lo, "int32"),
                    const(a_hi, "int32"), 0 if not np.any(f_lo) else const(f_lo, "int32"), lo, hi,
                    bounded)
            return self.kernels.call_te(offset_requant_te, *args, *([base] if bias is not None else []),
                                        primfunc_name_hint="windowed_requant")
        return self.kernels.call_te(windowed_requant_te, acc, const(m, "int32"), const(rnd, "int64"),
                                     const(s, "int64"), const(a_lo, "int32"), const(a_hi, "int32"), lo, hi,
                                     primfunc_name_hint="windowed_requant")


@tvm.transform.module_pass(opt_level=0, name="WindowedRequant")
def windowed_requant(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every matched int64 requantization chain (see module doc); the bindings it no
    longer reads are dropped."""
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return drop_unused_bindings(rewriter.builder_.get())
