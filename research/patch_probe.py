"""Notebooks 05, 08, 09: what does each layer of notebook 02's CLIP image tower hold, cell by cell? A linear probe per
patch: at 48 px each of the 3 x 3 patches is one of the world's cells, so the patch vector of cell (r, c) after block
k is probed for the colour, the shape and the size of the object in that cell, or "empty". The gated layers (05), the
Q-Former (08) and the projector (09) can only read what these vectors hold.

    python research/patch_probe.py                      # clip-shapes, every block's output
    python research/patch_probe.py --tower clip:negclip-shapes
    python research/patch_probe.py --tower vit:tiny-vit-mae     # the MAE notebook 02 starts from
    python research/patch_probe.py --hidden 512         # a one-hidden-layer probe: what a nonlinear reader finds
    python research/patch_probe.py --tower stem:prefixlm-shapes   # notebook 03's stem, learned from captions
    python research/patch_probe.py --tower imagenet:192           # EfficientNet-Lite0 (ImageNet) reading 192 px

The first row is the control: the same probe on each cell's own pixels, as the tower reads them (48 px).
Probes: softmax regression (or an MLP, `--hidden`) on the patch vectors of `--train` training scenes (9 per scene, one
probe shared by the 9 cells), scored on the 9 cells of `--test` test scenes, the empty cells counted as a class
of their own and reported apart (accuracy on the occupied cells only)."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import imagenet_cells, run_name, save_result

from vlmlab import unimodal, zoo
from vlmlab.data import evalsets, shapes
from vlmlab.data.loaders import to_float
from vlmlab.encoders import resize
from vlmlab.nn import resized_vit

ATTRIBUTES = {"color": shapes.COLORS, "shape": shapes.SHAPES, "size": shapes.SIZES}


def cell_labels(scenes, attribute: str) -> torch.Tensor:
    """[N, 9]: the index of each cell's object's attribute, or len(values) for an empty cell."""
    values = ATTRIBUTES[attribute]
    labels = torch.full((len(scenes), shapes.GRID * shapes.GRID), len(values))
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            labels[i, o.row * shapes.GRID + o.col] = values.index(getattr(o, attribute))
    return labels


def cell_pixels(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, 3, S, S] -> [B, (S / patch)^2, 3 * patch * patch]: each patch's own pixels, the probes' control."""
    return F.unfold(pixels, patch, stride=patch).transpose(1, 2)


@torch.no_grad()
def layer_patches(tower, images: torch.Tensor) -> list[torch.Tensor]:
    """Each cell's pixels as the tower reads them (the control: what a linear map of the raw patch holds), then each
    block's output patch vectors (the last one after the final norm, as the tower hands them on): [N, 9, *] each."""
    out = [[] for _ in range(len(tower.blocks) + 1)]
    size, patch = tower.config.image_size, tower.config.patch_size
    for chunk in images.split(500):
        pixels = resize(to_float(chunk), size, bounds=(-1.0, 1.0))  # [B, 3, size, size]
        out[0].append(cell_pixels(pixels, patch))  # [B, N, 3 * patch * patch]
        x = tower.tokens(pixels)
        for k, block in enumerate(tower.blocks):
            x = block(x)
            out[k + 1].append((tower.norm(x) if k == len(tower.blocks) - 1 else x)[:, 1:])
    return [torch.cat(o) for o in out]


@torch.no_grad()
def stem_patches(stem, images: torch.Tensor) -> list[torch.Tensor]:
    """The same for notebook 03's learned PixelStem: each cell's pixels at the stem's size, then its 9 tokens."""
    out = [[], []]
    for chunk in images.split(500):
        pixels = resize(to_float(chunk), stem.image_size, bounds=(-1.0, 1.0))  # [B, 3, 48, 48]
        out[0].append(cell_pixels(pixels, stem.PATCH))  # [B, 9, 3 * 16 * 16]
        out[1].append(stem(pixels))  # [B, 9, width]
    return [torch.cat(o) for o in out]


@torch.no_grad()
def imagenet_patches(tower, images: torch.Tensor) -> list[torch.Tensor]:
    """The same for EfficientNet-Lite0 (`vlmlab.encoders.ImageNetCells`): each cell's pixels at 48 px, then each cell's vector
    of each of its LAYERS."""
    out = [[] for _ in range(1 + len(tower.LAYERS))]
    for chunk in images.split(250):
        x = to_float(chunk)
        out[0].append(cell_pixels(resize(x, 48, bounds=(-1.0, 1.0)), 16))  # [B, 9, 3 * 16 * 16]
        for o, y in zip(out[1:], tower.layers(x).values()):
            o.append(y)  # [B, 9, C]
    return [torch.cat(o) for o in out]


