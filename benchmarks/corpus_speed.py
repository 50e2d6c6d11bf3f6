"""Latency of the real-model corpus against onnxruntime, on this CPU:

    python -m benchmarks.corpus_speed [--models craftnet orinet ...] [--rounds 5] [--results FILE.md]

Each model is compiled as `benchmarks.corpus.evaluate` compiles it (integer-only, four calibration inputs);
onnxruntime's static int8 is `benchmarks.zoo.ort_int8` of the same inputs. Latency is the thread CPU time of one
call at 1 thread (`Model.run`, float in and out, against `InferenceSession.run`), the minimum over interleaved
rounds: on a shared machine wall-clock medians move several-fold, the busy thread's own time much less."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import corpus

HEADER = ("| model | kernel family | intq ms | onnxruntime int8 ms | fp32 ms | intq / int8 | intq / fp32 | compile s |\n"
          "|---|---|---|---|---|---|---|---|")


def fastest(calls: dict, rounds: int, per_round: int = 4) -> dict[str, float]:
    """Minimum thread CPU ms of each call, over `rounds` interleaved rounds (one untimed call each first)."""
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            for _ in range(per_round):
                start = time.thread_time()
                call()
                best[name] = min(best[name], time.thread_time() - start)
    return {name: 1e3 * t for name, t in best.items()}


def measure(model: corpus.CorpusModel, workdir: Path, rounds: int) -> str:
    """One table row: compile `model`, time it against onnxruntime int8 and fp32."""
    import onnxruntime as ort

    import runtime
    from runtime.compiler import compile_model
    from runtime.model import config_threads

    from .zoo import ort_int8

    path = corpus.fetch(model)
    samples = [corpus.sample(model, 10 + k) for k in range(4)]
    calib = workdir / f"{model.name}.calib.npz"
    np.savez(calib, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    start = time.perf_counter()
    artifact = compile_model(path, output=workdir / f"{model.name}.artifact", calib=calib, input_shapes=model.bind,
                             progress=False)
    seconds = time.perf_counter() - start
    config_threads(1)
    compiled = runtime.load(artifact)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    fp32 = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = corpus.sample(model, 0)
    feed = {i.name: x[i.name] for i in fp32.get_inputs()}
    calls = {"intq": lambda: compiled.run(x), "fp32": lambda: fp32.run(None, feed)}
    try:
        int8 = ort.InferenceSession(str(ort_int8(path, samples, workdir, [])), options,
                                    providers=["CPUExecutionProvider"])
        int8.run(None, feed)  # some of its quantized graphs load and then fail to run (PP-OCRv3's recognizer)
        calls["int8"] = lambda: int8.run(None, feed)
    except Exception as err:  # onnxruntime's quantizer fails on some graphs (opset 8 exports)
        print(f"{model.name}: onnxruntime int8 failed ({type(err).__name__}: {str(err)[:100]})", file=sys.stderr)
    ms = fastest(calls, rounds)
    int8_ms = ms.get("int8")
    ratio = f"{ms['intq'] / int8_ms:.2f}" if int8_ms else "-"
    return (f"| {model.name} | {compiled.manifest['target'].get('kernel_family', '-')} | {ms['intq']:.2f} | "
            f"{f'{int8_ms:.2f}' if int8_ms else 'fails'} | {ms['fp32']:.2f} | {ratio} | "
            f"{ms['intq'] / ms['fp32']:.2f} | {seconds:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="corpus model names (default: every one)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--results", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    known = {m.name: m for m in corpus.CORPUS}
    unknown = [name for name in args.models or [] if name not in known]
    if unknown:
        parser.error(f"not in the corpus: {', '.join(unknown)} (known: {', '.join(known)})")
    rows = [HEADER]
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="intq-corpus-speed-") as tmp:
        for name in args.models or list(known):
            try:
                rows.append(measure(known[name], Path(tmp), args.rounds))
            except Exception as err:  # one model's failure is a row of the table, not the end of the run
                rows.append(f"| {name} | fails: {type(err).__name__}: {str(err).strip().splitlines()[-1][:120]} |"
                            + " - |" * 6)
            print(rows[-1], flush=True)
    if args.results:
        args.results.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
