"""Shared by the side runs: the frozen parts they stand on, and where their numbers go."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmlab import unimodal
from vlmlab.backbones import load_image_encoder
from vlmlab.data import evalsets, shapes
from vlmlab.data.loaders import to_float
from vlmlab.encoders import IMAGENET_MEAN, IMAGENET_STD, preprocess_images, resize
from vlmlab.files import write_json_atomic
from vlmlab.lm import load_language_model


@torch.no_grad()
def features_of(tower, images: torch.Tensor) -> torch.Tensor:
    """A frozen tower's features of uint8 images, in chunks of 1,000."""
    return torch.cat([tower(to_float(chunk)) for chunk in images.split(1000)])


def frozen_tower(spec: str) -> torch.nn.Module:
    """A frozen vision tower from "kind:name": `unimodal.vision_tower`'s kinds, or imagenet:<layer>@<size>
    (`ImageNetCells`, e.g. imagenet:stride16@192)."""
    kind, name = spec.split(":")
    if kind == "imagenet":
        layer, size = name.split("@")
        return ImageNetCells(layer, int(size))
    return unimodal.vision_tower({"tower": kind, "name": name})


def frozen_parts(tower: str, n_scenes: int, seed: int):
    """The vision tower a "kind:name" spec names (`frozen_tower`), notebook 01's tiny LM, the first `n_scenes`
    training scenes and their features: what a recipe on frozen parts (notebooks 08, 09) starts from."""
    vision = frozen_tower(tower)
    scenes = shapes.ShapesWorld(seed=seed).scenes(n_scenes, "train")
    return vision, load_language_model("tiny-lm"), scenes, features_of(vision, evalsets.images_of(scenes))


def save_result(script: str, run: str, result: dict) -> Path:
    """Write `result` to research/results/<script's name>/<run>.json (atomically) and print it on one line."""
    out = Path(script).parent / "results" / Path(script).stem / f"{run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(json.dumps(result))
    return out


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images [N, 3, H, W] -> [N, 3, size, size] uint8, resized by a backbone's preprocessing
    (`vlmlab.encoders.preprocess_images`: bicubic with antialiasing), in chunks to keep the float copy small."""
    if images.shape[-1] == size:
        return images
    unit = ((0.0,) * 3, (1.0,) * 3)  # no normalisation: floats in [0, 1]
    return torch.cat([(preprocess_images(chunk, size, *unit) * 255).round().to(torch.uint8) for chunk in images.split(2048)])


class ImageNetCells(torch.nn.Module):
    """A frozen ImageNet tower read cell by cell: EfficientNet-Lite0 (trained with ImageNet's labels, never on this
    world) sees the scene at `size` px and a layer's grid is averaged over the world's 3 x 3 cells (at 96 px its last
    grid, stride 32, has one position per cell, at 192 px four). `layer`: a block's output at stride 8, 16 or 32
    (40, 112, 320 channels) or "head", the 1,280-d features its classifier reads.
    Float images [B, 3, H, W] in [-1, 1], as every tower here takes them -> [B, 9, C]."""

    BLOCKS = {"stride8": 4, "stride16": 10, "stride32": 15}  # layer -> the index of the block whose output it is
    LAYERS = (*BLOCKS, "head")

    def __init__(self, layer: str = "head", size: int = 96):
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"layer {layer!r} is not one of {self.LAYERS}")
        self.net = load_image_encoder("efficientnet-lite0").model.net.eval().requires_grad_(False)
        self.layer, self.size = layer, size
        self.spec = {"tower": f"imagenet-{layer}", "name": f"efficientnet-lite0@{size}"}

    @torch.no_grad()
    def layers(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each of LAYERS, each cell's vector: {layer: [B, 9, C]}."""
        x = resize((images + 1) / 2, self.size)  # [B, 3, size, size] in [0, 1]
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        net, grids = self.net, {}
        x = net._swish(net._bn0(net._conv_stem(x)))
        for k, block in enumerate(net._blocks):
            x = block(x)  # [B, C, size / stride, size / stride]
            grids.update({name: x for name, at in self.BLOCKS.items() if at == k})
        grids["head"] = net._swish(net._bn1(net._conv_head(x)))  # [B, 1280, size / 32, size / 32]
        return {name: F.adaptive_avg_pool2d(g, shapes.GRID).flatten(2).transpose(1, 2) for name, g in grids.items()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)[self.layer]
