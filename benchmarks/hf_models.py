"""Hugging Face `transformers` architectures as users export them, and how intq does on them.

    python -m benchmarks.hf_models [--models gpt2,t5-enc] [--exporters legacy,dynamo]
        -> a Markdown table on stdout and in benchmarks/results/hf_models.md

Each architecture is built from a small but realistic config (hidden 64-128, 2 layers, the real
defaults otherwise) with seeded random init (`AutoModel.from_config`; no weights can be downloaded
here), exported with `torch.onnx.export(dynamo=False, opset_version=17)` (or the dynamo exporter,
`--exporters dynamo`), compiled integer-only by `runtime.compiler.compile_model` (calibrated on 4
inputs) and, when that is refused, with `allow_float=True`; then compared with float onnxruntime on 2
held-out inputs (the smallest cosine over every output and input).

Their graphs carry the idioms of the library's modeling code: GPT-2's causal mask (Trilu / Where with
finfo.min) and gelu_new (tanh form), position ids from Range / CumSum (RoBERTa's padding-aware ones),
ALBERT's shared layers, DistilBERT, T5's bucketed relative position bias and T5LayerNorm (RMSNorm
written out as pow / mean / rsqrt), Whisper's conv1d front end and encoder, Wav2Vec2 / HuBERT's conv
feature extractor with GroupNorm and weight-normed positional conv, CLIP's text (argmax pooling on the
EOS token) and vision towers, Swin's shifted windows (Roll, Pad), SegFormer's overlapping patch merges
and all-MLP decoder, MobileViT's unfold / fold, ConvNeXt-V2's GRN, DeiT's distillation token and BEiT's
relative position bias.

Inputs: token ids drawn from a fixed vocabulary with an attention mask that has real padding (right
padding, 8-28 real tokens of 32); images from `benchmarks.models.calibration_images` (scikit-image
photos and CIFAR) resized to 64x64, ImageNet normalisation; audio: a synthetic voiced signal (raw 16 kHz
samples, or Whisper's log-mel features computed by transformers' WhisperFeatureExtractor).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "hf_models.md"
EXPORTERS = ("legacy", "dynamo")
SEQ, VOCAB, IMAGE, AUDIO = 32, 1000, 64, 8000  # text length, vocabulary, image side, audio samples (0.5 s)


@dataclass(frozen=True)
class Arch:
    """One architecture: its transformers config class and arguments, the model class, the input kind
    (text, text-t5, image, audio, whisper), and which outputs of the model output object to export."""

    name: str
    config: str
    kwargs: dict
    model: str = "AutoModel"
    kind: str = "text"
    outputs: tuple[str, ...] = ("last_hidden_state",)
    what: str = ""
    extra_inputs: dict = field(default_factory=dict)


_TXT = dict(vocab_size=VOCAB, max_position_embeddings=128)
_BERTISH = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, **_TXT)
_IMG = dict(image_size=IMAGE, num_channels=3)

ARCHS: tuple[Arch, ...] = (
    Arch("bert", "BertConfig", _BERTISH, outputs=("last_hidden_state", "pooler_output"),
         what="BERT: absolute positions, token types, Erf GELU, tanh pooler (the baseline)"),
    Arch("gpt2", "GPT2Config", dict(vocab_size=VOCAB, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                                    bos_token_id=2, eos_token_id=2, use_cache=False), what="GPT-2: causal mask, gelu_new (tanh form), Conv1D"),
    Arch("albert", "AlbertConfig", dict(embedding_size=64, **_BERTISH), outputs=("last_hidden_state", "pooler_output"),
         what="ALBERT: factorized embeddings, one layer shared by both, gelu_new"),
    Arch("roberta", "RobertaConfig", dict(_BERTISH, max_position_embeddings=130, pad_token_id=1),
         what="RoBERTa: padding-aware position ids (cumsum of the non-pad mask)"),
    Arch("distilbert", "DistilBertConfig", dict(vocab_size=VOCAB, max_position_embeddings=128, dim=128, n_layers=2,
                                                n_heads=4, hidden_dim=512), what="DistilBERT: no token types"),
    Arch("t5-enc", "T5Config", dict(vocab_size=VOCAB, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4,
                                    feed_forward_proj="gated-gelu", use_cache=False), model="T5EncoderModel",
         what="T5 v1.1 encoder: bucketed relative position bias (log, min), T5LayerNorm (RMS), gated GELU"),
    Arch("clip-text", "CLIPTextConfig", dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=512,
                                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                                             bos_token_id=1, eos_token_id=2), model="CLIPTextModel",
         outputs=("last_hidden_state", "pooler_output"),
         what="CLIP text: causal + padding mask, quick GELU, pooled at the EOS token (argmax / gather)"),
    Arch("whisper-enc", "WhisperConfig", dict(num_mel_bins=80, d_model=128, encoder_layers=2, encoder_attention_heads=4,
                                              encoder_ffn_dim=512, decoder_layers=1, decoder_attention_heads=4,
                                              decoder_ffn_dim=256, max_source_positions=100,
                                              vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                              decoder_start_token_id=1), model="WhisperEncoder", kind="whisper",
         what="Whisper encoder: two conv1d + GELU, sinusoidal positions, pre-LN"),
    Arch("wav2vec2", "Wav2Vec2Config", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=512, conv_dim=(128,) * 7, num_conv_pos_embeddings=32,
                                            num_conv_pos_embedding_groups=8, feat_extract_norm="group",
                                            vocab_size=32), kind="audio",
         what="Wav2Vec2-base style: conv feature extractor with GroupNorm, weight-normed positional conv"),
    Arch("hubert", "HubertConfig", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=512, conv_dim=(128,) * 7, num_conv_pos_embeddings=32,
                                        num_conv_pos_embedding_groups=8, feat_extract_norm="layer",
                                        do_stable_layer_norm=True, vocab_size=32), kind="audio",
         what="HuBERT-large style: conv extractor with LayerNorm per conv, stable (pre-LN) layer norm"),
    Arch("clip-vision", "CLIPVisionConfig", dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                                 num_attention_heads=4, patch_size=8, **_IMG),
         model="CLIPVisionModel", kind="image", outputs=("last_hidden_state", "pooler_output"),
         what="CLIP vision: pre-LN before the encoder, quick GELU, class-token pooling"),
    Arch("deit", "DeiTConfig", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=512, patch_size=8, **_IMG), kind="image",
         outputs=("last_hidden_state", "pooler_output"), what="DeiT: class + distillation tokens"),
    Arch("beit", "BeitConfig", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                                    patch_size=8, use_relative_position_bias=True, use_mean_pooling=True,
                                    layer_scale_init_value=0.1, vocab_size=VOCAB, **_IMG), kind="image",
         outputs=("last_hidden_state", "pooler_output"),
         what="BEiT: relative position bias per layer (gathered table), layer scale, mean pooling"),
    Arch("swin", "SwinConfig", dict(image_size=56, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                                    window_size=4, num_channels=3), kind="image",
         outputs=("last_hidden_state", "pooler_output"),
         what="Swin: window attention with relative bias, shifted windows (Roll + mask), Pad to windows, patch merging"),
    Arch("segformer", "SegformerConfig", dict(num_encoder_blocks=4, depths=(1, 1, 1, 1), hidden_sizes=(32, 64, 160, 256),
                                              num_attention_heads=(1, 2, 5, 8), decoder_hidden_size=128, num_labels=8,
                                              num_channels=3), model="SegformerForSemanticSegmentation",
         kind="image", outputs=("logits",),
         what="SegFormer-B0 widths: overlapping patch embeddings, efficient attention (sr conv), Mix-FFN dwconv, "
              "bilinear Resize decoder"),
    Arch("mobilevit", "MobileViTConfig", dict(image_size=IMAGE, hidden_sizes=(64, 80, 96), neck_hidden_sizes=(16, 24, 48,
                                                                                                         64, 80, 96, 384),
                                              num_attention_heads=4, num_channels=3), kind="image",
         outputs=("last_hidden_state", "pooler_output"),
         what="MobileViT-XXS-like: MobileNetV2 blocks (SiLU), unfold / fold of patches around transformers"),
    Arch("convnextv2", "ConvNextV2Config", dict(hidden_sizes=(40, 80, 160, 320), depths=(1, 1, 2, 1), num_channels=3),
         kind="image", outputs=("last_hidden_state", "pooler_output"),
         what="ConvNeXt-V2-atto widths: GRN (global response norm: L2 over HW, mean over C), channels-last LayerNorm"),
)
BY_NAME = {a.name: a for a in ARCHS}


# ----------------------------------------------------------------------------------------------- inputs


def _audio(n: int, seed: int) -> np.ndarray:
    """The families' voiced, speech-like 16 kHz signal (`benchmarks.families`), peak 0.3, float32."""
    from benchmarks.families import _audio as voiced

    y = voiced(n, seed)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _images() -> np.ndarray:
    """[32, 3, 224, 224] photos in ImageNet normalisation."""
    from .models import calibration_images, to_imagenet_normalisation

    return to_imagenet_normalisation(calibration_images(32)).astype(np.float32)


