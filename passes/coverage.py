"""The op coverage table of the README, printed from the registries so that it cannot drift.

    python -m passes.coverage            # Markdown, between the README's coverage markers

Rows: every Relax op with an integer lowering (`passes.lowering.LOWERINGS`), the module and
function that lower it, and the first line of that function's docstring (else its module's);
then the ONNX ops the frontend lets through to the integer path.
"""

from __future__ import annotations

import inspect
import sys

START, END = "<!-- coverage:start (python -m passes.coverage) -->", "<!-- coverage:end -->"


def _summary(fn) -> str:
    doc = inspect.getdoc(fn) or inspect.getdoc(sys.modules[fn.__module__]) or ""
    return doc.strip().splitlines()[0].replace("|", "\\|") if doc.strip() else ""


def coverage_markdown() -> str:
    """The README block: a table of Relax ops and their lowerings, then the ONNX op list."""
    from frontends.onnx_import import INTEGER_PATH_OPS

    from .lowering import LOWERINGS

    rows = ["| Relax op | lowered by | how |", "|---|---|---|"]
    for op, fn in sorted(LOWERINGS.items()):
        where = f"`{fn.__module__.removeprefix('passes.')}.{fn.__name__}`"
        rows.append(f"| `{op.removeprefix('relax.')}` | {where} | {_summary(fn)} |")
    onnx_ops = ", ".join(sorted(INTEGER_PATH_OPS))
    return "\n".join([START, "", *rows, "", f"ONNX ops accepted on the integer path ({len(INTEGER_PATH_OPS)}): "
                      f"{onnx_ops}.", "", END])


if __name__ == "__main__":
    print(coverage_markdown())