def probe(train_x, train_y, test_x, test_y, n_classes: int, test_small, hidden: int = 0) -> dict[str, float]:
    """Accuracy of a softmax regression (or, with `hidden`, a one-hidden-layer MLP) on all test cells, on the
    occupied ones, and on those with a small object. Adam on minibatches of 1,024 cells, 1,500 steps."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    dim = train_x.shape[1]
    head = (torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, n_classes))
            if hidden else torch.nn.Linear(dim, n_classes))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-4)
    with torch.enable_grad():  # the callers may measure under no_grad
        for _ in range(1500):
            idx = torch.randint(0, len(train_x), (1024,))
            opt.zero_grad()
            F.cross_entropy(head(train_x[idx]), train_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        right = head(test_x).argmax(-1) == test_y
    occupied = test_y != n_classes - 1
    return {"all_cells": right.float().mean().item(), "occupied_cells": right[occupied].float().mean().item(),
            "small_objects": right[test_small].float().mean().item()}


def scenes_and_patches(tower, seed: int, n_train: int, n_test: int, read=layer_patches):
    """Training and test scenes of `seed`'s world and, for each set, `read(tower, images)` of their images."""
    world = shapes.ShapesWorld(seed=seed)
    train, test = world.scenes(n_train, "train"), world.scenes(n_test, "test")
    return train, test, *(read(tower, evalsets.images_of(scenes)) for scenes in (train, test))


def small_objects(scenes) -> torch.Tensor:
    """[N * 9] bool: the cells that hold a small object."""
    return cell_labels(scenes, "size").flatten() == shapes.SIZES.index("small")


def last_block_shape(tower, seed: int, hidden: int, n_train: int = 4000, n_test: int = 1000) -> float:
    """The shape probe on the occupied cells of the tower's last block: what `clip_patch_alignment.py` reports."""
    train, test, (*_, x_train), (*_, x_test) = scenes_and_patches(tower, seed, n_train, n_test)
    y_train, y_test = cell_labels(train, "shape").flatten(), cell_labels(test, "shape").flatten()
    n_classes = len(shapes.SHAPES) + 1
    return probe(x_train.flatten(0, 1), y_train, x_test.flatten(0, 1), y_test, n_classes, small_objects(test),
                 hidden)["occupied_cells"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", default="clip:clip-shapes",
                        help="clip:<a CLIP checkpoint> (its image tower), vit:<a ViT backbone> (read at 48 px: its "
                             "position embeddings resized, as notebook 02 starts from the MAE) or stem:<a PrefixLM "
                             "checkpoint> (notebook 03's PixelStem, learned from captions and questions) or imagenet:<size> "
                             "(EfficientNet-Lite0, trained on ImageNet, reading the scenes at that size)")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=0, help="probe with a hidden layer of this width (0: linear)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", default=None)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    kind, name = args.tower.split(":")
    if kind == "stem":
        tower, read = zoo.load_model(name)[0].stem.eval(), stem_patches
    elif kind == "imagenet":
        tower, read = imagenet_cells("head", int(name)), imagenet_patches
    else:
        tower, read = unimodal.vision_tower({"tower": kind, "name": name}).vit, layer_patches
    if kind == "vit":
        tower = resized_vit(tower, 48)
    train, test, train_layers, test_layers = scenes_and_patches(tower, args.seed, args.train, args.test, read)
    result = {"args": vars(args), "layers": {}}
    test_small = small_objects(test)
    names = (["stem"] if kind == "stem" else list(tower.LAYERS) if kind == "imagenet"
             else [f"block {k}" for k in range(1, len(train_layers))])
    for attribute, values in ATTRIBUTES.items():
        train_y, test_y = cell_labels(train, attribute).flatten(), cell_labels(test, attribute).flatten()
        for layer, tr, te in zip(["pixels", *names], train_layers, test_layers):
            scores = probe(tr.flatten(0, 1), train_y, te.flatten(0, 1), test_y, len(values) + 1, test_small, args.hidden)
            result["layers"].setdefault(layer, {})[attribute] = {key: round(v, 3) for key, v in scores.items()}
            print(layer, attribute, {key: round(v, 3) for key, v in scores.items()}, flush=True)
    result["seconds"] = round(time.time() - start, 1)
    save_result(__file__, args.run or run_name(args.tower, "mlp" if args.hidden else "linear", args.seed), result)


if __name__ == "__main__":
    main()
