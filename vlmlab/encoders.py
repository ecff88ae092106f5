"""What every pretrained backbone needs around it: image preprocessing, tokenising, and wrappers that give every
encoder of a kind the same forward; plus features of whole image folders and text lists, computed once.
Introduced in notebook 01 (`vlmlab.backbones` loads the models).

    image encoders   model(preprocess(images)) -> (vector [B, D], grid [B, C, h, w])
    text encoders    model(**preprocess(texts)) -> (vector [B, D], L2-normalised; tokens [B, T, D])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data.real import load_rgb
from .params import is_int, require

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image_to_uint8(image) -> torch.Tensor:
    """A PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor -> uint8 [3, H, W]."""
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array of dtype {image.dtype} and shape {image.shape}: expected uint8 (H, W, 3)")
        image = torch.from_numpy(image.copy()).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        what = f"{image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise TypeError(f"images: got a {what}; expected PIL images, uint8 (H, W, 3) arrays or uint8 (3, H, W) tensors")
    return image


def preprocess_images(images, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Images -> float [B, 3, size, size]: bicubic resize (whole image, no crop), scale to [0, 1], normalise.

    `images`: one PIL image / array / tensor, a list of them (any sizes), or a uint8 batch [B, 3, H, W].
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    elif not isinstance(images, list | tuple):
        images = [images]
    x = torch.cat([resize(_image_to_uint8(im)[None].float() / 255, size) for im in images])  # [B, 3, size, size]
    return normalise(x, mean, std)


def normalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Float images [B, 3, H, W] in [0, 1] -> each channel less its mean, over its standard deviation."""
    return (x - x.new_tensor(mean).view(3, 1, 1)) / x.new_tensor(std).view(3, 1, 1)


