"""Training-step time of notebook 05's gated cross-attention layers against the same-size stack of Hugging Face's
Flamingo re-implementation (Idefics's `IdeficsGatedCrossAttentionLayer`), and their FLOP utilisation (DESIGN.md §7).

Run from bench/: `../.venv/bin/python flamingo_step.py` (`--quick`: a few steps only, to check that it runs; it
writes flamingo_step_quick.json). Sizes are notebook 05's: 4 layers (one in front of each of the tiny LM's blocks),
width 128, 4 heads, feed-forward 4 x 128, visual tokens of width 96; a batch of 32 sequences of 64 text positions
reading 3 images of 8 visual tokens each, the text split into 4 chunks: before any image, then after images 1, 2, 3.
Ours is built "llama" style (RMSNorm, SwiGLU, no biases) and converted from the HF layers (`from_hf_gated_layer`),
so both compute the same function from the same weights; their first losses must agree within 1e-5. The gates are
opened (α = 0.5) so that every branch does work.

A step is zero_grad + forward through the 4 layers + loss (mean square of the output) + backward + AdamW step.
Steps of the two stacks alternate in the same process on the same batch; we report median step times and the median
over pairs of the ratio ours / HF (target <= 1).

FLOPs are counted analytically, matmuls only: per layer and sequence the query and output projections see T
positions (2 T D^2), the key and value projections see S visual tokens (2 S Dv D), the attention scores and the
weighted sum take 2 T S D, and the SwiGLU feed-forward 3 T D H; a training step is 3 x the forward's 2 x MACs. The
efficiency is achieved FLOP/s divided by the FLOP/s of a 1024^3 fp32 matmul measured in the same run.
"""

from __future__ import annotations

import torch
from common import compare, machine, matmul_flops, quick_or_full, step_fn, write
from transformers import IdeficsConfig
from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

from vlmlab.strategies.flamingo import cross_attention_mask, from_hf_gated_layer

LAYERS, DIM, HEADS, HIDDEN, VISUAL_DIM = 4, 128, 4, 512, 96
BATCH, TOKENS, IMAGES, PER_IMAGE = 32, 64, 3, 8
LOSS_TOLERANCE = 1e-5


def hf_config() -> IdeficsConfig:
    config = IdeficsConfig(hidden_size=DIM, num_attention_heads=HEADS, intermediate_size=HIDDEN,
                           vision_config={"embed_dim": VISUAL_DIM}, alpha_initializer="zeros", alpha_type="float",
                           qk_layer_norms=False, dropout=0.0)
    config._attn_implementation = "sdpa"
    return config


def make_stacks(device: str) -> tuple[torch.nn.ModuleList, torch.nn.ModuleList]:
    torch.manual_seed(0)
    hf = torch.nn.ModuleList(IdeficsGatedCrossAttentionLayer(hf_config(), layer_idx=i) for i in range(LAYERS))
    for layer in hf:
        torch.nn.init.constant_(layer.alpha_cross_attn, 0.5), torch.nn.init.constant_(layer.alpha_dense, 0.5)
    ours = torch.nn.ModuleList(from_hf_gated_layer(layer) for layer in hf)
    return hf.to(device).train(), ours.to(device).train()


def make_batch(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """text [B, T, D], visual [B, IMAGES * PER_IMAGE, Dv], which image each position sees [B, T]."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, TOKENS, DIM, generator=g)
    visual = torch.randn(BATCH, IMAGES * PER_IMAGE, VISUAL_DIM, generator=g)
    where = (torch.arange(TOKENS) * (IMAGES + 1) // TOKENS).expand(BATCH, -1)  # 0 (no image yet), 1, 2, 3
    return x.to(device), visual.to(device), where.to(device)


def our_loss(stack, x, visual, where):
    mask = cross_attention_mask(where, IMAGES, PER_IMAGE)

    def loss() -> torch.Tensor:
        h = x
        for layer in stack:
            h = layer(h, visual, mask)
        return h.pow(2).mean()

    return loss


def hf_loss(stack, x, visual, where):
    mask = cross_attention_mask(where, IMAGES, PER_IMAGE)
    additive = torch.zeros(mask.shape, device=x.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    gate = (where > 0).long()

    def loss() -> torch.Tensor:
        h = x
        for layer in stack:
            h = layer(h, image_hidden_states=visual, image_attention_mask=additive, cross_attention_gate=gate)
        return h.pow(2).mean()

    return loss


def train_flops() -> float:
    S = IMAGES * PER_IMAGE
    macs = 2 * TOKENS * DIM * DIM + 2 * S * VISUAL_DIM * DIM + 2 * TOKENS * S * DIM + 3 * TOKENS * DIM * HIDDEN
    return 3 * 2 * macs * LAYERS * BATCH


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__, 30)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_flops()
    hf, ours = make_stacks(device)
    batch = make_batch(device)
    loss_ours, loss_hf = our_loss(ours, *batch), hf_loss(hf, *batch)
    with torch.no_grad():
        first_ours, first_hf = loss_ours().item(), loss_hf().item()
    if abs(first_ours - first_hf) > LOSS_TOLERANCE:
        raise RuntimeError(f"first losses differ: ours {first_ours:.7f}, HF {first_hf:.7f} (allowed {LOSS_TOLERANCE})")
    s_ours, s_hf, ratio = compare(step_fn(ours, loss_ours), step_fn(hf, loss_hf), warmup, steps)
    peak = max(peak, matmul_flops())  # measured before and after: keep the better yardstick
    flops = train_flops()
    row = {"device": device, "params": sum(p.numel() for p in ours.parameters()), "train_flops_per_step": flops,
           "first_loss_ours": round(first_ours, 7), "first_loss_hf": round(first_hf, 7),
           "step_s_ours": round(s_ours, 5), "step_s_hf": round(s_hf, 5), "ratio_ours_over_hf": round(ratio, 3),
           "gflops_ours": round(flops / s_ours / 1e9, 2), "gflops_hf": round(flops / s_hf / 1e9, 2),
           "efficiency_ours": round(flops / s_ours / peak, 3), "efficiency_hf": round(flops / s_hf / peak, 3)}
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, matmul {peak / 1e9:.1f} GFLOP/s fp32"
          f"{' (quick)' if quick else ''}")
    print(f"first loss ours {first_ours:.7f}, HF {first_hf:.7f}; {flops / 1e9:.2f} GFLOP per step")
    print(f"ours {s_ours * 1e3:.1f} ms, HF {s_hf * 1e3:.1f} ms, ours/HF {ratio:.3f}; efficiency ours "
          f"{row['efficiency_ours']:.3f}, HF {row['efficiency_hf']:.3f}")
    sizes = {"layers": LAYERS, "dim": DIM, "heads": HEADS, "ff_hidden": HIDDEN, "visual_dim": VISUAL_DIM, "batch": BATCH,
             "tokens": TOKENS, "images": IMAGES, "visual_tokens_per_image": PER_IMAGE, "style": "llama (RMSNorm, SwiGLU)"}
    result = {"quick": quick, "matmul_gflops_fp32": round(peak / 1e9, 2), "warmup_steps": warmup, "timed_steps": steps,
              "sizes": sizes, "hf_attn_implementation": "sdpa", "target_ratio_ours_over_hf": 1.0,
              "meets_target": ratio <= 1.0, "gated_layers": row}
    print("wrote", write("flamingo_step_quick" if quick else "flamingo_step", result))


if __name__ == "__main__":
    main()
