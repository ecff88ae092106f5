"""Side runs for notebook 03's open problem: a PrefixLM whose image tokens are learned from pixels, with no label
anywhere. Which start for the image side reaches the best scene F1 and VQA at notebook 03's budget?

    python research/prefix_lm_from_pixels.py --image conv               # the notebook's PixelStem, from scratch
    python research/prefix_lm_from_pixels.py --image tiny-clip-vit      # notebook 02's CLIP image tower, trained on
    python research/prefix_lm_from_pixels.py --image tiny-vit-mae       # notebook 01's MAE ViT, trained on
    python research/prefix_lm_from_pixels.py --image tiny-vit-mae --image-size 48   # read at 48 px, one patch per cell
    python research/prefix_lm_from_pixels.py --image-size 48            # the stem reads 48 px: a 3 x 3 grid, one per cell
    python research/prefix_lm_from_pixels.py --stem-channels 64,128     # a wider stem
    python research/prefix_lm_from_pixels.py --stem stages              # Xiao et al.'s stem: 3x3 convs with BatchNorm
    python research/prefix_lm_from_pixels.py --stem maxpool --image-size 64   # each cell max-pooled to one token
    python research/prefix_lm_from_pixels.py --image-size 48 --lm-lr-scale 0.33   # the text side at a third of the rate
    python research/prefix_lm_from_pixels.py --image-size 48 --lm-lr-scale 0.33 --projector mlp   # LLaVA-1.5's MLP map
    python research/prefix_lm_from_pixels.py --image-size 48 --lm-lr-scale 0.33 --stem fine   # first conv at full size
    python research/prefix_lm_from_pixels.py --image-size 96 --patch 32 --lm-lr-scale 0.33   # 32 px cells: no detail lost

A ViT start gives its patch vectors as the image tokens and keeps learning with the whole model. Each run
writes its numbers to research/results/prefix_lm_from_pixels/<name>.json.
"""

import argparse
import time

import torch
from common import resized, save_result
from torch import nn

from vlmlab import backbones, evaluate, harness, unimodal
from vlmlab import nn as vnn
from vlmlab.data import evalsets, language, shapes
from vlmlab.data.loaders import StepBatches, encode_texts, indexed_collate
from vlmlab.encoders import resize
from vlmlab.generation import generate_text
from vlmlab.strategies import prefix_lm
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


class ConvTokens(nn.Module):
    """A convolutional stem read as tokens: the scenes resized to `image_size`, then `net`, whose output grid gives one
    LayerNorm'd token per position: [B, 3, S, S] -> [B, grid^2, width]."""

    def __init__(self, net: nn.Module, image_size: int, width: int):
        super().__init__()
        self.net, self.image_size, self.norm = net, image_size, nn.LayerNorm(width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = resize(pixels, self.image_size, bounds=(-1.0, 1.0))
        return self.norm(self.net(x).flatten(2).transpose(1, 2))


def stages_stem(width: int, image_size: int, channels: tuple[int, ...] = (24, 48, 96, 192)) -> ConvTokens:
    """"Early convolutions help transformers see better" (Xiao et al., 2021): four stride-2 3x3 convolutions, each
    with BatchNorm and ReLU, then a 1x1 to the token width, in place of a patchify: one token per 16 px."""
    layers, c_in = [], 3
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return ConvTokens(nn.Sequential(*layers, nn.Conv2d(c_in, width, 1)), image_size, width)


def cell_stem(width: int, image_size: int, patch: int, channels: tuple[int, int] = (32, 64)) -> ConvTokens:
    """Notebook 03's PixelStem with any patch size: two stride-2 3x3 convolutions, then a (patch/4) x (patch/4)
    patchify, one token per `patch` px. At 96 px with 32 px patches each token is still one cell, but the 64 px
    scenes are enlarged rather than shrunk, so the small objects (8 px across at 48 px) keep every pixel drawn."""
    a, b = channels
    return ConvTokens(nn.Sequential(nn.Conv2d(3, a, 3, 2, 1), nn.GELU(),  # [B, a, S/2, S/2]
                                    nn.Conv2d(a, b, 3, 2, 1), nn.GELU(),  # [B, b, S/4, S/4]
                                    nn.Conv2d(b, width, patch // 4, patch // 4)),  # [B, width, S/patch, S/patch]
                      image_size, width)


def fine_stem(width: int, image_size: int, channels: tuple[int, int] = (32, 64)) -> ConvTokens:
    """Notebook 03's PixelStem with its first convolution at the scene's full resolution (stride 1, not 2), so that
    the small objects (8 px across at 48 px) keep their corners one layer longer; an 8 x 8 patchify after the one
    stride-2 convolution keeps one token per 16 px cell."""
    a, b = channels
    return ConvTokens(nn.Sequential(nn.Conv2d(3, a, 3, 1, 1), nn.GELU(),  # [B, a, S, S]
                                    nn.Conv2d(a, b, 3, 2, 1), nn.GELU(),  # [B, b, S/2, S/2]
                                    nn.Conv2d(b, width, 8, 8)),  # [B, width, S/16, S/16]
                      image_size, width)


class CellPoolStem(nn.Module):
    """Three 3x3 convolutions at the scene's resolution, then each cell of the world's 3 x 3 grid max-pooled (or
    averaged) to one token, in place of the 4 x 4 linear patchify: a shape detector that fires anywhere in its cell
    gives the same token wherever the object sits. [B, 3, S, S] -> [B, 9, width]."""

    def __init__(self, width: int, image_size: int, pool: str = "max", channels: tuple[int, int] = (32, 64)):
        super().__init__()
        a, b = channels
        self.image_size = image_size
        self.net = nn.Sequential(nn.Conv2d(3, a, 3, 2, 1), nn.GELU(),  # [B, a, S/2, S/2]
                                 nn.Conv2d(a, b, 3, 2, 1), nn.GELU(),  # [B, b, S/4, S/4]
                                 nn.Conv2d(b, width, 3, 1, 1), nn.GELU())  # [B, width, S/4, S/4]
        self.pool = nn.AdaptiveMaxPool2d(3) if pool == "max" else nn.AdaptiveAvgPool2d(3)  # [B, width, 3, 3]
        self.norm = nn.LayerNorm(width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = resize(pixels, self.image_size, bounds=(-1.0, 1.0))
        return self.norm(self.pool(self.net(x)).flatten(2).transpose(1, 2))


class PatchTokens(nn.Module):
    """A ViT that keeps training (unless locked), read as its patch vectors [B, N, D]: 16 at 64 px, 9 at 48."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixels).patches


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default="conv", help="conv | a zoo or backbone name of a label-free ViT")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-train", dest="n_train", type=int, default=24_000)
    p.add_argument("--n-eval", dest="n_eval", type=int, default=500)
    p.add_argument("--buckets", type=int, default=2, help="length buckets per batch (notebook 03 cuts each batch in 2)")
    p.add_argument("--image-size", dest="image_size", type=int, default=64,
                   help="the world's 64 px scenes resized to this before the stem (48: one 16 px token per cell)")
    p.add_argument("--stem-channels", dest="stem_channels", default="32,64",
                   help="the conv stem's two widths before the patchify (notebook 03: 32,64)")
    p.add_argument("--stem", default="patchify", choices=["patchify", "fine", "stages", "maxpool", "avgpool"],
                   help="patchify: notebook 03's PixelStem; fine: its first convolution at full resolution; stages: "
                        "Xiao et al.'s BatchNorm conv stem; maxpool, avgpool: convolutions, then each cell of the "
                        "3 x 3 grid pooled to one token")
    p.add_argument("--patch", type=int, default=16,
                   help="pixels per token side for the patchify stem (32 at --image-size 96: one token per cell)")
    p.add_argument("--projector", default="linear", choices=["linear", "mlp"],
                   help="the map from image tokens to the LM's width: linear (notebook 03) or LLaVA-1.5's two-layer MLP")
    p.add_argument("--lm-lr-scale", dest="lm_lr_scale", type=float, default=1.0,
                   help="the language model's rate as a fraction of --lr (the image side keeps --lr)")
    p.add_argument("--lock", action="store_true", help="keep a ViT start's weights as they are (LiT's locked tower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    args = p.parse_args()

    tok = load_tokenizer()
    scenes = shapes.ShapesWorld(seed=args.seed).scenes(args.n_train, "train")
    images = resized(evalsets.images_of(scenes), args.image_size)
    qas = [qa for s in scenes for qa in language.sample_vqa(s, 3, salt="train")]
    prompts, targets = prefix_lm.training_texts([language.caption(s) for s in scenes], qas, seed=args.seed)
    scene_of = torch.cat([torch.arange(len(scenes)), torch.arange(len(scenes)).repeat_interleave(3)])
    text = encode_texts(tok, prompts, targets, max_length=32)

    pooled = args.stem in ("maxpool", "avgpool")
    n_tokens = 9 if pooled else (args.image_size // args.patch) ** 2
    config = prefix_lm.Config(vocab_size=len(tok), vision_dim=96, n_image_tokens=n_tokens, text_len=32, dim=128,
                              depth=4, n_heads=4, stem="conv",
                              image_size=48 if pooled or args.patch != 16 else args.image_size)
    torch.manual_seed(args.seed)
    model = prefix_lm.from_text_lm(config, unimodal.build_tiny("tiny-gpt"))
    channels = tuple(int(c) for c in args.stem_channels.split(","))
    if args.image == "conv" and channels != (32, 64):
        model.stem = prefix_lm.PixelStem(config.vision_dim, config.image_size, channels)
    if args.image == "conv" and args.patch != 16:
        model.stem = cell_stem(config.vision_dim, args.image_size, args.patch, channels)
    if args.image == "conv" and args.stem == "fine":
        model.stem = fine_stem(config.vision_dim, config.image_size, channels)
    if args.projector == "mlp":
        model.visual = nn.Sequential(nn.Linear(config.vision_dim, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim))
    if args.image == "conv" and args.stem == "stages":
        model.stem = stages_stem(config.vision_dim, config.image_size)
    if args.image == "conv" and pooled:
        model.stem = CellPoolStem(config.vision_dim, config.image_size, args.stem[:3], channels)
    if args.image != "conv":
        vit = backbones.load_image_encoder(args.image, trainable=True).model.vit  # the ViT itself, in [-1, 1]
        model.stem = PatchTokens(vnn.resized_vit(vit, args.image_size))  # positions resized: 3 x 3 patches at 48 px
        model.stem.requires_grad_(not args.lock)

    batches = StepBatches(range(len(prompts)), args.batch, indexed_collate(images, text, rows=scene_of, buckets=args.buckets),
                          seed=args.seed)
    start = time.perf_counter()
    fit(model, prefix_lm.batch_loss, batches, steps=args.steps, lr=args.lr, lr_scales={"lm": args.lm_lr_scale},
        seed=args.seed, progress=False)
    train_s = time.perf_counter() - start

    test = evalsets.generation_scenes(args.seed, args.n_eval)
    features = harness.image_features(model, resized(evalsets.images_of(test), args.image_size))
    captions = evaluate.caption_scores(generate_text(model, tok, features), test)
    q_index, test_qas = evalsets.vqa_questions(test, k=3)
    answers = generate_text(model, tok, features[q_index], [qa.question for qa in test_qas], max_new_tokens=8)
    vqa = evaluate.vqa_accuracy(answers, [qa.answer for qa in test_qas], [qa.qtype for qa in test_qas])
    result = {"args": vars(args), "train_s": round(train_s, 1), "caption_f1": captions["f1"],
              "caption_attr_f1": captions["attr_f1"], "caption_exact": captions["exact"], "vqa_acc": vqa["overall"],
              "vqa_by_type": vqa["by_type"]}
    save_result(__file__, args.name or f"{args.image}_{args.steps}", result)


if __name__ == "__main__":
    main()
