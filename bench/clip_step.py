"""Training-step time of our CLIP against the same-size Hugging Face `CLIPModel`, and bf16 against fp32 (DESIGN.md §7).

Run from bench/: `../.venv/bin/python clip_step.py` (`--quick`: a few steps only, to check that it runs; it writes
clip_step_quick.json). Sizes are notebook 02's model, batch 128: image tower 64 px, patch 16, dim 96, depth 4,
heads 4; text tower vocab 512, max_len 40, dim 96, depth 3, heads 4; MLPs 4 x dim with exact GELU; both projected
into 64 dims. Captions are 24 tokens, right-padded: <bos>, random words, <eos> at the last real token, real
lengths 4 to 24. Our model is converted from the HF one (`from_hf_clip`), so both start from the same weights and
their first losses (HF's `return_loss=True` loss, our `clip_loss`) must agree within 1e-4: that also checks that
both pool the text at the same place. HF pools at the first <eos> id in each row, ours at the last real token of
the attention mask; these are the same position here. HF takes `eos_token_id == 2` as a config from before
transformers PR #24773 and then pools at the largest token id instead, so our tokenizer's <eos> id (2) cannot be
used: this benchmark gives <eos> the id 3.

A step is zero_grad + forward + loss + backward + AdamW step. Steps of the two models alternate in the same
process on the same batch; we report median step times and the median over pairs of the ratio ours / HF
(target <= 1). The same pairing times our CLIP under `torch.autocast(dtype=torch.bfloat16)` against itself in
fp32 (two copies of the same weights), on the CPU and, when there is one, on the GPU.

FLOPs are counted analytically, matmuls only (PaLM appendix B / nanoGPT), as in backbone_step.py:
    train FLOPs = 6 * sum over weight matrices of (weights * tokens that pass through them)
                + 12 * depth * dim * T^2 * batch      (attention scores QK^T and weights x V, full T x T)
per tower (padding tokens included: they go through the matmuls too), where the projections see one vector per
image or caption, plus 6 * batch^2 * projection_dim for the [B, B] similarity matrix. The efficiency is achieved
FLOP/s divided by the FLOP/s of a 1024^3 fp32 matmul measured in the same run.
"""

from __future__ import annotations

import torch
from common import block_weights, compare, first_losses, machine, matmul_flops, quick_or_full, report_against_hf, step_fn, write
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from vlmlab.strategies.clip import clip_loss, from_hf_clip

BATCH, TOKENS, MIN_TOKENS = 128, 24, 4
PAD, BOS, EOS = 0, 1, 3  # HF pools at the largest id when eos_token_id == 2 (see the docstring)
FIRST_WORD_ID = 8  # words are drawn from the ids after our tokenizer's 8 special tokens
LOSS_TOLERANCE = 1e-4


def hf_config() -> HFCLIPConfig:
    return HFCLIPConfig(
        vision_config=dict(image_size=64, patch_size=16, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                           num_attention_heads=4, hidden_act="gelu"),
        text_config=dict(vocab_size=512, max_position_embeddings=40, hidden_size=96, intermediate_size=384,
                         num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu",
                         pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS),
        projection_dim=64)


