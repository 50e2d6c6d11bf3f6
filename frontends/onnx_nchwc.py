"""onnxruntime's blocked-layout ops (domain com.microsoft.nchwc) back to the standard NCHW ops they came from.

A CNN saved by onnxruntime at ORT_ENABLE_ALL (SessionOptions' default level, with `optimized_model_filepath`)
on an x86 machine holds nchwc ops: each Conv's weights are stored permuted into MLAS's blocks (OIHWBiBo or
OIHWBo, the block size that of the CPU that saved it), activations flow in NCHWc, and ReorderInput /
ReorderOutput convert at the edges. intq refused such files in both modes. Since every activation is
again NCHW here, the reorders become identities (or the NHWC transposes and channel slices they also
make) and each op its standard self:

    nchwc.Conv(X, W', B?, Sum?)  ->  activation(Conv(X, W, B) (+ Sum))    (as FusedConv, onnx_contrib.py)
    nchwc.MaxPool / AveragePool / GlobalMaxPool / GlobalAveragePool  ->  the ONNX op, same attributes
    nchwc.Upsample(scales, mode)  ->  Resize (asymmetric coordinates, floor for nearest)
    ReorderInput(channels_last)   ->  (Transpose NHWC -> NCHW), channels zero-padded to whole blocks
    ReorderOutput(channels, channels_last)  ->  Slice of the first `channels`, then NCHW -> NHWC if asked

W is recovered by asking this machine's onnxruntime how it permutes a filter of that shape: a probe conv
whose weights are 1..n is saved at ORT_ENABLE_ALL, and its stored weights are the inverse permutation.
That is the layout onnxruntime on this machine runs the file with too; a file saved on a CPU of another
block size (AVX2's 8 against AVX-512's 16) runs wrongly in onnxruntime here as well, which it warns about
when saving. A conv whose probe is not blocked the same way is left for the op check to name, and so is the whole
file where a standard op reads a blocked tensor in a way that depends on the layout (onnxruntime
broadcasts a pooled [N, C] over an image through Reshapes of the blocks themselves): only elementwise
ops on blocked tensors alike (and scalars) and channel Concats read the same in NCHW.
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "com.microsoft.nchwc"
POOLS = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool")
UNARY = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Identity", "Neg", "Abs",
                   "Exp", "Erf", "Sqrt", "Softplus", "Elu", "Selu"})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Pow"})


def layout_leaks(model: onnx.ModelProto) -> list[str]:
    """Standard nodes that read blocked (NCHWc) data in a way NCHW data would not give the same result."""
    scalars = {i.name for i in model.graph.initializer if int(np.prod(i.dims)) == 1}
    blocked, leaks = set(), []
    for node in model.graph.node:
        if node.domain == DOMAIN:
            if node.op_type != "ReorderOutput":
                blocked.update(node.output)
            continue
        reads = [i for i in node.input if i]
        if not any(i in blocked for i in reads):
            continue
        same = all(i in blocked or i in scalars for i in reads)
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
        if node.op_type in UNARY or (node.op_type in BINARY and same) or (node.op_type == "Concat" and same and axis == 1):
            blocked.update(node.output)
        else:
            leaks.append(f"{node.op_type} (node {node.name or node.output[0]})")
    return leaks


@functools.lru_cache(maxsize=256)
def _permutation(shape: tuple[int, ...], group: int) -> np.ndarray | None:
    """Flat source index of each stored weight of an nchwc conv of filter `shape` (-1: block padding)."""
    import onnxruntime as ort

    n = int(np.prod(shape))
    if n >= 1 << 24:  # the probe's indices must be exact in float32
        return None
    side = max(shape[2:]) + 2
    weights = numpy_helper.from_array(np.arange(1, n + 1, dtype=np.float32).reshape(shape), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=group)], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape[1] * group, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory(prefix="intq-nchwc-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(tmp, "probe.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        saved = onnx.load(options.optimized_model_filepath)
    conv = next((x for x in saved.graph.node if x.domain == DOMAIN and x.op_type == "Conv"), None)
    if conv is None:
        return None
    stored = next(i for i in saved.graph.initializer if i.name == conv.input[1])
    return numpy_helper.to_array(stored).astype(np.int64).ravel() - 1


@functools.lru_cache(maxsize=1)
def block_size() -> int | None:
    """MLAS's NCHWc block on this machine: where a 64 x 64 1x1 probe filter's second input channel is stored."""
    perm = _permutation((64, 64, 1, 1), 1)
    hits = np.flatnonzero(perm == 1) if perm is not None else []
    return int(hits[0]) if len(hits) else None


def _weights(stored: onnx.TensorProto, group: int) -> onnx.TensorProto | None:
    """The OIHW filter of an nchwc conv's stored weights; None where the probe disagrees."""
    shape = tuple(stored.dims)
    perm = _permutation(shape, group) if len(shape) == 4 else None
    data = numpy_helper.to_array(stored).ravel()
    if perm is None or perm.size != data.size:
        return None
    filt = np.zeros(int(np.prod(shape)), data.dtype)
    kept = perm >= 0
    filt[perm[kept]] = data[kept]
    return numpy_helper.from_array(filt.reshape(shape), f"{stored.name}/oihw")


