"""Mixed precision on EfficientNet-Lite0: uniform 8-bit, uniform 4-bit and ILP-mixed weights.

    python -m benchmarks.mixed_precision [--workdir out/mixed_precision] [--random 10]

1. Compiles through the CLI (`python -m runtime.compile`, x86): `--bits 8`, `--bits 4`,
   `--bits mixed --max-size` at 75% of the 8-bit weight size (first and last layer pinned
   to 8 bits) and at 52% (only the first layer pinned: the classifier holds 28% of the
   weights, so with it at 8 bits no allocation gets below 64%; exactly 50% is uniform 4-bit).
   Reports artifact (library) size, weight MB, top-1 agreement with float (onnxruntime) on
   foolbox's 20 labeled ImageNet images, mean logit cosine to float on a larger set of
   unlabeled images (crops that are not calibration images) and latency (1 thread).
2. At the 75% budget, compares the ILP's allocation with random allocations of the same
   budget (layers in random order go to 4 bits until the budget is met) and the inverse
   allocation (most sensitive layers, by sensitivity increase per saved byte, to 4 bits
   first), all lowered from one calibration and evaluated on the 20 labeled + the first
   50 unlabeled images.

Writes `benchmarks/results/mixed_precision.md`; intermediate results are kept in the workdir
(`results.json`) so that an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.models import (
    calibration_images,
    export_efficientnet_lite0,
    imagenet_eval_set,
)

RESULTS = Path(__file__).parent / "results" / "mixed_precision.md"


def log(message: str) -> None:
    print(f"[mixed] {message}", file=sys.stderr, flush=True)


def held_out_images(count: int, calib: np.ndarray) -> np.ndarray:
    """`count` natural images (random crops, seed 1) that are not in `calib`."""
    seen = {x.tobytes() for x in calib}
    pool = calibration_images(count + 3 * len(calib), seed=1)
    kept = [x for x in pool if x.tobytes() not in seen]
    if len(kept) < count:
        raise RuntimeError(f"only {len(kept)} held-out images")
    return np.stack(kept[:count])


def quality(logits: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict:
    """Agreement and top-1 on the first len(labels) rows; cosine to float on the rest."""
    n = len(labels)
    cos = np.sum(logits * ref, 1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(ref, axis=1)
    return {"agreement": int(np.sum(logits[:n].argmax(1) == ref[:n].argmax(1))),
            "top1": int(np.sum(logits[:n].argmax(1) == labels)), "labeled": n,
            "cosine": float(cos[n:].mean()), "cosine_min": float(cos[n:].min()), "unlabeled": len(ref) - n}


class Lowerer:
    """One calibration, then any `layer_bits` lowered, compiled (x86) and run in process."""

    def __init__(self, onnx_path: Path, calib_path: Path):
        from frontends import load_onnx
        from passes import bind_weights, calibrate
        from runtime.compiler import load_calibration
        from targets import get_target

        imported = load_onnx(onnx_path)
        self.float_mod = bind_weights(imported.mod, imported.params)
        self.samples = load_calibration(calib_path, imported.inputs)
        self.ranges = calibrate(self.float_mod, self.samples, progress=False)
        self.spec = get_target("x86")

    def layers8(self) -> list[dict]:
        from passes import LAYERS_ATTR, QuantConfig, QuantizeToInteger

        mod = QuantizeToInteger(self.ranges, QuantConfig())(self.float_mod)
        return json.loads(str(mod["main"].attrs[LAYERS_ATTR]))

    def logits(self, layer_bits: dict[str, int], images: np.ndarray) -> np.ndarray:
        import tvm
        from tvm import relax

        from passes import BOUNDARY_ATTR, QuantConfig, QuantizeToInteger
        from runtime.boundary import dequantize, quantize

        mod = QuantizeToInteger(self.ranges, QuantConfig(layer_bits=layer_bits))(self.float_mod)
        boundary = json.loads(str(mod["main"].attrs[BOUNDARY_ATTR]))
        target = self.spec.target()
        with target:
            ex = tvm.compile(mod, target=target, relax_pipeline=self.spec.relax_pipeline(target))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        qin, qout = boundary["inputs"][0], boundary["outputs"][0]
        scale = np.asarray(qout["scale"]).reshape(1, -1)
        out = [vm["main"](tvm.runtime.tensor(quantize(x[None], qin["scale"], qin["dtype"]))).numpy() for x in images]
        return dequantize(np.concatenate(out), scale)


def budget_allocation(costs, pinned: dict, budget_mb: float, order) -> dict[str, int]:
    """Layers in `order` (pins skipped) go to 4 bits until the weights fit `budget_mb`."""
    bits = {c.name: 8 for c in costs}
    size = sum(c.params for c in costs) / 1e6
    for c in order:
        if size <= budget_mb * (1 + 1e-9):
            break
        if c.name not in pinned:
            bits[c.name] = 4
            size -= c.params * 4 / 8 / 1e6
    return bits


def objective(costs, bits) -> float:
    return sum(c.sensitivity[bits[c.name]] for c in costs)


def size_mb(costs, bits) -> float:
    return sum(c.params * bits[c.name] / 8 / 1e6 for c in costs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="out/mixed_precision")
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--unlabeled", type=int, default=100, help="unlabeled images for the logit cosine")
    p.add_argument("--random", type=int, default=10, help="random allocations at the 75%% budget")
    p.add_argument("--small-unlabeled", type=int, default=50, help="unlabeled images for the allocation comparison")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per artifact")
    p.add_argument("--retime", action="store_true", help="time the artifacts again (e.g. on a quieter machine)")
    args = p.parse_args(argv)
    import onnxruntime as ort

    import runtime
    from runtime.bench import benchmark
    from runtime.compile import main as compile_main

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "results.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}

    def save():
        state_path.write_text(json.dumps(state, indent=1))

    onnx_path = export_efficientnet_lite0(work / "efficientnet_lite0.onnx")
    calib_path = work / f"calib_{args.calib_count}.npz"
    calib = calibration_images(args.calib_count)
    if not calib_path.exists():
        np.savez(calib_path, input=calib)
    eval_x, labels = imagenet_eval_set()
    images = np.concatenate([eval_x, held_out_images(args.unlabeled, calib)])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run(None, {"input": x[None]})[0] for x in images])

    # 1. the four artifacts, through the CLI
    full_mb = None
    configs = [("uniform 8-bit", "w8", ["--bits", "8"]), ("uniform 4-bit", "w4", ["--bits", "4"]),
               ("ILP mixed, 75% (first + last pinned)", "mixed75", None),
               ("ILP mixed, 52% (first pinned)", "mixed52", None)]
    for label, key, flags in configs:
        artifact = work / f"{key}.artifact"
        if full_mb is None and key != "w8":
            full_mb = json.loads((work / "w8.artifact" / "manifest.json").read_text())["quantization"]["weight_mb"]
        if key == "mixed75":
            flags = ["--bits", "mixed", "--max-size", f"{0.75 * full_mb:.6f}"]
        elif key == "mixed52":
            flags = ["--bits", "mixed", "--max-size", f"{0.52 * full_mb:.6f}", "--no-pin-last"]
        if key not in state:
            log(f"compiling {label}: {' '.join(flags)}")
            start = time.perf_counter()
            rc = compile_main([str(onnx_path), "--calib", str(calib_path), "-o", str(artifact), "-q", *flags])
            if rc != 0:
                return rc
            seconds = time.perf_counter() - start
            model = runtime.load(artifact)
            logits = np.concatenate([model.run({"input": x[None]})["logits"] for x in images])
            q = model.manifest["quantization"]
            state[key] = {"label": label, "flags": " ".join(flags), "compile_s": round(seconds, 1),
                          "library_mb": (artifact / "model.so").stat().st_size / 1e6, "weight_mb": q["weight_mb"],
                          "layers4": sum(lay["weight_bits"] == 4 for lay in q["layers"]),
                          "layers": len(q["layers"]), "integer_only": model.manifest["integer_only"],
                          **quality(logits, ref, labels), **{k: v for k, v in benchmark(
                              model, threads=1, repeat=args.repeat).items() if k in ("p50_ms", "mean_ms")}}
            save()
        elif args.retime:
            timing = benchmark(runtime.load(artifact), threads=1, repeat=args.repeat)
            state[key].update({k: v for k, v in timing.items() if k in ("p50_ms", "mean_ms")})
            save()
        log(f"{label}: {state[key]}")

    # 2. equal size (75%): ILP vs random vs inverse, one calibration, in process
    if "allocations" not in state:
        from runtime.mixed import Precision, choose_bits

        log("allocation comparison: calibrating once")
        lowerer = Lowerer(onnx_path, calib_path)
        layers = lowerer.layers8()
        budget = 0.75 * full_mb
        choice = choose_bits(onnx_path, lowerer.float_mod, layers, lowerer.samples,
                             Precision("mixed", max_size_mb=float(f"{budget:.6f}")), lowerer.spec, log=log)
        costs, pinned = choice.costs, choice.pinned
        rng = np.random.default_rng(0)
        candidates = [("ILP", dict(choice.layer_bits))]
        gain = {c.name: (c.sensitivity[4] - c.sensitivity[8]) / (c.params * 4 / 8) for c in costs}
        candidates.append(("inverse (most sensitive first)", budget_allocation(
            costs, pinned, budget, sorted(costs, key=lambda c: -gain[c.name]))))
        for i in range(args.random):
            order = [costs[j] for j in rng.permutation(len(costs))]
            candidates.append((f"random {i + 1}", budget_allocation(costs, pinned, budget, order)))
        subset = np.concatenate([images[:len(labels)], images[len(labels):len(labels) + args.small_unlabeled]])
        ref_subset = np.concatenate([ref[:len(labels)], ref[len(labels):len(labels) + args.small_unlabeled]])
        rows = []
        for name, bits in candidates:
            start = time.perf_counter()
            logits = lowerer.logits(bits, subset)
            rows.append({"name": name, "size_mb": size_mb(costs, bits), "objective": objective(costs, bits),
                         "layers4": sum(b == 4 for b in bits.values()), **quality(logits, ref_subset, labels)})
            log(f"{name}: {rows[-1]} ({time.perf_counter() - start:.0f} s)")
        state["allocations"] = {"budget_mb": budget, "rows": rows}
        save()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report(state, args))
    print(RESULTS.read_text())
    return 0


def report(state: dict, args) -> str:
    w8 = state["w8"]
    intro = (f"`python -m benchmarks.mixed_precision`: calibrated on {args.calib_count} images that are not "
             f"evaluation images; agreement and top-1 on foolbox's {w8['labeled']} labeled ImageNet images, "
             f"logit cosine to float (onnxruntime) on {w8['unlabeled']} other unlabeled images; latency: median "
             f"of {args.repeat} runs, 1 thread. Weight MB: conv/matmul weights as stored (4-bit packed two per "
             "byte); library: `model.so`.")
    head = ("| weights | flags | layers at 4 bits | weight MB | library MB | top-1 agreement | top-1 | "
            "logit cosine (mean / min) | latency ms |")
    lines = ["# Mixed precision on EfficientNet-Lite0 (x86)", "", intro, "", head, "|---|---|---|---|---|---|---|---|---|"]
    for key in ("w8", "w4", "mixed75", "mixed52"):
        r = state[key]
        lines.append(f"| {r['label']} | `{r['flags']}` | {r['layers4']}/{r['layers']} | {r['weight_mb']:.3f} "
                     f"({r['weight_mb'] / w8['weight_mb']:.0%}) | {r['library_mb']:.2f} | "
                     f"{r['agreement']}/{r['labeled']} | {r['top1']}/{r['labeled']} | "
                     f"{r['cosine']:.4f} / {r['cosine_min']:.4f} | {r['p50_ms']:.1f} |")
    alloc = state["allocations"]
    rows = alloc["rows"]
    intro = (f"**Equal size ({alloc['budget_mb']:.3f} MB, 75%)**: the ILP's allocation against the inverse "
             "allocation and random ones of the same budget (same calibration; 20 labeled + "
             f"{rows[0]['unlabeled']} unlabeled images):")
    head = ("| allocation | layers at 4 bits | weight MB | summed sensitivity | top-1 agreement | "
            "logit cosine (mean / min) |")
    lines += ["", intro, "", head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['layers4']} | {r['size_mb']:.3f} | {r['objective']:.3e} | "
                     f"{r['agreement']}/{r['labeled']} | {r['cosine']:.4f} / {r['cosine_min']:.4f} |")
    ilp, others = rows[0], rows[1:]
    beaten = sum(ilp["cosine"] > r["cosine"] for r in others)
    best = max(r["cosine"] for r in others)
    lines += ["", (f"The ILP's allocation has a higher mean logit cosine than {beaten} of the {len(others)} "
                   f"others (best other: {best:.4f}).")]
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    sys.exit(main())
