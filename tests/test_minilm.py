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
    # 0.987 / 0.977 with one smoothing exponent for every matmul input (smooth_choice.py: 0.998 / 0.996)
    assert r["cosine_mean"] >= 0.995 and r["cosine_min"] >= 0.99, r


def test_minilm_padding_and_batching_are_exact(tmp_path_factory):
    """One all-MiniLM-L6-v2 artifact with a free batch and a free length (buckets 32, 64): real
    sentences of different lengths give the same integers alone at their own length, padded into
    a larger bucket, and batched together (padding masked by the attention mask)."""
    from benchmarks.models import export_minilm, lee_corpus, minilm_tokenize
    from frontends.onnx_import import FreeDim
    from runtime import compile_model, load

    work = tmp_path_factory.mktemp("minilm-shapes")
    onnx_path = export_minilm(work / "minilm_dynamic.onnx", dynamic=True)
    ids, mask = minilm_tokenize(lee_corpus()[1][:8], 64)
    np.savez(work / "calib.npz", input_ids=ids[:, None], attention_mask=mask[:, None])
    shape = (FreeDim("n", 1, 4), FreeDim("seq", 1, 64))
    model = load(compile_model(onnx_path, "x86", work / "a", calib=work / "calib.npz", progress=False,
                               input_shapes={"input_ids": shape, "attention_mask": shape}, buckets=[32, 64]))
    texts = ["The cat sat on the mat.", "Stock markets fell sharply on Monday after the announcement.",
             "A long sentence about the weather, which was cold and wet for most of the week in the city."]
    ids, mask = minilm_tokenize(texts, 64)
    lengths = mask.sum(1)
    assert len(set(lengths)) == 3 and lengths.max() <= 32
    alone = [model.run_integer([ids[i:i + 1, :n], mask[i:i + 1, :n]])[0] for i, n in enumerate(lengths)]
    in_64 = model.run_integer([ids[:1], mask[:1]])[0]  # the first, padded to 64 by the tokenizer: bucket 64
    np.testing.assert_array_equal(in_64[0, :lengths[0]], alone[0][0])
    n = lengths.max()
    for one_call in (False, True):  # one sample a call (the batch-1 libraries), the batch in one call (the symbolic ones)
        model.batch_in_one_call = one_call
        batch = model.run_integer([ids[:, :n], mask[:, :n]])[0]
        for i, k in enumerate(lengths):
            np.testing.assert_array_equal(batch[i, :k], alone[i][0])
