"""CUDA schedule for the fused integer row kernels of transformers (I-LayerNorm and other
kernels with a reduction over rows): one thread per row.

dlight's rules inline such blocks into each other, and the integer square root's steps
each read the previous estimate more than once: inlined, the expression doubles per step
(MiniLM's LayerNorm kernel grew past 20 GB in `tvm.compile`). Here per-row scalars are
computed at the thread (compute_at, local scope), so each stays a value; elementwise blocks
over whole rows are still inlined (their chains are short), so few row-long buffers remain
per thread (local memory is reserved for every resident thread). Kernels without a
reduction or a long chain (requantization, CNN epilogues) stay with dlight, whose coalesced
schedule is faster.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .schedule_common import divisor, row_kernel, static_factor

THREADS = 64  # rows per thread block
LONG_CHAIN = 32  # blocks: an elementwise kernel this long is the integer square root's chain


def _row_wide(sch: s_tir.Schedule, block, row: int) -> bool:
    """An elementwise block over whole rows (not a per-row scalar such as the square root's
    steps): inlining it saves a row-long local buffer per thread, and local memory is reserved
    for every thread the GPU can hold."""
    stmt = sch.get(block)
    return not any(int(v.iter_type) for v in stmt.iter_vars) and int(stmt.iter_vars[-1].dom.extent) == row


def _schedule(func: tvm.tirx.PrimFunc):
    sch = s_tir.Schedule(func)
    found = row_kernel(sch)
    if found is None:
        return None
    blocks, lead, row = found
    has_reduction = any(int(v.iter_type) == 2 for b in blocks for v in sch.get(b).iter_vars)
    if not has_reduction and len(blocks) < LONG_CHAIN:
        return None  # dlight's coalesced elementwise schedule is faster and inlines safely
    if any(sch.get(b).name_hint.startswith(("T_transpose", "matmul")) for b in blocks):
        return None  # layout changes and matmuls (the non-dp4a ones) are dlight's
    rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    outer, thread = sch.split(rows, [None, divisor(static_factor(sch.get(rows).extent), THREADS)])
    sch.bind(outer, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")
    for block in reversed(blocks[:-1]):
        if _row_wide(sch, block, row):
            try:
                sch.compute_inline(block)
                continue
            except tvm.s_tir.schedule.ScheduleError:
                pass
        sch.compute_at(block, thread)
        sch.set_scope(block, 0, "local")
    return sch


@tvm.transform.module_pass(opt_level=0, name="ScheduleRowKernelsCUDA")
def schedule_row_kernels_cuda(mod, _ctx):
    """Schedule the fused row kernels of `mod` one thread per row; leave the rest alone."""
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and "tirx.is_scheduled" in func.attrs:
            continue
        try:
            sch = _schedule(func)
        except tvm.s_tir.schedule.ScheduleError:
            continue  # a fusion this schedule does not cover: dlight takes it
        if sch is not None:
            mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod
