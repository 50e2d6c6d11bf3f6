"""Graph idioms of Hugging Face architectures (benchmarks/hf_models.py, hunt 18) as small synthetic ONNX
models: each compiles integer-only (or with --allow-float where that is the point) and agrees with float
onnxruntime.

    stacked_weight:  activation @ a constant stack of per-head matrices [H, K, N] (DeBERTa-v2/v3's
                     position keys and queries, projected from the relative embeddings and folded to
                     constants): was refused ("matmul weight of rank 3")
    col2im:          Col2Im (torch's nn.Fold at opset 18: MobileViTV2 folds its patches back), non-overlapping
                     and overlapping blocks with pads: was refused (no converter in TVM's importer)
    query_key_mask:  where(not(m_q * m_k), finfo.min, logits) -> Softmax (DeBERTa's 2-D mask): a padded query
                     has every key masked, and float gives it a uniform row; intq gave zeros (DeBERTa-v3's
                     hidden states at cosine 0.36 to onnxruntime, integer-only and with --allow-float)
    rel_shift:       Transformer-XL's relative shift (wav2vec2-conformer's relative attention): a linear's
                     output padded by one column along its output channels, reshaped, sliced: the per-channel
                     scales kept their old length ("shapes 48 and 47 are not broadcastable", refused in both modes)
    pool_past_input: AveragePool / MaxPool whose window is longer than the map, ceil_mode making one output
                     (HF EfficientNet's pooler, AvgPool2d(1280, ceil_mode=True) on 2 x 2): was refused
                     (int32 sum bound of a 1280 x 1280 window) and its float runs took seconds each
    deformable_sampling: GridSample of a value map at locations = reference points + a linear's offsets, as
                     2 * loc - 1 (Deformable-DETR's, RT-DETR's and Mask2Former's multi-scale deformable
                     attention; hunt 19): was refused integer-only (no lowering)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


def _save(path, nodes, inputs, outputs, inits, opset=17) -> str:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _compile_and_compare(tmp_path, path, feeds: dict, allow_float=False, min_cos=0.99):
    """Compile with the first samples of `feeds` as calibration, return the loaded model and the worst
    cosine to onnxruntime over the last two samples."""
    from runtime import compile_model, load

    np.savez(tmp_path / "calib.npz", **feeds)
    model = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz", progress=False,
                               allow_float=allow_float))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 1.0
    n = len(next(iter(feeds.values())))
    for i in (n - 2, n - 1):
        x = {k: v[i] for k, v in feeds.items()}
        ours = model.run(x)
        for o, ref in zip(model.manifest["outputs"], session.run(None, x)):
            a, b = np.ravel(ours[o["name"]]).astype(np.float64), np.ravel(ref).astype(np.float64)
            worst = min(worst, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
    assert worst >= min_cos, worst
    return model, worst


def test_matmul_by_stacked_constant_per_head(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 16, 12)).astype(np.float32) * rng.uniform(0.2, 2.0, (4, 1, 12)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    path = _save(tmp_path / "stacked.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 12])], [numpy_helper.from_array(w, "w")])
    x = rng.standard_normal((8, 1, 4, 8, 16)).astype(np.float32)
    model, _ = _compile_and_compare(tmp_path, path, {"x": x})
    assert model.manifest["integer_only"] is True


@pytest.mark.parametrize("block, strides, pads, image", [((2, 2), (2, 2), (0, 0, 0, 0), (8, 8)),
                                                        ((3, 3), (2, 2), (1, 1, 1, 1), (9, 8)),
                                                        ((2, 2), (2, 2), (0, 0, 0, 0), (2, 2))])  # one block
def test_col2im_folds_blocks_back(tmp_path, block, strides, pads, image):
    rng = np.random.default_rng(1)
    channels, k = 3, block[0] * block[1]
    blocks = [(image[i] + pads[i] + pads[i + 2] - block[i]) // strides[i] + 1 for i in range(2)]
    length = blocks[0] * blocks[1]
    inits = [numpy_helper.from_array(np.array(image, np.int64), "image"),
             numpy_helper.from_array(np.array(block, np.int64), "block"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, channels * k, 1)).astype(np.float32), "gain")]
    nodes = [helper.make_node("Mul", ["x", "gain"], ["xs"]),
             helper.make_node("Col2Im", ["xs", "image", "block"], ["y"], strides=list(strides), pads=list(pads))]
    path = _save(tmp_path / "col2im.onnx", nodes,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels * k, length])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, *image])], inits, opset=18)
    x = rng.standard_normal((6, 1, channels * k, length)).astype(np.float32)
    model, _ = _compile_and_compare(tmp_path, path, {"x": x})
    assert model.manifest["integer_only"] is True


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_pool_window_longer_than_the_map(tmp_path, op):
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),
             helper.make_node(op, ["h"], ["y"], kernel_shape=[1280, 1280], strides=[1280, 1280], ceil_mode=1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])]
    if op == "AveragePool":  # HF EfficientNet pools its last_hidden_state output: the pool's input is a graph output
        outputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 8, 3, 2]))
    path = _save(tmp_path / "pool.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 2])],
                 outputs, inits)
    x = rng.standard_normal((6, 1, 4, 3, 2)).astype(np.float32)
    model, _ = _compile_and_compare(tmp_path, path, {"x": x})
    assert model.manifest["integer_only"] is True


def test_fully_masked_query_rows_are_uniform_as_in_float(tmp_path):
    rng = np.random.default_rng(3)
    t = 8
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "min")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("Unsqueeze", ["mask", "ax1"], ["mq0"]),       # [1, 1, T]
             helper.make_node("Unsqueeze", ["mq0", "ax2"], ["mk"]),         # [1, 1, 1, T]: keys
             helper.make_node("Unsqueeze", ["mask", "ax1"], ["mq1"]),
             helper.make_node("Unsqueeze", ["mq1", "ax1"], ["mq2"]),         # [1, 1, 1, T]
             helper.make_node("Transpose", ["mq2"], ["mq"], perm=[0, 1, 3, 2]),  # [1, 1, T, 1]: queries
             helper.make_node("Mul", ["mq", "mk"], ["m2"]),
             helper.make_node("Cast", ["m2"], ["keep"], to=TensorProto.BOOL),
             helper.make_node("Not", ["keep"], ["drop"]),
             helper.make_node("Where", ["drop", "min", "logits"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["y"], axis=-1)]
    path = _save(tmp_path / "qk_mask.onnx", nodes,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, t, 8]),
                  helper.make_tensor_value_info("mask", TensorProto.INT64, [1, t])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, t, t])], inits)
    x = rng.standard_normal((6, 1, 2, t, 8)).astype(np.float32)
    mask = np.zeros((6, 1, t), np.int64)
    for i in range(6):
        mask[i, :, :3 + i % 4] = 1
    model, _ = _compile_and_compare(tmp_path, path, {"x": x, "mask": mask})
    assert model.manifest["integer_only"] is True
    y = model.run({"x": x[5], "mask": mask[5]})["y"]
    np.testing.assert_allclose(y[0, :, 7:], 1 / t, atol=2**-12)  # padded queries: uniform, as float gives them


def test_rel_shift_pads_a_linear_output_along_its_channels(tmp_path):
    rng = np.random.default_rng(4)
    t, p = 6, 11  # p = 2 t - 1 relative positions
    w = (rng.standard_normal((8, p)) * rng.uniform(0.1, 3.0, (1, p))).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 0, 0], np.int64), "pads"),
             numpy_helper.from_array(np.array([1, 2, 2 * t, t], np.int64), "s1"),
             numpy_helper.from_array(np.array([1, 2, t, 2 * t - 1], np.int64), "s2"),
             numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([2], np.int64), "ax"),
             numpy_helper.from_array(np.array([2 * t], np.int64), "end")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["bd"]),
             helper.make_node("Pad", ["bd", "pads"], ["padded"]),
             helper.make_node("Reshape", ["padded", "s1"], ["tall"]),
             helper.make_node("Slice", ["tall", "one", "end", "ax"], ["cut"]),
             helper.make_node("Reshape", ["cut", "s2"], ["y"])]
    path = _save(tmp_path / "rel_shift.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, t, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, t, p])], inits)
    x = rng.standard_normal((6, 1, 2, t, 8)).astype(np.float32)
    model, _ = _compile_and_compare(tmp_path, path, {"x": x})
    assert model.manifest["integer_only"] is True


@pytest.mark.parametrize("mode, padding, align", [("bilinear", "zeros", 0), ("bilinear", "border", 1),
                                                  ("nearest", "zeros", 0), ("bilinear", "reflection", 1),
                                                  ("bicubic", "reflection", 0), ("bicubic", "border", 1)])
def test_deformable_sampling_grid_sample(tmp_path, mode, padding, align):
    rng = np.random.default_rng(5)
    heads, channels, h, w, queries, points = 2, 4, 8, 10, 6, 3
    ref = rng.uniform(0.1, 0.9, (heads, queries, 1, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["query", "w_off"], ["off"]),  # [1, Q, heads * points * 2]
             helper.make_node("Reshape", ["off", "off_shape"], ["off4"]),  # [Q, heads, points, 2]
             helper.make_node("Transpose", ["off4"], ["off_h"], perm=[1, 0, 2, 3]),  # [heads, Q, points, 2]
             helper.make_node("Add", ["off_h", "ref"], ["loc"]),
             helper.make_node("Mul", ["loc", "two"], ["loc2"]),
             helper.make_node("Sub", ["loc2", "one"], ["grid"]),
             helper.make_node("GridSample", ["value", "grid"], ["sampled"], mode=mode, padding_mode=padding,
                              align_corners=align),  # [heads, C, Q, points]
             helper.make_node("ReduceMean", ["sampled"], ["y"], axes=[3], keepdims=0)]
    inits = [numpy_helper.from_array((rng.standard_normal((16, heads * points * 2)) * 0.05).astype(np.float32), "w_off"),
             numpy_helper.from_array(np.array([queries, heads, points, 2], np.int64), "off_shape"),
             numpy_helper.from_array(ref, "ref"), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    path = _save(tmp_path / "deform.onnx", nodes,
                 [helper.make_tensor_value_info("value", TensorProto.FLOAT, [heads, channels, h, w]),
                  helper.make_tensor_value_info("query", TensorProto.FLOAT, [1, queries, 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [heads, channels, queries])], inits)
    feeds = {"value": rng.standard_normal((8, heads, channels, h, w)).astype(np.float32),
             "query": rng.standard_normal((8, 1, queries, 16)).astype(np.float32)}
    # nearest: a location within the offsets' 8-bit weight error of a pixel boundary may take the neighbour
    model, _ = _compile_and_compare(tmp_path, path, feeds, min_cos=0.99 if mode == "bilinear" else 0.9)
    assert model.manifest["integer_only"] is True


def test_grid_sample_at_constant_grid(tmp_path):
    """Deformable-DETR's first decoder layer samples at learned reference points: a constant grid (was refused
    at lowering, 'expected an activation grid'); its coordinates are unnormalized at compile time."""
    rng = np.random.default_rng(6)
    grid = rng.uniform(-1.1, 1.1, (2, 5, 3, 2)).astype(np.float32)
    nodes = [helper.make_node("GridSample", ["value", "grid"], ["y"], mode="bilinear", padding_mode="zeros",
                              align_corners=0)]
    path = _save(tmp_path / "const_grid.onnx", nodes,
                 [helper.make_tensor_value_info("value", TensorProto.FLOAT, [2, 4, 8, 10])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 3])], [numpy_helper.from_array(grid, "grid")])
    model, _ = _compile_and_compare(tmp_path, path, {"value": rng.standard_normal((6, 2, 4, 8, 10)).astype(np.float32)})
    assert model.manifest["integer_only"] is True


def test_grid_sample_free_batch(tmp_path):
    """GridSample under a free batch keeps each sample on its rows (the tap indices were broadcast to a fixed
    [1, C, P] shape, and the artifact ran a batch sample by sample): a symbolic batch, each sample's integers
    those it gets alone."""
    from frontends import parse_input_shape
    from runtime import compile_model, load

    rng = np.random.default_rng(7)
    nodes = [helper.make_node("MatMul", ["feat", "w"], ["off"]),
             helper.make_node("Reshape", ["off", "shape"], ["grid"]),
             helper.make_node("GridSample", ["x", "grid"], ["y"], mode="bilinear", padding_mode="zeros", align_corners=0)]
    inits = [numpy_helper.from_array((rng.standard_normal((8, 2)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-1, 5, 6, 2], np.int64), "shape")]
    path = _save(tmp_path / "gs_batch.onnx", nodes,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 10]),
                  helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 30, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 6])], inits)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((4, 1, 4, 8, 10)).astype(np.float32),
             feat=rng.standard_normal((4, 1, 30, 8)).astype(np.float32))
    shapes = dict(parse_input_shape(s) for s in ["x:1..4x4x8x10", "feat:1..4x30x8"])
    model = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz", progress=False,
                               input_shapes=shapes))
    assert model.manifest["integer_only"] is True and model.manifest["batch"] == "symbolic"
    x = {"x": rng.standard_normal((3, 4, 8, 10)).astype(np.float32), "feat": rng.standard_normal((3, 30, 8)).astype(np.float32)}
    alone = np.concatenate([model.run({k: v[i:i + 1] for k, v in x.items()})["y"] for i in range(3)])
    np.testing.assert_array_equal(model.run(x)["y"], alone)


def test_one_column_matmul_added_to_a_wider_product(tmp_path):
    """OWL-ViT's class head: logits = image_embeds @ query_embeds^T (an Einsum with '...') plus a shift from a
    one-column linear of the same image embeddings, broadcast along the queries. The one-column matmul's dot
    kernel (padded to 16 columns, sliced back) had the broadcast add fused after it, which TVM cannot compute
    tile by tile: an InternalError from the schedule killed the compile (OWL-ViT and OWLv2, hunt 19). The add
    now stays after the tiles."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("MatMul", ["img", "w0"], ["a"]),
             helper.make_node("ReduceL2", ["qe"], ["n1"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["n1", "eps"], ["n1e"]),
             helper.make_node("Div", ["qe", "n1e"], ["b"]),
             helper.make_node("Einsum", ["a", "b"], ["pl"], equation="...pd,...qd->...pq"),
             helper.make_node("MatMul", ["img", "ws"], ["sh"]),
             helper.make_node("Add", ["pl", "sh"], ["y"])]
    inits = [numpy_helper.from_array((rng.standard_normal((32, 32)) * 0.1).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((32, 1)) * 0.3).astype(np.float32), "ws"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    path = _save(tmp_path / "owl_head.onnx", nodes,
                 [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 16, 32]),
                  helper.make_tensor_value_info("qe", TensorProto.FLOAT, [1, 2, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 2])], inits)
    model, _ = _compile_and_compare(tmp_path, path, {"img": rng.standard_normal((6, 1, 16, 32)).astype(np.float32),
                                                     "qe": rng.standard_normal((6, 1, 2, 32)).astype(np.float32)})
    assert model.manifest["integer_only"] is True