def vision_flops(c: HFCLIPConfig, batch: int) -> float:
    v = c.vision_config
    n = (v.image_size // v.patch_size) ** 2  # patches
    t = n + 1  # + CLS
    matmul = n * v.num_channels * v.patch_size**2 * v.hidden_size  # patch projection sees the patches
    matmul += t * v.num_hidden_layers * block_weights(v.hidden_size, v.intermediate_size)  # blocks see every token
    matmul += v.hidden_size * c.projection_dim  # the projection sees the CLS vector
    return batch * (6 * matmul + 12 * v.num_hidden_layers * v.hidden_size * t * t)


def text_flops(c: HFCLIPConfig, batch: int, t: int) -> float:
    x = c.text_config
    matmul = t * x.num_hidden_layers * block_weights(x.hidden_size, x.intermediate_size)  # blocks see every token
    matmul += x.hidden_size * c.projection_dim  # the projection sees the <eos> vector
    return batch * (6 * matmul + 12 * x.num_hidden_layers * x.hidden_size * t * t)


def similarity_flops(c: HFCLIPConfig, batch: int) -> float:
    return 6 * batch * batch * c.projection_dim  # image_emb [B, E] @ text_emb.T [E, B]


def make_batch(c: HFCLIPConfig, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images [B, 3, H, W] in [-1, 1], input_ids [B, T] (<bos> words <eos> <pad>...), attention_mask [B, T]."""
    g = torch.Generator().manual_seed(1)
    size = c.vision_config.image_size
    images = torch.rand(BATCH, 3, size, size, generator=g) * 2 - 1  # [B, 3, H, W], as `to_float` makes them
    lengths = torch.randint(MIN_TOKENS, TOKENS + 1, (BATCH,), generator=g)  # [B] real tokens, <bos> and <eos> included
    lengths[0] = TOKENS  # one full row, so no column is padding only
    mask = (torch.arange(TOKENS) < lengths[:, None]).long()  # [B, T]
    ids = torch.randint(FIRST_WORD_ID, c.text_config.vocab_size, (BATCH, TOKENS), generator=g)  # [B, T]
    ids[:, 0] = BOS
    ids[torch.arange(BATCH), lengths - 1] = EOS
    ids = ids.masked_fill(mask == 0, PAD)
    return images.to(device), ids.to(device), mask.to(device)


def make_models(c: HFCLIPConfig, device: str) -> tuple[CLIPModel, torch.nn.Module]:
    torch.manual_seed(0)
    hf = CLIPModel(c).to(device).train()
    return hf, from_hf_clip(hf).to(device).train()


def our_loss(model, images, ids, mask, bf16: bool = False):
    def loss() -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            return clip_loss(model(images, ids, mask)[0])

    return loss


def hf_loss(model, images, ids, mask):
    return lambda: model(input_ids=ids, pixel_values=images, attention_mask=mask, return_loss=True).loss



def hf_case(c: HFCLIPConfig, device: str, warmup: int, steps: int) -> dict:
    """Our CLIP against HF's CLIPModel, same weights, same batch."""
    hf, ours = make_models(c, device)
    batch = make_batch(c, device)
    loss_ours, loss_hf = our_loss(ours, *batch), hf_loss(hf, *batch)
    first_ours, first_hf = first_losses(loss_ours, loss_hf, LOSS_TOLERANCE, "the conversion or the text pooling does not match")
    s_ours, s_hf, ratio = compare(step_fn(ours, loss_ours), step_fn(hf, loss_hf), warmup, steps)
    flops = vision_flops(c, BATCH) + text_flops(c, BATCH, TOKENS) + similarity_flops(c, BATCH)
    return {"device": device, "params_ours": sum(p.numel() for p in ours.parameters()),
            "params_hf": sum(p.numel() for p in hf.parameters()), "hf_attn_implementation": hf.config._attn_implementation,
            "train_flops_per_step": flops, "train_flops_vision": vision_flops(c, BATCH),
            "train_flops_text": text_flops(c, BATCH, TOKENS), "first_loss_ours": round(first_ours, 6),
            "first_loss_hf": round(first_hf, 6), "step_s_ours": round(s_ours, 5), "step_s_hf": round(s_hf, 5),
            "ratio_ours_over_hf": round(ratio, 3), "gflops_ours": round(flops / s_ours / 1e9, 2),
            "gflops_hf": round(flops / s_hf / 1e9, 2)}


def autocast_case(c: HFCLIPConfig, device: str, warmup: int, steps: int) -> dict:
    """Our CLIP under bf16 autocast against itself in fp32: two copies of the same weights, same batch."""
    hf, fp32 = make_models(c, device)
    bf16 = from_hf_clip(hf).to(device).train()
    batch = make_batch(c, device)
    loss_bf16, loss_fp32 = our_loss(bf16, *batch, bf16=True), our_loss(fp32, *batch)
    first_bf16, first_fp32 = first_losses(loss_bf16, loss_fp32)
    s_bf16, s_fp32, ratio = compare(step_fn(bf16, loss_bf16), step_fn(fp32, loss_fp32), warmup, steps)
    return {"device": device, "first_loss_bf16": round(first_bf16, 6), "first_loss_fp32": round(first_fp32, 6),
            "step_s_bf16": round(s_bf16, 5), "step_s_fp32": round(s_fp32, 5), "ratio_bf16_over_fp32": round(ratio, 3)}


def sizes(c: HFCLIPConfig) -> dict:
    v, x = c.vision_config, c.text_config
    return {"batch": BATCH, "projection_dim": c.projection_dim,
            "vision": {"image_size": v.image_size, "patch_size": v.patch_size, "dim": v.hidden_size,
                       "depth": v.num_hidden_layers, "heads": v.num_attention_heads, "mlp": v.intermediate_size,
                       "activation": v.hidden_act},
            "text": {"vocab_size": x.vocab_size, "max_len": x.max_position_embeddings, "tokens": TOKENS,
                     "real_tokens": [MIN_TOKENS, TOKENS], "dim": x.hidden_size, "depth": x.num_hidden_layers,
                     "heads": x.num_attention_heads, "mlp": x.intermediate_size, "activation": x.hidden_act,
                     "pad_bos_eos_ids": [PAD, BOS, EOS]}}


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    c = hf_config()
    peak, peak_bf16 = matmul_flops(), matmul_flops(dtype=torch.bfloat16)
    row = hf_case(c, device, warmup, steps)
    autocast = [autocast_case(c, d, warmup, steps) for d in ["cpu", "cuda"][: 1 + torch.cuda.is_available()]]
    peak = max(peak, matmul_flops())  # measured before and after: keep the better yardstick
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, matmul {peak / 1e9:.1f} GFLOP/s fp32, "
          f"{peak_bf16 / 1e9:.1f} bf16{' (quick)' if quick else ''}")
    report_against_hf(row, peak)
    for r in autocast:
        print(f"{r['device']:>4}: bf16 autocast {r['step_s_bf16']:.4f} s, fp32 {r['step_s_fp32']:.4f} s, "
              f"bf16/fp32 {r['ratio_bf16_over_fp32']:.3f}")
    result = {"quick": quick, "matmul_gflops_fp32": round(peak / 1e9, 2), "matmul_gflops_bf16": round(peak_bf16 / 1e9, 2),
              "warmup_steps": warmup, "timed_steps": steps, "sizes": sizes(c), "target_ratio_ours_over_hf": 1.0,
              "meets_target": row["ratio_ours_over_hf"] <= 1.0, "clip": row, "bf16_autocast": autocast}
    print("wrote", write("clip_step_quick" if quick else "clip_step", result))


if __name__ == "__main__":
    main()
