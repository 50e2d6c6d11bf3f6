"""Scratch buffers of a parallel loop's body on the stack instead of TVM's workspace pool.

A buffer allocated in the body of a parallel loop (a depthwise conv's padded rows, computed per
channel where they are used) is lowered by TVM to a `TVMBackendAllocWorkspace` / `FreeWorkspace`
pair per iteration unless it is under 1 KB: a search of the thread's pool, ~10 ns each, per
channel of every depthwise conv. EfficientNet-Lite0 made ~9000 such calls a run, 3% of its time
at 1 thread (perf, Zen 4). Marked `disable_lower_builtin`, the allocation stays an LLVM alloca,
which TVM places in the entry block of the loop body's function: one stack frame per task, no
call at all. Only constant-size buffers, at most STACK_LIMIT bytes per loop body, are moved, so a
worker thread's stack (8 MiB on Linux; a musl thread's 128 KiB too) keeps room for the rest.
Runs on lowered TIR (`tir_pipeline.py`), before TVM's host passes lower the allocations.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

STACK_LIMIT = 64 * 1024  # bytes of scratch one parallel loop body may keep on its stack
DISABLE_LOWER = "disable_lower_builtin"  # TVM's kDisableLowerTVMBuiltin


def _bytes(buffer) -> int | None:
    """The buffer's size in bytes, or None when it is not a constant."""
    dtype = tvm.DataType(str(buffer.dtype))
    size = dtype.bits * dtype.lanes // 8
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        size *= int(extent)
    return size


def _on_stack(loop):
    """A parallel loop whose body's constant scratch buffers (up to STACK_LIMIT in all) are stack arrays."""
    if loop.kind != tirx.ForKind.PARALLEL:
        return loop
    budget = [STACK_LIMIT]

    def mark(alloc):
        size = _bytes(alloc.buffer)
        if size is None or size > budget[0] or DISABLE_LOWER in alloc.annotations:
            return alloc
        budget[0] -= size
        return tirx.AllocBuffer(alloc.buffer, annotations={**alloc.annotations, DISABLE_LOWER: tirx.IntImm("bool", 1)})

    body = tvm_ffi.structural_map(loop.body, [(tirx.AllocBuffer, mark)])
    if body.same_as(loop.body):
        return loop
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations)


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="StackScratch")
def stack_scratch(func, _mod, _ctx):
    """Put the scratch buffers of every CPU parallel loop's body on the stack (see module doc)."""
    target = func.attrs.get("target") if func.attrs is not None else None
    if target is None or target.kind.name != "llvm":
        return func
    return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.For, _on_stack)]))
