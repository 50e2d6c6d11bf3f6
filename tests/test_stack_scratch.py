"""A parallel loop body's scratch buffers live on the stack (`targets/stack_scratch.py`), not in TVM's
workspace pool, up to the stack limit; the results are those of the pooled buffers."""

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from targets import tir_pipeline
from targets.stack_scratch import STACK_LIMIT


def _kernel(rows: int, width: int):
    """Per row, a scratch copy shifted by two, then the sum of two neighbours (parallel over rows)."""

    @T.prim_func
    def shifted_sums(a: T.Buffer((rows, width), "int8"), b: T.Buffer((rows, width), "int8")):
        for c in T.parallel(rows):
            tmp = T.alloc_buffer((width + 4,), "int8")
            for i in range(width):
                tmp[i + 2] = a[c, i]
            tmp[1] = T.int8(0)
            for i in range(width):
                b[c, i] = tmp[i + 1] + tmp[i + 2]

    return tvm.IRModule({"main": shifted_sums.with_attr("global_symbol", "main")})


def _build_and_run(rows: int, width: int):
    lib = tvm.tirx.build(_kernel(rows, width), target="llvm", pipeline=tir_pipeline.register())
    a = np.random.default_rng(0).integers(-60, 60, (rows, width)).astype(np.int8)
    b = tvm.runtime.tensor(np.zeros_like(a))
    lib["main"](tvm.runtime.tensor(a), b)
    shifted = np.concatenate([np.zeros((rows, 1), np.int8), a[:, :-1]], axis=1)
    np.testing.assert_array_equal(b.numpy(), (shifted.astype(np.int16) + a).astype(np.int8))
    return lib.inspect_source("asm")


def test_scratch_of_a_parallel_body_is_a_stack_array():
    asm = _build_and_run(rows=64, width=4096)
    assert "TVMBackendAllocWorkspace" not in asm


def test_the_stack_array_is_one_per_task_not_one_per_iteration():
    # 20000 rows of 4 KB each, one task: an alloca per iteration would take 80 MB of stack and crash
    asm = _build_and_run(rows=20000, width=4096)
    assert "TVMBackendAllocWorkspace" not in asm


@pytest.mark.parametrize("width", [STACK_LIMIT + 64])
def test_scratch_over_the_limit_stays_in_the_workspace_pool(width):
    asm = _build_and_run(rows=4, width=width)
    assert "TVMBackendAllocWorkspace" in asm
