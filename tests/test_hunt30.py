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


def _elementwise_max(path):
    """x [N, 8, 16] @ w1 and @ w2, then Max of the two (TVM imports ONNX's Max / Min / Sum / Mean of several
    tensors as stack(axis=0) and a reduction over axis 0)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 16)).astype(np.float32), w) for w in ("w1", "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("Max", ["a", "b"], ["y"])]
    return saved_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])], inits, path)


def test_max_of_two_activations_keeps_the_batch_symbolic(tmp_path):
    """Max(a, b) of two activations is stack((a, b), axis=0) then max over axis 0: "it works along axis 0,
    the batch", so the whole model ran per sample. A stack along a new axis 0 keeps each sample's rows apart
    ([2, n * L, ...]) when a reduction over that axis is its only reader: the batch stays symbolic and 3
    samples in one call get their integers alone; any other reader is refused."""
    import pytest
    from tvm import relax

    from frontends import CompileError
    from test_free_shapes_real import _generalized

    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 8, 16)).astype(np.float32)} for _ in range(7)]
    art = _free_batch(_elementwise_max(tmp_path / "max.onnx"), {"x": (8, 16)}, feeds[:4], tmp_path)
    assert art.manifest["batch"] == "symbolic"
    _alone_equals_batched(art, feeds[4:])
    R = relax.op
    assert _generalized(lambda x: R.max(R.stack([x, x], axis=0), axis=[0])).ret_ty.shape[0].name == "n"
    with pytest.raises(CompileError, match=r"relax.sum\): it reads a stack of tensors along a new axis 0 other"):
        _generalized(lambda x: R.sum(R.stack([x, x], axis=0), axis=[0, 2]))


def _clipped_below_the_max(path, batch):
    """openWakeWord's log-mel front end, in small: h = x [batch, 1, 8, 16] @ w, then max(h, max(h) - 1.5), the
    max over every element (a ReduceMax to a scalar, keepdims 0)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(1.5, np.float32), "range")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceMax", ["h"], ["m"], keepdims=0),
             helper.make_node("Sub", ["m", "range"], ["floor"]),
             helper.make_node("Max", ["h", "floor"], ["y"])]
    return saved_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1, 8, 16])], inits, path)


def test_reduction_over_a_whole_sample_stays_per_sample(tmp_path):
    """A reduction over every axis at batch 1 (openWakeWord's melspectrogram clips at its max - 80 dB) reduces
    one sample's elements; it made the batch run per sample ("it reduces over every axis, the batch
    included"). It now reduces over all axes but the batch, keeping them ([n, 1, 1, 1]: one scalar for each
    sample, broadcast against that sample's tensors): in a batch-1 file the batch stays symbolic and 3
    samples in one call get their integers alone. Where the file has a batch and float onnxruntime reduces
    over it (two samples alone differ from a batch of two) the compile refuses, as it did; a per-sample
    scalar that meets a tensor of another rank, or is an output, is refused."""
    import pytest
    from tvm import relax

    from frontends import CompileError
    from test_free_shapes_real import _generalized

    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1 + k, (1, 1, 8, 16)).astype(np.float32)} for k in range(7)]
    art = _free_batch(_clipped_below_the_max(tmp_path / "one.onnx", 1), {"x": (1, 8, 16)}, feeds[:4], tmp_path)
    assert art.manifest["batch"] == "symbolic"
    _alone_equals_batched(art, feeds[4:])
    mixes = r"'lv\d+'.* take a whole sample as one .* in the float model is the whole batch"
    with pytest.raises(CompileError, match=mixes):
        (tmp_path / "n").mkdir()
        _free_batch(_clipped_below_the_max(tmp_path / "n.onnx", "N"), {"x": (1, 8, 16)}, feeds[:4], tmp_path / "n")
    R = relax.op
    with pytest.raises(CompileError, match=r"relax.add\): its result shape .* is not \[1, 16\]"):
        _generalized(lambda x: R.add(R.reshape(x, [1, 16]), R.max(x)))
    with pytest.raises(CompileError, match=r"an output of the model is a scalar"):
        _generalized(lambda x: R.max(x))


