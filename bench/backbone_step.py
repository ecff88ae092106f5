"""Training-step time of our ViT and CausalLM against the same-size Hugging Face models (DESIGN.md §7).

Run from bench/: `../.venv/bin/python backbone_step.py`. Sizes are notebook 01's tiny backbones, batch 64:
ViT 64 px, patch 16, dim 96, depth 4, heads 4 (+ a linear head on the CLS token, 10 classes) vs
`transformers.ViTModel`; GPT vocab 512, dim 128, depth 4, heads 4, 32 tokens vs `transformers.GPT2LMHeadModel`.
Our models are converted from the HF ones (`from_hf_*`), so both start from the same weights and the first
losses must agree. A step is zero_grad + forward + loss + backward + AdamW step. Steps of the two models
alternate in the same process on the same batch; we report median step times and the median over pairs of
the ratio ours / HF (target <= 1).

FLOPs are counted analytically, matmuls only (PaLM appendix B / nanoGPT):
    train FLOPs = 6 * sum over weight matrices of (weights * tokens that pass through them)
                + 12 * depth * dim * T^2 * batch      (attention scores QK^T and weights x V, full T x T)
The efficiency is achieved FLOP/s divided by the FLOP/s of a 1024^3 fp32 matmul measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import block_weights, compare, machine, matmul_flops, step_fn, write
from transformers import GPT2Config, GPT2LMHeadModel, ViTModel
from transformers import ViTConfig as HFViTConfig

from vlmlab.hf_convert import from_hf_gpt2, from_hf_vit

BATCH, WARMUP, STEPS = 64, 3, 20
N_CLASSES = 10


def vit_flops(c: HFViTConfig, batch: int) -> float:
    n = (c.image_size // c.patch_size) ** 2  # patches
    t = n + 1  # + CLS
    matmul = n * c.num_channels * c.patch_size**2 * c.hidden_size  # patch projection sees the patches
    matmul += t * c.num_hidden_layers * block_weights(c.hidden_size, c.intermediate_size)  # blocks see every token
    matmul += c.hidden_size * N_CLASSES  # the head sees the CLS token
    return batch * (6 * matmul + 12 * c.num_hidden_layers * c.hidden_size * t * t)


def gpt_flops(c: GPT2Config, batch: int, t: int) -> float:
    matmul = t * (c.n_layer * block_weights(c.n_embd, 4 * c.n_embd) + c.n_embd * c.vocab_size)  # blocks + LM head
    return batch * (6 * matmul + 12 * c.n_layer * c.n_embd * t * t)


def compare_models(ours, hf) -> tuple[float, float, float, float, float]:
    """(first loss ours, first loss HF, median step s ours, median step s HF, median of the per-pair ratios)."""
    first = ours(), hf()
    return *first, *compare(ours, hf, WARMUP - 1, STEPS)


def vit_case(device: str) -> dict:
    c = HFViTConfig(image_size=64, patch_size=16, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=384, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = ViTModel(c, add_pooling_layer=False).to(device)
    ours = from_hf_vit(hf).to(device)
    head_hf = torch.nn.Linear(c.hidden_size, N_CLASSES).to(device)
    head_ours = torch.nn.Linear(c.hidden_size, N_CLASSES).to(device)
    head_ours.load_state_dict(head_hf.state_dict())
    images = torch.randn(BATCH, 3, c.image_size, c.image_size, device=device)
    labels = torch.randint(N_CLASSES, (BATCH,), device=device)
    step_ours = step_fn(torch.nn.ModuleList([ours, head_ours]), lambda: F.cross_entropy(head_ours(ours(images).cls), labels))
    step_hf = step_fn(torch.nn.ModuleList([hf, head_hf]),
                      lambda: F.cross_entropy(head_hf(hf(pixel_values=images).last_hidden_state[:, 0]), labels))
    return summarise("vit", compare_models(step_ours, step_hf), vit_flops(c, BATCH), sum(p.numel() for p in ours.parameters()))


def gpt_case(device: str, seq: int = 32) -> dict:
    c = GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=4, n_head=4,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(c).to(device)
    ours = from_hf_gpt2(hf).to(device)
    ids = torch.randint(c.vocab_size, (BATCH, seq), device=device)
    step_ours = step_fn(ours, lambda: ours(input_ids=ids, labels=ids).loss)
    step_hf = step_fn(hf, lambda: hf(input_ids=ids, labels=ids).loss)
    params = sum(p.numel() for p in ours.parameters())
    return summarise("gpt", compare_models(step_ours, step_hf), gpt_flops(c, BATCH, seq), params)


def summarise(name: str, measured: tuple, flops: float, params: int) -> dict:
    loss_ours, loss_hf, s_ours, s_hf, ratio = measured
    return {"model": name, "params": params, "batch": BATCH, "train_flops_per_step": flops,
            "first_loss_ours": round(loss_ours, 6), "first_loss_hf": round(loss_hf, 6),
            "step_s_ours": round(s_ours, 5), "step_s_hf": round(s_hf, 5), "ratio_ours_over_hf": round(ratio, 3),
            "gflops_ours": round(flops / s_ours / 1e9, 2), "gflops_hf": round(flops / s_hf / 1e9, 2)}


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_flops()
    rows = [vit_case(device), gpt_case(device)]
    peak = max(peak, matmul_flops())  # measured before and after: keep the better yardstick
    for row in rows:
        row["efficiency_ours"] = round(row["gflops_ours"] * 1e9 / peak, 3)
        row["efficiency_hf"] = round(row["gflops_hf"] * 1e9 / peak, 3)
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, fp32 matmul {peak / 1e9:.1f} GFLOP/s")
    print(f"{'model':>5} {'params':>8} {'GFLOP/step':>10} {'ours s':>8} {'HF s':>8} {'ours/HF':>7} "
          f"{'ours GF/s':>9} {'HF GF/s':>8} {'eff ours':>8} {'eff HF':>7}")
    for r in rows:
        print(f"{r['model']:>5} {r['params']:>8} {r['train_flops_per_step'] / 1e9:>10.2f} {r['step_s_ours']:>8.4f} "
              f"{r['step_s_hf']:>8.4f} {r['ratio_ours_over_hf']:>7.3f} {r['gflops_ours']:>9.1f} {r['gflops_hf']:>8.1f} "
              f"{r['efficiency_ours']:>8.3f} {r['efficiency_hf']:>7.3f}")
    result = {"matmul_gflops_fp32": round(peak / 1e9, 2), "warmup_steps": WARMUP, "timed_steps": STEPS,
              "target_ratio_ours_over_hf": 1.0, "meets_target": all(r["ratio_ours_over_hf"] <= 1.0 for r in rows),
              "models": rows}
    print("wrote", write("backbone_step", result))


if __name__ == "__main__":
    main()
