"""What notebook 05's ImageNet-cells arm costs a training step: the same Flamingo on notebook 02's CLIP tokens
(CLS + 9 patches of width 96) and on EfficientNet-Lite0's cells (9 tokens of width 112) (DESIGN.md §7).

Run from bench/: `../.venv/bin/python flamingo_towers.py` (`--quick`: a few steps only, to check that it runs; it
writes flamingo_towers_quick.json). Both models are notebook 05's (8 latents, a gated layer in front of each of the
tiny LM's 4 blocks, 4 heads) on the shipped tiny LM, frozen; the batch is its first: 16 interleaved sequences of the
first 200 training scenes, cut into 4 length buckets. The towers' features are computed once, before any step, as
the notebook does, so a step reads features only; what differs is the resampler's and the cross-attention's input
width and count. Steps of the two models alternate in the same process on the same batch; we report median step times
and the median over pairs of the ratio ImageNet cells / CLIP. The features themselves are timed once per tower
(seconds for the 200 scenes), since the arm pays for them once per run.
"""

from __future__ import annotations

import time

import torch
from common import compare, matmul_flops, quick_or_full, step_fn, write

from vlmlab import unimodal
from vlmlab.data import evalsets, language
from vlmlab.data.loaders import encode_texts, to_float
from vlmlab.data.shapes import ShapesWorld
from vlmlab.lm import load_language_model
from vlmlab.strategies import flamingo
from vlmlab.tokenizer import load_tokenizer

TOWERS = {"clip": {"tower": "clip", "name": "clip-shapes"},
          "imagenet": {"tower": "imagenet-cells", "name": "efficientnet-lite0"}}
SCENES, SEQUENCES, BATCH, BUCKETS, SEED = 200, 256, 16, 4, 0


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__, 30)
    tok, lm = load_tokenizer(), load_language_model("tiny-lm")
    scenes = ShapesWorld(seed=SEED).scenes(SCENES, "train")
    sequences = flamingo.interleaved_sequences(scenes, SEQUENCES, SEED)
    text = encode_texts(tok, [""] * len(sequences), [t for t, _ in sequences], max_length=lm.max_len)
    images, rows, losses = flamingo.pad_images(sequences), {}, {}
    for name, spec in TOWERS.items():
        vision = unimodal.vision_tower(spec)
        start = time.perf_counter()
        with torch.no_grad():
            features = vision(to_float(evalsets.images_of(scenes)))  # [200, N, Dv]
        encode_s = time.perf_counter() - start
        torch.manual_seed(SEED)
        config = flamingo.Config(visual_dim=features.shape[-1], n_latents=8, n_heads=4,
                                 image_token_id=tok.convert_tokens_to_ids(language.IMAGE_TOKEN), lm=lm.ref,
                                 vision=vision.spec)
        model = flamingo.Flamingo(config, lm=lm, vision=vision).train()
        batch = flamingo.interleaved_collate(features, text, images, buckets=BUCKETS)(list(range(BATCH)))
        losses[name] = step_fn(model, lambda m=model, b=batch: flamingo.batch_loss(m, b)[0])
        rows[name] = {"tokens_per_image": features.shape[1], "width": features.shape[2],
                      "encode_s_per_scene": round(encode_s / SCENES, 5)}
    s_imagenet, s_clip, ratio = compare(losses["imagenet"], losses["clip"], warmup, steps)
    rows["imagenet"]["step_s"], rows["clip"]["step_s"] = round(s_imagenet, 4), round(s_clip, 4)
    peak = matmul_flops()
    per_scene = {name: row["encode_s_per_scene"] * 1e3 for name, row in rows.items()}
    print(f"matmul {peak / 1e9:.1f} GFLOP/s; a step on CLIP's tokens {s_clip * 1e3:.0f} ms, on the ImageNet cells "
          f"{s_imagenet * 1e3:.0f} ms: ratio {ratio:.3f}; features per scene: CLIP {per_scene['clip']:.1f} ms, "
          f"ImageNet cells {per_scene['imagenet']:.1f} ms")
    result = {"quick": quick, "matmul_gflops_fp32": round(peak / 1e9, 1), "warmup_steps": warmup, "timed_steps": steps,
              "sizes": {"batch": BATCH, "buckets": BUCKETS, "latents": 8, "scenes": SCENES},
              "towers": rows, "ratio_imagenet_over_clip": round(ratio, 3)}
    print("wrote", write("flamingo_towers_quick" if quick else "flamingo_towers", result))


if __name__ == "__main__":
    main()
