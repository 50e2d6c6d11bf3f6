"""Table lookups in vectors (targets/table_lookups.py): byte permutations for 8-bit indices on
AVX512-VBMI fleets, gathers for 16-bit ones on AVX-512; the take stays on AVX2. Each gives the table's
entries bit for bit, for every index dtype, lengths with and without a tail, and a free batch."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from passes.lowering import emit
from targets import get_target
from targets.x86 import missing_features

rng = np.random.default_rng(5)


def _lookup_module(shape, index_dtype: str, table: np.ndarray):
    """main(x) = table[x - min(index_dtype)], as `passes/lowering/unary.table_lookup` emits it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, index_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            index = bb.emit(relax.op.astype(x, "int32"))
            if index_dtype != "uint8":
                index = bb.emit(relax.op.subtract(index, emit.const(int(np.iinfo(index_dtype).min), "int32")))
            out = bb.emit_output(relax.op.take(emit.const(table, str(table.dtype)), index, axis=0, mode="clip"))
        bb.emit_func_output(out)
    return bb.get()


def _lowered_names(mod, cpu: str) -> list[str]:
    from targets.cpu_pipeline import cpu_lowering_passes

    target = get_target("x86", cpu=cpu).target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(mod)
    return [gv.name_hint for gv in lowered.functions.keys()]


@pytest.mark.parametrize("index_dtype,table_dtype", [("uint8", "uint8"), ("int8", "uint8"), ("int8", "int8"),
                                                     ("int16", "int16"), ("int16", "uint8"), ("int16", "int8")])
@pytest.mark.parametrize("shape", [[1, 3, 40, 40], [2, 4100], ["n", 65, 67]])
def test_table_lookup(index_dtype, table_dtype, shape):
    info = np.iinfo(table_dtype)
    table = rng.integers(info.min, info.max + 1, 1 << np.iinfo(index_dtype).bits).astype(table_dtype)
    dims = [tvm.tirx.Var("n", "int64") if d == "n" else d for d in shape]
    mod = _lookup_module(dims, index_dtype, table)
    kernel = "gather_table_lookup" if index_dtype == "int16" else "byte_table_lookup"
    assert any(kernel in n for n in _lowered_names(mod, "x86-64-v4+avx512vbmi"))
    assert not any("table_lookup" in n for n in _lowered_names(mod, "x86-64-v3"))  # AVX2: the take stays
    spec = get_target("x86", cpu="x86-64-v4+avx512vbmi")
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}: lowered, not run")
    lo, hi = int(np.iinfo(index_dtype).min), int(np.iinfo(index_dtype).max)
    concrete = [3 if d == "n" else d for d in shape]
    x = rng.integers(lo, hi + 1, concrete).astype(index_dtype)
    x.flat[:2] = [lo, hi]
    target = spec.target()
    ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, table[x.astype(np.int64) - lo])


def test_small_lookups_stay_fused():
    """Fewer than MIN_ELEMENTS lookups stay a take, fused into the kernel that computes the index."""
    table = rng.integers(0, 256, 256).astype(np.uint8)
    names = _lowered_names(_lookup_module([1, 7, 9], "uint8", table), "x86-64-v4+avx512vbmi")
    assert not any("table_lookup" in n for n in names) and any("take" in n for n in names), names
