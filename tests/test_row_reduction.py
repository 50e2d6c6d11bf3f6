"""Kernels that end in a reduction over the last axis (softmax's row max and sum, LayerNorm's sum of
squares; `cpu_schedules._schedule_row_reduction`): scheduled (elementwise producers inlined,
partial sums as one vector where the row is whole vectors, rows in parallel), equal to NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from targets.cpu_schedules import schedule_int_matmul_cpu


def _kernel(shape, dtype, op):
    x = te.placeholder(shape, dtype, name="x")
    wide = te.compute(shape, lambda *i: x(*i).astype("int32").astype("int64"), name="wide")
    k = te.reduce_axis((0, shape[-1]), name="k")
    if op == "sum_of_squares":
        out = te.compute((*shape[:-1], 1), lambda *i: te.sum(wide(*i[:-1], k) * wide(*i[:-1], k), axis=k), name="out")
    else:
        out = te.compute((*shape[:-1], 1), lambda *i: te.max(wide(*i[:-1], k), axis=k), name="out")
    return tvm.IRModule({"main": te.create_prim_func([x, out])})


@pytest.mark.parametrize("shape,op", [((1, 128, 384), "sum_of_squares"), ((2, 12, 16, 128), "max"),
                                      ((1, 6, 9, 257), "max"), ((1, 6, 9, 257), "sum_of_squares")])
def test_row_reductions_are_scheduled_and_exact(shape, op):
    mod = _kernel(shape, "int64", op)
    with tvm.target.Target({"kind": "llvm"}):
        scheduled = schedule_int_matmul_cpu(mod)
    func = scheduled["main"]
    assert func.attrs and "tirx.is_scheduled" in func.attrs
    text = func.script()
    assert 'T.sblock("wide")' not in text  # the cast inlined into the reduction: no row-sized intermediate
    assert ("T.vectorized" in text) == (shape[-1] % 16 == 0)  # partial sums as one vector
    rng = np.random.default_rng(0)
    x = rng.integers(-2**20, 2**20, shape).astype(np.int64)
    out = tvm.runtime.tensor(np.zeros((*shape[:-1], 1), np.int64))
    tvm.compile(scheduled, target="llvm")["main"](tvm.runtime.tensor(x), out)
    want = (x * x).sum(-1, keepdims=True) if op == "sum_of_squares" else x.max(-1, keepdims=True)
    np.testing.assert_array_equal(out.numpy(), want)
