"""Notebook 05's real track outside the notebook: EfficientNet-Lite0's 7x7 grid -> a Perceiver Resampler -> three
gated cross-attention layers in front of SmolLM2-135M's blocks 0, 10 and 20 (both frozen), trained on the 640 Tux
Paint training stamps, CIDEr on the 145 held-out ones. Used to choose the notebook's learning rate. Writes
research/results/flamingo_real_track/<run>.json.

    python research/flamingo_real_track.py --steps 60 --lr 1e-2 [--seed 1]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from common import save_result

from vlmlab import backbones, encoders, evaluate
from vlmlab.data import real
from vlmlab.data.loaders import StepBatches, encode_texts, indexed_collate
from vlmlab.generation import generate_text
from vlmlab.lm import wrap_language_model
from vlmlab.strategies import flamingo
from vlmlab.train import fit

MARK = "<|im_start|>"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cnn, smol = backbones.load_image_encoder("efficientnet-lite0"), backbones.load_language_model("smollm2-135m")
    stamp_train, stamp_test = real.split_items(real.tuxpaint_stamps(), val_fraction=0.2, seed=0)
    grid_train = encoders.image_grids(cnn, [s.path for s in stamp_train])
    grid_test = encoders.image_grids(cnn, [s.path for s in stamp_test])
    lm = wrap_language_model(smol.model, {"name": "smollm2-135m", "sha256": None}).freeze()
    torch.manual_seed(args.seed)
    config = flamingo.Config(visual_dim=grid_train.shape[-1], n_latents=8, resampler_depth=1, n_heads=8, ff_mult=1,
                             xattn_every=10, style="llama", image_token_id=smol.tokenizer.convert_tokens_to_ids(MARK),
                             lm=lm.ref)
    model = flamingo.Flamingo(config, lm=lm)
    text = encode_texts(smol.tokenizer, [MARK] * len(stamp_train), [" " + s.text for s in stamp_train], max_length=20,
                        bos=False)
    batches = StepBatches(range(len(stamp_train)), 16, indexed_collate(grid_train, text, key="image_features"),
                          seed=args.seed)
    start = time.perf_counter()
    history = fit(model, flamingo.batch_loss, batches, steps=args.steps, lr=args.lr, seed=args.seed, progress=False)
    seconds = time.perf_counter() - start
    said = generate_text(model, smol.tokenizer, grid_test, MARK, bos=False, max_new_tokens=20, batch_size=64)
    scores = evaluate.caption_metrics(said, [[s.text] for s in stamp_test])
    result = {"args": vars(args), "train_seconds": round(seconds, 1), "first_loss": history.loss[0],
              "final_loss": sum(history.loss[-10:]) / 10, "gates": model.gate_values().tolist(),
              "distinct_captions": len(set(said)), "most_said": Counter(said).most_common(3),
              **{f"real_{k}": round(v, 4) for k, v in scores.items()}}
    save_result(__file__, f"{args.steps}-lr{args.lr:g}-seed{args.seed}", result)


if __name__ == "__main__":
    main()
