"""Training-step time of our BLIP-2 Q-Former against the same-size Hugging Face `Blip2QFormerModel` (DESIGN.md §7).

Run from bench/: `../.venv/bin/python qformer_step.py` (`--quick`: a few steps only, to check that it runs; it writes
qformer_step_quick.json). Sizes are notebook 08's Q-Former: 8 queries, width 96, 4 layers, 4 heads, MLP 384 (exact
GELU), a cross-attention to the image in layers 0 and 2, over the frozen CLIP tower's 17 tokens of width 96; texts of
24 tokens ([CLS] words [SEP], right-padded, real lengths 4 to 24), vocab 512, batch 64. The pass is ITM's: queries and
text under the bidirectional mask. Our model is converted from the HF one (`blip2.from_hf_qformer`, with HF's
`Blip2TextEmbeddings` and query tokens), so both start from the same weights; the loss is cross-entropy of one
Linear(96, 2) on the query outputs averaged over the queries (BLIP-2's ITM head), against fixed labels. The first
losses must agree within 1e-4.

A step is zero_grad + forward + loss + backward + AdamW step. Steps of the two models alternate in the same process
on the same batch; we report median step times and the median over pairs of the ratio ours / HF (target <= 1).

FLOPs are counted analytically, matmuls only, with S = Q + T tokens in the self-attention:
    train FLOPs = 6 * (S * depth * (4 D^2 + 2 D mlp) + cross layers * (Q * 2 D^2 + N * 2 Dv D) + Q * D * 2)
                + 12 * (depth * D * S^2 + cross layers * D * Q * N)      (attention scores and weights x values)
per example (padding tokens included: they go through the matmuls too). The efficiency is achieved FLOP/s divided by
the FLOP/s of a 1024^3 fp32 matmul measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import compare, first_losses, machine, matmul_flops, quick_or_full, report_against_hf, step_fn, write
from transformers import Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from vlmlab.strategies import blip2

BATCH, TOKENS, MIN_TOKENS, IMAGE_TOKENS = 64, 24, 4, 17
PAD, CLS, SEP, FIRST_WORD_ID = 0, 6, 7, 8  # our tokenizer's ids; words are drawn after its 8 special tokens
LOSS_TOLERANCE = 1e-4
CONFIG = blip2.QFormerConfig(vocab_size=512, visual_dim=96, n_queries=8, dim=96, depth=4, n_heads=4, mlp_dim=384,
                             cross_every=2, text_len=32)


class HFQFormer(torch.nn.Module):
    """HF's Q-Former with the parts BLIP-2 keeps beside it: the query tokens and the text embeddings."""

    def __init__(self):
        super().__init__()
        config = blip2.hf_qformer_config(CONFIG)
        self.qformer, self.embeddings = Blip2QFormerModel(config), Blip2TextEmbeddings(config)
        self.query_tokens = torch.nn.Parameter(torch.randn(1, CONFIG.n_queries, CONFIG.dim) * 0.02)

    def forward(self, image, ids, mask):
        B, Q = len(ids), CONFIG.n_queries
        joined = self.embeddings(input_ids=ids, query_embeds=self.query_tokens.expand(B, -1, -1))
        full = torch.cat([mask.new_ones(B, Q), mask], dim=1)
        out = self.qformer(query_embeds=joined, query_length=Q, attention_mask=full, encoder_hidden_states=image)
        return out.last_hidden_state[:, :Q]


def train_flops(batch: int) -> float:
    c, S, n_cross = CONFIG, CONFIG.n_queries + TOKENS, len(range(0, CONFIG.depth, CONFIG.cross_every))
    matmul = S * c.depth * (4 * c.dim**2 + 2 * c.dim * c.mlp_dim)
    matmul += n_cross * (c.n_queries * 2 * c.dim**2 + IMAGE_TOKENS * 2 * c.visual_dim * c.dim)
    matmul += c.n_queries * c.dim * 2  # the ITM head
    attention = c.depth * c.dim * S * S + n_cross * c.dim * c.n_queries * IMAGE_TOKENS
    return batch * (6 * matmul + 12 * attention)


def make_batch(device: str):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(BATCH, IMAGE_TOKENS, CONFIG.visual_dim, generator=g)
    lengths = torch.randint(MIN_TOKENS, TOKENS + 1, (BATCH,), generator=g)
    lengths[0] = TOKENS
    mask = (torch.arange(TOKENS) < lengths[:, None]).long()
    ids = torch.randint(FIRST_WORD_ID, CONFIG.vocab_size, (BATCH, TOKENS), generator=g)
    ids[:, 0] = CLS
    ids[torch.arange(BATCH), lengths - 1] = SEP
    ids = ids.masked_fill(mask == 0, PAD)
    labels = torch.cat([torch.ones(BATCH // 2), torch.zeros(BATCH - BATCH // 2)]).long()
    return image.to(device), ids.to(device), mask.to(device), labels.to(device)


def hf_case(device: str, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    hf = HFQFormer()
    ours = blip2.from_hf_qformer(hf.qformer, hf.embeddings, hf.query_tokens, CONFIG)
    head = torch.nn.Linear(CONFIG.dim, 2)
    hf_model = torch.nn.ModuleDict({"qformer": hf, "itm": head}).to(device).train()
    our_model = torch.nn.ModuleDict({"qformer": ours, "itm": torch.nn.Linear(CONFIG.dim, 2)}).to(device).train()
    our_model["itm"].load_state_dict(head.state_dict())
    image, ids, mask, labels = make_batch(device)

    def loss_ours():
        queries, _ = our_model["qformer"](image, ids, mask, kind="bidirectional")
        return F.cross_entropy(our_model["itm"](queries).mean(dim=1), labels)

    def loss_hf():
        return F.cross_entropy(hf_model["itm"](hf_model["qformer"](image, ids, mask)).mean(dim=1), labels)

    first_ours, first_hf = first_losses(loss_ours, loss_hf, LOSS_TOLERANCE)
    s_ours, s_hf, ratio = compare(step_fn(our_model, loss_ours), step_fn(hf_model, loss_hf), warmup, steps)
    flops = train_flops(BATCH)
    return {"device": device, "params_ours": sum(p.numel() for p in our_model.parameters()),
            "params_hf": sum(p.numel() for p in hf_model.parameters()),
            "hf_attn_implementation": hf.qformer.config._attn_implementation, "train_flops_per_step": flops,
            "first_loss_ours": round(first_ours, 6), "first_loss_hf": round(first_hf, 6),
            "step_s_ours": round(s_ours, 5), "step_s_hf": round(s_hf, 5), "ratio_ours_over_hf": round(ratio, 3),
            "gflops_ours": round(flops / s_ours / 1e9, 2), "gflops_hf": round(flops / s_hf / 1e9, 2)}


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_flops()
    row = hf_case(device, warmup, steps)
    peak = max(peak, matmul_flops())
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, matmul {peak / 1e9:.1f} GFLOP/s fp32"
          f"{' (quick)' if quick else ''}")
    report_against_hf(row, peak)
    result = {"quick": quick, "matmul_gflops_fp32": round(peak / 1e9, 2), "warmup_steps": warmup, "timed_steps": steps,
              "sizes": {"batch": BATCH, "tokens": TOKENS, "real_tokens": [MIN_TOKENS, TOKENS], "image_tokens": IMAGE_TOKENS,
                        **CONFIG.to_dict()},
              "target_ratio_ours_over_hf": 1.0, "meets_target": row["ratio_ours_over_hf"] <= 1.0, "qformer": row}
    print("wrote", write("qformer_step_quick" if quick else "qformer_step", result))


if __name__ == "__main__":
    main()
