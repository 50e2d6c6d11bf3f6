"""The ONNX Model Zoo's classic files as the zoo ships them (hunt 25): old opsets (7-9), IR 3 (every initializer also
a graph input), Caffe2 / CNTK idioms (Gemm with transB after a Reshape by a constant shape, LRN, Dropout, Softmax
over [1, 1000]). Each graph is built here with onnx.helper at a small size, random weights normalized on the
calibration inputs, compiled integer-only and compared with float onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ir3(nodes, x_shape, out, out_shape, inits, opset, path):
    """An IR 3 model as Caffe2 / CNTK converters wrote them: the initializers are listed as graph inputs too."""
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, list(x_shape))]
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = helper.make_graph(nodes, "zoo", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _compile(path, tmp_path, xs, name="data_0"):
    from runtime import compile_model, load

    np.savez(tmp_path / "calib.npz", **{name: xs})
    return load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))


def _conv(rng, inits, name, cout, cin, k, x):
    """Conv weights and bias whose outputs have unit std per channel on the batch x (LSUV-style), and that output."""
    import torch

    w = rng.normal(0, 1, (cout, cin, k, k)).astype(np.float32)
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=k // 2)
    std, mean = y.std((0, 2, 3)).numpy() + 1e-6, y.mean((0, 2, 3)).numpy()
    w /= std[:, None, None, None]
    b = (-mean / std + 0.2).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}_w_0"), numpy_helper.from_array(b, f"{name}_b_0")]
    return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=k // 2).numpy()


# ------------------------------------------------------------------------------------------------------------- LRN
def _alexnet(path, xs):
    """bvlc_alexnet / caffenet / zfnet512 in miniature (opset 9, IR 3): conv -> relu -> LRN -> max pool twice,
    a Reshape by Caffe2's constant OC2_DUMMY shape, Gemm(transB), Dropout, Softmax."""
    rng, inits = np.random.default_rng(0), []
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    a = relu(_conv(rng, inits, "conv1", 16, 3, 3, xs[:, 0] * 40))  # activations in the hundreds, as Caffe's are
    lrn = lambda v: v / (1.0 + 1e-4 / 5 * np.stack([  # noqa: E731
        (v[:, max(0, c - 2):c + 3] ** 2).sum(1) for c in range(v.shape[1])], 1)) ** 0.75
    a = lrn(a)[:, :, ::2, ::2]
    relu(_conv(rng, inits, "conv2", 24, 16, 3, np.ascontiguousarray(a)))
    fc = rng.normal(0, 0.02, (10, 24 * 4 * 4)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc_w_0"), numpy_helper.from_array(np.zeros(10, np.float32), "fc_b_0"),
              numpy_helper.from_array(np.array([1, 24 * 4 * 4], np.int64), "OC2_DUMMY_1"),
              numpy_helper.from_array(np.float32(40.0), "scale_0")]
    lrn_attrs = dict(size=5, alpha=1e-4, beta=0.75, bias=1.0)
    nodes = [helper.make_node("Mul", ["data_0", "scale_0"], ["d"]),
             helper.make_node("Conv", ["d", "conv1_w_0", "conv1_b_0"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("LRN", ["r1"], ["n1"], **lrn_attrs),
             helper.make_node("MaxPool", ["n1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "conv2_w_0", "conv2_b_0"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("LRN", ["r2"], ["n2"], **lrn_attrs),
             helper.make_node("MaxPool", ["n2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p2", "OC2_DUMMY_1"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w_0", "fc_b_0"], ["g"], transB=1),
             helper.make_node("Dropout", ["g"], ["dr"], ratio=0.5),
             helper.make_node("Softmax", ["dr"], ["prob_1"])]
    return _ir3(nodes, (1, 3, 16, 16), "prob_1", (1, 10), inits, 9, path)


def test_lrn_compiles_integer_only(tmp_path):
    """LRN (AlexNet, CaffeNet, ZFNet, GoogLeNet, R-CNN) was refused before the import ('ops the integer-only path
    does not support'), though TVM's converter writes it as ops that lower: x * x, an average pool over channels,
    a power and a divide. Now integer-only, and the probabilities agree with onnxruntime."""
    xs = np.random.default_rng(1).normal(0, 1, (10, 1, 3, 16, 16)).astype(np.float32)
    path = _alexnet(tmp_path / "alexnet.onnx", xs[:8])
    art = _compile(path, tmp_path, xs[:8])
    assert art.manifest["integer_only"]
    sess = ort.InferenceSession(str(path))
    for x in xs[8:]:
        want = sess.run(None, {"data_0": x})[0]
        got = art.run({"data_0": x})["prob_1"]
        assert _cos(got, want) > 0.99
        assert got.argmax() == want.argmax()


# --------------------------------------------------------------------------------------- ImageScaler, Crop, opset < 7
def _tiny_yolo(path, xs, crop_scale):
    """tinyyolov2-8 in miniature (opset 8, IR 3): ImageScaler(1/255) on a 0..255 image, convs without bias, then
    BatchNormalization, LeakyRelu, MaxPool; a Caffe-style Crop (by borders, or to a size) before the last conv."""
    rng, inits = np.random.default_rng(0), []
    x = xs[:, 0] / 255.0 - np.array([0.4, 0.5, 0.3], np.float32)[None, :, None, None]
    c1 = _conv(rng, inits, "conv1", 8, 3, 3, x)
    inits.pop()  # no conv bias: the BN's
    mean, var = c1.mean((0, 2, 3)), c1.var((0, 2, 3))
    for name, v in (("scale", rng.uniform(0.6, 1.4, 8)), ("B", rng.normal(0.1, 0.3, 8)), ("mean", mean), ("var", var)):
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32), f"bn_{name}"))
    crop = dict(scale=crop_scale, border=[2, 1, 0, 0]) if crop_scale else dict(border=[1, 2, 2, 1])
    a = np.maximum(c1, 0)[:, :, :8, :8]  # near enough for the second conv's statistics
    _conv(rng, inits, "conv2", 6, 8, 3, np.ascontiguousarray(a))
    nodes = [helper.make_node("ImageScaler", ["data_0"], ["s"], scale=1 / 255.0, bias=[-0.4, -0.5, -0.3]),
             helper.make_node("Conv", ["s", "conv1_w_0"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_B", "bn_mean", "bn_var"], ["b1"], epsilon=1e-5),
             helper.make_node("LeakyRelu", ["b1"], ["l1"], alpha=0.1),
             helper.make_node("MaxPool", ["l1"], ["p1"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]),
             helper.make_node("Crop", ["p1"], ["cr"], **crop),
             helper.make_node("Conv", ["cr", "conv2_w_0", "conv2_b_0"], ["grid"], kernel_shape=[3, 3], pads=[1] * 4)]
    h, w = (crop_scale if crop_scale else (16 - 2 - 1, 16 - 1 - 2))
    return _ir3(nodes, (1, 3, 16, 16), "grid", (1, 6, h, w), inits, 8, path)


def test_image_scaler_and_crop_compile_integer_only(tmp_path):
    """ImageScaler and Crop (experimental ops of opsets 1-9: tinyyolov2-8's input scaling, Caffe conversions) had no
    TVM converter: refused in both modes. Now Mul / Add and a Slice (frontends/onnx_old_opsets.py)."""
    xs = np.random.default_rng(2).uniform(0, 255, (10, 1, 3, 16, 16)).astype(np.float32)
    for k, scale in enumerate(([], [10, 9])):
        path = _tiny_yolo(tmp_path / f"yolo{k}.onnx", xs[:8], scale)
        (tmp_path / f"{k}").mkdir()
        art = _compile(path, tmp_path / f"{k}", xs[:8])
        assert art.manifest["integer_only"]
        sess = ort.InferenceSession(str(path))
        for x in xs[8:]:
            want = sess.run(None, {"data_0": x})[0]
            got = art.run({"data_0": x})["grid"]
            assert got.shape == want.shape
            assert _cos(got, want) > 0.995


def _old_opset_model(opset, path):
    """A Caffe2-era file at opset 3 or 6: BatchNormalization with is_test (and opset 3's consumed_inputs),
    Sum of three inputs, Dropout with is_test, Reshape by an attribute (opset 3) or input, Gemm with broadcast."""
    rng = np.random.default_rng(3)
    bn = dict(is_test=1, spatial=1, epsilon=1e-5, **({"consumed_inputs": [0, 0, 0, 1, 1]} if opset < 6 else {}))
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "conv_w_0"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "conv_b_0"),
             *(numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
               (("bn_s", rng.uniform(0.5, 1.5, 4)), ("bn_b", rng.normal(0, 0.3, 4)), ("bn_rm", rng.normal(0, 0.3, 4)),
                ("bn_riv", rng.uniform(0.5, 2, 4)))),
             numpy_helper.from_array(rng.normal(0, 0.1, (5, 256)).astype(np.float32), "fc_w_0"),
             numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "fc_b_0")]
    reshape = [helper.make_node("Reshape", ["d"], ["f"], shape=[1, -1])]
    if opset >= 5:
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "OC2_DUMMY_0"))
        reshape = [helper.make_node("Reshape", ["d", "OC2_DUMMY_0"], ["f"])]
    nodes = [helper.make_node("Conv", ["data_0", "conv_w_0", "conv_b_0"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_rm", "bn_riv"], ["bn"], **bn),
             helper.make_node("Relu", ["bn"], ["r"]), helper.make_node("Sum", ["r", "bn", "c"], ["su"]),
             helper.make_node("Dropout", ["su"], ["d"], is_test=1, ratio=0.5), *reshape,
             helper.make_node("Gemm", ["f", "fc_w_0", "fc_b_0"], ["g"], transB=1, broadcast=1),
             helper.make_node("Softmax", ["g"], ["prob_1"])]
    return _ir3(nodes, (1, 3, 8, 8), "prob_1", (1, 5), inits, opset, path)


def test_opset_3_and_6_files_compile(tmp_path):
    """onnxruntime runs opset 7 and later only, so the zoo's opset-3 and opset-6 files failed in its clean-up ('Could
    not find an implementation for BatchNormalization(6)'). They are converted to opset 7 first; the result
    agrees with onnxruntime on that conversion, and with numpy."""
    from frontends.onnx_old_opsets import upgrade_old_opset

    xs = np.random.default_rng(4).normal(0, 1, (10, 1, 3, 8, 8)).astype(np.float32)
    for opset in (3, 6):
        path = _old_opset_model(opset, tmp_path / f"old{opset}.onnx")
        model = onnx.load(path)
        assert upgrade_old_opset(model) and model.opset_import[0].version == 7
        sess = ort.InferenceSession(model.SerializeToString())
        (tmp_path / f"{opset}").mkdir()
        art = _compile(path, tmp_path / f"{opset}", xs[:8])
        assert art.manifest["integer_only"]
        for x in xs[8:]:
            want = sess.run(None, {"data_0": x})[0]
            assert _cos(art.run({"data_0": x})["prob_1"], want) > 0.99


# ------------------------------------------------------------------- legacy forms, then a decomposition's re-optimization
def _keras_era(path, xs):
    """An opset-9 file as keras2onnx / Caffe conversions wrote them: a Slice with attributes (Slice-1), Upsample-9,
    Max with a scalar constant (a Clip once decomposed), LpNormalization over channels."""
    rng, inits = np.random.default_rng(5), []
    a = _conv(rng, inits, "conv1", 8, 3, 3, xs[:, 0])[:, :, 1:7, 1:7].repeat(2, 2).repeat(2, 3)
    _conv(rng, inits, "conv2", 6, 8, 3, np.ascontiguousarray(np.maximum(a, 0.1)))
    inits += [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
              numpy_helper.from_array(np.array(0.1, np.float32), "floor")]
    nodes = [helper.make_node("Conv", ["data_0", "conv1_w_0", "conv1_b_0"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Slice", ["c1"], ["s"], starts=[1, 1], ends=[7, 7], axes=[2, 3]),
             helper.make_node("Upsample", ["s", "scales"], ["u"], mode="nearest"),
             helper.make_node("Max", ["u", "floor"], ["m"]),
             helper.make_node("Conv", ["m", "conv2_w_0", "conv2_b_0"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("LpNormalization", ["c2"], ["y"], axis=1, p=2)]
    return _ir3(nodes, (1, 3, 8, 8), "y", (1, 6, 12, 12), inits, 9, path)


def test_legacy_forms_survive_a_decomposition_in_an_old_opset(tmp_path):
    """An opset < 11 file with Slice-1 / Upsample (rewritten into the forms TVM reads: Slice and Resize with inputs)
    and an op decomposed later (LpNormalization, Max with a scalar) went through onnxruntime's clean-up once more,
    which refused the rewritten forms at the file's opset ('schema(::Slice:1) has input size 4'): refused in both
    modes. That clean-up now falls back to ONNX's shape inference."""
    xs = np.random.default_rng(6).normal(0, 1, (10, 1, 3, 8, 8)).astype(np.float32)
    path = _keras_era(tmp_path / "keras.onnx", xs[:8])
    art = _compile(path, tmp_path, xs[:8])
    assert art.manifest["integer_only"]
    sess = ort.InferenceSession(str(path))
    for x in xs[8:]:
        assert _cos(art.run({"data_0": x})["y"], sess.run(None, {"data_0": x})[0]) > 0.995


# --------------------------------------------------------------------------------------- concats of ReLU branches
def _inception_block(path, xs):
    """GoogLeNet's inception module in miniature (opset 9, IR 3): 1x1, 3x3 and 5x5 branches after their ReLUs and
    a pooled 1x1 branch, concatenated, max-pooled, then a 1x1 conv."""
    rng, inits = np.random.default_rng(7), []
    x = xs[:, 0]
    ys = [np.maximum(_conv(rng, inits, name, 6, 4, k, x), 0) for name, k in (("b1", 1), ("b3", 3), ("b5", 5))]
    pooled = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1e30)
    pooled = np.max([pooled[:, :, i:i + 8, j:j + 8] for i in range(3) for j in range(3)], 0)
    ys.append(np.maximum(_conv(rng, inits, "bp", 6, 4, 1, pooled), 0))
    cat = np.concatenate(ys, 1)
    _conv(rng, inits, "out", 8, 24, 1, np.ascontiguousarray(cat[:, :, ::2, ::2]))
    nodes = []
    for name, k in (("b1", 1), ("b3", 3), ("b5", 5)):
        nodes += [helper.make_node("Conv", ["data_0", f"{name}_w_0", f"{name}_b_0"], [f"{name}_c"], kernel_shape=[k, k],
                                   pads=[k // 2] * 4), helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"])]
    nodes += [helper.make_node("MaxPool", ["data_0"], ["pool"], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4),
              helper.make_node("Conv", ["pool", "bp_w_0", "bp_b_0"], ["bp_c"], kernel_shape=[1, 1]),
              helper.make_node("Relu", ["bp_c"], ["bp_r"]),
              helper.make_node("Concat", ["b1_r", "b3_r", "b5_r", "bp_r"], ["cat"], axis=1),
              helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Conv", ["p", "out_w_0", "out_b_0"], ["y"], kernel_shape=[1, 1])]
    return _ir3(nodes, (1, 4, 8, 8), "y", (1, 8, 4, 4), inits, 9, path)


def test_concat_of_relu_branches_stays_unsigned(tmp_path):
    """A concat of ReLU outputs (uint8) with scales of their own was requantized to int8, which keeps 7 of its 8 bits
    for values that are never negative: each Inception / SqueezeNet / DenseNet concat, and the max pools after it,
    doubled its grid error (GoogLeNet's 9 concats: 1.4% -> 0.7%). Every part >= 0: the concat is uint8."""
    from frontends.onnx_import import load_onnx
    from passes import QuantizeToInteger, bind_weights, calibrate, verify_integer_only

    xs = np.random.default_rng(8).normal(0, 1, (10, 1, 4, 8, 8)).astype(np.float32)
    path = _inception_block(tmp_path / "inception.onnx", xs[:8])
    m = load_onnx(path)
    mod = bind_weights(m.mod, m.params)
    int_mod = QuantizeToInteger(calibrate(mod, [{"data_0": x} for x in xs[:8]], progress=False))(mod)
    assert verify_integer_only(int_mod).integer_only
    concats = [line for line in int_mod.script().splitlines() if "R.concat(" in line]
    assert concats and all('dtype="uint8"' in line for line in concats), concats
    art = _compile(path, tmp_path, xs[:8])
    sess = ort.InferenceSession(str(path))
    for x in xs[8:]:
        assert _cos(art.run({"data_0": x})["y"], sess.run(None, {"data_0": x})[0]) > 0.999


def test_lrn_of_relu_outputs_stays_unsigned(tmp_path):
    """LRN's divide of a ReLU output (uint8) by its window norm (uint8) was requantized to int8, 7 of 8 bits for a
    result that is never negative, and the max pool after it took that over: GoogLeNet (zoo inception_v1, random
    weights) compiled at cosine 0.72 / 0.92 to float onnxruntime; with uint8 0.91 / 0.98."""
    from frontends.onnx_import import load_onnx
    from passes import QuantizeToInteger, bind_weights, calibrate, verify_integer_only

    xs = np.random.default_rng(1).normal(0, 1, (8, 1, 3, 16, 16)).astype(np.float32)
    path = _alexnet(tmp_path / "alexnet.onnx", xs)
    m = load_onnx(path)
    mod = bind_weights(m.mod, m.params)
    int_mod = QuantizeToInteger(calibrate(mod, [{"data_0": x} for x in xs], progress=False))(mod)
    assert verify_integer_only(int_mod).integer_only
    pools = [line for line in int_mod.script().splitlines() if "R.nn.max_pool2d(" in line]
    assert len(pools) == 2 and all('dtype="uint8"' in line for line in pools), pools
