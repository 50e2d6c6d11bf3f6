"""intq next to onnxruntime's static int8 on every model of the real-model corpus.

    python -m benchmarks.zoo [--models mtcnn-rnet,fsmn-vad] [--eval 4] [--no-latency]
        -> benchmarks/results/zoo.md, and the README block between the zoo markers (whole corpus only)

For each model of `benchmarks.corpus.CORPUS`, calibrated on the corpus's own calibration inputs
(`sample(model, 10..13)`, as `corpus.evaluate` does):

  - intq: compiled integer-only (else with `--allow-float`: the row says how many nodes stayed float);
  - onnxruntime int8: `quantize_static` (of a pre-quantized file: of its float graph) in QDQ format, int8
    weights per channel, uint8 activations (the U8S8 form ORT recommends on x86), MinMax ranges from a
    CalibrationDataReader over the same calibration inputs, after ORT's `quant_pre_process` (skipped, with a
    note, where it fails).

Both are compared with float onnxruntime (for a pre-quantized file: the float graph it quantizes, as
the compile's check and `benchmarks.corpus` take it) on `--eval` other inputs (`sample(model, 0..N-1)`): the
cosine is the smallest over samples and outputs (the corpus's measure); for classifiers, detectors
and recognizers the argmax agreement is, per float output with a last axis of 2 or more, the fraction
of positions whose argmax over the last axis equals float's. Latency: median at 1 thread, batch 1,
on a shared machine (only the ratio means much).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.check import FILE, references

from .corpus import CACHE, CORPUS, CorpusModel, cosine, fetch, first_unsupported, sample
from .speed import scratch_cwd

RESULTS = Path(__file__).parent / "results" / "zoo.md"
README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- zoo:start (python -m benchmarks.zoo) -->", "<!-- zoo:end -->"
CALIB_COUNT = 4  # the same calibration inputs as benchmarks.corpus.evaluate
SCORING = ("detector", "classifier", "recognizer", "CRNN", "segmentation", "classes")  # in family or what: scores


def log(message: str) -> None:
    print(f"[zoo] {message}", file=sys.stderr, flush=True)


@dataclass
class Measured:
    """One quantized model against float: cosine (min over samples and outputs), argmax agreement per
    scored output, median latency at 1 thread."""

    cosine: float | None = None
    argmax: list[float] = field(default_factory=list)
    ms: float | None = None
    error: str = ""


@dataclass
class ZooRow:
    name: str
    family: str
    integer_only: str = ""
    ours: Measured = field(default_factory=Measured)
    ort: Measured = field(default_factory=Measured)
    scored: list[str] = field(default_factory=list)  # outputs whose argmax is compared
    notes: list[str] = field(default_factory=list)


def scores_outputs(model: CorpusModel) -> bool:
    """A classifier, detector or recognizer (by the corpus entry's words): its outputs' argmax means something."""
    return any(word.lower() in f"{model.family} {model.what}".lower() for word in SCORING)


def calibration(model: CorpusModel) -> list[dict[str, np.ndarray]]:
    return [sample(model, 10 + k) for k in range(CALIB_COUNT)]


def compare(outputs: list[list[np.ndarray]], floats: list[list[np.ndarray]], scored: list[int]) -> Measured:
    """Cosine and argmax agreement of `outputs[sample][output]` with the float ones."""
    cos = [cosine([o], [f]) for outs, refs in zip(outputs, floats) for o, f in zip(outs, refs)]
    agree = []
    for j in scored:
        same = np.concatenate([(np.argmax(outs[j], -1) == np.argmax(refs[j], -1)).ravel()
                               for outs, refs in zip(outputs, floats)])
        agree.append(float(same.mean()))
    return Measured(cosine=min(cos), argmax=agree)


def median_ms(fn, budget_s: float = 1.0, most: int = 20) -> float:
    """Median wall time of `fn` in ms: one warm-up, then as many runs as fit `budget_s` (3 to `most`)."""
    fn()
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = [first]
    for _ in range(max(2, min(most, int(budget_s / max(first, 1e-6)))) - 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def ort_int8(path: Path, samples: list[dict[str, np.ndarray]], workdir: Path, notes: list[str]) -> Path:
    """onnxruntime's static int8 QDQ model (U8S8, per-channel weights, MinMax) calibrated on `samples`.
    Run inside `workdir`: ORT's symbolic shape inference leaves `sym_shape_infer_temp.onnx` and
    `<uuid>.data` files in the current directory."""
    path, workdir = path.resolve(), workdir.resolve()
    with contextlib.chdir(workdir):
        return _ort_int8(path, samples, workdir, notes)


def _ort_int8(path: Path, samples: list[dict[str, np.ndarray]], workdir: Path, notes: list[str]) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    path, per_channel = _opset13(path, workdir, notes)
    source = workdir / f"{path.stem}.ort_pre.onnx"
    try:
        with scratch_cwd():
            quant_pre_process(str(path.resolve()), str(source.resolve()))
    except Exception as err:  # its symbolic shape inference fails on some graphs: without it, else without all
        try:
            with scratch_cwd():
                quant_pre_process(str(path.resolve()), str(source.resolve()), skip_symbolic_shape=True)
            notes.append(f"ORT quant_pre_process without symbolic shape inference ({_short(err)})")
        except Exception as err2:
            notes.append(f"ORT quant_pre_process failed ({type(err2).__name__}: {_short(err2)}); quantized without it")
            source = path
    out = workdir / f"{path.stem}.ort_int8.onnx"
    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def _opset13(path: Path, workdir: Path, notes: list[str]) -> tuple[Path, bool]:
    """The model at opset >= 13, where DequantizeLinear takes the per-channel `axis` that QDQ weights
    need (ORT's quantizer writes it whatever the opset, and the result does not load), with external
    weights inlined (quant_pre_process does not find them), and whether per-channel weights are
    possible: (path, per_channel)."""
    import onnx
    from onnx import external_data_helper, version_converter

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if opset >= 13 and not external:
        return path, True
    model, out = onnx.load(str(path)), workdir / f"{path.stem}.opset13.onnx"
    if opset < 13:
        try:
            model = version_converter.convert_version(model, 13)
            notes.append(f"opset {opset} converted to 13 for ORT's per-channel QDQ")
        except Exception as err:
            notes.append(f"ORT int8 per tensor: opset {opset} did not convert to 13 ({_short(err)})")
            return path, False
    onnx.save(model, str(out))
    return out, True


def _short(err: BaseException, n: int = 90) -> str:
    text = str(err).strip().splitlines()
    return re.sub(r"\s+", " ", text[0] if text else type(err).__name__)[:n]


def _session(path: Path | bytes, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    source = path if isinstance(path, bytes) else str(path)  # bytes: a pre-quantized file's float graph
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _compile(model: CorpusModel, path: Path, calib: Path, workdir: Path, row: ZooRow) -> Path | None:
    from frontends import CompileError
    from runtime.compiler import compile_model

    try:
        art = compile_model(path, output=workdir / f"{model.name}.int", calib=calib, input_shapes=model.bind,
                            progress=False)
        row.integer_only = "yes"
        return art
    except CompileError as err:
        row.integer_only = "no: " + first_unsupported(str(err))
    try:
        return compile_model(path, output=workdir / f"{model.name}.float", calib=calib, input_shapes=model.bind,
                             allow_float=True, progress=False)
    except CompileError as err:
        row.ours.error = "refused: " + first_unsupported(str(err).split(": ", 1)[-1])
        return None


def zoo_row(model: CorpusModel, path: Path, workdir: Path, eval_count: int = 4, latency: bool = True) -> ZooRow:
    """intq and onnxruntime int8 against float onnxruntime on one corpus model."""
    import runtime
    from runtime.bench import benchmark

    row = ZooRow(model.name, model.family)
    samples = calibration(model)
    calib = workdir / f"{model.name}.calib.npz"
    np.savez(calib, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    inputs = [sample(model, k) for k in range(eval_count)]
    # float: for a pre-quantized file the float graph it quantizes, as benchmarks.corpus and the compile's check
    # take it (a dynamically quantized T5 encoder is itself at cosine 0.65-0.87 to that graph)
    label, reference = references(path)[0]
    if label != FILE:
        row.notes.append(f"float reference: {label}")
    session = _session(reference)
    floats = [session.run(None, x) for x in inputs]
    names = [o.name for o in session.get_outputs()]
    scored = [j for j, f in enumerate(floats[0]) if scores_outputs(model)
              and np.issubdtype(np.asarray(f).dtype, np.floating) and np.ndim(f) >= 1 and np.shape(f)[-1] >= 2]
    row.scored = [names[j] for j in scored]

    art_path = _compile(model, path, calib, workdir, row)
    if art_path is not None:
        art = runtime.load(art_path)
        if art.manifest.get("float_nodes"):
            row.integer_only += f" ({len(art.manifest['float_nodes'])} float nodes with --allow-float)"
        order = art.output_names  # the ONNX outputs' order
        row.ours = compare([[art.run(x)[n] for n in order] for x in inputs], floats, scored)
        if latency:
            row.ours.ms = benchmark(art, threads=1, repeat=10, warmup=2, inputs=inputs[0])["p50_ms"]

    try:
        source = path
        if isinstance(reference, bytes):  # ORT's quantizer takes the float graph too (the file's own grids fail it)
            source = workdir / f"{model.name}.float_graph.onnx"
            source.write_bytes(reference)
        int8 = ort_int8(source, samples, workdir, row.notes)
        quantized = _session(int8, threads=1)
        row.ort = compare([quantized.run(None, x) for x in inputs], floats, scored)
        if latency:
            row.ort.ms = median_ms(lambda: quantized.run(None, inputs[0]))
    except Exception as err:  # ORT's quantizer fails on some graphs: the row says how
        row.ort.error = f"failed: {type(err).__name__}: {_short(err)}"
    return row


def _cos(m: Measured) -> str:
    return m.error or ("" if m.cosine is None else f"{m.cosine:.4f}")


def _agree(m: Measured) -> str:
    if m.error or m.cosine is None:
        return ""
    return " / ".join(f"{a:.3f}" for a in m.argmax) if m.argmax else "n/a"


def _ms(m: Measured) -> str:
    return "" if m.ms is None else f"{m.ms:.2f}"


def _timed(rows: list[ZooRow]) -> bool:
    return any(r.ours.ms is not None or r.ort.ms is not None for r in rows)


def table(rows: list[ZooRow]) -> str:
    """The Markdown table; the latency columns only where something was timed (not with --no-latency)."""
    timed = _timed(rows)
    head = ("| model | integer-only | cosine intq | argmax agreement intq | cosine ORT int8 | argmax agreement ORT int8 |"
            + (" ms intq | ms ORT int8 |" if timed else "") + "\n|---|---|---|---|---|---|" + ("---|---|" if timed else "")
            + "\n")
    return head + "".join(
        f"| {r.name} | {r.integer_only} | {_cos(r.ours)} | {_agree(r.ours)} | {_cos(r.ort)} | {_agree(r.ort)} |"
        + (f" {_ms(r.ours)} | {_ms(r.ort)} |" if timed else "") + "\n" for r in rows)


EXPLAIN = ("Cosine: the smallest over evaluation inputs and outputs, to float onnxruntime (for a pre-quantized "
           "file, the float graph it quantizes). Argmax agreement "
           "(classifiers, detectors, recognizers): per float output with a last axis >= 2, in output order, the "
           "fraction of positions whose argmax over the last axis equals float's. ORT int8: "
           "`quantize_static`, QDQ, per-channel int8 weights, uint8 activations, MinMax on the same calibration "
           "inputs.")
TIMED = " ms: median latency at 1 thread, batch 1, on a shared 2-core machine."
UNTIMED = (" Latency: `python -m benchmarks.corpus_speed` ([`benchmarks/results/corpus_speed.md`]"
           "(benchmarks/results/corpus_speed.md): thread time, interleaved rounds).")


def _explain(rows: list[ZooRow]) -> str:
    return EXPLAIN + (TIMED if _timed(rows) else UNTIMED)


def readme_block(rows: list[ZooRow], eval_count: int) -> str:
    return (f"{START}\n\n`python -m benchmarks.zoo` ({len(rows)} corpus models, calibrated on {CALIB_COUNT} inputs, "
            f"evaluated on {eval_count} others). {_explain(rows)}\n\n{table(rows)}\n{END}")


def markdown(rows: list[ZooRow], eval_count: int, done: bool) -> str:
    state = "" if done else f" (in progress: {len(rows)} of {len(CORPUS)} models)"
    outputs = "\n".join(f"- {r.name}: argmax compared on {', '.join(f'`{n}`' for n in r.scored) or 'no output'}"
                        + "".join(f"; {n}" for n in r.notes) for r in rows)
    return (f"# intq and onnxruntime int8 on the real-model corpus\n\n`python -m benchmarks.zoo` on "
            f"{time.strftime('%Y-%m-%d')}{state}: calibrated on {CALIB_COUNT} inputs (`sample(model, 10..13)`), "
            f"evaluated on {eval_count} others (`sample(model, 0..{eval_count - 1})`). {_explain(rows)}\n\n{table(rows)}\n"
            f"## Outputs and notes\n\n{outputs}\n")


def update_readme(block: str, readme: Path = README) -> bool:
    """Replace the README's zoo block; False when the markers are missing."""
    text = readme.read_text()
    if START not in text or END not in text:
        return False
    readme.write_text(text[:text.index(START)] + block + text[text.index(END) + len(END):])
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated corpus names (default: all; only then is the README updated)")
    p.add_argument("--eval", type=int, default=4, help="evaluation inputs per model (default 4)")
    p.add_argument("--no-latency", action="store_true", help="skip the 1-thread latencies")
    p.add_argument("--cache", type=Path, default=CACHE, help=f"download cache (default {CACHE})")
    p.add_argument("-o", "--output", type=Path, help=f"Markdown file to write (default: {RESULTS}, whole corpus only)")
    args = p.parse_args(argv)
    chosen = [m for m in CORPUS if not args.models or m.name in args.models.split(",")]
    output = args.output or (None if args.models else RESULTS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="intq-zoo-") as tmp:
        for model in chosen:
            log(f"{model.name} ...")
            try:
                rows.append(zoo_row(model, fetch(model, args.cache), Path(tmp), args.eval, not args.no_latency))
            except Exception as err:  # one broken model must not hide the others' results
                rows.append(ZooRow(model.name, model.family, ours=Measured(error=f"ERROR {type(err).__name__}: "
                                                                                 f"{_short(err, 80)}")))
            log(table(rows[-1:]).splitlines()[-1])
            if output:  # written after every model: a long run leaves what it has measured
                output.write_text(markdown(rows, args.eval, done=len(rows) == len(chosen)))
    if not args.models and not update_readme(readme_block(rows, args.eval)):
        log(f"README.md has no {START} ... {END} block: not updated")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
