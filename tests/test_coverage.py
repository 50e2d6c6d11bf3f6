"""The README's op coverage table is the one the registries print (`python -m passes.coverage`)."""

from pathlib import Path

from passes.coverage import END, START, coverage_markdown


def test_readme_coverage_table_is_current():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert START in readme and END in readme, "README lacks the coverage block: python -m passes.coverage"
    block = readme[readme.index(START):readme.index(END) + len(END)]
    assert block == coverage_markdown(), "README op table is stale: paste `python -m passes.coverage` over it"


def test_onnxruntime_qdq_ops_match_the_installed_registry():
    import onnxruntime
    import pytest

    from passes.other_quantizers import ORT_QDQ, ORT_VERSION, installed_ort_qdq

    if onnxruntime.__version__ != ORT_VERSION:
        pytest.skip(f"ORT_QDQ was read from onnxruntime {ORT_VERSION}; {onnxruntime.__version__} is installed")
    assert ORT_QDQ == installed_ort_qdq(), "update passes/other_quantizers.ORT_QDQ from onnxruntime's registry.py"