def _image(index: int, side: int) -> np.ndarray:
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(_images()[index % 32][None])
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).numpy()


def sample(arch: Arch, index: int) -> dict[str, np.ndarray]:
    """Input `index` for the architecture: model input name -> array (batch 1)."""
    cfg = arch.kwargs
    if arch.kind == "image":
        return {"pixel_values": _image(index, cfg.get("image_size", IMAGE))}
    if arch.kind == "audio":
        return {"input_values": _audio(AUDIO, index)[None]}
    if arch.kind == "whisper":
        from transformers import WhisperFeatureExtractor

        frames = 2 * cfg["max_source_positions"]
        fe = WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"], chunk_length=frames * 160 // 16000)
        feats = fe(_audio(frames * 160, index), sampling_rate=16000, return_tensors="np")["input_features"]
        return {"input_features": feats[:, :, :frames].astype(np.float32)}
    rng = np.random.default_rng(1000 + index)
    length = 8 + (index * 7) % 21  # 8..28 real tokens: the mask always has padding
    pad = cfg.get("pad_token_id", 0)
    ids = np.full((1, SEQ), pad, np.int64)
    ids[0, :length] = rng.integers(3, cfg.get("vocab_size", VOCAB), length)
    if arch.name == "clip-text":  # the pooler takes the first EOS token (eos_token_id 2)
        ids[0, length - 1] = 2
    mask = np.zeros((1, SEQ), np.int64)
    mask[0, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def calibration(arch: Arch, count: int = 4, offset: int = 10) -> dict[str, np.ndarray]:
    samples = [sample(arch, offset + k) for k in range(count)]
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


# ----------------------------------------------------------------------------------------------- build, export


def build(arch: Arch, seed: int = 0):
    """The transformers model from its config, seeded random init, norm affine parameters spread, BatchNorm
    statistics gathered in train mode on inputs disjoint from calibration and evaluation, eval mode; wrapped so
    it returns a tuple of the chosen outputs."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, arch.config)(**arch.kwargs)
    if arch.model == "AutoModel":
        model = transformers.AutoModel.from_config(config)
    elif arch.model == "WhisperEncoder":
        model = transformers.WhisperModel(config).get_encoder()
    else:
        model = getattr(transformers, arch.model)(config)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():  # trained norms do not keep gamma = 1, beta = 0
        for m in model.modules():
            if (type(m).__name__.endswith(("LayerNorm", "GroupNorm", "RMSNorm")) or m in norms) \
                    and getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.6, 1.4)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.2)
        if norms:  # BatchNorm statistics of real inputs (untouched, std-0.02 convs shrink activations to 1e-30)
            for m in norms:
                m.momentum = None  # cumulative average over the warm-up batches
            model.train()
            for k in range(3):
                batch = [sample(arch, 20 + 4 * k + i) for i in range(4)]
                model(**{n: torch.from_numpy(np.concatenate([b[n] for b in batch])) for n in batch[0]})
    model.eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = self.model(**dict(zip(arch_inputs, args)))
            return tuple(out[k] for k in arch.outputs)

    arch_inputs = list(sample(arch, 0))
    return Wrapped().eval()


def export(arch: Arch, exporter: str, path: str | os.PathLike) -> Path:
    import torch

    path, model, x = Path(path), build(arch), sample(arch, 0)
    args = tuple(torch.from_numpy(v) for v in x.values())
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, input_names=list(x),
                              output_names=list(arch.outputs))
        else:
            torch.onnx.export(model, args, str(path), dynamo=True, opset_version=18, input_names=list(x),
                              output_names=list(arch.outputs), external_data=False)
    return path


# ----------------------------------------------------------------------------------------------- evaluate


@dataclass
class Row:
    name: str
    exporter: str
    integer_only: str = ""
    cosine: str = ""
    float_nodes: str = ""
    seconds: str = ""


def evaluate(arch: Arch, exporter: str, workdir: Path, calib_count: int = 4, eval_count: int = 2) -> Row:
    """Export, compile (integer-only, else --allow-float), run on held-out inputs, compare with onnxruntime."""
    import onnxruntime as ort

    import runtime
    from frontends import CompileError
    from runtime.compiler import compile_model

    from .corpus import cosine, first_unsupported

    row = Row(arch.name, exporter)
    path = export(arch, exporter, workdir / f"{arch.name}.{exporter}.onnx")
    calib = workdir / f"{arch.name}.calib.npz"
    np.savez(calib, **calibration(arch, calib_count))
    shapes = {k: v.shape for k, v in sample(arch, 0).items()}
    allow, start = False, time.perf_counter()
    try:
        art = compile_model(path, output=workdir / f"{arch.name}.{exporter}.int", calib=calib, input_shapes=shapes,
                            progress=False)
        row.integer_only = "yes"
    except CompileError as err:
        row.integer_only = "no: " + first_unsupported(str(err))
        allow, start = True, time.perf_counter()
        try:
            art = compile_model(path, output=workdir / f"{arch.name}.{exporter}.float", calib=calib,
                                input_shapes=shapes, allow_float=True, progress=False)
        except CompileError as err2:
            row.cosine = "refused: " + first_unsupported(str(err2).split(": ", 1)[-1])
            return row
    row.seconds = f"{time.perf_counter() - start:.0f}"
    art = runtime.load(art)
    row.float_nodes = str(len(art.manifest.get("float_nodes", []))) if allow else "0"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cos = []
    for k in range(eval_count):
        x = sample(arch, k)
        ours = art.run(x)
        cos += [cosine([ours[o["name"]]], [r]) for o, r in zip(art.manifest["outputs"], session.run(None, x))]
    row.cosine = f"{min(cos):.4f}"
    return row


def table(rows: list[Row]) -> str:
    head = ("| model | exporter | integer-only (first unsupported ops) | cosine to float (min over outputs) "
            "| float nodes | compile s |\n|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r.name} | {r.exporter} | {r.integer_only} | {r.cosine} | {r.float_nodes} | {r.seconds} |\n"
                          for r in rows)


NOTES = """Before the fixes below, 8 of the 17 (legacy exporter) were refused integer-only: BERT, GPT-2, ALBERT,
DistilBERT, CLIP text (the mask), T5 (softmax; 0.912 with --allow-float), RoBERTa (CumSum), wav2vec2
(InstanceNormalization). What these graphs needed (each fixed for the op family, with a synthetic ONNX test):

- transformers 5 builds every attention mask for SDPA as `where(bool_mask, [0.], [-inf])` with the scalars
  exported as shape-[1] tensors; NumPy 2 refuses `float()` of those, and the mask lowering crashed, so every text
  encoder was refused integer-only (tests/test_masks.py `keep_where_1d`).
- T5's relative position bias arrives folded into that mask, `where(keep, bias, finfo.min)`: the calibrated range
  of the sum holds -3.4e38 ("softmax logit scale too coarse"); now logits + bias in int32, masked keys exactly 0
  (`bias_where`).
- GroupNorm as the legacy exporter writes it (InstanceNormalization between reshapes: wav2vec2's feature
  extractor) and InstanceNorm2d: an integer LayerNorm over the flattened trailing axes (tests/test_passes.py).
- RoBERTa's position ids, `cumsum(ids != pad)`: CumSum of integers stays an integer op; CumSum of activations is an
  exact int32 running sum (tests/test_frontend.py, tests/test_binary_ops.py).
- CLIP text's pooling at the EOS position, a Gather of an activation at `argmax(ids)` (tests/test_spatial_ops.py).

Caveats: the weights are HF's random init (std 0.02 linear layers), so attention is nearly uniform and the
transformers' outputs are dominated by embeddings and LayerNorm: cosines near 1 here say the graphs lower
correctly, not what trained weights would measure. GPT-2's causal mask no longer comes as Trilu in transformers
5 (the SDPA mask is built from index compares and folded at a fixed length). MobileViT's gap is measured, not
fixed: the cosine falls gradually through its MobileNetV2 blocks (8-bit per-tensor SiLU activations, 1.00 ->
0.95 over 7 blocks, like the EfficientNet family's 0.9875) and then through the transformer blocks; calibrating
on 16 inputs instead of 4 gives 0.869, a tighter sensitivity probe (0.005) changes nothing.
"""


def _write(path: Path, rows: list[Row], total: int) -> None:
    import transformers

    state = "" if len(rows) == total else f" (in progress: {len(rows)} of {total})"
    archs = "\n".join(f"- {a.name}: `transformers.{a.config}` -> `{a.model}`, outputs {', '.join(a.outputs)}: {a.what}"
                      for a in ARCHS)
    path.write_text(f"# Hugging Face transformers architectures\n\n`python -m benchmarks.hf_models` on "
                    f"{time.strftime('%Y-%m-%d')}{state}, transformers {transformers.__version__}; small configs with "
                    "seeded random init, calibrated on 4 inputs, cosine to float onnxruntime on 2 others (the smallest "
                    "over outputs and inputs); compile seconds on a shared 2-core machine.\n\n"
                    f"{table(rows)}\n{NOTES}\n## Architectures\n\n{archs}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hf_models", description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (default: all)")
    p.add_argument("--exporters", default="legacy", help="legacy, dynamo or both (comma-separated)")
    p.add_argument("-o", "--output", type=Path, default=RESULTS, help="Markdown table to write")
    args = p.parse_args(argv)
    chosen = [a for a in ARCHS if not args.models or a.name in args.models.split(",")]
    exporters = args.exporters.split(",")
    rows: list[Row] = []
    print(table([]), end="", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in chosen:
            for exporter in exporters:
                try:
                    row = evaluate(arch, exporter, Path(tmp))
                except Exception as err:  # noqa: BLE001 -- a sweep reports every failure and goes on
                    row = Row(arch.name, exporter, f"FAILED: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
                _write(args.output, rows, len(chosen) * len(exporters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
