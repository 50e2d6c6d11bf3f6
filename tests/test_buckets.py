"""One artifact for every sequence length (runtime/buckets.py): `--input-shape ids:1x1..L`
compiles one library per bucket length; an input runs in the smallest bucket that holds it,
zero-padded, and with an attention mask its integers are bit-identical in every bucket."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtime
from frontends import CompileError, InputError, parse_input_shape
from frontends.onnx_import import FreeDim
from runtime.buckets import default_sizes
from runtime.compiler import compile_model
from runtime.compile import main as compile_main
from runtime.run import main as run_main

torch = pytest.importorskip("torch")

VOCAB, WIDTH, MAX_LEN = 50, 32, 32


class _Encoder(torch.nn.Module):
    """Token + position embeddings, one masked self-attention layer (the Hugging Face mask
    pattern `(1 - mask) * -10000`), LayerNorm, and a masked mean pooling output."""

    def __init__(self, masked: bool = True, attention: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.masked, self.attention = masked, attention
        self.tok = torch.nn.Parameter(torch.randn(VOCAB, WIDTH, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(MAX_LEN, WIDTH, generator=g) * 0.3)
        self.qkv = torch.nn.Linear(WIDTH, 3 * WIDTH)
        self.out = torch.nn.Linear(WIDTH, WIDTH)
        self.norm = torch.nn.LayerNorm(WIDTH)

    def forward(self, ids, mask):
        x = self.tok[ids] + self.pos[: ids.shape[1]]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / WIDTH ** 0.5
        if self.masked:
            scores = scores + (1.0 - mask[:, None, :].float()) * -10000.0
        probs = torch.softmax(scores, dim=-1)
        h = self.norm(x + self.out(probs @ v))
        weights = mask[:, :, None].float()
        pooled = (h * weights).sum(1) / weights.sum(1)
        return (h, pooled, probs) if self.attention else (h, pooled)


def _export(path, masked: bool = True):
    torch.manual_seed(0)
    ids = torch.ones(1, 8, dtype=torch.long)
    names = ("ids", "mask") if masked else ("ids", "lengths")
    with torch.no_grad():
        torch.onnx.export(_Encoder(masked), (ids, ids), str(path), dynamo=False, opset_version=17,
                          input_names=list(names), output_names=["tokens", "pooled"],
                          dynamic_axes={names[0]: {1: "seq"}, names[1]: {1: "seq"}, "tokens": {1: "seq"}})
    return str(path)


def _sample(length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, VOCAB, (1, length), dtype=np.int64)
    return ids, np.ones((1, length), np.int64)


SHAPES = ["--input-shape", "ids:1x1..32", "--input-shape", "mask:1x1..32"]


@pytest.fixture(scope="module")
def bucket_artifact(tmp_path_factory):
    work = tmp_path_factory.mktemp("buckets")
    model = _export(work / "enc.onnx")
    ids, mask = zip(*[_sample(20, s) for s in range(6)])
    np.savez(work / "calib.npz", ids=np.concatenate(ids), mask=np.concatenate(mask))
    out = work / "enc.artifact"
    assert compile_main([model, "--calib", str(work / "calib.npz"), *SHAPES, "-o", str(out), "-q"]) == 0
    return out


def test_free_length_is_parsed_and_needs_a_range():
    assert parse_input_shape("ids:1x1..512") == ("ids", (1, FreeDim("seq", 1, 512)))
    assert parse_input_shape("ids:Nxlen=8..64") == ("ids", (FreeDim("n"), FreeDim("len", 8, 64)))
    with pytest.raises(CompileError, match="needs a range"):
        parse_input_shape("ids:1xS")
    assert default_sizes(1, 512) == [16, 32, 64, 128, 256, 512]
    assert default_sizes(20, 100) == [32, 64, 100] and default_sizes(1, 10) == [10]


def test_manifest_records_buckets_and_length_axes(bucket_artifact):
    m = runtime.load(bucket_artifact).manifest
    assert m["inputs"][0]["shape"] == [1, "seq"] and m["inputs"][0]["range"] == {"seq": [1, 32]}
    assert m["outputs"][0]["shape"] == [1, "seq", WIDTH] and m["outputs"][1]["shape"] == [1, WIDTH]
    b = m["buckets"]
    assert b["sizes"] == [16, 32] and b["padded"] is True and b["output_axes"] == [1, None]
    assert sorted(b["libraries"]) == ["16", "32"] and m["integer_only"] is True
    assert (bucket_artifact / b["libraries"]["16"]["file"]).is_file()


@pytest.mark.parametrize("length", [1, 5, 16, 17, 29, 32])
def test_padding_is_exact_in_every_bucket(bucket_artifact, length):
    """A sample's integers are the same whether it runs at its own length (padded to the next
    bucket by the runtime) or padded further by hand into the largest bucket with mask 0."""
    model = runtime.load(bucket_artifact)
    ids, mask = _sample(length, seed=length)
    own = model.run_integer(model.quantize_inputs({"ids": ids, "mask": mask}))
    pad = [(0, 0), (0, MAX_LEN - length)]
    padded = model.run_integer(model.quantize_inputs({"ids": np.pad(ids, pad, constant_values=7),
                                                      "mask": np.pad(mask, pad)}))
    assert own[0].shape == (1, length, WIDTH) and padded[0].shape == (1, MAX_LEN, WIDTH)
    np.testing.assert_array_equal(own[0], padded[0][:, :length])
    np.testing.assert_array_equal(own[1], padded[1])


def test_outputs_agree_with_onnxruntime(bucket_artifact):
    import onnxruntime as ort

    model = runtime.load(bucket_artifact)
    sess = ort.InferenceSession(model.manifest["source"]["path"], providers=["CPUExecutionProvider"])
    for length in (9, 24):
        ids, mask = _sample(length, seed=100 + length)
        ours = model.run({"ids": ids, "mask": mask})
        ref = sess.run(None, {"ids": ids, "mask": mask})
        for got, want in zip((ours["tokens"], ours["pooled"]), ref):
            cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
            assert got.shape == want.shape and cos > 0.98, (length, cos)


def test_length_outside_the_range_is_refused(bucket_artifact, tmp_path):
    model = runtime.load(bucket_artifact)
    ids, mask = _sample(40, seed=1)
    with pytest.raises(InputError, match=r"seq = 40 is outside the range.*\[1, 32\].*split or truncate the sequence"):
        model.run({"ids": ids, "mask": mask})
    np.savez(tmp_path / "x.npz", ids=ids, mask=mask)
    assert run_main([str(bucket_artifact), "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]) == 2


def test_without_a_mask_only_the_compiled_lengths_run(tmp_path):
    model_path = _export(tmp_path / "nomask.onnx", masked=False)
    out = tmp_path / "nomask.artifact"
    assert compile_main([model_path, "--input-shape", "ids:1x1..32", "--input-shape", "lengths:1x1..32",
                         "--buckets", "16,32", "-o", str(out), "-q"]) == 0
    model = runtime.load(out)
    assert model.manifest["buckets"]["padded"] is False
    ids, lengths = _sample(16, seed=3)
    assert model.run({"ids": ids, "lengths": lengths})["tokens"].shape == (1, 16, WIDTH)
    ids, lengths = _sample(20, seed=3)
    with pytest.raises(InputError, match=r"runs seq in \[16, 32\] only"):
        model.run({"ids": ids, "lengths": lengths})


def test_bad_bucket_flags_are_refused(tmp_path):
    model_path = _export(tmp_path / "enc.onnx")
    shapes = ["--input-shape", "ids:1x1..32", "--input-shape", "mask:1x1..32", "-o", str(tmp_path / "a"), "-q"]
    assert compile_main([model_path, *shapes, "--buckets", "16,24"]) == 2  # the largest must be 32
    assert compile_main([model_path, "--input-shape", "ids:1x16", "--input-shape", "mask:1x16", "--buckets", "16",
                         "-o", str(tmp_path / "b"), "-q"]) == 2  # no free length
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_free_batch_and_length_together(tmp_path):
    """Sentences of different lengths batched with padding: each gets the integers it gets alone."""
    model_path = _export(tmp_path / "enc.onnx")
    out = tmp_path / "nb.artifact"
    assert compile_main([model_path, "--input-shape", "ids:1..4x1..32", "--input-shape", "mask:1..4x1..32",
                         "--buckets", "16,32", "-o", str(out), "-q"]) == 0
    model = runtime.load(out)
    assert model.inputs[0]["shape"] == ["n", "seq"] and model.inputs[0]["range"] == {"n": [1, 4], "seq": [1, 32]}
    lengths = (3, 11, 20)
    ids, mask = np.zeros((3, 20), np.int64), np.zeros((3, 20), np.int64)
    alone = []
    for row, length in enumerate(lengths):
        i, m = _sample(length, seed=row)
        ids[row, :length], mask[row, :length] = i[0], m[0]
        alone.append(model.run_integer(model.quantize_inputs({"ids": i, "mask": m})))
    batched = model.run_integer(model.quantize_inputs({"ids": ids, "mask": mask}))
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(batched[0][row, :length], alone[row][0][0])
        np.testing.assert_array_equal(batched[1][row], alone[row][1][0])


@pytest.mark.slow
def test_aarch64_buckets_equal_x86_under_qemu(bucket_artifact, tmp_path):
    """The same bucketed model built for aarch64 gives, under qemu, the x86 artifact's integers
    bit for bit, at lengths that run padded in either bucket."""
    import shutil

    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and gcc-aarch64-linux-gnu (targets/install_toolchains.sh)")
    from benchmarks.emulation import Aarch64Emulator

    work = bucket_artifact.parent
    arm = tmp_path / "arm.artifact"
    assert compile_main([str(work / "enc.onnx"), "--target", "arm", "--calib", str(work / "calib.npz"), *SHAPES,
                         "-o", str(arm), "-q"]) == 0
    x86 = runtime.load(bucket_artifact)
    for length in (5, 20):
        ids, mask = _sample(length, seed=length)
        q = x86.quantize_inputs({"ids": ids, "mask": mask})
        for got, want in zip(Aarch64Emulator().run_integer(arm, q), x86.run_integer(q)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_riscv64_plan_buckets_equal_x86_under_qemu(bucket_artifact, tmp_path):
    """riscv64 (no TVM runtime) ships one plan per bucket; run_plan pads into the smallest that
    holds the input and cuts back: under qemu, the x86 artifact's integers bit for bit, alone and
    for a batch of two sentences of different lengths padded to one length (mask 0 on the padding)."""
    import shutil

    from benchmarks.emulation import plan_launcher
    from runtime.artifact import read_manifest
    from runtime.plan import run_plan

    if shutil.which("qemu-riscv64") is None or shutil.which("riscv64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and gcc-riscv64-linux-gnu (targets/install_toolchains.sh)")
    work = bucket_artifact.parent
    board = tmp_path / "riscv.artifact"
    shapes = ["--input-shape", "ids:1..4x1..32", "--input-shape", "mask:1..4x1..32"]
    assert compile_main([str(work / "enc.onnx"), "--target", "riscv", "--calib", str(work / "calib.npz"), *shapes,
                         "-o", str(board), "-q"]) == 0
    assert read_manifest(board)["buckets"]["libraries"]["16"]["plan"] == "plan.seq16"
    x86 = runtime.load(bucket_artifact)
    for length in (5, 20):
        ids, mask = _sample(length, seed=length)
        q = x86.quantize_inputs({"ids": ids, "mask": mask})
        for got, want in zip(run_plan(board, q, plan_launcher("riscv64")), x86.run_integer(q)):
            np.testing.assert_array_equal(got, want)
    (a, ma), (b, mb) = _sample(7, seed=1), _sample(12, seed=2)
    ids, mask = np.zeros((2, 12), np.int64), np.zeros((2, 12), np.int64)
    ids[0, :7], mask[0, :7], ids[1], mask[1] = a[0], ma[0], b[0], mb[0]
    tokens, pooled = run_plan(board, [ids, mask], plan_launcher("riscv64"))
    alone = run_plan(board, [a, ma], plan_launcher("riscv64"))
    np.testing.assert_array_equal(pooled[0], alone[1][0])
    np.testing.assert_array_equal(tokens[0, :7], alone[0][0])


@pytest.mark.slow
def test_cuda_buckets_compile(bucket_artifact, tmp_path):
    """Each bucket is a static-shape model, so the cuda target builds them all (device code in
    every bucket library); they run where a GPU is (tests/test_cuda.py covers running)."""
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("the cuda target needs nvcc (CUDA toolkit), not found")
    from runtime.artifact import read_manifest

    work = bucket_artifact.parent
    out = tmp_path / "cuda.artifact"
    assert compile_main([str(work / "enc.onnx"), "--target", "cuda", "--calib", str(work / "calib.npz"), *SHAPES,
                         "-o", str(out), "-q"]) == 0
    m = read_manifest(out)
    assert m["target"]["device"] == "cuda" and m["buckets"]["sizes"] == [16, 32] and m["integer_only"] is True
    for lib in m["buckets"]["libraries"].values():
        assert bytes.fromhex("50ed55ba") in (out / lib["file"]).read_bytes()  # an embedded fatbin


def test_an_attention_map_output_is_cut_back_in_both_length_axes(tmp_path):
    """An output with the length in two axes (the attention map [1, L, L], rxnmapper's atom mapping
    reads it) compiles with a free length: padded keys get probability 0 from the mask, padded query
    rows are cut, so a 7-token input gives the same integers alone in bucket 16 and in bucket 32."""
    torch.manual_seed(0)
    ids = torch.ones(1, 8, dtype=torch.long)
    path = str(tmp_path / "attn.onnx")
    with torch.no_grad():
        torch.onnx.export(_Encoder(attention=True), (ids, ids), path, dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], output_names=["tokens", "pooled", "attention"],
                          dynamic_axes={"ids": {1: "seq"}, "mask": {1: "seq"}, "tokens": {1: "seq"},
                                        "attention": {1: "seq", 2: "seq"}})
    ids, mask = zip(*[_sample(20, s) for s in range(6)])
    np.savez(tmp_path / "calib.npz", ids=np.concatenate(ids), mask=np.concatenate(mask))
    out = tmp_path / "attn.artifact"
    assert compile_main([path, "--calib", str(tmp_path / "calib.npz"), *SHAPES, "-o", str(out), "-q"]) == 0
    model = runtime.load(out)
    b = model.manifest["buckets"]
    assert b["output_axes"] == [1, None, [1, 2]]
    assert model.manifest["outputs"][2]["shape"][1:] == ["seq", "seq"]
    ids, mask = _sample(7, 11)
    alone = model.run({"ids": ids, "mask": mask})["attention"]
    padded = model.run({"ids": np.pad(ids, ((0, 0), (0, 25))), "mask": np.pad(mask, ((0, 0), (0, 25)))})
    assert alone.shape == (1, 7, 7) and padded["attention"].shape == (1, 32, 32)
    np.testing.assert_array_equal(alone, padded["attention"][:, :7, :7])
    assert np.abs(padded["attention"][:, :7, 7:]).max() == 0  # padded keys: probability 0


def test_strided_outputs_of_unpadded_buckets(tmp_path):
    """A text-line recognizer's CNN: a free width, its output steps width / 4 (stride 2 twice). Such
    a dim is not the length itself, which padded buckets need to cut outputs back (it was refused
    for every bucket layout); unpadded buckets run their own lengths and take it, named `w/4`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
               for n, s in (("w1", (8, 1, 3, 3)), ("w2", (6, 8, 3, 3)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMean", ["c2"], ["y"], axes=[2], keepdims=0)],  # [1, 6, W/4]
        "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, None])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "rec.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.random((6, 1, 1, 16, 64)).astype(np.float32))
    out = tmp_path / "rec.artifact"
    assert compile_main([str(tmp_path / "rec.onnx"), "--input-shape", "x:1x1x16xw=32..64", "--buckets", "32,64",
                         "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "-q"]) == 0
    art = runtime.load(out)
    assert art.manifest["outputs"][0]["shape"] == [1, 6, "w/4"]
    session = ort.InferenceSession(str(tmp_path / "rec.onnx"))
    for width in (32, 64):
        x = rng.random((1, 1, 16, width)).astype(np.float32)
        got, want = art.run({"x": x})["y"], session.run(None, {"x": x})[0]
        assert got.shape == (1, 6, width // 4)
        assert float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want))) >= 0.999


def test_default_buckets_the_model_pools_to_nothing_are_left_out(tmp_path, capsys):
    """Five halvings of the width (a tempo CNN's pools) leave a 16-step bucket an empty tensor: of the
    default buckets such lengths are left out, saying why; given in --buckets, they are refused with
    the same reason (the import failed with a TVM error, the lowering with a reshape of shape 0, and
    both were blamed on unbound dims or on the integer path: hunt 14 F8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(5):
        inits.append(numpy_helper.from_array((rng.standard_normal((4, 1 if k == 0 else 4, 1, 3)) * 0.5)
                                             .astype(np.float32), f"w{k}"))
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], pads=[0, 1, 0, 1]),
                  helper.make_node("MaxPool", [f"c{k}"], [f"p{k}"], kernel_shape=[1, 2], strides=[1, 2])]
        x = f"p{k}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
    graph = helper.make_graph(nodes, "pools", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.random((4, 1, 1, 4, 128)).astype(np.float32))
    args = [str(tmp_path / "m.onnx"), "--input-shape", "x:1x1x4x1..128", "--calib", str(tmp_path / "c.npz"), "--no-check"]
    assert compile_main([*args, "-o", str(tmp_path / "a")]) == 0
    assert "bucket seq = 16 left out: at seq = 16 the model makes an empty tensor" in capsys.readouterr().err
    assert runtime.load(tmp_path / "a").manifest["buckets"]["sizes"] == [32, 64, 128]
    assert compile_main([*args, "--buckets", "16,64,128", "-o", str(tmp_path / "b")]) == 2
    assert "--buckets 16,64,128: at seq = 16 the model makes an empty tensor" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_no_width_follows_the_bucket_length(tmp_path):
    """Buckets 16..128 of one encoder: Q.K^T is a small product (16 bits) at 16 and 32 tokens and not at 64
    and 128, so a width that followed sizes would give a 10-token sentence other integers padded into 128;
    buckets are lowered with no size-dependent widths (QuantConfig.sized_widths)."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    enc = _Encoder()
    enc.pos = torch.nn.Parameter(torch.randn(128, WIDTH, generator=g) * 0.3)
    ids = torch.ones(1, 8, dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(enc, (ids, ids), str(tmp_path / "enc.onnx"), dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], output_names=["tokens", "pooled"],
                          dynamic_axes={"ids": {1: "seq"}, "mask": {1: "seq"}, "tokens": {1: "seq"}})
    samples = [_sample(100, s) for s in range(4)]
    np.savez(tmp_path / "calib.npz", ids=np.concatenate([s[0] for s in samples]),
             mask=np.concatenate([s[1] for s in samples]))
    assert compile_main([str(tmp_path / "enc.onnx"), "--calib", str(tmp_path / "calib.npz"), "--input-shape",
                         "ids:1x1..128", "--input-shape", "mask:1x1..128", "-o", str(tmp_path / "a"), "-q",
                         "--no-check"]) == 0
    model = runtime.load(tmp_path / "a")
    assert model.manifest["buckets"]["sizes"] == [16, 32, 64, 128]
    ids, mask = _sample(10, seed=3)
    own = model.run_integer(model.quantize_inputs({"ids": ids, "mask": mask}))
    pad = [(0, 0), (0, 118)]
    padded = model.run_integer(model.quantize_inputs({"ids": np.pad(ids, pad, constant_values=7),
                                                      "mask": np.pad(mask, pad)}))
    np.testing.assert_array_equal(own[0], padded[0][:, :10])
    np.testing.assert_array_equal(own[1], padded[1])


def _two_lengths(path, src_dim: str, tgt_dim: str):
    """Token embeddings of a source (mean-pooled) added to a target prefix's: two length inputs."""
    import onnx
    from onnx import TensorProto, helper

    emb = helper.make_tensor("emb", TensorProto.FLOAT, [20, 8], np.random.default_rng(0).standard_normal(160).tolist())
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "src"], ["s"]), helper.make_node("ReduceMean", ["s"], ["p"], axes=[1]),
         helper.make_node("Gather", ["emb", "tgt"], ["t"]), helper.make_node("Add", ["t", "p"], ["y"])],
        "two_lengths",
        [helper.make_tensor_value_info("src", TensorProto.INT64, [1, src_dim]),
         helper.make_tensor_value_info("tgt", TensorProto.INT64, [1, tgt_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tgt_dim, 8])], [emb])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_independent_lengths_are_named_in_the_refusal(tmp_path):
    """An encoder's source and a decoder's prefix (dims the model names apart) given one free length:
    refused naming both, before anything is calibrated; inputs sharing a length whose calibration
    samples differ in it are told so (the file is not blamed for its shape); two free dims in one
    input are refused (the second had silently replaced the first: buckets built square, then a
    TVM shape check failed on an input the manifest accepted)."""
    model, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    _two_lengths(model, "src_seq", "tgt_seq")
    np.savez(calib, src=np.ones((4, 1, 8), np.int64), tgt=np.ones((4, 1, 5), np.int64))
    with pytest.raises(CompileError, match=r"'src' \(src_seq\), 'tgt' \(tgt_seq\).*independent lengths"):
        compile_model(model, "x86", tmp_path / "a", calib=calib,
                      input_shapes={"src": (1, FreeDim("seq", 1, 16)), "tgt": (1, FreeDim("seq", 1, 16))})
    _two_lengths(model, "seq", "seq")
    with pytest.raises(InputError, match=r"different lengths in the calibration samples \('src': 8, 'tgt': 5\)"):
        compile_model(model, "x86", tmp_path / "a", calib=calib,
                      input_shapes={"src": (1, FreeDim("seq", 1, 16)), "tgt": (1, FreeDim("seq", 1, 16))})
    with pytest.raises(CompileError, match=r"'src' has more than one free dim after the batch \(axis 1: 1..16, axis 2"):
        compile_model(model, "x86", tmp_path / "a", calib=calib,  # an image's height and width, say
                      input_shapes={"src": (1, FreeDim("seq", 1, 16), FreeDim("seq", 1, 16))})
    assert not (tmp_path / "a").exists()


def test_bench_names_the_bucket_it_timed(bucket_artifact, capsys):
    """runtime.bench --shape seq=20 times the 32-token bucket (the inputs padded to it): the report says so
    (it named only the shapes [1, 20]); at a bucket's own length nothing is padded."""
    from runtime.bench import main as bench_main

    assert bench_main([str(bucket_artifact), "--shape", "seq=20", "--repeat", "3", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shapes"]["ids"] == [1, 20] and result["padded_to"] == {"seq": 32}
    assert bench_main([str(bucket_artifact), "--shape", "seq=16", "--repeat", "3", "--warmup", "1", "--json"]) == 0
    assert "padded_to" not in json.loads(capsys.readouterr().out)
