"""onnxruntime's contrib ops (domain com.microsoft) as the standard ONNX ops they stand for.

onnxruntime's transformer optimizer (and `optimum`'s ORT exports) fuse a BERT's layers into contrib
ops; files shipped that way were refused in both modes (TVM converts a few of them, and its
SkipLayerNormalization needs the beta and bias that onnxruntime's fused nodes omit). Rewritten in
place, before anything else reads the graph:

    SkipLayerNormalization(x, skip, gamma, beta?, bias?)   ->  LayerNorm(x + skip (+ bias)) (output 3: the sum)
    SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization  ->  the same with RMSNorm
    LayerNormalization below opset 17 (onnxruntime's own, in the ONNX domain)  ->  LayerNorm(x)
    Gelu(x), BiasGelu(x, b)                  ->  0.5 y (1 + erf(y / sqrt 2)),  y = x (+ b)
    FastGelu(x, b?)                          ->  0.5 y (1 + tanh(sqrt(2 / pi) (y + 0.044715 y^3)))
    QuickGelu(x, alpha)                      ->  x sigmoid(alpha x)
    BiasAdd(x, bias, skip)                   ->  x + bias + skip
    FusedMatMul(A, B, alpha, transA, transB) ->  alpha * (A' @ B')  (last two axes transposed)
    FusedConv(X, W, B?, Z?), FusedGemm(A, B, C?)  ->  activation(Conv(X, W, B) (+ Z)), activation(Gemm(A, B, C))
    EmbedLayerNormalization, Attention       ->  see onnx_contrib_attention.py (a cache, causal: onnx_contrib_decoder.py)
    MultiHeadAttention, GroupQueryAttention, RotaryEmbedding  ->  see onnx_contrib_mha.py, _gqa.py, _rotary.py
    MatMulNBits (4-bit weights)              ->  MatMul with the dequantized weights (onnx_nbits.py)
    com.microsoft.nchwc ops (ORT_ENABLE_ALL's blocked layout)  ->  see onnx_nchwc.py

FusedConv and FusedGemm are what onnxruntime's ORT_ENABLE_EXTENDED level leaves of a CNN's conv and its
activation (`optimized_model_filepath`); their `activation` is one of MLAS's (Relu, LeakyRelu, Tanh,
Sigmoid, Clip, HardSigmoid), with its parameters in `activation_params` or `activation_alpha/beta`.

LayerNorm and RMSNorm are written as the ReduceMean chains that Keras and TF exports use (below opset 17
there is no LayerNormalization op); `passes/fuse_layernorm.py` and `fuse_rmsnorm.py` make them one op
again. A node whose optional statistics outputs (mean, inverse deviation) are read is left as it is,
for the op check to name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import onnx_nbits, onnx_nchwc
from .onnx_contrib_attention import attention, embed_layer_norm
from .onnx_contrib_gqa import group_query_attention
from .onnx_contrib_mha import multi_head_attention
from .onnx_contrib_rotary import rotary_embedding

DOMAIN = "com.microsoft"
# ops onnxruntime registers in the ONNX domain itself, with the first opset where ONNX has its own (None: never);
# its optimizer writes LayerNormalization into opset-14 files (ORT_ENABLE_EXTENDED, optimize_model)
DEFAULT_DOMAIN_OPS = {"SimplifiedLayerNormalization": None, "LayerNormalization": 17}
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)  # a rewrite's constants take these


def _contrib(node, opset: int) -> bool:
    if node.domain in (DOMAIN, onnx_nchwc.DOMAIN):
        return True
    since = DEFAULT_DOMAIN_OPS.get(node.op_type, 0)
    return node.domain in ("", "ai.onnx") and since != 0 and (since is None or opset < since)


class _Writer:
    """Nodes and constants of one rewritten node, named under its own prefix."""

    def __init__(self, node, opset: int, inits: list, floats=np.float32):
        self.prefix, self.opset, self.inits, self.nodes, self.count = node.name or node.output[0], opset, inits, [], 0
        self.floats = np.dtype(floats)  # the node's float type: a float16 model's constants are float16

    def const(self, value, dtype=None) -> str:
        dtype = dtype or self.floats
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), f"{self.prefix}/c{len(self.inits)}"))
        return self.inits[-1].name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.count += 1
        out = out or f"{self.prefix}/{op_type.lower()}{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def mean_last(self, x: str) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const([-1], np.int64)], keepdims=1)
        return self.op("ReduceMean", [x], axes=[-1], keepdims=1)

    def sum(self, names: list[str], out: str | None = None) -> str:
        names = [n for n in names if n]
        total = names[0]
        for i, n in enumerate(names[1:]):
            total = self.op("Add", [total, n], out if i == len(names) - 2 else None)
        return total if out is None or len(names) > 1 else self.op("Identity", [total], out)

    def norm(self, x: str, gamma: str, beta: str | None, eps: float, out: str, simplified: bool) -> None:
        centred = x if simplified else self.op("Sub", [x, self.mean_last(x)])
        variance = self.mean_last(self.op("Pow", [centred, self.const(2.0)]))  # as exports write it: fuse_layernorm's form
        scaled = self.op("Mul", [self.op("Div", [centred, self.op("Sqrt", [self.op("Add", [variance, self.const(eps)])])]),
                                 gamma], None if beta else out)
        if beta:
            self.op("Add", [scaled, beta], out)

    def gelu(self, y: str, out: str) -> None:
        erf = self.op("Erf", [self.op("Div", [y, self.const(np.sqrt(2.0))])])
        self.op("Mul", [self.op("Mul", [y, self.op("Add", [erf, self.const(1.0)])]), self.const(0.5)], out)


# MLAS's fused activations as standard ops: (op, the attributes its parameters fill, in order)
_ACTIVATIONS = {"Relu": ("Relu", ()), "Tanh": ("Tanh", ()), "Sigmoid": ("Sigmoid", ()),
                "LeakyRelu": ("LeakyRelu", ("alpha",)), "HardSigmoid": ("HardSigmoid", ("alpha", "beta")),
                "Clip": ("Clip", ())}  # Clip's bounds become its inputs


def _activation(node) -> tuple[str, list[float]] | None:
    """A Fused* node's activation and its parameters; None for one MLAS has that this module does not know."""
    kind = _attr(node, "activation", b"")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    params = list(_attr(node, "activation_params", [])) or [
        v for v in (_attr(node, "activation_alpha", None), _attr(node, "activation_beta", None)) if v is not None]
    return (kind, [float(p) for p in params]) if not kind or kind in _ACTIVATIONS else None