def _log_power(path):
    """x [N, 8, 16] @ w -> h, then log(sum(h * h, -1) + 1e-6) per row: a log-power spectrum, whose log reads an
    octave table (a TIR kernel, `unary.octave_lookup`) on the sum's int32."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "h"], ["p"]),
             helper.make_node("ReduceSum", ["p", "last"], ["s"], keepdims=1),
             helper.make_node("Add", ["s", "eps"], ["se"]), helper.make_node("Log", ["se"], ["y"])]
    return saved_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 1])], inits, path)


def test_octave_table_lookup_takes_the_batch(tmp_path):
    """A log (root, reciprocal) of a nonnegative int32 reads an octave table through a TIR kernel built for the
    batch-1 shape: "a compiled kernel call has a static shape", so a ConvNeXt whose LayerNorm is written out
    (sqrt of the variance) and every log-power audio front end ran per sample. The kernel is elementwise: it
    is emitted again at batch n, the batch stays symbolic and 3 samples in one call get their integers alone."""
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 8, 16)).astype(np.float32)} for _ in range(7)]
    art = _free_batch(_log_power(tmp_path / "logpower.onnx"), {"x": (8, 16)}, feeds[:4], tmp_path)
    assert "octave_lookup" in (art.path / "model.relax.py").read_text()
    assert art.manifest["batch"] == "symbolic"
    _alone_equals_batched(art, feeds[4:])


def _scalar_condition(path):
    """A batch-1 file (x [1, 16], as openWakeWord's hey-jarvis): c = (x @ w)[1, 1] > 0, Reshape to a scalar,
    then Where(c, x @ w1, x @ w2): the If on a sample's own value that TVM imports as a select."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), w)
             for w, shape in (("w", (16, 1)), ("w1", (16, 8)), ("w2", (16, 8)))]
    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.zeros(0, np.int64), "scalar")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("Reshape", ["c", "scalar"], ["cs"]),
             helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("Where", ["cs", "a", "b"], ["y"])]
    return saved_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits, path)


def test_scalar_condition_of_a_sample_stays_per_sample(tmp_path):
    """A sample's one-element tensor reshaped to a scalar (an If's condition: openWakeWord's hey-jarvis) made
    the batch run per sample ("its target shape ... has no leading dim"). It stays [n, 1], one condition for
    each sample: the batch is symbolic and 6 samples in one call, whose conditions differ, get their
    integers alone."""
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 16)).astype(np.float32)} for _ in range(10)]
    art = _free_batch(_scalar_condition(tmp_path / "cond.onnx"), {"x": (16,)}, feeds[:4], tmp_path)
    assert art.manifest["batch"] == "symbolic"
    _alone_equals_batched(art, feeds[4:])


def test_constant_per_window_repeats_per_sample():
    """A constant with a sample's L > 1 rows beside batch rows in an elementwise op (Swin's window mask plus
    position bias, one [nW, h, T, T] constant added to the attention of B * nW windows once folded at batch 1
    onto one sample's nW windows): TVM cannot broadcast [4, ...] against [n * 4, ...] ("its result shape ...
    is not [16, 2, 16, 16] with a batch leading dim") and Swin ran per sample. It is repeated per sample now
    ([n * 4, ...]); the real Swin then keeps a symbolic batch, each sample bit-identical to it alone."""
    from tvm import relax

    from passes.generalize_batch import dim_names
    from test_free_shapes_real import _generalized

    mask = relax.const(np.arange(4 * 6).reshape(4, 1, 2, 3).astype(np.int32))
    func = _generalized(lambda x: relax.op.add(relax.op.reshape(x, [4, 2, 2, 3]), mask), shape=(1, 8, 2, 3),
                        dtype="int32")
    assert dim_names(func.ret_ty) == ["n*4", 2, 2, 3]
    assert "R.broadcast_to" in func.script(show_meta=False)


def test_permutation_of_unit_axes_is_a_reshape():
    """MobileViT folds its patches back with reshape([1, 96, 1, 4] -> [96, 1, 2, 2]) and permute [1, 0, 2, 3]:
    at batch n [n * 96, 1, 2, 2] became [n * 96, 1, 2, 2] ("not [n*1, 96, 2, 2]") and the model ran per
    sample. A permutation that keeps the order of every axis not of size 1 (the batch's rows among them) is a
    reshape at any batch: [n, 96, 2, 2]. One that reorders real axes is still refused."""
    import pytest
    from tvm import relax

    from frontends import CompileError
    from passes.generalize_batch import dim_names
    from test_free_shapes_real import _generalized

    R = relax.op
    func = _generalized(lambda x: R.permute_dims(R.reshape(x, [96, 1, 2, 2]), [1, 0, 2, 3]), shape=(1, 4, 1, 96))
    assert dim_names(func.ret_ty) == ["n", 96, 2, 2]
    with pytest.raises(CompileError, match=r"relax.permute_dims\)"):
        _generalized(lambda x: R.permute_dims(R.reshape(x, [96, 2, 2, 1]), [3, 1, 0, 2]), shape=(1, 4, 1, 96))
