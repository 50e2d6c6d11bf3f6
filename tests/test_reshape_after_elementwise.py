"""targets/reshape_after_elementwise.py: a reshape that adds leading unit dims moves after the
elementwise ops (and constant-table lookups) that follow it, so a linear layer's kernel takes its
requantization; the same integers."""

from __future__ import annotations

import numpy as np
from conftest import relax_main, run_relax
from tvm import relax

from targets.reshape_after_elementwise import reshape_after_elementwise

R = relax.op
rng = np.random.default_rng(5)
W = rng.integers(-128, 128, (32, 48)).astype(np.int8)
M = rng.integers(1 << 20, 1 << 22, (1, 1, 48)).astype(np.int64)  # per output channel, as [1, T, N] broadcasts it
TABLE = rng.integers(-32768, 32768, 256).astype(np.int16)


def _layer(x: relax.Expr) -> relax.Expr:
    """[16, 32] @ [32, 48] -> reshape [1, 16, 48] -> requantize per channel -> a table lookup ->
    reshape [16, 48] (the next layer's)."""
    acc = R.add(R.matmul(x, relax.const(W, "int8"), out_dtype="int32"), relax.const(np.arange(48, dtype=np.int32), "int32"))
    y = R.reshape(acc, [1, 16, 48])
    q = R.astype(R.clip(R.right_shift(R.multiply(R.astype(y, "int64"), relax.const(M, "int64")), relax.const(24, "int64")),
                        -128, 127), "int32")
    looked = R.take(relax.const(TABLE, "int16"), R.add(q, relax.const(128, "int32")), axis=0)
    return R.reshape(looked, [16, 48])


def _numpy(x: np.ndarray) -> np.ndarray:
    acc = x.astype(np.int64) @ W.astype(np.int64) + np.arange(48)
    q = np.clip((acc * M[0]) >> 24, -128, 127)
    return TABLE[q + 128]


def test_reshape_moves_after_the_chain_and_the_next_one_folds():
    x = rng.integers(-128, 128, (16, 32)).astype(np.int8)
    text = reshape_after_elementwise(relax_main(_layer, [x])).script(show_meta=False)
    main = text[text.index("def main"):]
    assert "R.reshape" not in main  # moved after the lookup, where the next reshape undid it
    np.testing.assert_array_equal(run_relax(_layer, [x]), _numpy(x))


def test_the_linear_kernel_takes_the_requantization():
    """Compiled, the matmul's kernel ends with the requantization (one kernel, not two)."""
    import tvm

    from targets import get_target
    from targets.cpu_pipeline import cpu_lowering_passes

    x = np.zeros((16, 32), np.int8)
    target = get_target("x86").target()
    with target:
        mod = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(_layer, [x]))
    names = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any(("dense" in n or "matmul" in n) and "right_shift" in n or "requant" in n and "dense" in n
               for n in names), names
