"""Shared by the side runs: the frozen parts they stand on, and where their numbers go."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlmlab import frozen, unimodal
from vlmlab.data import evalsets, shapes
from vlmlab.encoders import ImageNetCells, preprocess_images
from vlmlab.files import write_json_atomic
from vlmlab.lm import load_language_model


@torch.no_grad()
def features_of(tower, images: torch.Tensor) -> torch.Tensor:
    """A frozen tower's features of uint8 images, kept in the user cache for the next run (`frozen.tower_features`)."""
    return frozen.tower_features(tower, images, keep=True)


def frozen_tower(spec: str) -> torch.nn.Module:
    """A frozen vision tower from "kind:name": `unimodal.vision_tower`'s kinds (imagenet-cells:efficientnet-lite0 among
    them), or imagenet:<layer>@<size> (`imagenet_cells`, e.g. imagenet:stride16@192)."""
    kind, name = spec.split(":")
    if kind == "imagenet":
        layer, size = name.split("@")
        return imagenet_cells(layer, int(size))
    return unimodal.vision_tower({"tower": kind, "name": name})


def imagenet_cells(layer: str, size: int) -> ImageNetCells:
    """EfficientNet-Lite0 read cell by cell at any layer and size (`unimodal.vision_tower`'s "imagenet-cells", whose
    spec names them; the notebooks' arm is stride16 at 96 px)."""
    return unimodal.vision_tower({"tower": "imagenet-cells", "name": "efficientnet-lite0", "layer": layer, "size": size})


def frozen_parts(tower: str, n_scenes: int, seed: int):
    """The vision tower a "kind:name" spec names (`frozen_tower`), notebook 01's tiny LM, the first `n_scenes`
    training scenes and their features: what a recipe on frozen parts (notebooks 08, 09) starts from."""
    vision = frozen_tower(tower)
    scenes = shapes.ShapesWorld(seed=seed).scenes(n_scenes, "train")
    return vision, load_language_model("tiny-lm"), scenes, features_of(vision, evalsets.images_of(scenes))


def run_name(tower: str, settings: str, seed: int, scenes: int = 20_000) -> str:
    """A result file's name: the tower spec as it was given ("imagenet:stride16@192" -> "imagenet-stride16-192"), the
    run's own settings, "-scenesN" when it trained on other than the recipes' 20,000 scenes, and the seed."""
    fewer = f"-scenes{scenes}" if scenes != 20_000 else ""
    return f"{tower.replace(':', '-').replace('@', '-')}-{settings}{fewer}-seed{seed}"


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
