"""A small ONNX -> torch evaluator, differentiable twice, for Hessian estimates.

    run(feeds, weights) -> outputs     (every node evaluated by its torch twin, in graph order)

Why not onnx2torch: it requires torchvision, whose only wheels here are built against CUDA
torch and fail to load with the project's pinned CPU torch 2.13 (`torchvision::nms does
not exist`). The graphs that need this are the ones the compiler sees after onnxruntime's
basic clean-up (shapes folded to constants), so a short op table suffices. Unsupported ops
are all reported at once. Ops follow the ONNX spec for opset >= 13 (Clip, Squeeze,
Unsqueeze, ReduceMean, Split, Slice take their bounds/axes as inputs; older attribute
forms are accepted too).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from frontends.errors import UnsupportedModelError

_OPS: dict[str, Callable] = {}


def converts(*op_types: str):
    """Register the torch twin of ONNX ops: `fn(inputs, attrs) -> tensor or tuple`."""
    def register(fn):
        for op in op_types:
            _OPS[op] = fn
        return fn
    return register


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


@converts("Conv")
def _conv(x, a):
    import torch.nn.functional as F

    w, b = x[1], x[2] if len(x) > 2 else None
    dims = w.ndim - 2
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModelError(f"Conv auto_pad={a['auto_pad']!r}: only explicit pads are supported")
    pads = a.get("pads", [0] * 2 * dims)
    inp = x[0]
    if pads[:dims] != pads[dims:]:  # asymmetric: pad explicitly (F.pad takes the last axis first)
        inp = F.pad(inp, [p for i in reversed(range(dims)) for p in (pads[i], pads[i + dims])])
        pads = [0] * 2 * dims
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return conv(inp, w, b, a.get("strides", 1), pads[:dims], a.get("dilations", 1), a.get("group", 1))


@converts("Gemm")
def _gemm(x, a):
    A = x[0].transpose(-1, -2) if a.get("transA", 0) else x[0]
    B = x[1].transpose(-1, -2) if a.get("transB", 0) else x[1]
    y = a.get("alpha", 1.0) * (A @ B)
    return y + a.get("beta", 1.0) * x[2] if len(x) > 2 and x[2] is not None else y


@converts("MatMul")
def _matmul(x, a):
    return x[0] @ x[1]


_BINARY = {"Add": lambda p, q: p + q, "Sub": lambda p, q: p - q, "Mul": lambda p, q: p * q,
           "Div": lambda p, q: p / q, "Pow": lambda p, q: p ** q, "Equal": lambda p, q: p == q,
           "Less": lambda p, q: p < q, "Greater": lambda p, q: p > q, "LessOrEqual": lambda p, q: p <= q,
           "GreaterOrEqual": lambda p, q: p >= q, "And": lambda p, q: p & q, "Or": lambda p, q: p | q,
           "Xor": lambda p, q: p ^ q}


@converts(*_BINARY)
def _binary(x, a, op=None):
    return _BINARY[op](x[0], x[1])


@converts("Max", "Min")
def _variadic(x, a, op=None):
    import torch

    out = x[0]
    for t in x[1:]:
        out = torch.maximum(out, t) if op == "Max" else torch.minimum(out, t)
    return out


_UNARY = ("Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Log", "Reciprocal", "Neg", "Abs", "Sign", "Floor",
          "Ceil", "Round", "Sin", "Cos", "Softplus", "Softsign", "Identity", "Dropout", "Not")


@converts(*_UNARY)
def _unary(x, a, op=None):
    import torch

    fn = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
          "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Reciprocal": torch.reciprocal,
          "Neg": torch.neg, "Abs": torch.abs, "Sign": torch.sign, "Floor": torch.floor, "Ceil": torch.ceil,
          "Round": torch.round, "Sin": torch.sin, "Cos": torch.cos,
          "Softplus": torch.nn.functional.softplus, "Softsign": torch.nn.functional.softsign,
          "Not": torch.logical_not}.get(op, lambda t: t)
    return fn(x[0])


@converts("LeakyRelu", "Elu", "HardSigmoid", "HardSwish")
def _parametric(x, a, op=None):
    import torch.nn.functional as F

    if op == "LeakyRelu":
        return F.leaky_relu(x[0], a.get("alpha", 0.01))
    if op == "Elu":
        return F.elu(x[0], a.get("alpha", 1.0))
    if op == "HardSigmoid":
        return (x[0] * a.get("alpha", 0.2) + a.get("beta", 0.5)).clamp(0.0, 1.0)
    return x[0] * (x[0] / 6 + 0.5).clamp(0.0, 1.0)


@converts("Expand")
def _expand(x, a):
    import torch

    shape = _ints(x[1])
    return x[0] * torch.ones(shape, dtype=x[0].dtype) if x[0].dtype.is_floating_point else \
        torch.broadcast_to(x[0], torch.broadcast_shapes(tuple(x[0].shape), tuple(shape)))


@converts("Clip")
def _clip(x, a):
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return x[0].clamp(lo, hi)


@converts("Softmax")
def _softmax(x, a):
    return x[0].softmax(a.get("axis", -1))


@converts("Gelu")
def _gelu(x, a):
    import torch.nn.functional as F

    return F.gelu(x[0], approximate="tanh" if a.get("approximate", b"none") in (b"tanh", "tanh") else "none")


@converts("LayerNormalization")
def _layer_norm(x, a):
    import torch.nn.functional as F

    axis = a.get("axis", -1) % x[0].ndim
    return F.layer_norm(x[0], x[0].shape[axis:], x[1], x[2] if len(x) > 2 else None, a.get("epsilon", 1e-5))


@converts("BatchNormalization")
def _batch_norm(x, a):
    import torch.nn.functional as F

    return F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))


@converts("GlobalAveragePool")
def _global_avg_pool(x, a):
    return x[0].mean(dim=tuple(range(2, x[0].ndim)), keepdim=True)


@converts("MaxPool", "AveragePool")
def _pool(x, a, op=None):
    import torch.nn.functional as F

    k = a["kernel_shape"]
    dims = len(k)
    pads = a.get("pads", [0] * 2 * dims)
    if pads[:dims] != pads[dims:] or a.get("ceil_mode", 0) or len(k) != 2:
        raise UnsupportedModelError(f"{op} with asymmetric pads, ceil_mode or rank != 2 is not supported")
    if op == "MaxPool":
        return F.max_pool2d(x[0], k, a.get("strides", 1), pads[:dims], a.get("dilations", 1))
    return F.avg_pool2d(x[0], k, a.get("strides", 1), pads[:dims], count_include_pad=bool(a.get("count_include_pad", 0)))


_REDUCE = {"ReduceMean": lambda t, d, k: t.mean(dim=d, keepdim=k), "ReduceSum": lambda t, d, k: t.sum(dim=d, keepdim=k),
           "ReduceMax": lambda t, d, k: t.amax(dim=d, keepdim=k), "ReduceMin": lambda t, d, k: t.amin(dim=d, keepdim=k),
           "ReduceProd": lambda t, d, k: _prod(t, d, k),
           "ReduceL1": lambda t, d, k: t.abs().sum(dim=d, keepdim=k),
           "ReduceL2": lambda t, d, k: (t * t).sum(dim=d, keepdim=k).sqrt(),
           "ReduceSumSquare": lambda t, d, k: (t * t).sum(dim=d, keepdim=k),
           "ReduceLogSumExp": lambda t, d, k: t.logsumexp(dim=d, keepdim=k)}


def _prod(t, dims, keep: bool):
    for d in sorted((d % t.ndim for d in dims), reverse=True):  # torch's prod takes one dim at a time
        t = t.prod(dim=d, keepdim=keep)
    return t


@converts(*_REDUCE)
def _reduce(x, a, op=None):
    axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
    if not axes and a.get("noop_with_empty_axes", 0):
        return x[0]
    axes = tuple(axes) if axes else tuple(range(x[0].ndim))
    return _REDUCE[op](x[0], axes, bool(a.get("keepdims", 1)))


@converts("Reshape")
def _reshape(x, a, batch=(1, 1)):
    shape = _ints(x[1])
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    declared, actual = batch
    if declared != actual and shape and shape[0] == declared and x[0].shape[0] == actual:
        shape[0] = actual  # the batch size folded into a constant shape: follow the batched run
    return x[0].reshape(shape)


@converts("Flatten")
def _flatten(x, a):
    axis = a.get("axis", 1)
    axis = axis + x[0].ndim if axis < 0 else axis  # in [-r, r]: axis r flattens everything into rows
    return x[0].reshape(math.prod(x[0].shape[:axis]), math.prod(x[0].shape[axis:]))


@converts("Transpose")
def _transpose(x, a):
    return x[0].permute(a.get("perm", list(reversed(range(x[0].ndim)))))


@converts("Concat")
def _concat(x, a):
    import torch

    return torch.cat(list(x), dim=a["axis"])


@converts("Squeeze", "Unsqueeze")
def _squeeze(x, a, op=None):
    axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
    t = x[0]
    if op == "Squeeze":
        axes = axes if axes is not None else [i for i, s in enumerate(t.shape) if s == 1]
        return t.reshape([s for i, s in enumerate(t.shape) if i not in {v % t.ndim for v in axes}])
    for ax in sorted(v % (t.ndim + len(axes)) for v in axes):
        t = t.unsqueeze(ax)
    return t


@converts("Split")
def _split(x, a, op=None, outputs=1):
    sizes = _ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("split")
    axis = a.get("axis", 0)
    if sizes is None:
        sizes = [x[0].shape[axis] // outputs] * outputs
    return tuple(x[0].split(sizes, dim=axis))


@converts("Slice")
def _slice(x, a):
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index = [slice(None)] * x[0].ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise UnsupportedModelError("Slice with a non-positive step is not supported")
        index[ax] = slice(s, e, st)
    return x[0][tuple(index)]


@converts("Gather")
def _gather(x, a):
    import torch

    axis = a.get("axis", 0) % x[0].ndim
    index = x[1].reshape(-1).long()
    index = torch.where(index < 0, index + x[0].shape[axis], index)  # ONNX counts negative indices from the end
    return torch.index_select(x[0], axis, index).reshape(*x[0].shape[:axis], *x[1].shape, *x[0].shape[axis + 1:])


@converts("Cast")
def _cast(x, a):
    import torch

    np_dtype = helper.tensor_dtype_to_np_dtype(a["to"])
    return x[0].to(torch.from_numpy(np.zeros(0, np_dtype)).dtype)


@converts("Where")
def _where(x, a):
    import torch

    return torch.where(x[0].bool(), x[1], x[2])


def _attrs(node: onnx.NodeProto) -> dict:
    return {at.name: helper.get_attribute_value(at) for at in node.attribute}


class TorchGraph:
    """An ONNX graph evaluated with torch; `run` recomputes it for given weights."""

    def __init__(self, model: onnx.ModelProto):
        import torch

        graph = model.graph
        bad = sorted({f"{n.op_type} (node {n.name or '<unnamed>'})" for n in graph.node
                      if n.op_type not in _OPS and n.op_type != "Constant"})
        if bad:
            raise UnsupportedModelError(f"{len(bad)} node(s) use ops the sensitivity evaluator does not support:"
                                        "\n  " + "\n  ".join(bad))
        self.nodes = [(n, _attrs(n)) for n in graph.node]
        self.initializers = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
        self.inputs = [v.name for v in graph.input if v.name not in self.initializers]
        self.outputs = [v.name for v in graph.output]
        dims = graph.input[[v.name for v in graph.input].index(self.inputs[0])].type.tensor_type.shape.dim
        self.batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 1

    def run(self, feeds: dict, weights: dict | None = None) -> list:
        """Outputs for `feeds` (name -> tensor); `weights` overrides initializers by name.

        Feeds may stack several samples along axis 0 of a batch-`self.batch` model: Reshapes
        to a constant shape that starts with the declared batch then follow the actual one
        (check the result against single-sample runs where it matters)."""
        import torch

        env = dict(self.initializers)
        env.update(weights or {})
        env.update({k: torch.as_tensor(v) for k, v in feeds.items()})
        batch = (self.batch, int(env[self.inputs[0]].shape[0]) if env[self.inputs[0]].ndim else 1)
        for node, attrs in self.nodes:
            if node.op_type == "Constant":
                env[node.output[0]] = torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
                continue
            args = [env[name] if name else None for name in node.input]
            fn = _OPS[node.op_type]
            extra = {}
            if "op" in fn.__code__.co_varnames:
                extra["op"] = node.op_type
            if "outputs" in fn.__code__.co_varnames:
                extra["outputs"] = len(node.output)
            if "batch" in fn.__code__.co_varnames:
                extra["batch"] = batch
            out = fn(args, attrs, **extra)
            for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
                env[name] = value
        return [env[name] for name in self.outputs]
