"""ONNX file -> float Relax module with its weights kept as parameters.

Steps: load and check the file, fix dynamic input dimensions, undo QDQ quantization
(`onnx_qdq.py`), let onnxruntime's basic
graph optimizer fold the shape arithmetic TVM's importer cannot take (DESIGN.md
section 3), unroll Scan and constant-count Loop (`onnx_loops.py`) and LSTM/GRU/RNN
(`onnx_rnn.py`), decompose Attention (`onnx_attention.py`), expand
function ops TVM's importer lacks into their schema bodies (`onnx_functions.py`) and a few
others into ops it has (`onnx_decompose.py`), refuse
control flow and ops the integer path lacks (every node at once), then import with
`tvm.relax.frontend.onnx.from_onnx` (`onnx_origins.py`: each binding remembers its ONNX node).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import CompileError, UnsupportedModelError
from .onnx_attention import decompose_attention
from .onnx_contrib import contrib_to_standard
from .onnx_qcontrib import quantized_contrib_to_float
from .onnx_float16 import float16_as_float32
from .onnx_float_io import widen_float_inputs
from .onnx_origins import import_onnx
from .onnx_pow_types import pow_to_one_dtype
from .onnx_center_crop_pad import decompose_center_crop_pads
from .onnx_group_norm import decompose_group_norms
from .onnx_resize_filters import resize_filters_to_matmuls
from .onnx_roi_align import shift_half_pixel_rois
from .onnx_resize_coords import resize_coordinates_to_gathers
from .onnx_decompose import decompose_ops
from .resize_layout import resize_to_nchw
from .onnx_einsum import einsum_to_matmul
from .onnx_functions import expand_functions
from .onnx_if import select_ifs
from .onnx_legacy import legacy_forms_to_tvm_forms
from .onnx_qdq import refuse_qonnx, strip_qdq
from .onnx_tflite import tflite_ops_to_standard
from .onnx_qonnx import read_qonnx
from .onnx_loops import unroll_loops
from .onnx_old_opsets import old_opsets_to_current
from .onnx_rnn import unroll_lstms
from .onnx_tail import OPAQUE, Tail, names_read, split_tail
from .onnx_window_axes import fold_unit_window_axes
from .shape_operands import dynamic_shape_operands

# ONNX ops (after onnxruntime's basic clean-up) that the integer-only path lowers.
INTEGER_PATH_OPS = frozenset({
    "Conv", "BatchNormalization", "Gemm", "MatMul", "Relu", "Clip", "Max", "Min", "Add",
    "MaxPool", "GlobalAveragePool", "ReduceMean", "Concat", "Reshape", "Flatten",
    "Transpose", "Pad", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Constant",
    # transformers
    "LayerNormalization", "Softmax", "Gelu", "Erf", "Div", "Mul", "Split", "Slice", "Sub", "Pow", "Sqrt",
    "InstanceNormalization",  # also GroupNorm as exported below opset 18 (passes/fuse_layernorm.py)
    # integer inputs (token ids, attention masks) and embeddings
    "CumSum",  # of integer tensors (RoBERTa's padding-aware position ids): kept as they are
    "Gather", "Cast", "And", "Or", "Not", "Where", "Less", "Equal", "Greater", "GreaterOrEqual", "Expand",
    "GatherND", "GatherElements",  # of activations too (constant or integer indices: lowering/layout.py)
    "IsNaN", "IsInf",  # of a quantized tensor: a constant mask (SDPA's guard of fully masked rows, lowering/predicates)
    # structure and spatial ops (passes/lowering: resize, pooling, linear, layout)
    "Resize", "Upsample", "ConvTranspose", "AveragePool", "Tile", "DepthToSpace", "SpaceToDepth", "TopK",
    "GridSample",  # 4-D bilinear, bicubic or nearest, any padding (lowering/resize.lower_grid_sample)
    "AffineGrid",  # MatMul of theta by the constant base grid (onnx_decompose.py)
    "Hardmax",  # 1 at ArgMax along the axis: an Equal with a constant arange, cast (onnx_decompose.py)
    "Trilu",  # of an activation: the same integers, zeros outside the triangle (lowering/layout.lower_triangle)
    # binary ops of two activations, reductions, softmax on any axis (passes/lowering: binary, reduce, transformer)
    "LessOrEqual", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ArgMax", "ArgMin", "LogSoftmax",
    "Sum", "Mean",  # of several activations: a reduction over relax.stack
    # elementwise functions of one input as one table each, PReLU (passes/fuse_unary_chains, lowering/unary)
    "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Mish", "Elu", "Selu", "Softplus", "Softsign", "LeakyRelu",
    "ThresholdedRelu", "Exp", "Log", "Reciprocal", "Abs", "Neg", "Sign", "Round", "Floor", "Ceil", "PRelu",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "LSTM", "GRU", "RNN",  # unrolled into MatMul/Sigmoid/Tanh/Mul/Add before the check (onnx_rnn.py)
    "LpNormalization", "DFT", "STFT", "Compress",  # x / ReduceL1|L2, a DFT matmul, a Gather (onnx_decompose.py)
    "ReverseSequence",  # a GatherElements with constant or run-time indices (onnx_along_axis.py)
    "OneHot",  # an Equal with a constant arange, cast (onnx_decompose.py)
    "RMSNormalization",  # over the last axis with a constant gamma (onnx_rms_norm.py): I-LayerNorm without the mean
    "MaxUnpool",  # a ScatterElements into zeros (MaxPool's Indices: an ArgMax of gathered windows; onnx_pool_indices.py)
    "ScatterElements", "ScatterND",  # at one int32 scale, the same reduction (lowering/layout.lower_scatter)
    "ReduceL1", "ReduceSumSquare", "ReduceLogSumExp",
    "GlobalMaxPool", "LpPool", "Shrink", "MeanVarianceNormalization",  # imported as ops the lowerings take
    "LRN",  # x / (bias + alpha / size * window sum of x^2)^beta over channels (AlexNet, GoogLeNet, ZFNet)
    "EyeLike", "Shape", "Size", "ConstantOfShape", "Range",  # constants once shapes are static
    "SequenceConstruct", "SequenceAt", "SequenceInsert", "SequenceErase", "ConcatFromSequence",  # static tuples
})


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of a graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class ImportedModel:
    """A float Relax module (`main` takes the inputs, then the weights) and its weights."""

    mod: object  # tvm.IRModule; None where onnxruntime runs the whole model (`tail`, --allow-float)
    params: list[np.ndarray]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str
    tail: Tail | None = None  # what runs in onnxruntime after the compiled part (--allow-float; onnx_tail.py)


@dataclass(frozen=True)
class FreeDim:
    """A dim left free by `--input-shape`. Leading (`x:Nx3x224x224`, `x:1..32x3x224x224`,
    `x:batch=1..32x...`): the model is imported at batch 1 and compiled for batches lo..hi
    (hi None: no upper bound; passes/generalize_batch.py). Later (`ids:1x1..512`): a sequence
    length, compiled as buckets up to hi (runtime/buckets.py)."""

    name: str = "n"
    lo: int = 1
    hi: int | None = None


_FREE = re.compile(r"(?:(?P<name>[a-z_][a-z0-9_]*)=)?(?P<lo>\d+)\.\.(?P<hi>\d+)|(?P<only>[a-z_][a-z0-9_]*|-1|\?)")


def _dim(token: str) -> int | FreeDim | None:
    if token.isdigit():
        return int(token) or None
    m = _FREE.fullmatch(token)
    if m is None:
        return None
    if m["lo"] is None:
        return FreeDim(m["only"] if m["only"] not in ("-1", "?") else "n")
    lo, hi = int(m["lo"]), int(m["hi"])
    return FreeDim(m["name"] or "n", lo, hi) if 1 <= lo <= hi else None


def _why_not(token: str) -> str | None:
    """Why `_dim` refused `token`, where more can be said than the form expected."""
    m = re.fullmatch(r"\s*(?:[a-z_][a-z0-9_]*=)?(\d+)\.\.(\d+)\s*|\s*(\d+)\s*", token)
    if token.strip() != token:
        return f"dim {token!r} holds spaces"
    if m and m[3] is not None:
        return f"dim {token}: every dim is at least 1"
    if m:
        return f"range {token}: needs 1 <= LO <= HI"
    return None if token else "an empty dim"


def parse_input_shape(text: str) -> tuple[str, tuple]:
    """Parse `NAME:1x3x224x224` as given to `--input-shape`. A leading dim given as a name
    (`N`, `batch`), `-1` or a range `1..32` stays free (a `FreeDim`: a symbolic batch); a later
    dim given as a range (`1..512`, `seq=1..512`; named `seq` by default) is a sequence length,
    compiled as buckets (runtime/buckets.py)."""
    name, sep, dims = text.rpartition(":")
    shape = tuple(_dim(d) for d in dims.lower().split("x")) if dims else ()
    if not sep or not name or not shape or None in shape:
        bad = [t for t, d in zip(dims.lower().split("x"), shape) if d is None][:1] if name and sep else []
        why = f"{_why_not(bad[0])}; " if bad and _why_not(bad[0]) else ""
        raise CompileError(f"--input-shape {text!r}: {why}expected NAME:D0xD1x..., e.g. input:1x3x224x224, or "
                           "input:Nx3x224x224 / input:1..32x3x224x224 to keep the batch free, or "
                           "input_ids:1x1..512 for sequence lengths up to 512")
    later = [d for d in shape[1:] if isinstance(d, FreeDim)]
    if any(d.hi is None for d in later):
        raise CompileError(f"--input-shape {text!r}: a free dim after the batch needs a range (e.g. 1..512 or "
                           "seq=1..512): its lengths are compiled as buckets up to the upper bound")
    shape = (shape[0], *(FreeDim("seq" if d.name == "n" else d.name, d.lo, d.hi) if isinstance(d, FreeDim) else d
                         for d in shape[1:]))
    return name, shape


def bound_shapes(shapes: dict[str, tuple] | None, sizes: dict[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """`--input-shape` values with the free leading dim (the batch) bound to 1, the batch the model
    is imported at, and later free dims (sequence lengths) bound to `sizes[name]`."""
    sizes = sizes or {}
    return {k: tuple(d if not isinstance(d, FreeDim) else 1 if i == 0 else sizes[d.name]
                     for i, d in enumerate(v)) for k, v in (shapes or {}).items()}


def load_onnx(path: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None = None,
              allow_unsupported: bool = False, segments: bool = False) -> ImportedModel:
    """Load, clean up and import an ONNX model; raises CompileError on bad input.

    `allow_unsupported` skips the integer-path op check (for float fallback); control flow that
    frontends/onnx_loops.py cannot unroll and onnx_if.py cannot turn into a select is refused either way.
    With it, nodes no static compile takes run in onnxruntime (the tail); `segments` compiles what follows
    them again where their outputs have static shapes (onnx_tail.split_rest).
    """
    path = Path(path)
    model = _read(path)
    _refuse_string_inputs(model, path)
    _fix_input_shapes(model, bound_shapes(input_shapes), path)
    as_read = copy.deepcopy(model) if allow_unsupported else None  # what onnxruntime runs if intq cannot
    try:
        return _import(model, path, allow_unsupported, segments)
    except UnsupportedModelError as err:
        if as_read is None or not _onnxruntime_loads(as_read):
            raise
        return _all_in_onnxruntime(as_read, str(err).removeprefix(f"{path}: ").splitlines()[0], path)


def onnxruntime_model(path: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None, why: str
                      ) -> ImportedModel | None:
    """The whole model, read and its input shapes bound, as a tail for onnxruntime, each node listed with
    `why` (--allow-float's last resort); None where onnxruntime cannot load it."""
    path = Path(path)
    model = _read(path)
    _fix_input_shapes(model, bound_shapes(input_shapes), path)
    return _all_in_onnxruntime(model, why, path) if _onnxruntime_loads(model) else None


def _onnxruntime_loads(model: onnx.ModelProto) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001  (then the refusal stands)
        return False
    return True


def _import(model: onnx.ModelProto, path: Path, allow_unsupported: bool, segments: bool) -> ImportedModel:
    """load_onnx after the file is read and its input shapes bound."""
    try:  # ImageScaler / Crop; opset < 7, which onnxruntime cannot run (onnx_old_opsets.py)
        old_opsets_to_current(model)
    except Exception as err:  # the version converter's own assertions
        raise UnsupportedModelError(f"{path}: opset {model.opset_import[0].version} could not be converted to "
                                    f"opset 7 (onnx.version_converter: {str(err).strip().splitlines()[0]}); convert "
                                    "the model to opset 7 or later and compile that") from None
    widen_float_inputs(model)  # float16 / bfloat16 / float64 inputs: float32 ones, cast inside (onnx_float_io.py)
    narrow_outputs = float16_as_float32(model)  # a float16 graph computes in float32 here (onnx_float16.py)
    read_qonnx(model)  # QONNX Quant nodes: folded into constants or QDQ triples (onnx_qonnx.py)
    refuse_qonnx(model, path)  # those left (Trunc, > 8-bit activations): named, with the way on (onnx_qdq.py)
    strip_qdq(model)  # a pre-quantized (QDQ) model: its float graph, calibrated anew (onnx_qdq.py)
    if any(n.op_type == "Attention" for n in model.graph.node):  # before onnxruntime inlines the newer
        model = onnx.shape_inference.infer_shapes(model)          # opsets' Attention into shape arithmetic
        decompose_attention(model)
    decompose_group_norms(model)  # before onnxruntime inlines GroupNormalization's body (onnx_group_norm.py)
    decompose_center_crop_pads(model)  # and CenterCropPad's, whose pads it computes at run time
    model = _basic_optimize(model, path)
    while unroll_loops(model):  # Scan, and Loop with a constant count: bodies inlined (onnx_loops.py)
        model = _basic_optimize(model, path)  # fold what the iteration numbers made constant: the count
        # of a later loop may follow from an unrolled one's outputs (stacked Keras LSTMs)
    strip_qdq(model)  # quantized ops the unrolled bodies brought in (a dynamic-range TFLite LSTM's WHILE loop)
    legacy_forms_to_tvm_forms(model)  # Slice-1, Reshape-1, Upsample-9: the forms TVM's converters read
    shift_half_pixel_rois(model)  # RoiAlign's half-pixel rois as TVM's converter reads them (onnx_roi_align.py)
    if select_ifs(model):  # data-dependent If: both branches computed, then a Where
        model = onnx.shape_inference.infer_shapes(model)
    if einsum_to_matmul(model):  # Einsum with a constant operand (grouped linear layers): a MatMul
        model = onnx.shape_inference.infer_shapes(model)
    unroll_lstms(model)
    decompose_attention(model)  # opset 23's Attention op -> MatMul/Softmax (onnx_attention.py)
    # ops with neither a TVM converter nor an ONNX function (onnx_decompose.py); Pow of integers or of two
    # types (onnx_pow_types.py); Resize coordinates TVM cannot map (onnx_resize_coords.py), or a filter intq does
    # not lower (antialias, cubic: onnx_resize_filters.py)
    if decompose_ops(model) + pow_to_one_dtype(model) + resize_coordinates_to_gathers(model) + \
            resize_filters_to_matmuls(model):
        model = _reoptimize(model, path)  # shapes through them (an ai.onnx.ml Scaler stopped inference)
    if fold_unit_window_axes(model):  # pools over > 3 spatial axes (jax2onnx's reduce_window): 1-3 (onnx_window_axes.py)
        model = onnx.shape_inference.infer_shapes(model)
    expanded = expand_functions(model, path)  # function ops TVM lacks -> their schema bodies (onnx_functions.py)
    if expanded is not None:
        model = _reoptimize(expanded, path)  # fold the bodies' shape arithmetic
    _scalars_to_constants(model)
    resize_to_nchw(model, path)  # before the op check: NHWC Resizes become NCHW ones
    model, tail = _check_supported(model, path, allow_unsupported, segments)
    if tail is not None and not model.graph.output:  # --allow-float, nothing to compile: onnxruntime runs it all
        return ImportedModel(None, [], [], [], source=str(path), tail=tail)
    inputs = [_spec(v, path) for v in _graph_inputs(model)]
    for spec in inputs:
        if spec.dtype not in INPUT_DTYPES:
            raise UnsupportedModelError(f"{path}: input {spec.name!r} has dtype {spec.dtype}; supported: float32 "
                                        "(quantized at the boundary) and integers or bool (ids, masks, 8-bit "
                                        "images: kept exact)")
    outputs = [dataclasses.replace(s, dtype=narrow_outputs.get(s.name, s.dtype))
               for s in (_spec(v, path) for v in model.graph.output)]
    return ImportedModel(*_to_relax(model, path), inputs=inputs, outputs=outputs, source=str(path), tail=tail)


def _all_in_onnxruntime(model: onnx.ModelProto, why: str, path: Path) -> ImportedModel:
    """--allow-float where intq cannot take the graph at all (TVM's importer failing on a converter's own
    limits, dynamic pads or a shape tensor where it wants a constant; an opset the converter cannot raise;
    shapes onnx cannot infer): onnxruntime runs the whole model as the file gives it, every node listed
    with the reason (onnx_tail.py)."""
    _, tail = split_tail(model, dict.fromkeys(range(len(model.graph.node)), why))
    return ImportedModel(None, [], [], [], source=str(path), tail=tail)


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise CompileError(f"{path}: {'a directory, not an ONNX file' if path.is_dir() else 'no such file'}")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises several types for garbage and truncation
        raise CompileError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from None
    if not model.graph.node:
        raise CompileError(f"{path}: not a readable ONNX file (no graph nodes; truncated or not ONNX?)")
    if model.ir_version < 4:  # IR 3 listed every initializer as a graph input; later IRs and onnxruntime don't
        model.ir_version = 4
    # an initializer listed as a graph input is an overridable default; intq takes it as the constant it is
    # (TVM's importer made it both a parameter and an input, and its clean-up failed: 'used before definition')
    inits = {i.name for i in model.graph.initializer}
    if any(v.name in inits for v in model.graph.input):
        kept = [v for v in model.graph.input if v.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    _sort_nodes(model.graph)
    quantized_contrib_to_float(model)  # quantize_dynamic's QAttention / QEmbedLayerNormalization: their float ops
    contrib_to_standard(model)  # onnxruntime's own ops (com.microsoft, and some it registers in the ONNX domain,
    _infer_output_shapes(model)  # which the checker does not know) as standard ops
    tflite_ops_to_standard(model)  # TFLite builtins tf2onnx left as TFL_* nodes (onnx_tflite.py)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise CompileError(f"{path}: invalid ONNX model: {first}") from None
    return model


def _infer_output_shapes(model: onnx.ModelProto) -> None:
    """Graph outputs declared without a shape (onnxruntime runs such files; onnx's checker calls the
    shape a required field) take the one onnx's shape inference gives them, in place."""
    bare = [o for o in model.graph.output if o.type.HasField("tensor_type") and not o.type.tensor_type.HasField("shape")]
    if not bare:
        return
    try:
        inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    except Exception:  # noqa: BLE001  (the checker then names what is wrong)
        return
    for out in bare:
        if out.name in inferred and inferred[out.name].type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.CopyFrom(inferred[out.name].type.tensor_type.shape)


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Nodes in an order where each comes after the producers of its inputs, in place (stable: a sorted
    graph is unchanged). onnxruntime sorts the graph itself, so files whose nodes are out of order run
    there (onnxconverter-common's float16 conversion appends its input Casts at the end)."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    if all(producer.get(x, -1) < i for i, n in enumerate(nodes) for x in n.input):
        return
    order, placed, visiting = [], set(), set()
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            i, expanded = stack.pop()
            if i in placed:
                continue
            if expanded:
                placed.add(i)
                order.append(nodes[i])
                continue
            if i in visiting:  # a cycle: left for the checker to name
                return
            visiting.add(i)
            stack.append((i, True))
            stack.extend((producer[x], False) for x in reversed(nodes[i].input) if x in producer
                         and producer[x] not in placed)
    del graph.node[:]
    graph.node.extend(order)


def input_dim_names(path: str | os.PathLike) -> dict[str, list[str | None]]:
    """Each graph input's dims as the file names them (a symbol, or None where fixed or unnamed),
    read without the weights; {} where the file cannot be read (load_onnx says why)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return {}
    return {v.name: [d.dim_param if d.dim_param not in UNNAMED_DIMS and not _fixed(d) else None
                     for d in v.type.tensor_type.shape.dim]
            for v in _graph_inputs(model)}


# dim names that name no dim: paddle2onnx marks every unknown dim "?" ([?, 3, ?, ?]: PP-OCR's direction
# classifier bound 1x3x48x192 was refused, its "?" given 48 and 192)
UNNAMED_DIMS = ("", "?")


def check_shared_dims(path: str | os.PathLike, shapes: dict[str, tuple] | None) -> None:
    """Refuse `--input-shape` values that give one dim name of the file two values (a BERT's ids left free
    1..512 and its mask fixed at 64, both `sequence_length`; a free batch N on one input and 1 on
    another): the graph then adds tensors of unequal shapes, and onnxruntime's refusal of the bound
    model ("Incompatible dimensions" at some Add) named neither the inputs nor the dim."""
    seen: dict[str, tuple[str, object]] = {}  # dim name -> (the first input giving it, its value)
    for name, dims in input_dim_names(path).items():
        for symbol, value in zip(dims, (shapes or {}).get(name, ())):
            if symbol is None:
                continue
            first, before = seen.setdefault(symbol, (name, value))
            if before != value:
                raise CompileError(f"{path}: inputs {first!r} and {name!r} share the dim {symbol!r} in the model, and "
                                   f"--input-shape gives it {_shown(before)} and {_shown(value)}; give both the same "
                                   "(a free batch N, or a range like 1..512 for a free length, to each)")


def _shown(value) -> str:
    if not isinstance(value, FreeDim):
        return str(value)
    return f"{value.name}={value.lo}..{value.hi}" if value.hi is not None else f"a free {value.name}"


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _refuse_string_inputs(model: onnx.ModelProto, path: Path) -> None:
    """A string input (text straight into a LabelEncoder or tokenizer op) is named first: no node of the
    graph could run on integers before it (the op check named the encoder alone, not why)."""
    strings = [v.name for v in _graph_inputs(model) if v.type.WhichOneof("value") == "tensor_type"
               and v.type.tensor_type.elem_type == onnx.TensorProto.STRING]
    if strings:
        raise UnsupportedModelError(f"{path}: input(s) {strings} are string tensors: intq compiles numeric models; "
                                    "map the text to ids outside the model (a tokenizer or a lookup in your code) "
                                    "and export the graph from the ids on")


def _fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    inputs = {v.name: v for v in _graph_inputs(model)}
    # a value_info entry for a graph input (left by a graph extractor or editor) would shadow the
    # shape bound here for later passes that read both
    stale = [v for v in model.graph.value_info if v.name in inputs]
    for v in stale:
        model.graph.value_info.remove(v)
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise CompileError(f"{path}: --input-shape names {unknown}, but the model's inputs are {sorted(inputs)}")
    bound, dynamic = False, []
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if name in shapes:
            if len(shapes[name]) != len(dims):
                raise CompileError(f"{path}: input {name!r} has rank {len(dims)}, "
                                   f"--input-shape gives {len(shapes[name])} dims")
            for dim, size in zip(dims, shapes[name]):
                if _fixed(dim) and dim.dim_value != size:
                    raise CompileError(f"{path}: input {name!r} dim is fixed to {dim.dim_value}, "
                                       f"--input-shape gives {size}")
                bound |= not _fixed(dim)
                dim.Clear()
                dim.dim_value = size
        if not all(_fixed(d) for d in dims):
            dynamic.append((name, dims))
    if dynamic:  # every such input in one message (a BERT's ids and mask), not one per attempt
        raise CompileError(_dynamic_dims_message(path, dynamic))
    if bound:
        _forget_declared_shapes(model)


def _dynamic_dims_message(path: Path, dynamic: list) -> str:
    """Name each input whose dims are left dynamic, with the --input-shape flags that fix them all; a
    dim past the batch that the file names (`sequence_length`) may stay free as a range."""
    text = {name: "x".join(str(d.dim_value) if _fixed(d) else (d.dim_param or "?") for d in dims) for name, dims in dynamic}
    shown = (f"input {dynamic[0][0]!r} has dynamic dimensions ({text[dynamic[0][0]]})" if len(dynamic) == 1 else
             "inputs " + ", ".join(f"{k!r} ({v})" for k, v in text.items()) + " have dynamic dimensions")
    flags = " ".join("--input-shape " + name + ":" + "x".join(
        str(d.dim_value) if _fixed(d) else "N" if i == 0 else "<size>" for i, d in enumerate(dims))
        for name, dims in dynamic)
    named = sorted({d.dim_param for _, dims in dynamic for d in list(dims)[1:] if not _fixed(d) and d.dim_param})
    later = (f"; a <size> given as a range (1..512) stays free, compiled as buckets, and inputs sharing a dim name "
             f"({', '.join(named)}) take the same value" if named else "")
    return (f"{path}: {shown}; fix them with {flags} (a number for each <size>; a leading N leaves the batch free, "
            f"or give a number for it too{later})")


def _forget_declared_shapes(model: onnx.ModelProto) -> None:
    """Drop the shapes the file declares past its inputs (value_info, the outputs' dims; shape inference
    finds them again from the bound inputs): an exporter writes the traced size of a dim it did not
    mark free (LORE's table transformer declares [batch, 54, 4] for any number of cells), and onnxruntime
    then refuses the bound model ("Inferred=32 Declared=54")."""
    del model.graph.value_info[:]
    for output in model.graph.output:
        if output.type.HasField("tensor_type") and output.type.tensor_type.HasField("shape"):
            for dim in output.type.tensor_type.shape.dim:
                dim.Clear()


def _fixed(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A static dim; exporters write free dims as a name, nothing, -1 or 0 (Paddle, some Keras)."""
    return dim.HasField("dim_value") and dim.dim_value > 0


def _basic_optimize(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Constant-fold shape subgraphs with onnxruntime (TVM's importer rejects dynamic pads)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="intq-onnx-") as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "basic.onnx")
        onnx.save(model, src)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = dst
        options.log_severity_level = 4  # its error comes back in the message below (it logged it, colored, too)
        try:
            ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # its message names the copy: name the user's file
            raise CompileError(f"{path}: onnxruntime cannot load the model: {str(err).replace(src, str(path))}"
                               ) from None
        model = onnx.load(dst)
    return onnx.shape_inference.infer_shapes(model)


def _reoptimize(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """`_basic_optimize` once more, after rewrites that leave the forms TVM's converters read (legacy_forms_to_tvm_forms:
    Slice and Reshape with inputs, Resize-11 for an Upsample; the unrolled recurrences' Slices). In an opset < 11 file
    those are not valid at its opset, and onnxruntime, which ran the file before, refuses them: an opset-7 Caffe
    graph with an Upsample and an LpNormalization was refused in both modes. Shapes then come from ONNX's
    inference, which takes them."""
    try:
        return _basic_optimize(model, path)
    except CompileError:
        return onnx.shape_inference.infer_shapes(model)


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _scalars_to_constants(model: onnx.ModelProto) -> None:
    """Turn scalar initializers (clip bounds, pad values) and small integer ones (shapes, axes)
    into Constant nodes.

    Weights stay parameters of the imported function; scalars become Relax constants so
    that constant folding resolves the importer's guards around them, and shapes must be
    constants for the importer to infer static shapes (an Expand whose folded target shape
    stayed a parameter gave a tensor of unknown shape, and a crash in FoldConstant).
    """
    integer = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
    scalars = [i for i in model.graph.initializer
               if int(np.prod(i.dims)) <= 1 or (i.data_type in integer and int(np.prod(i.dims)) <= 16)]
    nodes = [onnx.helper.make_node("Constant", [], [i.name], value=i, name=f"{i.name}/Constant") for i in scalars]
    names = {i.name for i in scalars}
    keep = [i for i in model.graph.initializer if i.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    inputs = [v for v in model.graph.input if v.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    old = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + old)


INPUT_DTYPES = frozenset({"float32", "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})
EXACT_TYPES = frozenset({onnx.TensorProto.BOOL, onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                         onnx.TensorProto.UINT16, onnx.TensorProto.INT32, onnx.TensorProto.UINT32,
                         onnx.TensorProto.INT64, onnx.TensorProto.UINT64})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


VALUE_SIZED_OPS = ("NonMaxSuppression", "NonZero", "Unique", "Compress")  # output sizes the values decide


def _check_supported(model: onnx.ModelProto, path: Path, allow_unsupported: bool = False, segments: bool = False
                     ) -> tuple[onnx.ModelProto, Tail | None]:
    """Refuse ops without an integer lowering unless allowed, and what no static compile can take
    (control flow left, value-sized outputs, shapes from values, ops without a converter), naming
    every node; allowed, the latter and everything after them become the tail (onnx_tail.py)."""
    def name(n):
        return f"{n.op_type} (node {n.name or '<unnamed>'})"

    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.value_info,
                                                          *model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})

    def exact(n):  # integer/bool in and out (bit shifts, modulo, bitwise logic on ids): integer arithmetic
        names = [x for x in (*n.input, *n.output) if x]
        return bool(names) and all(types.get(x) in EXACT_TYPES for x in names)

    nodes = list(model.graph.node)
    flow = {i: name(n) for i, n in enumerate(nodes) if n.op_type in CONTROL_FLOW_OPS}
    operands = dynamic_shape_operands(model)
    selecting = {i: text.split(" input ")[0] for i, text in operands if nodes[i].op_type in VALUE_SIZED_OPS}
    shapes = [(i, text) for i, text in operands if i not in selecting]
    converters = _tvm_converters()
    unconvertible = {i: name(n) for i, n in enumerate(nodes) if n.op_type not in CONTROL_FLOW_OPS  # integer ones too:
                     and (n.domain not in ("", "ai.onnx") or n.op_type not in converters)}  # TVM cannot import them
    tail, alone = None, False  # alone: nothing before them to compile, so onnxruntime runs the whole model
    if flow or selecting or shapes or unconvertible:
        why = {**{i: OPAQUE for i in unconvertible},
               **{i: "a shape computed from an input's values" for i, _ in shapes},
               **{i: "control flow that cannot be unrolled" for i in flow},
               **{i: "outputs as many elements as its input values select" for i in selecting}}
        head, tail = split_tail(model, why, segments and allow_unsupported)
        alone = not head.graph.output  # they read the inputs themselves: the head computes nothing
        if allow_unsupported:  # alone, the artifact is the tail: --allow-float runs whatever onnxruntime runs
            model, nodes, flow, selecting, shapes, unconvertible = head, list(head.graph.node), {}, {}, [], {}
        else:
            tail = None
    bad = [name(n) for n in nodes if n.op_type not in CONTROL_FLOW_OPS
           and (n.op_type not in INTEGER_PATH_OPS or n.domain not in ("", "ai.onnx")) and not exact(n)]
    message = ""
    later = ("\nWith --allow-float they and every node after them run in onnxruntime after the artifact, in "
             "float (a detector's NMS after its integer network).")
    if selecting:
        message = (f"{path}: {len(selecting)} node(s) output as many elements as their input values select (a "
                   "detector's non-maximum suppression, NonZero, Unique): intq compiles static shapes:\n  "
                   + "\n  ".join(selecting.values()) + "\nExport the model without them (a detector "
                   "without its NMS, e.g. ultralytics' export(nms=False)) and run them on the artifact's outputs.")
    if shapes:
        message += "\n" if message else ""
        message += (f"{path}: {len(shapes)} shape operand(s) computed from the values of an input: intq compiles "
                   "static shapes:\n  " + "\n  ".join(text for _, text in shapes) +
                   "\nMake them constants (initializers) in the model, e.g. by exporting with fixed shapes.")
    if flow:
        message += ("\n" if message else "") + (f"{path}: {len(flow)} control-flow node(s): intq compiles static graphs only (a Loop "
                   "whose trip count is not a constant or whose body computes its own condition, a Scan over a free "
                   "length or of opset 8, and an If whose branches are not plain graphs with outputs of one static "
                   "shape are refused; other Loops and Scans are unrolled):\n  " + "\n  ".join(flow.values()) +
                   "\nExport the model without control flow (fix the branch condition, e.g. the sample rate, "
                   "at export time; unroll loops) and compile that.")
    behind = _downstream(nodes, {*selecting, *flow, *(i for i, _ in shapes)})
    own = {i: n for i, n in unconvertible.items() if i not in behind}
    if own:
        message += ("\n" if message else f"{path}: ") + (
            f"{len(own)} node(s) use ops that neither intq's integer path nor TVM's ONNX importer "
            "supports:\n  " + "\n  ".join(own.values()) + "\n" + _unconvertible_hint(model, list(own.values())))
    if len(own) < len(unconvertible):  # their shapes wait on the nodes above: rewrites that need them did not run
        message += ("\n" if message else f"{path}: ") + (
            f"{len(unconvertible) - len(own)} node(s) after those, whose shapes the nodes above decide, are left "
            "as written (intq unrolls recurrences and rewrites onnxruntime's fusions only where shapes are "
            "static):\n  " + "\n  ".join(n for i, n in unconvertible.items() if i in behind))
    named = {*selecting.values(), *flow.values(), *unconvertible.values(), *(t.split(" input ")[0] for _, t in shapes)}
    bad = [b for b in bad if b not in named]  # each node once, under what stops it in both modes
    if message:
        message += later if not alone else (
            "\nWith --allow-float the whole model runs in onnxruntime, in float: such nodes and every node after "
            "them run there, and here they read the model's inputs, so nothing before them is left to compile.")
    if bad and not allow_unsupported:
        message += ("\n" if message else f"{path}: ") + (
            f"{len(bad)} node(s) use ops the integer-only path does not support:\n  " + "\n  ".join(bad) +
            "\nPass --allow-float to run them in float (the artifact is then not integer-only).")
    if message:
        raise UnsupportedModelError(message)
    return model, tail


def _downstream(nodes: list, starts: set[int]) -> set[int]:
    """Indices of the nodes that read, directly or through others, an output of the nodes `starts`."""
    made, found = set(), set()
    for index, node in enumerate(nodes):  # topological: a consumer comes after its producers
        if index in starts or names_read(node) & made:
            found |= {index} - starts
            made |= {o for o in node.output if o}
    return found


_RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                         "Multinomial"})


def _unconvertible_hint(model: onnx.ModelProto, names: list[str]) -> str:
    """What to do about ops nothing converts, by where they come from."""
    nodes = [n for n in model.graph.node if f"{n.op_type} (node {n.name or '<unnamed>'})" in names]
    domains = {n.domain for n in nodes}
    hints = []
    random = sorted({n.op_type for n in nodes if n.op_type in _RANDOM_OPS})
    if random:  # VITS / MMS-TTS samples its durations' and its latent's noise in the graph
        hints.append(f"({', '.join(random)} draw random numbers on every run, which a compiled integer graph cannot "
                     "do; export with the noise scaled to 0 (VITS: noise_scale=0, noise_scale_duration=0) or "
                     "pass the noise as an input, or compile with --allow-float to sample it in onnxruntime)")
    if "com.microsoft" in domains:
        hints.append("(com.microsoft ops are onnxruntime's own fusions; intq rewrites SkipLayerNormalization, Gelu, "
                     "FastGelu, BiasGelu, QuickGelu, FusedMatMul, FusedConv, FusedGemm, BiasAdd, QGemm, the QLinear "
                     "ops, Attention, MultiHeadAttention, GroupQueryAttention and RotaryEmbedding (not their shared, "
                     "window-sized or quantized caches, packed [B, L, N, 3, h] q / k / v, per-head q / k norms or "
                     "Attention's do_rotary), not these: compile the model as exported, before onnxruntime's optimizer)")
    if "com.microsoft.nchwc" in domains:
        hints.append("(com.microsoft.nchwc ops are onnxruntime's blocked-layout kernels for the CPU that saved the file "
                     "at ORT_ENABLE_ALL, which onnxruntime itself warns is hardware specific: save it at "
                     "ORT_ENABLE_EXTENDED or below, or compile the model as exported)")
    if domains - {"com.microsoft", "com.microsoft.nchwc", "", "ai.onnx"}:
        hints.append("(ai.onnx.ml tree ensembles, classifiers with label outputs, ZipMap... are not neural-network ops; "
                     "convert the model without them, or run them outside the compiled part)")
    return "\n".join(hints)


@functools.lru_cache(maxsize=1)
def _tvm_converters() -> frozenset[str]:
    """The ONNX ops TVM 0.27's importer converts (its converter table)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return frozenset(_get_convert_map())


def _spec(value: onnx.ValueInfoProto, path: Path) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":  # a sequence, map or optional graph input or output
        raise UnsupportedModelError(f"{path}: {value.name!r} is a {kind.replace('_type', '')}, not a tensor: intq "
                                    "compiles models whose inputs and outputs are tensors")
    ttype = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
    if min(dims, default=1) <= 0:
        raise UnsupportedModelError(f"{path}: tensor {value.name!r} has an unknown shape after shape inference")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    return TensorSpec(value.name, tuple(dims), dtype)


def _to_relax(model: onnx.ModelProto, path: Path):
    import tvm
    from tvm import relax

    from .fold_constant_calls import fold_constant_calls
    from .fold_small_constants import fold_small_constants
    from .relax_cleanup import bool_reductions, clip_calls_to_ops, clipped_takes, drop_empty_concat_inputs
    from .te_calls_to_ops import te_calls_to_ops

    try:
        mod = import_onnx(model)
    except Exception as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UnsupportedModelError(f"{path}: TVM's ONNX importer failed: {last}") from None
    mod, params = relax.frontend.detach_params(mod)
    try:
        mod = tvm.transform.Sequential([fold_small_constants, fold_constant_calls,
                                        fold_small_constants,  # what FoldConstant leaves: astype(dim size)
                                        clip_calls_to_ops, drop_empty_concat_inputs,
                                        te_calls_to_ops, clipped_takes, bool_reductions,
                                        relax.transform.DeadCodeElimination()])(mod)
    except Exception as err:  # e.g. an op on a tensor whose shape the importer left unknown
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UnsupportedModelError(f"{path}: TVM could not clean up the imported graph ({type(err).__name__}: "
                                    f"{last}); bind every dynamic dimension with --input-shape") from None
    return mod, [p.numpy() for p in params.get("main", [])]
