"""Diagnostic for notebook 02: how fast does the tiny ViT's CLS learn shape when it IS told the answer? A linear
7-way shape head on the CLS vector, cross-entropy on one-object training scenes, then accuracy on 500 test scenes.
If shape is slow even with labels, a contrastive signal that mentions shape among colour, size and layout cannot
be expected to find it in a few hundred steps.

    python research/shape_from_cls.py --steps 300
    python research/shape_from_cls.py --steps 300 --image-size 48   # the 64 px scenes resized: one 16 px patch per cell
"""

import argparse

import torch
import torch.nn.functional as F
from clip_from_pixels import ConvStem
from common import resized, save_result

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
    p.add_argument("--image-size", dest="image_size", type=int, default=64, help="the world's 64 px scenes resized to this")
    args = p.parse_args()

    scenes = evalsets.single_objects(args.seed, 8000, "train")
    images, labels = resized(evalsets.images_of(scenes), args.image_size), shapes_of(scenes)
    torch.manual_seed(args.seed)
    vit_config = vnn.ViTConfig(image_size=args.image_size, patch_size=args.patch, dim=96, depth=4, n_heads=4)
    model = torch.nn.ModuleDict({"vit": vnn.ViT(vit_config),
                                 "head": torch.nn.Linear(96, len(SHAPES))})

    if args.stem == "conv":
        model["vit"].patch_embed = ConvStem(96)

    def loss(m, idx):
        return F.cross_entropy(m["head"](m["vit"](to_float(images[idx])).cls), labels[idx])

    def batch(step):
        return torch.randint(len(images), (args.batch,), generator=torch.Generator().manual_seed(step))

    history = fit(model, loss, batch, steps=args.steps, lr=args.lr, weight_decay=0.1, seed=args.seed, progress=False)
    test = evalsets.single_objects(args.seed, 500, "test")
    test_images = to_float(resized(evalsets.images_of(test), args.image_size))
    with torch.no_grad():
        predicted = model["head"](model["vit"].eval()(test_images).cls).argmax(-1)
    result = {"args": vars(args), "first_loss": history.loss[0], "last_loss": history.loss[-1],
              "shape_acc": (predicted == shapes_of(test)).float().mean().item(), "chance": 1 / len(SHAPES)}
    size = "" if args.image_size == 64 else f"_size{args.image_size}"
    seed = f"_seed{args.seed}" if args.seed else ""
    save_result(__file__, f"{args.stem}{args.patch}_steps{args.steps}{size}{seed}", result)


if __name__ == "__main__":
    main()
