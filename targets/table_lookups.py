"""8-bit table lookups as byte permutations, on targets with AVX512-VBMI.

    take(T, astype(x, int32) - qmin)  ->  lookup(x, T)      T: 256 entries of 8 bits, x: 8 bits

Every unary op of an 8-bit input (Sigmoid, SiLU, HardSwish, Tanh, GELU, ... `passes/lowering/unary.py`)
is a lookup in a table of its 256 results. TVM lowers `take` to one scalar load per element, and
where it is fused into a repack, ~1.2 ns an element (the speed audit's third cause:
`benchmarks/results/corpus_speed.md`). With VBMI, 64 lookups are two `vpermt2b` (each picks among
128 table bytes by an index's low 7 bits) and a blend on its top bit: 0.07 ns an element, memory
bound (a 32x400x304 map: 0.27 ms). The lookup is its own kernel over the flattened tensor: one
more pass over 8-bit data where the table was fused into its consumer, far less than the scalar
loads it replaces. The integers are the table's: bit-exact.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import tirx as T

from frontends.relax_rewrite import mutate_functions

VECTOR = 64  # bytes of a 512-bit register
ENTRIES = 256


@functools.lru_cache(maxsize=None)
def lookup_func(index_dtype: str, table_dtype: str) -> tvm.tirx.PrimFunc:
    """y[i] = table[x[i] - min(index_dtype)] over a flat tensor of any length n: n // 64 vectors
    (in parallel, 256 a task), then a scalar tail. An int8 index is the byte x + 128: its low 7
    bits are x's, and its top bit is x's sign bit flipped."""
    signed = index_dtype == "int8"
    permute = "llvm.x86.avx512.vpermi2var.qi.512"
    per_task = 256

    @T.prim_func
    def lookup(x_h: T.handle, table: T.Buffer((ENTRIES,), table_dtype), y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        n = T.int64()
        x = T.match_buffer(x_h, (n,), index_dtype)
        y = T.match_buffer(y_h, (n,), table_dtype)
        for task in T.parallel((n // VECTOR + per_task - 1) // per_task):
            for v in range(T.min(per_task, n // VECTOR - task * per_task)):
                at = (task * per_task + v) * VECTOR
                index = T.reinterpret("int8x64", x.vload([at], f"{index_dtype}x64"))
                low = T.call_llvm_pure_intrin(
                    "int8x64", permute, T.reinterpret("int8x64", table.vload([0], f"{table_dtype}x64")), index,
                    T.reinterpret("int8x64", table.vload([64], f"{table_dtype}x64")))
                high = T.call_llvm_pure_intrin(
                    "int8x64", permute, T.reinterpret("int8x64", table.vload([128], f"{table_dtype}x64")), index,
                    T.reinterpret("int8x64", table.vload([192], f"{table_dtype}x64")))
                top = index < T.Broadcast(T.int8(0), 64)  # the index's top bit (flipped for int8)
                y[T.ramp(at, 1, 64)] = T.reinterpret(f"{table_dtype}x64", T.Select(top, low, high) if signed
                                                     else T.Select(top, high, low))
        for r in range(n % VECTOR):
            tail = n // VECTOR * VECTOR + r
            y[tail] = table[T.Cast("int32", T.reinterpret("uint8", x[tail])) ^ (128 if signed else 0)]

    return lookup.without_attr("global_symbol")  # the module names it


def _byte_table(value) -> bool:
    return (isinstance(value, tvm.ir.GenericConst) and str(value.value.dtype) in ("int8", "uint8")
            and tuple(value.value.shape) == (ENTRIES,))


@mutator
class _Lookups(PyExprMutator):
    def _binding(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

    def _byte_index(self, index):
        """The 8-bit tensor x of an index astype(x, int32) - min(x's dtype), or None."""
        value, offset = self._binding(index), 0
        if _is_op(value, "relax.subtract") and isinstance(value.args[1], tvm.ir.GenericConst) \
                and value.args[1].value.numpy().size == 1:
            offset = int(value.args[1].value.numpy().reshape(()))
            value = self._binding(value.args[0])
        if not _is_op(value, "relax.astype") or str(value.ty.dtype) != "int32":
            return None
        x = value.args[0]
        dtype = str(getattr(x.ty, "dtype", ""))
        return x if (dtype, offset) in (("uint8", 0), ("int8", -128)) else None

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (_is_op(call, "relax.take") and _byte_table(call.args[0]) and int(call.attrs.axis) == 0):
            return call
        x = self._byte_index(call.args[1])
        shape = getattr(x.ty, "shape", None) if x is not None else None
        if shape is None or not isinstance(shape, relax.ShapeExpr):
            return call
        dims = list(shape.values)
        size = functools.reduce(lambda a, b: a * b, dims, tvm.tirx.const(1, "int64"))
        table = call.args[0]
        gv = self.builder_.add_func(lookup_func(str(x.ty.dtype), str(table.value.dtype)), "byte_table_lookup")
        flat = self.builder_.emit(relax.op.reshape(x, [size]))
        out = self.builder_.emit(relax.call_tir(gv, [flat, table], relax.TensorType([size], str(table.value.dtype))))
        return relax.op.reshape(out, dims)


def _is_op(value, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def has_vbmi(target) -> bool:
    """An x86 LLVM target with AVX512-VBMI (byte permutations across a 512-bit register)."""
    from tvm.target import codegen

    from .kernel_family import is_x86

    return is_x86(target) and codegen.target_has_features(["avx512vbmi", "avx512bw"], target)


@tvm.transform.module_pass(opt_level=0, name="ByteTables")
def byte_tables(mod, _ctx):
    """Every lookup of an 8-bit index in a 256-entry 8-bit table becomes `lookup_func`'s kernel."""
    return mutate_functions(_Lookups(mod), mod)
