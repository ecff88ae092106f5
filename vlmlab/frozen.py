"""What is frozen and what trains. Introduced in notebook 04.

    freeze(module)                      no gradients, eval mode (no dropout): a part that never changes
    checksum(module) -> str             sha256 over every tensor: equal before and after training = untouched
    parameter_table({"part": module})   parameters and trainable parameters per part, with their total
    tower_features(tower, images)       a frozen tower's features of uint8 images (keep=True: on disk, for the next run)
    FrozenParts                         a model built on frozen parts (a vision tower, a language model): they
                                        stay in eval mode, and its checkpoint holds only what it trains
    TowerAndLM                          FrozenParts whose parts are `vision` and `lm`: a captioner's image_features
                                        and embed come from them

A frozen part that came from the checkpoint zoo carries `ref` = {"name", "sha256"} of that file; a model's config
keeps the refs of its frozen parts, so reloading it finds exactly those files again (`vlmlab.zoo.load_model`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .data.loaders import to_float
from .params import require
from .zoo import user_cache, write_safetensors_atomic


def freeze(module: nn.Module) -> nn.Module:
    """Switch off every gradient of `module` and put it in eval mode; returns it."""
    return module.requires_grad_(False).eval()


def checksum(module: nn.Module) -> str:
    """sha256 over every parameter and buffer, in order: equal before and after training means untouched."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameter_table(parts: dict[str, nn.Module]) -> list[dict]:
    """One row per named part: its parameters and how many of them train; plus a "total" row."""
    rows = [{"part": name, "params": sum(p.numel() for p in m.parameters()),
             "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad)} for name, m in parts.items()]
    total = {"part": "total", "params": sum(r["params"] for r in rows), "trainable": sum(r["trainable"] for r in rows)}
    return rows + [total]


@torch.no_grad()
def tower_features(tower: nn.Module, images: torch.Tensor, batch_size: int = 512, keep: bool = False) -> torch.Tensor:
    """A frozen tower's features of uint8 images [N, 3, H, W], in batches, on the tower's device. `keep`: keep them
    in the user cache (`$VLMLAB_CACHE/features/`), named by the tower's `spec` (which pins its weights by sha256, as
    every tower of `unimodal.vision_tower` does), its modules and settings (its repr) and the images' bytes, so the
    next run with the same tower and images reads them back; a kept file that cannot be read is computed again.
    Notebooks 05, 08 and 09 keep their training scenes' features."""
    device = next(tower.parameters()).device
    path = _kept_features_path(tower, images) if keep else None
    if path is not None:
        try:
            return load_file(path)["features"].to(device)
        except (FileNotFoundError, SafetensorError, KeyError):  # not computed yet, or a broken file: compute it
            pass
    tower.eval()
    features = torch.cat([tower(to_float(chunk).to(device)) for chunk in images.split(batch_size)])
    if path is not None:
        write_safetensors_atomic({"features": features}, path, {"spec": json.dumps(tower.spec), "n": str(len(images))})
    return features


def _kept_features_path(tower: nn.Module, images: torch.Tensor) -> Path:
    spec = getattr(tower, "spec", {})
    require(bool(spec.get("sha256")), "keep", True, "a tower whose spec pins its weights by sha256 (as "
            "unimodal.vision_tower's do)", where="tower_features()")
    digest = hashlib.sha256(f"{json.dumps(spec, sort_keys=True)}\n{tower!r}\n{tuple(images.shape)}".encode())
    digest.update(images.cpu().contiguous().numpy().tobytes())
    return user_cache() / "features" / f"{spec['tower']}-{digest.hexdigest()[:24]}.safetensors"


class FrozenParts(nn.Module):
    """A model that keeps some of its parts frozen. Subclasses name them in `FROZEN` (attribute names; a part may
    be None). Introduced in notebook 04.

    - `train()` leaves the frozen parts in eval mode;
    - `saved_state()` is the state dict without them, and `load_saved(state)` loads exactly that back: the
      checkpoint holds what trains, and the config pins the frozen parts by name and sha256.
    A part that trains (Frozen's vision tower, LLaVA's language model in stage 2) is simply not listed."""

    FROZEN: tuple[str, ...] = ()

    def frozen_parts(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.FROZEN if getattr(self, name) is not None}

    def train(self, mode: bool = True) -> FrozenParts:
        super().train(mode)
        for part in self.frozen_parts().values():
            part.eval()
        return self

    def saved_state(self) -> dict[str, torch.Tensor]:
        skip = tuple(f"{name}." for name in self.frozen_parts())
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def load_saved(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.saved_state())
        if set(state) != expected:
            raise ValueError(f"{type(self).__name__}: the checkpoint's tensors differ from what this model saves: "
                             f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
        self.load_state_dict(state, strict=False)


class TowerAndLM(FrozenParts):
    """A FrozenParts captioner made of a vision tower `vision` (None when image features come precomputed) and a
    language model `lm`: notebook 04's prefix captioner, 05's Flamingo, 09's LLaVA."""

    def hold(self, frozen: tuple[str, ...]) -> None:
        """Make `frozen` (a subset of "lm", "vision") this model's FROZEN parts: no gradient, eval mode; the other of
        the two, when present, trains (Frozen's tower in notebook 04, LLaVA's LM in stage 2)."""
        self.FROZEN = frozen
        for name in ("lm", "vision"):
            part = getattr(self, name)
            if part is not None:
                part.requires_grad_(name not in frozen).train(name not in frozen)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)  # [B, T, D]

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        require(self.vision is not None, "vision", None, "a vision tower (config.vision), or pass image_features")
        return self.vision(pixels)  # [B, N, Dv]


def refuse_optimizer_steps():
    """From now on every optimizer step raises: a notebook that promises no training (07) keeps the promise. Returns
    the hook's handle (`.remove()` lifts it)."""

    def refuse(optimizer, args, kwargs):
        raise RuntimeError(f"{type(optimizer).__name__}.step(): this notebook takes no gradient step")

    return register_optimizer_step_pre_hook(refuse)


def live_optimizers() -> int:
    """How many torch optimizers exist in this process right now (0: nothing can have been trained here)."""
    count = 0
    with warnings.catch_warnings():  # isinstance() on every object wakes deprecated torch attributes
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                count += isinstance(obj, torch.optim.Optimizer)
            except ReferenceError:  # a weak proxy whose object is gone
                pass
    return count