def _fused(node, w: _Writer, op: str, inputs: list[str], out: str, add: str = "") -> bool:
    """`op` with the node's own attributes, `add` added, then the node's activation, into `out`."""
    found = _activation(node)
    if found is None:
        return False
    kind, params = found
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if not a.name.startswith("activation")}
    y = w.op(op, inputs, None if kind or add else out, **attrs)
    if add:
        y = w.op("Add", [y, add], None if kind else out)
    if kind == "Clip":
        lo, hi = (params + [-np.inf, np.inf][len(params):])[:2]
        w.op("Clip", [y, w.const(lo), w.const(hi)], out)
    elif kind:
        act, names = _ACTIVATIONS[kind]
        w.op(act, [y], out, **dict(zip(names, params)))
    return True


def _attr(node, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _skip_norm(node, w: _Writer, read: set[str], simplified: bool) -> bool:
    ins = list(node.input) + [""] * 5
    outs = list(node.output) + [""] * 4
    if any(o and o in read for o in outs[1:3]):
        return False  # its mean / inverse deviation are read: left for the op check to name
    beta, bias = (None, ins[3]) if simplified else (ins[3] or None, ins[4])
    total = w.sum([ins[0], ins[1], bias], outs[3] or None)
    w.norm(total, ins[2], beta, float(_attr(node, "epsilon", 1e-12)), outs[0], simplified)
    return True


def _rewrite(node, w: _Writer, read: set[str], ranks: dict[str, int], dims: dict[str, list[int]],
             lengths: set[str], inits: dict[str, onnx.TensorProto]) -> bool:
    op, ins, out = node.op_type, list(node.input), node.output[0]
    if node.domain == onnx_nchwc.DOMAIN:
        return onnx_nchwc.rewrite(node, w, inits, _fused)
    if op == "EmbedLayerNormalization":
        return embed_layer_norm(node, w, read, lengths)
    if op == "Attention":
        return attention(node, w, read, ranks, dims, lengths)
    if op == "MultiHeadAttention":
        return multi_head_attention(node, w, read, ranks, dims)
    if op == "GroupQueryAttention":
        return group_query_attention(node, w, read, ranks, dims)
    if op == "RotaryEmbedding":
        return rotary_embedding(node, w, ranks, dims)
    if op == "SkipLayerNormalization":
        return _skip_norm(node, w, read, simplified=False)
    if op == "SkipSimplifiedLayerNormalization":
        return _skip_norm(node, w, read, simplified=True)
    if op in ("SimplifiedLayerNormalization", "LayerNormalization"):
        last = int(_attr(node, "axis", -1)) in (-1, ranks.get(ins[0], 0) - 1)
        if not last or any(o in read for o in node.output[1:] if o):
            return False
        beta = ins[2] if op == "LayerNormalization" and len(ins) > 2 and ins[2] else None
        w.norm(ins[0], ins[1], beta, float(_attr(node, "epsilon", 1e-5)), out, simplified=op != "LayerNormalization")
        return True
    if op in ("Gelu", "BiasGelu"):
        w.gelu(w.sum(ins[:2]), out)
        return True
    if op == "FastGelu":
        y = w.sum(ins[:2])
        inner = w.op("Mul", [w.op("Add", [y, w.op("Mul", [w.op("Mul", [w.op("Mul", [y, y]), y]), w.const(0.044715)])]),
                             w.const(np.sqrt(2.0 / np.pi))])
        w.op("Mul", [w.op("Mul", [y, w.op("Add", [w.op("Tanh", [inner]), w.const(1.0)])]), w.const(0.5)], out)
        return True
    if op == "QuickGelu":
        alpha = float(_attr(node, "alpha", 1.702))
        scaled = ins[0] if alpha == 1.0 else w.op("Mul", [ins[0], w.const(alpha)])  # alpha 1: SiLU, as exported
        w.op("Mul", [ins[0], w.op("Sigmoid", [scaled])], out)
        return True
    if op == "BiasAdd":
        w.sum(ins[:3], out)
        return True
    if op == "MatMulNBits":  # weight-only block quantization: the float weights, quantized anew (onnx_nbits.py)
        weights = onnx_nbits.dequantized(node, inits)
        if weights is None:
            return False
        w.inits.append(numpy_helper.from_array(weights.astype(w.floats), f"{w.prefix}/dequantized"))
        bias = ins[5] if len(ins) > 5 and ins[5] else ""
        w.op("MatMul", [ins[0], w.inits[-1].name], None if bias else out)
        if bias:
            w.op("Add", [w.nodes[-1].output[0], bias], out)
        return True
    if op == "FusedConv":  # inputs X, W, B?, Z? (Z: a residual summed before the activation)
        ins = ins + [""] * (4 - len(ins))
        return _fused(node, w, "Conv", [i for i in ins[:3] if i], out, add=ins[3])
    if op == "FusedGemm":
        return _fused(node, w, "Gemm", ins, out)
    if op == "FusedMatMul":
        if _attr(node, "transBatchA", 0) or _attr(node, "transBatchB", 0):
            return False
        operands = []
        for name, flag in ((ins[0], "transA"), (ins[1], "transB")):
            if _attr(node, flag, 0):
                if name not in ranks or ranks[name] < 2:
                    return False  # rank unknown: the transpose's axes are not known
                r = ranks[name]
                name = w.op("Transpose", [name], perm=[*range(r - 2), r - 1, r - 2])
            operands.append(name)
        alpha = float(_attr(node, "alpha", 1.0))
        product = w.op("MatMul", operands, None if alpha != 1.0 else out)
        if alpha != 1.0:
            w.op("Mul", [product, w.const(alpha)], out)
        return True
    return False


def contrib_to_standard(model: onnx.ModelProto) -> int:
    """Rewrite every com.microsoft node this module knows (module doc); returns how many.

    In passes: shape inference passes contrib ops by, so a node that reads another's output (the
    MultiHeadAttention after a RotaryEmbedding) learns its input's rank once that one is standard ops."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    total, lengths = 0, set()  # lengths: EmbedLayerNormalization's 1-D mask_index outputs
    while any(_contrib(n, opset) for n in model.graph.node):
        count = _rewrite_pass(model, opset, lengths)
        total += count
        if not count:
            break
    return total


def _rewrite_pass(model: onnx.ModelProto, opset: int, lengths: set[str]) -> int:
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    ranks = {name: len(d) for name, d in dims.items()}
    types = {i.name: i.data_type for i in model.graph.initializer}
    try:  # ranks of what a FusedMatMul transposes (shape inference passes contrib ops by)
        inferred = onnx.shape_inference.infer_shapes(model)
        values = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
        shaped = [v for v in values if v.type.tensor_type.HasField("shape")]
        ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in shaped})
        dims.update({v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                     for v in shaped if v.name not in dims})  # -1: a free dim (the decoders' head sizes are fixed)
        types.update({v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type})
    except Exception:  # noqa: BLE001 - a graph inference cannot read keeps the ranks of its constants
        pass
    initializers = {i.name: i for i in model.graph.initializer}
    blocked = not onnx_nchwc.layout_leaks(model)  # else the nchwc ops stay, for the op check to name
    nodes, inits, count, replaced = [], [], 0, set()
    for node in model.graph.node:
        floats = next((t for t in (types.get(i) for i in node.input) if t in FLOATS), onnx.TensorProto.FLOAT)
        writer = _Writer(node, opset, inits, helper.tensor_dtype_to_np_dtype(floats))
        if _contrib(node, opset) and node.output:  # shape inference leaves contrib outputs untyped: the next one reads them
            types.setdefault(node.output[0], floats)
        if _contrib(node, opset) and (blocked or node.domain != onnx_nchwc.DOMAIN) \
                and _rewrite(node, writer, read, ranks, dims, lengths, initializers):
            nodes.extend(writer.nodes)
            count += 1
            replaced.update(node.input)
        else:
            nodes.append(node)
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
        stale = replaced - {i for n in nodes for i in n.input} - {o.name for o in model.graph.output}
        if stale:  # what only a rewritten node read (an nchwc conv's permuted weights)
            kept = [i for i in model.graph.initializer if i.name not in stale]
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
        left = {n.domain for n in model.graph.node}
        if not {DOMAIN, onnx_nchwc.DOMAIN} <= left:
            kept = [o for o in model.opset_import if o.domain not in {DOMAIN, onnx_nchwc.DOMAIN} - left]
            del model.opset_import[:]
            model.opset_import.extend(kept)
    return count
