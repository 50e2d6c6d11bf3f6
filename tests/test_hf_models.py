"""Hugging Face `transformers` architectures end to end (benchmarks/hf_models.py): small configs with seeded
random init, exported by the legacy exporter at opset 17, compiled integer-only, compared with float
onnxruntime on held-out inputs. The three cheapest that carry idioms of their own: T5's relative position bias
folded into the SDPA mask and its RMS norm written out, RoBERTa's CumSum position ids, wav2vec2's GroupNorm
(InstanceNormalization) conv feature extractor.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[test]')")
pytest.importorskip("onnxruntime")

# name -> lowest cosine accepted (measured min over outputs and 2 inputs: t5-enc 0.9989, roberta 1.0000,
# wav2vec2 0.9909: its 7-layer conv extractor at 8 bits per tensor)
CASES = {"t5-enc": 0.99, "roberta": 0.99, "wav2vec2": 0.985}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_hf_architecture_integer_only(tmp_path, name):
    from benchmarks.hf_models import BY_NAME, evaluate

    row = evaluate(BY_NAME[name], "legacy", tmp_path)
    assert row.integer_only == "yes", row.integer_only
    assert float(row.cosine) >= CASES[name], row
