"""targets/even_odd_multiply.py: vectorized 32 x 32 -> 64-bit requantizations computed on their
even and odd lanes equal the scalar expression bit for bit, over the whole operand ranges, with
per-lane and broadcast constants, and the pass rewrites what it should."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te, tirx

from targets import tir_pipeline

rng = np.random.default_rng(11)
HOST = tvm.target.Target("llvm")


def _requant_func(n: int, lanes: int, per_lane: bool):
    """out[i] = int32((uint64(u[i]) * uint64(m) + c) >> s), constants per element or one each."""
    u = te.placeholder((n,), "uint32", name="u")
    shape = (n,) if per_lane else (1,)
    m = te.placeholder(shape, "uint32", name="m")
    c = te.placeholder(shape, "uint64", name="c")
    s = te.placeholder(shape, "uint64", name="s")
    at = (lambda i: i) if per_lane else (lambda i: 0)
    out = te.compute((n,), lambda i: ((u[i].astype("uint64") * m[at(i)].astype("uint64") + c[at(i)])
                                      >> s[at(i)]).astype("int32"), name="out")
    func = te.create_prim_func([u, m, c, s, out])
    sch = tvm.s_tir.Schedule(func)
    _, inner = sch.split(sch.get_loops(sch.get_sblock("out"))[0], [None, lanes])
    sch.vectorize(inner)
    return sch.mod["main"].with_attr("global_symbol", "requant")


def _reference(u, m, c, s):
    """The same in Python integers (the uint64 sum wraps modulo 2^64, as the kernel's does)."""
    m, c, s = (np.resize(v, u.shape) for v in (m, c, s))
    return np.array([((int(a) * int(b) + int(d)) % 2**64 >> int(e)) % 2**32 for a, b, d, e in zip(u, m, c, s)],
                    np.uint64).astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("lanes", [16, 8, 56, 14])
@pytest.mark.parametrize("per_lane", [True, False])
@pytest.mark.parametrize("cpu", [None, "x86-64-v3"])
def test_even_and_odd_lanes_equal_the_scalar_expression(lanes, per_lane, cpu):
    """u over uint32's range and its extremes, m up to 2^32 - 1, c up to 2^63, shifts 0..63: the
    compiled kernel with the pass equals Python integers, and so does TVM's default lowering, on
    this CPU and built for AVX2 (the other interleave; every x86-64 CPU with AVX2 runs it)."""
    from targets import get_target
    from targets.x86 import missing_features

    if cpu is not None and missing_features([cpu]):
        pytest.skip("this CPU lacks AVX2")
    target = HOST if cpu is None else get_target("x86", cpu=cpu).target()
    n = 4 * 56 * 2
    func = _requant_func(n, lanes, per_lane)
    u = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    u[:4] = [0, 1, 2**32 - 1, 2**31]
    k = n if per_lane else 1
    m = rng.integers(0, 2**32, k, dtype=np.uint64).astype(np.uint32)
    m[:1] = 2**32 - 1
    c = rng.integers(0, 2**63, k, dtype=np.uint64)
    s = rng.integers(0, 64, k, dtype=np.uint64)
    want = _reference(u, m, c, s)
    for pipeline in (tir_pipeline.register(), "default"):
        lib = tvm.tirx.build(tvm.IRModule({"requant": func}), target=target, pipeline=pipeline)
        args = [tvm.runtime.tensor(a) for a in (u, m, c, s, np.zeros(n, np.int32))]
        lib["requant"](*args)
        np.testing.assert_array_equal(args[-1].numpy(), want, err_msg=pipeline)


def test_the_pass_rewrites_the_multiply_on_x86_only():
    """The x86 kernel's LLVM IR multiplies 8 x uint64 halves of the uint32 vector, with no widening of
    the uint32 lanes, and interleaves the two results (AVX-512: one permutation; AVX2: the odd ones
    shifted into the high halves); an aarch64 kernel keeps the widening."""
    func = _requant_func(64, 16, True)
    ir = {}
    for name, target in (("avx512", {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}),
                         ("avx2", {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"}),
                         ("arm", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})):
        lib = tvm.tirx.build(tvm.IRModule({"requant": func}), target=tvm.target.Target(target),
                             pipeline=tir_pipeline.register())
        ir[name] = lib.inspect_source("ll")
    interleave = "<i32 0, i32 16, i32 2, i32 18,"
    for x86 in ("avx512", "avx2"):
        assert "mul nuw <8 x i64>" in ir[x86] and "zext <16 x i32>" not in ir[x86], x86
    assert interleave in ir["avx512"]
    assert interleave not in ir["avx2"] and "shl <8 x i64>" in ir["avx2"] and "or " in ir["avx2"]
    assert interleave not in ir["arm"] and "zext <16 x i32>" in ir["arm"]