def _attrs(node, *drop: str) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


def rewrite(node, w, inits: dict[str, onnx.TensorProto], fused) -> bool:
    """One nchwc node through the writer `w` (onnx_contrib._Writer); `fused`: onnx_contrib._fused."""
    op, ins, out = node.op_type, list(node.input), node.output[0]
    if op == "Conv":
        stored = inits.get(ins[1])
        filt = _weights(stored, int(_attrs(node).get("group", 1))) if stored is not None else None
        if filt is None:
            return False
        w.inits.append(filt)
        ins = ins + [""] * (4 - len(ins))
        return fused(node, w, "Conv", [i for i in (ins[0], filt.name, ins[2]) if i], out, add=ins[3])
    if op in POOLS:
        w.op(op, ins[:1], out, **_attrs(node))
        return True
    if op == "Upsample" and w.opset >= 11:  # Resize(X, roi, scales)
        scales = [1.0, 1.0, *map(float, _attrs(node).get("scales", [1, 1])[-2:])]
        mode = _attrs(node).get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        w.op("Resize", [ins[0], "", w.const(scales)], out, mode=mode, nearest_mode="floor",
             coordinate_transformation_mode="asymmetric")
        return True
    if op == "ReorderInput":  # NHWC -> NCHW if asked; channels zero-padded to whole blocks, as the blocked
        block = block_size()     # filters after it expect (BlazeFace's 28-channel depthwise conv: 32 in the file)
        if block is None or w.opset < 11:
            return False
        x = w.op("Transpose", ins[:1], perm=[0, 3, 1, 2]) if _attrs(node).get("channels_last", 0) else ins[0]
        channels = w.op("Gather", [w.op("Shape", [x]), w.const(1, np.int64)], axis=0)
        size = w.const(block, np.int64)
        extra = w.op("Reshape", [w.op("Mod", [w.op("Sub", [size, w.op("Mod", [channels, size])]), size]),
                                 w.const([1], np.int64)])
        pads = w.op("Concat", [w.const([0] * 5, np.int64), extra, w.const([0, 0], np.int64)], axis=0)
        w.op("Pad", [x, pads], out)
        return True
    if op == "ReorderOutput":
        channels, last = int(_attrs(node).get("channels", 0)), int(_attrs(node).get("channels_last", 0))
        y = w.op("Slice", [ins[0], w.const([0], np.int64), w.const([channels], np.int64), w.const([1], np.int64)],
                 None if last else out)
        if last:
            w.op("Transpose", [y], out, perm=[0, 2, 3, 1])
        return True
    return False
