"""The kernels of an unrolled recurrence's step run as one kernel (`targets/merge_step_kernels.py`): far
fewer VM calls a run, the same integers as the kernels run one by one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from test_recurrent import _run, _sequences, stacked


def _compile(tmp_path, name, model, steps, merge=True):
    import runtime
    import targets.merge_step_kernels as msk
    from runtime.compiler import compile_model

    onnx.save(model, tmp_path / f"{name}.onnx")
    np.savez(tmp_path / "calib.npz", x=_sequences(8, steps, 1))
    calls = msk.MAX_CALLS
    msk.MAX_CALLS = calls if merge else 1  # runs of one kernel are left as they are
    try:
        return runtime.load(compile_model(tmp_path / f"{name}.onnx", output=tmp_path / f"{name}.artifact",
                                          calib=tmp_path / "calib.npz", progress=False))
    finally:
        msk.MAX_CALLS = calls


def _calls(art, x) -> float:
    return sum(n for _, n in art.kernel_times(art.quantize_inputs({"x": x}), repeat=2).values())


def test_step_kernels_merged_same_integers(tmp_path):
    """A bidirectional LSTM then a bidirectional GRU (linear_before_reset), hidden 24, 10 steps: 40 steps in
    all. Run kernel by kernel they took 9-10 VM calls a step (measured 404 calls a run at 8 steps); merged,
    at most 4 (the step's kernel, its output views, the few kernels between layers); integer outputs equal
    to the unmerged build's on every input, logits within cosine 0.995 of onnxruntime float (measured 0.9978 on
    one input: the 8-bit gates at this width, the same integers unmerged)."""
    steps = 10
    model = stacked((("LSTM", {}), ("GRU", {"linear_before_reset": 1})), steps=steps, hidden=24)
    merged = _compile(tmp_path, "merged", model, steps)
    plain = _compile(tmp_path, "plain", model, steps, merge=False)
    xs = _sequences(3, steps, 2)
    assert _calls(merged, xs[0]) <= 4 * 4 * steps < _calls(plain, xs[0])
    for x in xs:
        q = merged.quantize_inputs({"x": x})
        for a, b in zip(merged.run_integer(q), plain.run_integer(q)):
            np.testing.assert_array_equal(a, b)
        want, got = _run(model, {"x": x})[0], merged.run({"x": x})["logits"]
        assert float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got))) >= 0.995


@pytest.mark.parametrize("kind,attrs", [("GRU", {}), ("LSTM", {})], ids=["gru", "lstm"])
def test_wide_steps_merged_same_integers(tmp_path, kind, attrs):
    """A wider layer (hidden 96: 16-bit GEMVs of 96 x 384, the gate tables' vector lookups) merges and keeps
    its integers; a GRU without linear_before_reset (the reset gate before its matmul) too. Measured at 6
    steps: GRU 169 -> 89 calls a run, LSTM 163 -> 102 (the layer's input projection, the head and the
    layout kernels around the recurrence are not steps)."""
    steps = 6
    model = stacked(((kind, attrs),), steps=steps, hidden=96)
    merged = _compile(tmp_path, "merged", model, steps)
    plain = _compile(tmp_path, "plain", model, steps, merge=False)
    x = _sequences(1, steps, 3)[0]
    assert _calls(plain, x) - _calls(merged, x) >= 4 * 2 * steps  # 4+ calls fewer a step (both directions)
    q = merged.quantize_inputs({"x": x})
    for a, b in zip(merged.run_integer(q), plain.run_integer(q)):
        np.testing.assert_array_equal(a, b)


def test_one_constant_take_is_no_recurrence():
    """A take of one constant index (a transformer's first token, pooled) followed by small kernels is no step:
    the kernels stay as they are (merged, they made a kernel of several outputs, which the plan executor of the
    riscv64 / armv7 targets cannot run)."""
    import tvm
    from conftest import relax_main
    from tvm import relax

    from targets import get_target
    from targets.cpu_pipeline import cpu_lowering_passes

    def build(x):  # three kernels: the take (its two readers), the row's sum, the rest
        first = relax.op.take(x, relax.const(0, "int64"), axis=1)
        return relax.op.max(relax.op.subtract(first, relax.op.sum(first, axis=[1], keepdims=True)), axis=[1])

    mod = relax_main(build, [np.zeros((1, 16, 32), np.int32)])
    target = get_target("x86").target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(mod)
    assert not any(gv.name_hint.startswith("merged_step") for gv in lowered.functions), \
        [gv.name_hint for gv in lowered.functions]