def resize(x: torch.Tensor, size: int, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Float images [B, 3, H, W] with values in `bounds` -> [B, 3, size, size], bicubic with antialiasing, clamped
    back into `bounds`; images already that size are kept as they are."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(*bounds)


def tokenize_with(tokenizer, max_length: int | None = None) -> Callable:
    """texts -> {"input_ids": [B, T], "attention_mask": [B, T]}, padded to the longest text."""

    def tokenize(texts: str | list[str]) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = tokenizer(texts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return tokenize


# ---- wrappers that give every encoder of a kind the same forward ----

class EfficientNetEncoder(nn.Module):
    """EfficientNet-Lite0 without its classifier: images [B, 3, 224, 224] -> (vector [B, 1280], grid [B, 1280, 7, 7]).

    `self.net` is the whole network; `self.net._fc(vector)` gives the ImageNet logits [B, 1000].
    """

    image_size = 224

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-3:] != (3, self.image_size, self.image_size):
            raise ValueError(f"images of shape {tuple(images.shape)}: efficientnet-lite0 takes [B, 3, 224, 224] "
                             "(its padding is fixed for 224); use the backbone's preprocess")
        grid = self.net.extract_features(images)  # [B, 1280, 7, 7]
        return grid.mean(dim=(2, 3)), grid  # global average pool, as the classifier sees it


class ImageNetCells(nn.Module):
    """EfficientNet-Lite0 read cell by cell: the ImageNet CNN (trained with ImageNet's labels, never on the world it
    is shown) sees the image at `size` px and one layer's grid is averaged over a `cells` x `cells` grid of cells.
    `layer`: a block's output at stride 8, 16 or 32 (40, 112, 320 channels) or "head", the 1,280 features its
    classifier reads. The pretrained-tower arm of notebooks 05, 08 and 09 (`unimodal.vision_tower`).
    Float images [B, 3, H, W] in [-1, 1], as every tower of the workbook takes them -> [B, cells * cells, C].
    It takes `net` over: the net is moved to channels-last in place."""

    BLOCKS = {"stride8": 4, "stride16": 10, "stride32": 15}  # layer -> the index of the block whose output it is
    LAYERS = (*BLOCKS, "head")

    def __init__(self, net: nn.Module, layer: str = "stride16", size: int = 96, cells: int = 3):
        super().__init__()
        require(layer in self.LAYERS, "layer", layer, f"one of {self.LAYERS}")
        self.net = net.to(memory_format=torch.channels_last)  # its depthwise convolutions run ~1.5x faster on CPUs
        self.layer, self.size, self.cells = layer, size, cells

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, size={self.size}, cells={self.cells}"

    def layers(self, images: torch.Tensor, last: str = "head") -> dict[str, torch.Tensor]:
        """Each layer up to `last`, each cell's vector: {layer: [B, cells * cells, C]}."""
        x = normalise(resize((images + 1) / 2, self.size))  # [B, 3, size, size]
        x = x.contiguous(memory_format=torch.channels_last)
        net, grids = self.net, {}
        x = net._swish(net._bn0(net._conv_stem(x)))
        for k, block in enumerate(net._blocks[:self.BLOCKS.get(last, len(net._blocks)) + 1]):
            x = block(x)  # [B, C, size / stride, size / stride]
            grids.update({name: x for name, at in self.BLOCKS.items() if at == k})
        if last == "head":
            grids["head"] = net._swish(net._bn1(net._conv_head(x)))  # [B, 1280, size / 32, size / 32]
        return {name: F.adaptive_avg_pool2d(g, self.cells).flatten(2).transpose(1, 2) for name, g in grids.items()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images, last=self.layer)[self.layer]


class SentenceEncoder(nn.Module):
    """A text encoder (Hugging Face or vlmlab.nn.TextTransformer) with sentence-transformers' pooling:
    (input_ids, attention_mask) [B, T] -> (mean of the token states over the mask, L2-normalised [B, D]; tokens [B, T, D])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out if isinstance(out, torch.Tensor) else out.last_hidden_state  # [B, T, D] (vlmlab.nn gives the tensor)
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # [B, T, 1]
        vector = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, D]
        return F.normalize(vector, dim=-1), tokens


class ViTEncoder(nn.Module):
    """vlmlab.nn.ViT as an image encoder: images [B, 3, S, S] -> (CLS [B, D], patch tokens on their grid [B, D, h, w])."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.vit(images)
        return out.cls, out.patches.transpose(1, 2).unflatten(2, self.vit.grid)  # [B, N, D] -> [B, D, h, w]


class HFImageEncoder(nn.Module):
    """A Hugging Face vision model: pixel_values -> (vector [B, D], grid [B, D, h, w]).

    vector: the model's `pooler_output` (ViT: tanh(dense(CLS)); CLIP: layer-normed CLS), else the mean of the grid.
    grid: a CNN's last feature map as it is; for a ViT the patch tokens (the leading CLS/register tokens dropped),
    laid out on their square h x w grid.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixel_values)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # CNN: [B, C, h, w]
            grid = hidden
        else:  # ViT: [B, extra + h*w, D]
            side = math.isqrt(hidden.shape[1])
            grid = hidden[:, hidden.shape[1] - side * side :].transpose(1, 2).unflatten(2, (side, side))
        pooled = getattr(out, "pooler_output", None)
        vector = pooled.flatten(1) if pooled is not None else grid.mean(dim=(2, 3))
        return vector, grid


# ---- features of many inputs, computed once ----


def _encoded(image_encoder, paths: Sequence, batch_size: int):
    """(vector [b, Di], grid [b, Di, h, w]) of a few image files at a time. Small batches are faster on a CPU here:
    the activations of a few 224 x 224 images stay in cache."""
    require(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an int >= 1")
    require(len(paths) >= 1, "paths", paths, "at least one image file")
    for start in range(0, len(paths), batch_size):
        images = [load_rgb(path) for path in paths[start : start + batch_size]]
        yield image_encoder.model(image_encoder.preprocess(images))


@torch.no_grad()
def image_vectors(image_encoder, paths: Sequence, batch_size: int = 4) -> torch.Tensor:
    """Image files -> an image backbone's pooled vectors [N, Di] (EfficientNet-Lite0: 1280)."""
    return torch.cat([vector for vector, _ in _encoded(image_encoder, paths, batch_size)])


@torch.no_grad()
def image_grids(image_encoder, paths: Sequence, batch_size: int = 4) -> torch.Tensor:
    """Image files -> an image backbone's last feature map as tokens [N, h * w, Di] (EfficientNet-Lite0: 49 x 1280),
    what notebook 05's resampler reads."""
    return torch.cat([grid.flatten(2).transpose(1, 2) for _, grid in _encoded(image_encoder, paths, batch_size)])


@torch.no_grad()
def text_vectors(text_encoder, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Texts -> a text backbone's unit sentence embeddings [N, Dt] (MiniLM-L6: 384), in the order given.

    Texts are batched shortest first, so a batch is padded only to its own longest text, not to the
    longest of all (one 100-character caption would otherwise pad all 785 to its length).
    """
    require(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an int >= 1")
    require(len(texts) >= 1, "texts", texts, "at least one text")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), text_encoder.dims["vector"])
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        emb, _ = text_encoder.model(**text_encoder.preprocess([texts[i] for i in rows]))  # [b, Dt], tokens unused
        out[rows] = emb
    return out
