"""What reading the scenes at 48 px instead of 64 costs or saves a training step of notebook 06's ViLT (DESIGN.md §7).

Run from bench/: `../.venv/bin/python fusion_image_size.py` (`--quick`: a few steps only, to check that it runs; it
writes fusion_image_size_quick.json). The model is notebook 06's main one: a single-stream `fusion.Fusion` of the
MAE ViT's sizes (dim 96, depth 4, heads 4, 16 px patches), the world's 64 px scenes in, read either as drawn (4 x 4
patches + an image [CLS] = 17 image tokens) or resized inside the model to 48 px (3 x 3 patches, one per cell of the
world: 10 image tokens). Batch 64: the first 64 training scenes with their captions, right-padded ([CLS] caption
[SEP]). The loss is ITM's on the pooled [CLS], against fixed labels (first half match, second half not), so the two
steps differ only in the image tokens. A step is zero_grad + forward + loss + backward + AdamW step; steps of the two
models alternate in the same process on the same batch; we report median step times and the median over pairs of
the ratio 48 px / 64 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import compare, matmul_flops, quick_or_full, step_fn, write

from vlmlab.data import evalsets, language
from vlmlab.data.loaders import encode_texts, to_float
from vlmlab.data.shapes import ShapesWorld
from vlmlab.strategies import fusion
from vlmlab.tokenizer import load_tokenizer

BATCH, DIM, DEPTH, HEADS, PATCH, TEXT_LEN, SEED = 64, 96, 4, 4, 16, 32, 0


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__, 20)
    tok = load_tokenizer()
    scenes = ShapesWorld(seed=SEED).scenes(BATCH, "train")
    pixels = to_float(evalsets.images_of(scenes))  # [64, 3, 64, 64] in [-1, 1]
    text = encode_texts(tok, [language.caption(s) for s in scenes], max_length=TEXT_LEN, ends=fusion.Fusion.text_ends)
    labels = torch.cat([torch.ones(BATCH // 2), torch.zeros(BATCH - BATCH // 2)]).long()  # [B]
    models, rows = {}, {}
    for size in (48, 64):
        torch.manual_seed(SEED)
        config = fusion.Config(vocab_size=len(tok), text_len=TEXT_LEN, dim=DIM, depth=DEPTH, n_heads=HEADS,
                               image_size=size, patch_size=PATCH)
        models[size] = fusion.Fusion(config)
        rows[size] = {"image_tokens": config.n_image_tokens, "sequence": text.input_ids.size(1) + config.n_image_tokens}

    def itm_loss(m):
        pooled = m.encode(pixels, text.input_ids, text.attention_mask).pooled  # [B, D]
        return F.cross_entropy(m.itm(pooled), labels)

    s48, s64, ratio = compare(step_fn(models[48], lambda: itm_loss(models[48])),
                              step_fn(models[64], lambda: itm_loss(models[64])), warmup, steps)
    print(f"48 px ({rows[48]['image_tokens']} image tokens): {s48:.4f} s a step; 64 px ({rows[64]['image_tokens']}): "
          f"{s64:.4f} s; ratio 48 / 64 {ratio:.3f}")
    result = {"quick": quick, "matmul_gflops_fp32": round(matmul_flops() / 1e9, 1), "warmup_steps": warmup,
              "timed_steps": steps, "sizes": {"batch": BATCH, "dim": DIM, "depth": DEPTH, "heads": HEADS, "patch": PATCH,
                                               "text_positions": text.input_ids.size(1)},
              "rows": [{"image_size": size, **row, "step_s": round(s, 4)} for (size, row), s in zip(rows.items(), (s48, s64))],
              "ratio_48_over_64": round(ratio, 3)}
    print("wrote", write("fusion_image_size_quick" if quick else "fusion_image_size", result))


if __name__ == "__main__":
    main()
