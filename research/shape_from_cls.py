"""Diagnostic for notebook 02: how fast does the tiny ViT's CLS learn shape when it IS told the answer? A linear
7-way shape head on the CLS vector, cross-entropy on one-object training scenes, then accuracy on 500 test scenes.
If shape is slow even with labels, a contrastive signal that mentions shape among colour, size and layout cannot
be expected to find it in a few hundred steps.

    python research/shape_from_cls.py --steps 300
"""

import argparse

import torch
import torch.nn.functional as F
from clip_from_pixels import ConvStem
from common import save_result

from vlmlab import nn as vnn
from vlmlab.data import evalsets
from vlmlab.data.loaders import to_float
from vlmlab.data.shapes import SHAPES
from vlmlab.train import fit


def shapes_of(scenes) -> torch.Tensor:
    return torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stem", default="patch", choices=("patch", "conv"))
    p.add_argument("--patch", type=int, default=16)
    args = p.parse_args()

    scenes = evalsets.single_objects(args.seed, 8000, "train")
    images, labels = evalsets.images_of(scenes), shapes_of(scenes)
    torch.manual_seed(args.seed)
    model = torch.nn.ModuleDict({"vit": vnn.ViT(vnn.ViTConfig(image_size=64, patch_size=args.patch, dim=96, depth=4, n_heads=4)),
                                 "head": torch.nn.Linear(96, len(SHAPES))})

    if args.stem == "conv":
        model["vit"].patch_embed = ConvStem(96)

    def loss(m, idx):
        return F.cross_entropy(m["head"](m["vit"](to_float(images[idx])).cls), labels[idx])

    def batch(step):
        return torch.randint(len(images), (args.batch,), generator=torch.Generator().manual_seed(step))

    history = fit(model, loss, batch, steps=args.steps, lr=args.lr, weight_decay=0.1, seed=args.seed, progress=False)
    test = evalsets.single_objects(args.seed, 500, "test")
    with torch.no_grad():
        predicted = model["head"](model["vit"].eval()(to_float(evalsets.images_of(test))).cls).argmax(-1)
    result = {"args": vars(args), "first_loss": history.loss[0], "last_loss": history.loss[-1],
              "shape_acc": (predicted == shapes_of(test)).float().mean().item(), "chance": 1 / len(SHAPES)}
    save_result(__file__, f"{args.stem}{args.patch}_steps{args.steps}", result)


if __name__ == "__main__":
    main()
