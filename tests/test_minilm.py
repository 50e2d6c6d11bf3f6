"""Model-level: all-MiniLM-L6-v2 integer-only on gensim's Lee corpus (DESIGN.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_minilm_sentence_similarity(tmp_path_factory):
    from benchmarks.minilm import evaluate
    from benchmarks.models import export_minilm, lee_corpus, minilm_tokenize
    from runtime import compile_model, load

    work = tmp_path_factory.mktemp("minilm")
    onnx_path = export_minilm(work / "minilm.onnx")
    ids, mask = minilm_tokenize(lee_corpus()[1][:32])  # calibrate on other text than the evaluation
    np.savez(work / "calib.npz", input_ids=ids[:, None], attention_mask=mask[:, None])
    artifact = compile_model(onnx_path, "x86", work / "minilm.artifact", calib=work / "calib.npz", progress=False)
    manifest = load(artifact).manifest
    assert manifest["integer_only"] is True
    assert [i["quant"]["dtype"] for i in manifest["inputs"]] == ["int64", "int64"]
    r = evaluate(artifact, onnx_path)
    assert abs(r["pearson_float"] - 0.654) < 0.005, r  # the float model, as measured in DESIGN.md
    assert abs(r["pearson_int"] - r["pearson_float"]) <= 0.01, r
    assert r["cosine_mean"] >= 0.98, r
