"""Hunt 30 (a free batch on real models: README "One artifact for every batch size"): each fix for its family,
on small graphs built here, compiled with the batch free; the batch must stay symbolic and give each sample
the integers it gets alone."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import runtime
from frontends.onnx_import import FreeDim
from tests.conftest import saved_model


def _free_batch(path, shapes: dict, feeds: list[dict], tmp_path):
    """`path` compiled integer-only with the leading dim of each input in `shapes` free; calibrated on `feeds`."""
    np.savez(tmp_path / "c.npz", **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False,
                                             input_shapes={k: (FreeDim("n"), *v) for k, v in shapes.items()}))
    assert art.manifest["integer_only"] is True
    return art


def _alone_equals_batched(model, samples):
    """One call of the symbolic library on the batch gives each sample its integers alone."""
    model.batch_in_one_call = True
    got = model.run_integer(model.quantize_inputs({k: np.concatenate([s[k] for s in samples]) for k in samples[0]}))
    for i, x in enumerate(samples):
        for g, a in zip(got, model.run_integer(model.quantize_inputs(x))):
            assert np.array_equal(g[i * len(a):(i + 1) * len(a)], a)


def _sliced(path):
    """x [N, 8, 4] sliced over axes 0 and 1 (rows 0..5 of each sample) from 0 to `end` on the batch axis, as
    exporters write "all of it": jax2tf's StridedSlice 10^9 (Magika's bytes), torch's INT64_MAX; MatMul [4, 5]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 5)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 0], np.int64), "begin"),
             numpy_helper.from_array(np.array([0, 1], np.int64), "axes")]
    nodes, outputs = [], []
    for k, end in enumerate((10 ** 9, np.iinfo(np.int64).max)):
        inits.append(numpy_helper.from_array(np.array([end, 6], np.int64), f"end{k}"))
        nodes += [helper.make_node("Slice", ["x", "begin", f"end{k}", "axes"], [f"s{k}"]),
                  helper.make_node("MatMul", [f"s{k}", "w"], [f"y{k}"])]
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, ["N", 6, 5]))
    return saved_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4])], outputs, inits,
                       path)


def test_slice_of_the_whole_batch_axis_keeps_it_symbolic(tmp_path):
    """A Slice over axes that include the batch, from 0 to past any batch (Magika's jax2tf StridedSlice
    `0:10^9` over all four axes), made the whole model run per sample: "at batch n its shape would be
    [T.min(1000000000, n), ...]". It slices the other axes only now: the batch stays symbolic and 3 samples in
    one call get their integers alone. A slice that ends at a number of rows (`0:1`, which in the float
    model keeps the first sample of a batch) is still refused."""
    import pytest
    from tvm import relax

    from frontends import CompileError
    from test_free_shapes_real import _generalized

    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 8, 4)).astype(np.float32)} for _ in range(7)]
    art = _free_batch(_sliced(tmp_path / "sliced.onnx"), {"x": (8, 4)}, feeds[:4], tmp_path)
    assert art.manifest["batch"] == "symbolic"
    _alone_equals_batched(art, feeds[4:])
    with pytest.raises(CompileError, match=r"relax.strided_slice\): at batch n"):
        _generalized(lambda x: relax.op.strided_slice(x, [0], [0], [1]))
