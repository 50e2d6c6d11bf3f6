"""The ONNX backend test suite through intq: every node test (and the small real models under
onnx/backend/test/data) compiled integer-only, else with --allow-float, run on the test's own inputs
and compared with onnxruntime on them.

    python -m benchmarks.conformance [--filter softmax] [--jobs 2]   -> benchmarks/results/conformance.md

Integer inputs that directly set a shape (the node tests pass Reshape's shape, Reduce axes, Resize scales
as inputs) are frozen to the test's values first, as intq's refusal of value-dependent shapes asks a
user to do. Each case runs in a forked child (a crash inside TVM is recorded, not fatal). Outcomes:
integer-only; float fallback (compiled with --allow-float); refused (a clear error, exit code 2:
the reason is tallied); crash (anything else: a bug). Cases onnxruntime itself cannot run (training
ops, unsupported types) and cases with float64/float16 or string inputs are skipped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import io
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "conformance.md"
AGREE = 0.99  # cosine to onnxruntime that counts as agreeing


def cosine(a, b) -> float:
    """Cosine of two outputs over their finite entries (their non-finite entries must match); -1 on a shape
    mismatch, -2 on a non-finite mismatch. A sequence output (SplitToSequence's) is its tensors joined."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return -1.0
        a, b = (np.concatenate([np.asarray(t, np.float64).ravel() for t in s]) if s else np.zeros(0) for s in (a, b))
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        return -1.0
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not (fa == fb).all() or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
        return -2.0
    a, b = a[fa], b[fb]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 1.0 if na == nb == 0 else float(a @ b / (na * nb + 1e-30))


def cases(pattern: str = "") -> list[tuple[str, bytes, list[np.ndarray]]]:
    """(name, model bytes, inputs) of the node tests and the backend data models."""
    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.case import node

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in node.collect_testcases(None):
            if case.model is not None:
                out.append((case.name, case.model.SerializeToString(), list(case.data_sets[0][0])))
    base = Path(onnx.__file__).parent / "backend" / "test" / "data"
    for d in sorted(glob.glob(str(base / "*" / "test_*"))):
        if (Path(d) / "model.onnx").exists():
            ins = [numpy_helper.to_array(onnx.load_tensor(f)) for f in sorted(glob.glob(f"{d}/test_data_set_0/input_*.pb"))]
            out.append((f"{Path(d).parent.name}/{Path(d).name}", (Path(d) / "model.onnx").read_bytes(), ins))
    return [c for c in out if pattern in c[0] and all(
        isinstance(x, np.ndarray) and (x.dtype.kind in "iub" or x.dtype == np.float32) for x in c[2])]


def _freeze_shape_inputs(model, feed: dict) -> list[str]:
    """Integer graph inputs that feed a shape operand directly (the node tests pass Reshape's shape, Reduce
    axes, Resize scales as inputs) become initializers holding the test's values, as intq's refusal asks a
    user to do; returns their names."""
    from onnx import numpy_helper

    from frontends.shape_operands import SHAPE_OPERANDS

    operands = {n.input[k]: n.op_type for n in model.graph.node for k in SHAPE_OPERANDS.get(n.op_type, ())
                if k < len(n.input)}
    frozen = [name for name, value in feed.items() if name in operands and
              (value.dtype.kind in "iub" or operands[name] in ("Resize", "Upsample"))]  # integers, resize scales
    for name in frozen:
        model.graph.initializer.append(numpy_helper.from_array(feed.pop(name), name))
    if frozen:
        kept = [v for v in model.graph.input if v.name not in frozen]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    return frozen


def run_case(name: str, model_bytes: bytes, inputs: list[np.ndarray]) -> dict:
    """Compile (integer-only, else --allow-float), run and compare one case; returns its record."""
    import onnx
    import onnxruntime as ort

    import runtime
    from frontends import CompileError
    from runtime.compiler import compile_model

    work = Path(tempfile.mkdtemp(prefix="intq-conf-"))
    path = work / "m.onnx"
    model = onnx.load_from_string(model_bytes)
    inits = {i.name for i in model.graph.initializer}
    feed = dict(zip([v.name for v in model.graph.input if v.name not in inits], inputs))
    frozen = _freeze_shape_inputs(model, feed)
    path.write_bytes(model.SerializeToString())
    try:
        ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    except Exception as err:  # noqa: BLE001  (onnxruntime cannot run it: not a case for us)
        return {"case": name, "outcome": "skipped", "why": str(err).splitlines()[0][:160]}
    np.savez(work / "calib.npz", **{k: v[None] for k, v in feed.items()})
    record = {"case": name, "frozen": frozen}
    for allow in (False, True):
        log = io.StringIO()
        try:
            with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
                art = compile_model(path, output=work / f"a{int(allow)}", calib=work / "calib.npz", progress=False,
                                    allow_float=allow)
        except CompileError as err:
            record["outcome"], record["why"] = "refused", " ".join(str(err).replace(str(path), "MODEL").split())[:240]
            continue
        except BaseException as err:  # noqa: BLE001
            record["outcome"], record["why"] = "crash", f"{type(err).__name__}: {str(err).strip()[-240:]}"
            return record
        try:
            model_ = runtime.load(art)
            got = model_.run(feed)
            record["cosine"] = min((cosine(got[name], r) for name, r in zip(model_.output_names, ref)), default=1.0)
            record["outcome"] = "integer-only" if model_.manifest["integer_only"] else "float fallback"
            record.pop("why", None)
        except BaseException as err:  # noqa: BLE001
            record["outcome"], record["why"] = "run error", f"{type(err).__name__}: {str(err).strip()[:240]}"
        return record
    return record


def _child(case, conn) -> None:
    conn.send(run_case(*case))
    conn.close()


def run_all(todo, jobs: int, timeout: float, progress=print):
    """Every case in a forked child, `jobs` at a time; yields the records in completion order."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    pending, running = list(todo), []
    while pending or running:
        while pending and len(running) < jobs:
            case = pending.pop(0)
            recv, send = ctx.Pipe(False)
            proc = ctx.Process(target=_child, args=(case, send))
            proc.start()
            running.append((case[0], proc, recv, time.time()))
        time.sleep(0.02)
        for item in list(running):
            name, proc, recv, start = item
            if recv.poll():
                record = recv.recv()
                proc.join()
            elif not proc.is_alive():
                record = {"case": name, "outcome": "crash", "why": f"process died (exit code {proc.exitcode})"}
            elif time.time() - start > timeout:
                proc.kill()
                record = {"case": name, "outcome": "crash", "why": f"timeout after {timeout:.0f} s"}
            else:
                continue
            running.remove(item)
            yield record


def _reason(why: str) -> str:
    """A refusal's reason without the case's own names and numbers, to tally them."""
    why = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", why)
    why = re.sub(r"\d+", "N", why)
    return why.split(": ", 1)[-1][:110] if why.startswith("MODEL") else why[:110]


def report(records: list[dict]) -> str:
    count = collections.Counter(r["outcome"] for r in records)
    ran = [r for r in records if r["outcome"] != "skipped"]
    agree = [r for r in ran if r.get("cosine", -9) >= AGREE]
    lines = ["## ONNX backend tests through intq (`python -m benchmarks.conformance`)", "",
             f"{len(records)} cases (onnx's node tests and the models under onnx/backend/test/data); "
             f"{count['skipped']} skipped because onnxruntime cannot run them; in "
             f"{sum(1 for r in ran if r.get('frozen'))} cases, inputs that set shapes were frozen to the test's "
             f"values. Of the {len(ran)} cases run:", "",
             "| outcome | cases | agree with onnxruntime (cosine >= 0.99) |", "|---|---|---|"]
    for outcome in ("integer-only", "float fallback", "refused", "run error", "crash"):
        n = count[outcome]
        ok = sum(1 for r in agree if r["outcome"] == outcome)
        lines.append(f"| {outcome} | {n} | {ok if outcome in ('integer-only', 'float fallback') else ''} |")
    lines += ["", f"Total agreeing: {len(agree)} of {len(ran)}.", "", "### Why cases were refused (most common first)", "",
              "| cases | reason | e.g. |", "|---|---|---|"]
    why = collections.defaultdict(list)
    for r in ran:
        if r["outcome"] in ("refused", "run error", "crash"):
            why[(r["outcome"], _reason(r.get("why", "")))].append(r["case"])
    for (outcome, reason), names in sorted(why.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {len(names)} | {outcome}: {reason.replace('|', '/')} | {', '.join(names[:3])} |")
    low = [r for r in ran if r.get("cosine") is not None and r["cosine"] < AGREE]
    if low:
        lines += ["", "### Compiled but below 0.99 cosine", "", "| case | outcome | cosine |", "|---|---|---|"]
        lines += [f"| {r['case']} | {r['outcome']} | {r['cosine']:.4f} |" for r in sorted(low, key=lambda r: r["cosine"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--filter", default="", help="only cases whose name contains this")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    p.add_argument("-o", "--output", default=str(RESULTS))
    p.add_argument("--records", help="also write every case's record (JSON lines) here")
    args = p.parse_args(argv)
    import tvm  # noqa: F401  (imported once, before the children fork)

    todo = cases(args.filter)
    print(f"{len(todo)} cases, {args.jobs} at a time", file=sys.stderr)
    records, start = [], time.time()
    sink = open(args.records, "w") if args.records else None
    for k, record in enumerate(run_all(todo, args.jobs, args.timeout), 1):
        records.append(record)
        if sink:
            sink.write(json.dumps(record) + "\n")
            sink.flush()
        if k % 50 == 0 or k == len(todo):
            print(f"{k}/{len(todo)} cases, {time.time() - start:.0f} s", file=sys.stderr)
    Path(args.output).write_text(report(sorted(records, key=lambda r: r["case"])))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
