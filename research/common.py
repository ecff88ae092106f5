"""Shared by the side runs: the frozen parts they stand on, and where their numbers go."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlmlab import unimodal
from vlmlab.data import evalsets, shapes
from vlmlab.data.loaders import to_float
from vlmlab.encoders import preprocess_images
from vlmlab.files import write_json_atomic
from vlmlab.lm import load_language_model


@torch.no_grad()
def features_of(tower, images: torch.Tensor) -> torch.Tensor:
    """A frozen tower's features of uint8 images, in chunks of 1,000."""
    return torch.cat([tower(to_float(chunk)) for chunk in images.split(1000)])


def frozen_parts(tower: str, n_scenes: int, seed: int):
    """The vision tower a "kind:name" spec names, notebook 01's tiny LM, the first `n_scenes` training scenes and
    their features: what a recipe on frozen parts (notebooks 08, 09) starts from."""
    kind, name = tower.split(":")
    vision = unimodal.vision_tower({"tower": kind, "name": name})
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
