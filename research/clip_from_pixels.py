"""Side runs for notebook 02's open problem: CLIP with BOTH towers learned from image-caption pairs (no attribute
label anywhere), measured with `clip.measure` on 1,000 held-out scenes per set.

    python research/clip_from_pixels.py --init random            # the reference setting of shared/calibration.md
    python research/clip_from_pixels.py --init tiny-vit-mae      # image tower from notebook 01's MAE ViT
    python research/clip_from_pixels.py --stem conv              # a normalised convolutional stem instead of patches
    python research/clip_from_pixels.py --single                 # diagnostic: one-object scenes captioned "a <shape>"
    python research/clip_from_pixels.py --image-size 48          # 16 px patches on the world's 3x3 cells, one cell each

Each run writes its numbers to research/results/clip_from_pixels/<name>.json.
"""

import argparse
import time

import torch
from common import save_result
from torch import nn

from vlmlab import harness, unimodal
from vlmlab import nn as vnn
from vlmlab.data import evalsets, shapes
from vlmlab.data.language import a as article
from vlmlab.data.loaders import ShapesDataset, StepBatches, encode_texts, indexed_collate
from vlmlab.strategies import clip
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit

GENERIC_SHAPE_PROMPTS = ["a {}", "there is a {}", "a picture of a {}", "an image with a {} in it"]


class ConvStem(nn.Module):
    """Early convolutions (Xiao et al. 2021): four 3x3 stride-2 convs with GroupNorm + GELU, then a 1x1 to the
    ViT's width. [B, 3, 64, 64] -> [B, 16, D], the grid a 16 px PatchEmbed gives."""

    def __init__(self, dim: int):
        super().__init__()
        widths, layers = [3, 24, 48, 96, 192], []
        for i in range(4):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1, bias=False),
                       nn.GroupNorm(4 if i == 0 else 8, widths[i + 1]), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(widths[-1], dim, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


def pairs(args, tok):
    if args.single:  # shape is all there is to learn
        scenes = evalsets.single_objects(args.seed, args.n_train, "train")
        images, texts = evalsets.images_of(scenes, args.image_size), [article(s.objects[0].shape) for s in scenes]
    else:
        world = shapes.ShapesWorld(seed=args.seed, image_size=args.image_size)
        train = ShapesDataset(world, "train", args.n_train, paraphrase=True)
        images, texts = train.images, [train.text(i) for i in range(len(train))]
    return images, encode_texts(tok, texts, max_length=40)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="random", help="random | a zoo name (tiny-vit-mae)")
    p.add_argument("--stem", default="patch", choices=("patch", "conv"))
    p.add_argument("--single", action="store_true")
    p.add_argument("--image-size", dest="image_size", type=int, default=64)
    p.add_argument("--pool", default="cls", choices=clip.IMAGE_POOLS)
    p.add_argument("--loss", default="softmax", choices=clip.LOSSES)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-train", dest="n_train", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    args = p.parse_args()

    tok = load_tokenizer()
    images, text = pairs(args, tok)
    vision = vnn.ViTConfig(image_size=args.image_size, patch_size=16, dim=96, depth=4, n_heads=4)
    textc = vnn.TextConfig(vocab_size=len(tok), max_len=40, dim=96, depth=3, n_heads=4, causal=True,
                           pad_token_id=tok.pad_token_id)
    sigmoid = {"init_temperature": 0.1, "init_bias": -10.0} if args.loss == "sigmoid" else {}
    torch.manual_seed(args.seed)
    model = clip.CLIP(clip.Config(vision, textc, embed_dim=64, image_pool=args.pool, loss=args.loss, **sigmoid))
    if args.stem == "conv":
        model.image_tower.patch_embed = ConvStem(vision.dim)
    if args.init != "random":
        model.image_tower.load_state_dict(unimodal.build_tiny(args.init).state_dict())

    batches = StepBatches(range(len(images)), args.batch, indexed_collate(images, text), seed=args.seed)
    start = time.perf_counter()
    fit(model, clip.batch_loss, batches, steps=args.steps, lr=args.lr, weight_decay=0.1, seed=args.seed, progress=False)
    train_s = time.perf_counter() - start

    bench = evalsets.DualEncoderBench.build(args.seed, 1000, args.image_size)
    measured = clip.measure(model.eval(), tok, bench)
    single = harness.embed_images(model, evalsets.images_of(bench.single, args.image_size))
    result = {"args": vars(args), "train_s": round(train_s, 1), "final_temperature": model.temperature,
              **{k: measured[k] for k in ("t2i_r1", "i2t_r1", "zs_color_acc", "zs_shape_acc", "relation_swap_acc",
                                          "attribute_swap_acc", "heldout_combo_acc")},
              "zs_shape_acc_generic": harness.zero_shot_attribute(model, tok, single, bench.single, "shape",
                                                                  GENERIC_SHAPE_PROMPTS)}
    size, single = "" if args.image_size == 64 else args.image_size, "_single" if args.single else ""
    name = args.name or f"{args.init}_{args.stem}{size}{single}_{args.pool}_{args.loss}_{args.steps}"
    save_result(__file__, name, result)


if __name__ == "__main__":
    main()
