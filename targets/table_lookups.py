"""Table lookups in vectors, on targets with AVX-512.

    take(T, astype(x, int32) - qmin)  ->  lookup(x, T)      x: 8 or 16 bits, T: its 256 or 65536 results

Every unary op (Sigmoid, SiLU, HardSwish, Tanh, GELU, ... `passes/lowering/unary.py`) is a lookup in a
table of its results over the input's grid. TVM lowers `take` to one scalar load per element: ~1.2 ns
an element fused into a repack, 1.3-1.5 ns from a 16-bit table (the speed audit's third cause,
`benchmarks/results/corpus_speed.md`). Here each lookup of 4096 elements or more is a kernel of its own,
reading the tensor as one flat row:

- an 8-bit index (AVX512-VBMI): 64 lookups are two `vpermt2b` (each picks among 128 table bytes by an
  index's low 7 bits) and a blend on its top bit: 0.07 ns an element, memory bound (a 32x400x304
  map: 0.27 ms);
- a 16-bit index: 16 lookups are one `vpgatherdd` from the table (128 KB of 16-bit entries, in L2):
  0.23-0.37 ns an element (the same map: 0.9-1.4 ms against TVM's 5.1; ViT-S/14's GELU chain
  6.5 -> 4.5 ms over its 12 layers, MiniLM's 1.48 -> 0.61 ms).

One more pass over the data where the table was fused into its consumer, far less than the scalar
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
GATHER = 16  # int32 lanes of one vpgatherdd
PAD = 4  # entries after a gathered table: a lookup loads 4 bytes from its entry
PERMUTE = "llvm.x86.avx512.vpermi2var.qi.512"
# fewer elements (per sample) stay a take fused into the kernel that computes its index: there it
# costs less than a kernel call of its own (~2 us in the VM)
MIN_ELEMENTS = 4096


def _vector_step(index_dtype: str, table_dtype: str) -> tuple[int, str]:
    """(elements per step, TVMScript of one step at flat offset `at` of xf into yf)."""
    t64 = f"{table_dtype}x64"
    if index_dtype == "int16":  # 16 entries gathered as the 4 bytes at each, truncated to the entry
        return GATHER, (
            f"index = T.Cast('int32x16', xf.vload([at], 'int16x16')) + T.Broadcast(32768, 16)\n"
            f"words = T.call_llvm_pure_intrin('int32x16', 'llvm.x86.avx512.mask.gather.dpi.512', T.Broadcast(0, 16), "
            f"T.address_of(table[0]), index, T.Broadcast(T.bool(True), 16), T.int32({tvm.DataType(table_dtype).bits // 8}))\n"
            f"yf[T.ramp(at, 1, 16)] = T.Cast('{table_dtype}x16', words)")
    # two byte permutations pick among the table's low and high 128 bytes by an index's low 7 bits; its
    # top bit picks between them (an int8 index is the byte x + 128: x's sign bit flipped)
    halves = ["T.call_llvm_pure_intrin('int8x64', PERMUTE, T.reinterpret('int8x64', table.vload([%d], '%s')), index, "
              "T.reinterpret('int8x64', table.vload([%d], '%s')))" % (lo, t64, lo + 64, t64) for lo in (0, 128)]
    low, high = halves if index_dtype == "uint8" else halves[::-1]
    return VECTOR, (
        f"index = T.reinterpret('int8x64', xf.vload([at], '{index_dtype}x64'))\n"
        f"yf[T.ramp(at, 1, 64)] = T.reinterpret('{t64}', T.Select(index < T.Broadcast(T.int8(0), 64), {high}, {low}))")


@functools.lru_cache(maxsize=None)
def lookup_func(dims: tuple, index_dtype: str, table_dtype: str) -> tvm.tirx.PrimFunc:
    """y = table[x - min(index_dtype)] for x of shape `dims` (ints, or identifiers of free dims), read as
    one flat row: vectors in parallel (1024 a task), then a scalar tail. A 16-bit index gathers
    from the table padded by PAD entries; an 8-bit one permutes 256 table bytes."""
    step, body = _vector_step(index_dtype, table_dtype)
    entries = 1 << tvm.DataType(index_dtype).bits
    shape = ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "")
    size = " * ".join(str(d) for d in dims)
    free = "".join(f"    {d} = T.int64()\n" for d in dims if isinstance(d, str))
    tail_index = "T.Cast('int32', xf[tail]) + 32768" if index_dtype == "int16" else \
        f"T.Cast('int32', T.reinterpret('uint8', xf[tail])) ^ {128 if index_dtype == 'int8' else 0}"
    indent = " " * 12
    source = f"""
