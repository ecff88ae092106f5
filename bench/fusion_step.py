"""Training-step time of our single-stream fusion encoder against the same-size Hugging Face `ViltModel` (DESIGN.md §7).

Run from bench/: `../.venv/bin/python fusion_step.py` (`--quick`: a few steps only, to check that it runs; it writes
fusion_step_quick.json). Sizes are notebook 06's main model (ViLT's patch path), batch 64: image 64 px, patch 16
(16 patches + an image [CLS] = 17 image tokens), vocab 512, text positions 40, dim 128, depth 4, heads 4, MLP
4 x dim with exact GELU, no dropout. Captions are 24 tokens, right-padded: [CLS] (id 6), random words, [SEP] (id 7)
at the last real token, padding 0, real lengths 4 to 24. Our model is converted from the HF one (`from_hf_vilt`),
so both start from the same weights. The loss is ITM's: one Linear(128, 2) on the pooled [CLS] (ours: `model.itm`,
HF: a separate head with the same weights), cross-entropy against fixed labels (first half match, second half not).
The first losses must agree within 1e-4. ViLT draws its image tokens in a random order (it samples patches), but
the pooled [CLS] does not depend on that order, so the losses still agree.

A step is zero_grad + forward + loss + backward + AdamW step over all the model's parameters (our unused MLM head
gets no gradient and AdamW skips it). Steps of the two models alternate in the same process on the same batch; we
report median step times and the median over pairs of the ratio ours / HF (target <= 1).

FLOPs are counted analytically, matmuls only (PaLM appendix B / nanoGPT), as in clip_step.py, with S = 24 + 17
tokens in the one sequence (padding tokens included: they go through the matmuls too):
    train FLOPs = 6 * sum over weight matrices of (weights * tokens that pass through them)
                + 12 * depth * dim * S^2 * batch      (attention scores QK^T and weights x V, full S x S)
where the blocks see all S tokens, the patch projection (3 * 16 * 16 -> 128) sees the 16 patches of each image,
and the pooler (128 x 128) and the ITM head (128 x 2) see one vector per pair. The efficiency is achieved FLOP/s
divided by the FLOP/s of a 1024^3 fp32 matmul measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import block_weights, compare, first_losses, machine, matmul_flops, quick_or_full, report_against_hf, step_fn, write
from transformers import ViltConfig, ViltModel

from vlmlab.strategies import fusion

BATCH, TOKENS, MIN_TOKENS = 64, 24, 4
PAD, CLS, SEP = 0, 6, 7  # our tokenizer's ids
FIRST_WORD_ID = 8  # words are drawn from the ids after our tokenizer's 8 special tokens
LOSS_TOLERANCE = 1e-4
POOLED_TOLERANCE = 1e-5


def hf_config() -> ViltConfig:
    return ViltConfig(vocab_size=512, max_position_embeddings=40, hidden_size=128, num_hidden_layers=4,
                      num_attention_heads=4, intermediate_size=512, hidden_act="gelu", image_size=64, patch_size=16,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, modality_type_vocab_size=2,
                      max_image_length=-1, num_images=1)


def our_config(c: ViltConfig) -> fusion.Config:
    return fusion.Config(vocab_size=c.vocab_size, text_len=c.max_position_embeddings, dim=c.hidden_size,
                         depth=c.num_hidden_layers, n_heads=c.num_attention_heads,
                         mlp_ratio=c.intermediate_size / c.hidden_size)


def image_tokens(c: ViltConfig) -> int:
    return (c.image_size // c.patch_size) ** 2 + 1  # patches + image [CLS]


def train_flops(c: ViltConfig, batch: int, t: int) -> float:
    n = (c.image_size // c.patch_size) ** 2  # patches
    s = t + n + 1  # one sequence: text, image [CLS], patches
    matmul = s * c.num_hidden_layers * block_weights(c.hidden_size, c.intermediate_size)  # blocks see every token
    matmul += n * c.num_channels * c.patch_size**2 * c.hidden_size  # patch projection sees the patches
    matmul += c.hidden_size * c.hidden_size + c.hidden_size * 2  # pooler and ITM head see the text [CLS]
    return batch * (6 * matmul + 12 * c.num_hidden_layers * c.hidden_size * s * s)


def make_batch(c: ViltConfig, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """pixels [B, 3, H, W] in [-1, 1], input_ids [B, T] ([CLS] words [SEP] <pad>...), attention_mask [B, T],
    ITM labels [B] (first half 1, second half 0)."""
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(BATCH, 3, c.image_size, c.image_size, generator=g) * 2 - 1  # as `to_float` makes them
    lengths = torch.randint(MIN_TOKENS, TOKENS + 1, (BATCH,), generator=g)  # [B] real tokens, [CLS] and [SEP] included
    lengths[0] = TOKENS  # one full row, so no column is padding only
    mask = (torch.arange(TOKENS) < lengths[:, None]).long()  # [B, T]
    ids = torch.randint(FIRST_WORD_ID, c.vocab_size, (BATCH, TOKENS), generator=g)  # [B, T]
    ids[:, 0] = CLS
    ids[torch.arange(BATCH), lengths - 1] = SEP
    ids = ids.masked_fill(mask == 0, PAD)
    labels = torch.cat([torch.ones(BATCH // 2), torch.zeros(BATCH - BATCH // 2)]).long()  # [B]
    return pixels.to(device), ids.to(device), mask.to(device), labels.to(device)


def make_models(c: ViltConfig, device: str) -> tuple[torch.nn.Module, fusion.Fusion]:
    """(HF's ViltModel with its ITM head, our Fusion converted from it), the two heads with the same weights."""
    torch.manual_seed(0)
    hf = ViltModel(c)
    ours = fusion.from_hf_vilt(hf, our_config(c))
    head = torch.nn.Linear(c.hidden_size, 2)
    ours.itm.load_state_dict(head.state_dict())
    return torch.nn.ModuleDict({"vilt": hf, "itm": head}).to(device).train(), ours.to(device).train()


def our_loss(model: fusion.Fusion, pixels, ids, mask, labels):
    return lambda: F.cross_entropy(model.itm(model.encode(pixels, ids, mask).pooled), labels)


def hf_loss(model: torch.nn.ModuleDict, pixels, ids, mask, labels):
    pixel_mask = torch.ones(len(pixels), *pixels.shape[2:], dtype=torch.long, device=pixels.device)  # [B, H, W]

    def loss() -> torch.Tensor:
        out = model["vilt"](input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=pixel_mask)
        return F.cross_entropy(model["itm"](out.pooler_output), labels)

    return loss



def hf_case(c: ViltConfig, device: str, warmup: int, steps: int) -> dict:
    """Our Fusion against HF's ViltModel, same weights, same batch, same ITM head."""
    hf, ours = make_models(c, device)
    batch = make_batch(c, device)
    loss_ours, loss_hf = our_loss(ours, *batch), hf_loss(hf, *batch)
    first_ours, first_hf = first_losses(loss_ours, loss_hf, LOSS_TOLERANCE)
    pixels, ids, mask, _ = batch  # a fresh ITM head barely moves the loss: compare the pooled outputs themselves
    with torch.no_grad():
        pooled_hf = hf["vilt"](input_ids=ids, attention_mask=mask, pixel_values=pixels,
                               pixel_mask=torch.ones(len(pixels), *pixels.shape[2:], dtype=torch.long, device=device))
        pooled_gap = (ours.encode(pixels, ids, mask).pooled - pooled_hf.pooler_output).abs().max().item()
    if pooled_gap > POOLED_TOLERANCE:
        raise RuntimeError(f"pooled outputs differ by {pooled_gap:.2e} (allowed: {POOLED_TOLERANCE}): the conversion is wrong")
    s_ours, s_hf, ratio = compare(step_fn(ours, loss_ours), step_fn(hf, loss_hf), warmup, steps)
    flops = train_flops(c, BATCH, TOKENS)
    return {"device": device, "params_ours": sum(p.numel() for p in ours.parameters()),
            "params_hf": sum(p.numel() for p in hf.parameters()),
            "hf_attn_implementation": hf["vilt"].config._attn_implementation, "train_flops_per_step": flops,
            "first_loss_ours": round(first_ours, 6), "first_loss_hf": round(first_hf, 6),
            "step_s_ours": round(s_ours, 5), "step_s_hf": round(s_hf, 5), "ratio_ours_over_hf": round(ratio, 3),
            "gflops_ours": round(flops / s_ours / 1e9, 2), "gflops_hf": round(flops / s_hf / 1e9, 2)}


def sizes(c: ViltConfig) -> dict:
    return {"batch": BATCH, "image_size": c.image_size, "patch_size": c.patch_size, "image_tokens": image_tokens(c),
            "vocab_size": c.vocab_size, "max_len": c.max_position_embeddings, "tokens": TOKENS,
            "real_tokens": [MIN_TOKENS, TOKENS], "sequence": TOKENS + image_tokens(c), "dim": c.hidden_size,
            "depth": c.num_hidden_layers, "heads": c.num_attention_heads, "mlp": c.intermediate_size,
            "activation": c.hidden_act, "pad_cls_sep_ids": [PAD, CLS, SEP]}


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    c = hf_config()
    peak = matmul_flops()
    row = hf_case(c, device, warmup, steps)
    peak = max(peak, matmul_flops())  # measured before and after: keep the better yardstick
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, matmul {peak / 1e9:.1f} GFLOP/s fp32"
          f"{' (quick)' if quick else ''}")
    report_against_hf(row, peak)
    result = {"quick": quick, "matmul_gflops_fp32": round(peak / 1e9, 2), "warmup_steps": warmup,
              "timed_steps": steps, "sizes": sizes(c), "target_ratio_ours_over_hf": 1.0,
              "meets_target": row["ratio_ours_over_hf"] <= 1.0, "fusion": row}
    print("wrote", write("fusion_step_quick" if quick else "fusion_step", result))


if __name__ == "__main__":
    main()
