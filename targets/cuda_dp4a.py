"""CUDA schedule for int8 matmul kernels: tiled, operands staged in shared memory with the
reduction axis innermost, inner 4-step reduction tensorized to `__dp4a`.

    matmul[i, j] += A[i, k] * B[k, j]   (A, B int8/uint8; int32 accumulator)
    -> per thread one (i, j); k in chunks staged in shared memory; 4 k's per __dp4a

uint8 operands use the mixed-signedness `__dp4a(unsigned, int, int)` overload that TVM's
CUDA codegen defines (PTX `dp4a.u32.s32`). The fused epilogue (requantization) runs per thread on the int32 accumulator in registers.
Applies to PrimFuncs with one block named "matmul" whose K is a multiple of 4; others
are left to dlight.
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .schedule_common import divisor, fold_epilogue, static_factor

TILE_I, TILE_J = 8, 32  # at most TILE_I x TILE_J threads per block, one output element each
MAX_K_CHUNK = 256  # reduction elements staged in shared memory per step


def _intrin_name(a_dtype: str, b_dtype: str) -> str:
    return f"intq_dp4a_{a_dtype}_{b_dtype}"


def _word(vec, dtype: str):
    """Four bytes as one 32-bit word, unsigned for uint8 (picks the dp4a overload)."""
    return T.reinterpret("uint32" if dtype == "uint8" else "int32", vec)


def _register(a_dtype: str, b_dtype: str) -> str:
    name = _intrin_name(a_dtype, b_dtype)
    vec = {"int8": "int8x4", "uint8": "uint8x4"}

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), b_dtype, offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for k in range(4):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), b_dtype, offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] = C[0] + T.call_pure_extern("__dp4a", _word(A.vload([0], vec[a_dtype]), a_dtype),
                                             _word(B.vload([0], vec[b_dtype]), b_dtype), T.int32(0), dtype="int32")

    TensorIntrin.register(name, desc, impl, override=True)
    return name


def _k_chunk(k: int) -> int:
    chunk = 4
    while chunk * 2 <= MAX_K_CHUNK and k % (chunk * 2) == 0:
        chunk *= 2
    return chunk


def _schedulable(func: tvm.tirx.PrimFunc):
    sch = s_tir.Schedule(func)
    try:
        block = sch.get_sblock("matmul")
    except Exception:  # no such block
        return None
    stmt = sch.get(block)
    if len(stmt.iter_vars) != 3 or len(stmt.reads) != 2:
        return None
    dtypes = [str(r.source.dtype) for r in stmt.reads]
    k = int(stmt.iter_vars[2].dom.extent)
    if str(stmt.writes[0].source.dtype) != "int32" or not set(dtypes) <= {"int8", "uint8"} or k % 4:
        return None
    if dtypes == ["uint8", "uint8"]:
        return None
    return sch, block, dtypes, k


def _schedule(sch: s_tir.Schedule, block, dtypes, k: int) -> bool:
    """Schedule `block` with __dp4a; False (nothing done) where an epilogue cannot be computed per tile."""
    intrin = _register(*dtypes)
    epilogue = fold_epilogue(sch, block)
    if len(epilogue) != len(sch.get_consumers(block)):  # a pad fused after the matmul: dlight's
        return False
    i, j, kk = sch.get_loops(block)
    # Tiles divide the extents (a free batch's n * rows by a divisor of rows): a predicated tail would block tensorization.
    ti, tj = divisor(static_factor(sch.get(i).extent), TILE_I), divisor(static_factor(sch.get(j).extent), TILE_J)
    io, ii = sch.split(i, [None, ti])
    jo, ji = sch.split(j, [None, tj])
    ko, kc, k4 = sch.split(kk, [None, _k_chunk(k) // 4, 4])
    sch.reorder(jo, io, ii, ji, ko, kc, k4)
    sch.bind(jo, "blockIdx.x")
    sch.bind(io, "blockIdx.y")
    sch.bind(ii, "threadIdx.y")
    sch.bind(ji, "threadIdx.x")
    if epilogue:  # the int32 accumulator lives in a register, read by the epilogue in place
        for consumer in epilogue:
            sch.reverse_compute_at(consumer, ji)
        sch.set_scope(block, 0, "local")
    else:  # the kernel's output is the accumulator itself: write it back from a register
        sch.reverse_compute_at(sch.cache_write(block, 0, "local"), ji)
    a_sh = sch.cache_read(block, 0, "shared")
    b_sh = sch.cache_read(block, 1, "shared")
    sch.compute_at(a_sh, ko)
    sch.compute_at(b_sh, ko)
    sch.transform_layout(b_sh, ("write", 0), lambda kx, nx: (nx, kx))  # reduction axis innermost
    for cached in (a_sh, b_sh):  # cooperative copy by the whole thread block
        fused = sch.fuse(*sch.get_loops(cached)[5:])  # the copy loops under jo, io, ii, ji, ko
        _, ty, tx = sch.split(fused, [None, ti, tj])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
    sch.decompose_reduction(block, ko)
    sch.tensorize(k4, intrin)
    return True


@tvm.transform.module_pass(opt_level=0, name="ScheduleInt8MatmulDp4a")
def schedule_int8_matmul_dp4a(mod, _ctx):
    """Schedule every int8 matmul PrimFunc of `mod` with __dp4a; leave the rest alone."""
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and "tirx.is_scheduled" in func.attrs:
            continue
        found = _schedulable(func)
        if found is None:
            continue
        sch, block, dtypes, k = found
        try:
            if not _schedule(sch, block, dtypes, k):
                continue
        except tvm.s_tir.schedule.ScheduleError:
            continue  # a fusion this schedule does not cover: dlight's fallback takes it
        mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod
