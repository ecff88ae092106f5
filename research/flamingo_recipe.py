"""Notebook 05's Flamingo recipe, outside the notebook: train the resampler and gated layers on interleaved Shapes
World sequences over the frozen tiny LM and notebook 02's frozen CLIP image tower, then measure zero-shot captions
and VQA on held-out scenes. Used to choose the notebook's steps, batch and learning rate.

    python research/flamingo_recipe.py --steps 600 --batch 32 --lr 1e-3 [--every 2] [--no-resampler] [--no-gate]
        [--tower vit:tiny-vit-detector] [--tower imagenet:stride16@192 --scenes 5000]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import features_of, frozen_tower, run_name, save_result

from vlmlab.data import evalsets, shapes
from vlmlab.data.loaders import StepBatches, encode_texts
from vlmlab.lm import load_language_model
from vlmlab.strategies import flamingo
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scenes", type=int, default=20_000)
    ap.add_argument("--sequences", type=int, default=40_000)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--latents", type=int, default=8)
    ap.add_argument("--ff-mult", type=int, default=4)
    ap.add_argument("--no-resampler", action="store_true")
    ap.add_argument("--no-gate", action="store_true")
    ap.add_argument("--buckets", type=int, default=1)
    ap.add_argument("--tower", default="clip:clip-shapes",
                    help="kind:name of a vision tower, e.g. vit:tiny-vit-detector or imagenet:stride16@192 (common.frozen_tower)")
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    tok, lm = load_tokenizer(), load_language_model("tiny-lm")
    vision = frozen_tower(args.tower)
    scenes = shapes.ShapesWorld(seed=args.seed).scenes(args.scenes, "train")
    features = features_of(vision, evalsets.images_of(scenes))
    config = flamingo.Config(visual_dim=features.size(-1), lm=lm.ref, vision=vision.spec, xattn_every=args.every,
                             n_latents=args.latents,
                             ff_mult=args.ff_mult, resampler=not args.no_resampler, gate=not args.no_gate)
    model = flamingo.Flamingo(config, lm=lm, vision=vision)
    sequences = flamingo.interleaved_sequences(scenes, args.sequences, args.seed)
    text = encode_texts(tok, [""] * len(sequences), [t for t, _ in sequences], max_length=lm.max_len)
    batches = StepBatches(range(len(sequences)), args.batch,
                          flamingo.interleaved_collate(features, text, flamingo.pad_images(sequences), args.buckets),
                          seed=args.seed)
    start = time.perf_counter()
    history = fit(model, flamingo.batch_loss, batches, steps=args.steps, lr=args.lr, seed=args.seed, progress=False)
    seconds = time.perf_counter() - start
    bench = evalsets.SceneBench.build(args.seed, args.eval)
    scores = flamingo.measure(model, tok, bench)
    settings = f"{args.steps}x{args.batch}-lr{args.lr:g}-every{args.every}" + (
        "-noresampler" if args.no_resampler else "") + ("-nogate" if args.no_gate else "") + (
        f"-buckets{args.buckets}" if args.buckets != 1 else "")
    run = run_name(args.tower, settings, args.seed, args.scenes)
    save_result(__file__, run, {"args": vars(args), "train_seconds": round(seconds, 1), "first_loss": history.loss[0],
                                "final_loss": sum(history.loss[-20:]) / 20, "gates": model.gate_values().tolist(),
                                **{k: round(v, 4) for k, v in scores.items()}})
    print(f"{args}: {seconds:.0f} s ({1000 * seconds / args.steps:.0f} ms/step), loss {history.loss[0]:.3f} -> "
          f"{sum(history.loss[-20:]) / 20:.3f}; caption F1 {scores['caption_f1']:.3f}, attr F1 {scores['caption_attr_f1']:.3f}, "
          f"VQA {scores['vqa_acc']:.3f}; gates {model.gate_values().flatten().tolist()}")
    print({k: round(v, 3) for k, v in scores.items() if k.startswith("vqa_")})


if __name__ == "__main__":
    main()