@T.prim_func
def lookup(x_h: T.handle, table: T.Buffer(({entries + (PAD if index_dtype == 'int16' else 0)},), "{table_dtype}"), y_h: T.handle):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}})
{free}    x = T.match_buffer(x_h, ({shape}), "{index_dtype}")
    y = T.match_buffer(y_h, ({shape}), "{table_dtype}")
    xf = T.decl_buffer(({size},), "{index_dtype}", data=x.data)
    yf = T.decl_buffer(({size},), "{table_dtype}", data=y.data)
    for task in T.parallel(({size} // {step} + 1023) // 1024):
        for v in range(T.min(1024, {size} // {step} - task * 1024)):
            at = (task * 1024 + v) * {step}
{indent}{body.replace(chr(10), chr(10) + indent)}
    for r in range({size} % {step}):
        tail = {size} // {step} * {step} + r
        yf[tail] = table[{tail_index}]
"""
    func = tvm.script.from_source(source, extra_vars={"T": T, "PERMUTE": PERMUTE})
    return func.without_attr("global_symbol")  # the module names it


def _table(value) -> np.ndarray | None:
    """A constant 1-D table of 8- or 16-bit integers, or None."""
    if not isinstance(value, tvm.ir.GenericConst) or str(value.value.dtype) not in ("int8", "uint8", "int16", "uint16"):
        return None
    table = value.value.numpy()
    return table if table.ndim == 1 else None


@mutator
class _Lookups(PyExprMutator):
    def __init__(self, mod, permute: bool):
        super().__init__(mod)
        self.permute = permute  # byte permutations across a register (AVX512-VBMI)

    def _binding(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

    def _index(self, index):
        """The 8- or 16-bit tensor x of an index astype(x, int32) - min(x's dtype), or None."""
        value, offset = self._binding(index), 0
        if _is_op(value, "relax.subtract") and isinstance(value.args[1], tvm.ir.GenericConst) \
                and value.args[1].value.numpy().size == 1:
            offset = int(value.args[1].value.numpy().reshape(()))
            value = self._binding(value.args[0])
        if not _is_op(value, "relax.astype") or str(value.ty.dtype) != "int32":
            return None
        x = value.args[0]
        dtype = str(getattr(x.ty, "dtype", ""))
        return x if (dtype, offset) in (("uint8", 0), ("int8", -128), ("int16", -32768)) else None

    def visit_call_(self, call):
        call = super().visit_call_(call)
        table = _table(call.args[0]) if _is_op(call, "relax.take") and int(call.attrs.axis) == 0 else None
        x = self._index(call.args[1]) if table is not None else None
        shape = getattr(x.ty, "shape", None) if x is not None else None
        if shape is None or not isinstance(shape, relax.ShapeExpr):
            return call
        dtype, index_dtype = str(table.dtype), str(x.ty.dtype)
        if index_dtype == "int16" and table.size == 1 << 16:
            name, table = "gather_table_lookup", np.concatenate([table, table[-PAD:]])
        elif index_dtype != "int16" and table.size == ENTRIES and table.itemsize == 1 and self.permute:
            name = "byte_table_lookup"
        else:
            return call
        dims = tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in shape.values)
        if not all(isinstance(d, int) or isinstance(d, tvm.tirx.Var) for d in dims):
            return call  # a free dim that is an expression (n * 16): the take stays
        if np.prod([d for d in dims if isinstance(d, int)]) < MIN_ELEMENTS:
            return call
        func = lookup_func(tuple(d if isinstance(d, int) else f"d{i}" for i, d in enumerate(dims)), index_dtype, dtype)
        gv = self.builder_.add_func(func, name)
        return relax.call_tir(gv, [x, relax.const(table, dtype)], relax.TensorType(list(shape.values), dtype))


def _is_op(value, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def table_lookups(target) -> tvm.transform.Pass:
    """Every lookup of a 16-bit index (AVX-512) and of an 8-bit one in an 8-bit table (AVX512-VBMI too)
    becomes `lookup_func`'s kernel (gathers, or byte permutations)."""
    from tvm.target import codegen

    permute = codegen.target_has_features(["avx512vbmi", "avx512bw"], target)

    @tvm.transform.module_pass(opt_level=0, name="TableLookups")
    def lookups(mod, _ctx):
        return mutate_functions(_Lookups(mod, permute), mod)

    return lookups
