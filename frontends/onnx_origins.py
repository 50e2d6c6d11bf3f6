"""Which ONNX node each Relax binding of the imported `main` came from, so that a refusal or a
float fallback names the node the user knows (`/encoder/layer.0/Erf`, Erf), not a binding (`lv36`).

TVM's importer keeps its map from ONNX tensor names to Relax expressions to itself
(`ONNXGraphImporter._nodes`); a subclass hands it over after building the graph. A node's
output is emitted as a binding when a consumer is normalized, its sub-expressions just before
it: so each binding the map does not name belongs to the next one it does. The result is a
function attribute (`ORIGINS_ATTR`, JSON {binding name: origin}) that travels with `main`
through the float passes, whose rewrites keep or inherit binding names (`passes/unique_names.py`
adds `_1`, `_2`, ... to repeats).
"""

from __future__ import annotations

import functools
import json
import re
import warnings

import onnx

ORIGINS_ATTR = "intq.onnx_nodes"


def import_onnx(model: onnx.ModelProto):
    """`tvm.relax.frontend.onnx.from_onnx(model, keep_params_in_input=True, sanitize_input_names=False)`,
    with `main` carrying ORIGINS_ATTR."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    if model.ir_version < 3:
        raise ValueError(f"Model IR version {model.ir_version} not supported. Must be at least after 1.1.0.")
    produced: dict = {}

    class _Importer(ONNXGraphImporter):
        def _construct_nodes(self, graph):
            super()._construct_nodes(graph)
            produced.update(self._nodes)  # an If branch's too: their tensors match no binding of main

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = _Importer(None, "float32", keep_params_in_input=True, sanitize=False).from_onnx(model.graph, opset)
    origins = _origins(mod["main"], produced, model.graph)
    mod["main"] = mod["main"].with_attr(ORIGINS_ATTR, json.dumps(origins))
    return mod


def _origins(func, produced: dict, graph: onnx.GraphProto) -> dict[str, str]:
    by_output = {out: node for node in graph.node for out in node.output if out}
    node_of = {expr.__chandle__(): by_output[name] for name, expr in produced.items()
               if name in by_output and hasattr(expr, "__chandle__")}  # not an importer's Python value
    origins: dict[str, str] = {}
    for block in func.body.blocks:
        pending = []
        for binding in block.bindings:
            pending.append(binding.var.name)
            node = node_of.get(binding.value.__chandle__()) or node_of.get(binding.var.__chandle__())
            if node is not None:
                origins.update(dict.fromkeys(pending, describe_node(node)))
                pending = []
    return origins


def describe_node(node: onnx.NodeProto) -> str:
    """`ONNX node 'name' (Op)`, or for an unnamed node the tensor it makes."""
    if node.name:
        return f"ONNX node {node.name!r} ({node.op_type})"
    return f"ONNX {node.op_type} node making {node.output[0]!r}"


def origin(func, name: str) -> str | None:
    """The ONNX node binding `name` of `func` came from (a `_1` suffix of a renamed repeat
    ignored), or None."""
    text = func.attrs.get(ORIGINS_ATTR) if func.attrs is not None else None
    if text is None:
        return None
    origins = _parsed(str(text))
    return origins.get(name) or origins.get(re.sub(r"_\d+$", "", name))


@functools.lru_cache(maxsize=4)
def _parsed(text: str) -> dict[str, str]:
    """The attribute's map, parsed once (a model left in float asks for every binding)."""
    return json.loads(text)
