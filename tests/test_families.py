"""Architecture-family sweep (benchmarks/families.py): each family, exported by torch's legacy and dynamo
exporters, compiles integer-only and agrees with float onnxruntime on real-ish inputs; `--allow-float`
compiles and agrees as well."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.families import BY_NAME, EXPORTERS, FAMILIES, calibration, cosine, export, sample

pytestmark = pytest.mark.slow
EVALS = 2  # evaluation inputs per model (indices 0.., never calibration's)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(family, exporter) -> (onnx path, calib path), each exported once per session."""
    pytest.importorskip("torch")
    root, cache = tmp_path_factory.mktemp("families"), {}

    def get(family, exporter):
        if (family.name, exporter) not in cache:
            if exporter == "dynamo":
                pytest.importorskip("onnxscript")
            calib = root / f"{family.name}.calib.npz"
            np.savez(calib, **calibration(family))
            cache[family.name, exporter] = export(family, exporter, root / f"{family.name}.{exporter}.onnx"), calib
        return cache[family.name, exporter]

    return get


def _compile_and_compare(family, path, calib, out, allow_float=False):
    import runtime
    from runtime.compiler import compile_model

    shapes = {k: v.shape for k, v in sample(family, 0).items()}
    art = runtime.load(compile_model(path, output=out, calib=calib, input_shapes=shapes, allow_float=allow_float,
                                     progress=False))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 1.0
    for k in range(EVALS):
        x = sample(family, k)
        ours = art.run(x)
        for spec, ref in zip(art.manifest["outputs"], session.run(None, x)):  # every output, at its own scale
            assert ours[spec["name"]].shape == ref.shape, (spec["name"], ours[spec["name"]].shape, ref.shape)
            worst = min(worst, cosine(ours[spec["name"]], ref))
    return art, worst


# every family with the legacy exporter; the dynamo exporter where its graphs differ most (attention as
# SDPA / the Attention op, LayerNorm and GELU ops, recurrent layers, several outputs): both on every
# family doubled the file's CI time for CNNs whose two exports come out nearly identical
DYNAMO = ("mobilenetv3", "yolo", "lstm-audio", "bert", "vit", "convnext")
PAIRS = [(f, e) for f in FAMILIES for e in EXPORTERS if e == "legacy" or f.name in DYNAMO]


@pytest.mark.parametrize("family,exporter", PAIRS, ids=[f"{f.name}-{e}" for f, e in PAIRS])
def test_family_compiles_integer_only(family, exporter, exported, tmp_path):
    path, calib = exported(family, exporter)
    art, worst = _compile_and_compare(family, path, calib, tmp_path / "int")
    assert art.manifest["integer_only"] is True
    assert worst >= family.min_cosine, (family.name, exporter, worst, family.why)


# --allow-float on three families whose graphs differ most (several outputs; integer inputs and a mask;
# recurrent), one exporter each: on every pair it would double the file's time
ALLOW = [(BY_NAME[name], exporter) for name, exporter in (("yolo", "legacy"), ("bert", "dynamo"),
                                                          ("lstm-audio", "dynamo"))]


@pytest.mark.parametrize("family,exporter", ALLOW, ids=[f"{f.name}-{e}" for f, e in ALLOW])
def test_family_allow_float(family, exporter, exported, tmp_path):
    path, calib = exported(family, exporter)
    art, worst = _compile_and_compare(family, path, calib, tmp_path / "float", allow_float=True)
    if not art.manifest["integer_only"]:
        assert art.manifest["float_nodes"], "not integer-only, yet no float node is listed"
    assert worst >= min(family.min_cosine, 0.99), (family.name, exporter, worst)
