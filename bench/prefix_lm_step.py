"""Training and captioning throughput of notebook 03's PrefixLM, and what the KV cache buys (DESIGN.md §7).

Run from bench/: `../.venv/bin/python prefix_lm_step.py` (`--quick`: a few steps only, to check that it runs; it
writes prefix_lm_step_quick.json). Sizes are `Config`'s defaults, notebook 03's model: vocab 512, 9 image
tokens (region tokens) of width 20, text up to 32 tokens, dim 128, depth 4, heads 4, MLP 4 x dim; batch 128. Weights and image
features [B, 9, 20] are random (timing does not depend on them); the text is real: one training batch drawn as
notebook 03 draws it (`prefix_lm.training_texts` over Shapes World captions and questions, `encode_texts`, trimmed
to the longest row of the batch).

Training: a step is zero_grad + `prefix_lm.batch_loss` + backward + AdamW step. It is paired, in the same process
on the same text, with a step of the text-only `CausalLM` of the same size (no image tokens, plain causal mask):
the ratio PrefixLM / text-only is what the 9 image tokens cost. Tokens/s count real tokens: image tokens plus the
text tokens under the attention mask (<bos>, <eos> included), padding left out; text tokens/s count the text alone.

FLOPs are counted analytically, matmuls only (PaLM appendix B / nanoGPT), as in backbone_step.py:
    train FLOPs = 6 * sum over weight matrices of (weights * tokens that pass through them)
                + 12 * depth * dim * S^2 * batch      (attention scores QK^T and weights x V, full S x S)
with S = 9 + T positions per row (T = the batch's text width; padding goes through the matmuls too): the visual
projection (20 x 128) sees the 9 image tokens, the blocks and the tied output layer (128 x 512) see all S
positions. The text-only model has S = T and no visual projection. The efficiency is achieved FLOP/s divided by the
FLOP/s of a 1024^3 fp32 matmul measured in the same run.

Captioning: greedy decoding of 24 new tokens after the 9 image tokens and <bos> (`generation.generate` with the
model's image tokens as its condition, as `generate_text` does, but with eos_token_id=None so that every row writes
all 24 tokens: new tokens = 128 x 24 per call). With the KV cache against without it (every step recomputes the
prompt and all tokens so far), paired; the ratio is the cache's speed-up. Beam search (4 beams) with the cache is
paired with greedy with the cache; its tokens/s count the 24 tokens returned per image, while it decodes 4 rows per
image. Threads: torch's default (OMP_NUM_THREADS when set), as in the other benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from common import block_weights, compare, machine, matmul_flops, quick_or_full, step_fn, write

from vlmlab.data import language
from vlmlab.data.loaders import StepBatches, encode_texts
from vlmlab.data.shapes import ShapesWorld
from vlmlab.generation import generate
from vlmlab.nn import CausalLM, TextConfig
from vlmlab.strategies import prefix_lm
from vlmlab.tokenizer import load_tokenizer

BATCH, N_SCENES, VQA_PER_SCENE, SEED = 128, 512, 2, 0  # the batch is drawn from these scenes' texts
NEW_TOKENS, BEAMS = 24, 4


def train_flops(config: TextConfig, batch: int, positions: int, image_tokens: int = 0, vision_dim: int = 0) -> float:
    """Analytic matmul FLOPs of one training step (see the module docstring)."""
    matmul = image_tokens * vision_dim * config.dim  # the visual projection sees the image tokens
    hidden = round(config.dim * config.mlp_ratio)
    per_position = config.depth * block_weights(config.dim, hidden) + config.dim * config.vocab_size  # blocks, tied head
    matmul += positions * per_position  # every position goes through them
    return batch * (6 * matmul + 12 * config.depth * config.dim * positions**2)


def text_batch(tokenizer, config: prefix_lm.Config) -> dict:
    """One batch as notebook 03 trains on: features [B, 9, 20] (random), input_ids / attention_mask / labels [B, T]."""
    scenes = ShapesWorld(seed=SEED).scenes(N_SCENES, "train")
    captions = [language.caption(s, variant=i % 4) for i, s in enumerate(scenes)]
    qas = [qa for s in scenes for qa in language.sample_vqa(s, VQA_PER_SCENE, salt="train")]
    prompts, targets = prefix_lm.training_texts(captions, qas, seed=SEED)
    text = encode_texts(tokenizer, prompts, targets, max_length=config.text_len)
    g = torch.Generator().manual_seed(SEED)
    features = torch.randn(BATCH, config.n_image_tokens, config.vision_dim, generator=g)  # [B, 9, 20]

    def collate(rows: list[int]) -> dict:
        rows = torch.tensor(rows)
        mask = text.attention_mask[rows]
        width = int(mask.sum(dim=1).max())  # trim the padding to the longest row of the batch
        return {"image_features": features, "input_ids": text.input_ids[rows, :width], "attention_mask": mask[:, :width],
                "labels": text.labels[rows, :width]}

    return StepBatches(range(len(prompts)), BATCH, collate, seed=SEED)(0)


def train_case(config: prefix_lm.Config, batch: dict, warmup: int, steps: int) -> dict:
    """PrefixLM training step against the text-only CausalLM's on the same text."""
    torch.manual_seed(SEED)
    model = prefix_lm.PrefixLM(config).to(batch["input_ids"].device).train()
    text_config = TextConfig(vocab_size=config.vocab_size, max_len=config.text_len, dim=config.dim, depth=config.depth,
                             n_heads=config.n_heads, causal=True)
    text_lm = CausalLM(text_config).to(batch["input_ids"].device).train()
    step_prefix = step_fn(model, lambda: prefix_lm.batch_loss(model, batch)[0])
    step_text = step_fn(text_lm, lambda: text_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                 labels=batch["labels"]).loss)
    s_prefix, s_text, ratio = compare(step_prefix, step_text, warmup, steps)
    B, T = batch["input_ids"].shape
    N = config.n_image_tokens
    text_tokens = int(batch["attention_mask"].sum())
    flops_prefix = train_flops(model.lm.config, B, N + T, N, config.vision_dim)
    flops_text = train_flops(text_config, B, T)
    return {"batch": B, "text_width": T, "positions_per_row": N + T, "image_tokens_per_step": B * N,
            "text_tokens_per_step": text_tokens, "params_prefix_lm": sum(p.numel() for p in model.parameters()),
            "params_text_lm": sum(p.numel() for p in text_lm.parameters()), "train_flops_per_step": flops_prefix,
            "train_flops_per_step_text_lm": flops_text, "step_s": round(s_prefix, 5), "step_s_text_lm": round(s_text, 5),
            "ratio_prefix_over_text_lm": round(ratio, 3), "tokens_per_s": round((B * N + text_tokens) / s_prefix),
            "text_tokens_per_s": round(text_tokens / s_prefix), "text_tokens_per_s_text_lm": round(text_tokens / s_text),
            "gflops": round(flops_prefix / s_prefix / 1e9, 2), "gflops_text_lm": round(flops_text / s_text / 1e9, 2)}


def captioner(model: prefix_lm.PrefixLM, features: torch.Tensor, tokenizer, **generate_kwargs):
    """A function that captions every image: image tokens + <bos> -> NEW_TOKENS new tokens [B, NEW_TOKENS]."""
    bos = torch.full((len(features), 1), tokenizer.bos_token_id, device=features.device)  # [B, 1]

    @torch.no_grad()
    def run() -> torch.Tensor:
        return generate(model, input_ids=bos, condition=model.condition(features), max_new_tokens=NEW_TOKENS,
                        eos_token_id=None, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)

    return run


def generation_case(config: prefix_lm.Config, features: torch.Tensor, tokenizer, warmup: int, steps: int) -> dict:
    """Greedy captioning with the KV cache against without it; beam search with the cache against greedy with it."""
    torch.manual_seed(SEED)
    model = prefix_lm.PrefixLM(config).to(features.device).eval()
    cached = captioner(model, features, tokenizer, use_cache=True)
    uncached = captioner(model, features, tokenizer, use_cache=False)
    beam = captioner(model, features, tokenizer, strategy="beam", num_beams=BEAMS, use_cache=True)
    first = cached(), uncached(), beam()
    for name, tokens in zip(("greedy cached", "greedy uncached", "beam"), first):
        if tuple(tokens.shape) != (BATCH, NEW_TOKENS):
            raise RuntimeError(f"{name} returned tokens {tuple(tokens.shape)}, expected {(BATCH, NEW_TOKENS)}")
    rows_equal = (first[0] == first[1]).all(dim=1).float().mean().item()
    s_uncached, s_cached, ratio = compare(uncached, cached, warmup, steps)  # ratio: uncached / cached
    s_beam, s_greedy, ratio_beam = compare(beam, cached, warmup, steps)
    new_tokens = BATCH * NEW_TOKENS
    return {"batch": BATCH, "prompt_positions": config.n_image_tokens + 1, "new_tokens_per_call": new_tokens,
            "beams": BEAMS, "greedy_rows_equal_cache_vs_no_cache": round(rows_equal, 3),
            "greedy_s_cached": round(s_cached, 5), "greedy_s_uncached": round(s_uncached, 5),
            "tokens_per_s_cached": round(new_tokens / s_cached), "tokens_per_s_uncached": round(new_tokens / s_uncached),
            "cache_speedup": round(ratio, 3), "beam_s_cached": round(s_beam, 5), "greedy_s_cached_beam_pair": round(s_greedy, 5),
            "beam_tokens_per_s_cached": round(new_tokens / s_beam), "ratio_beam_over_greedy": round(ratio_beam, 3)}


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer()
    config = prefix_lm.Config(vocab_size=len(tokenizer))
    batch = {k: v.to(device) for k, v in text_batch(tokenizer, config).items()}
    peak = matmul_flops()
    train = train_case(config, batch, warmup, steps)
    gen = generation_case(config, batch["image_features"], tokenizer, warmup, steps)
    peak = max(peak, matmul_flops())  # measured before and after: keep the better yardstick
    train["efficiency"] = round(train["gflops"] * 1e9 / peak, 3)
    train["efficiency_text_lm"] = round(train["gflops_text_lm"] * 1e9 / peak, 3)
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, fp32 matmul {peak / 1e9:.1f} GFLOP/s"
          f"{' (quick)' if quick else ''}")
    print(f"train, batch {train['batch']} x {train['positions_per_row']} positions ({config.n_image_tokens} image + "
          f"{train['text_width']} text), {train['image_tokens_per_step'] + train['text_tokens_per_step']} real tokens "
          f"of which {train['text_tokens_per_step']} text")
    print(f"{'model':>9} {'params':>8} {'GFLOP/step':>10} {'step s':>8} {'tokens/s':>9} {'text tok/s':>10} {'GF/s':>6} "
          f"{'eff':>6}")
    print(f"{'prefixlm':>9} {train['params_prefix_lm']:>8} {train['train_flops_per_step'] / 1e9:>10.2f} {train['step_s']:>8.4f} "
          f"{train['tokens_per_s']:>9} {train['text_tokens_per_s']:>10} {train['gflops']:>6.1f} {train['efficiency']:>6.3f}")
    print(f"{'text-only':>9} {train['params_text_lm']:>8} {train['train_flops_per_step_text_lm'] / 1e9:>10.2f} "
          f"{train['step_s_text_lm']:>8.4f} {train['text_tokens_per_s_text_lm']:>9} {train['text_tokens_per_s_text_lm']:>10} "
          f"{train['gflops_text_lm']:>6.1f} {train['efficiency_text_lm']:>6.3f}")
    print(f"step time PrefixLM / text-only: {train['ratio_prefix_over_text_lm']:.3f}")
    print(f"captioning, batch {gen['batch']}, {NEW_TOKENS} new tokens per image: greedy with cache {gen['tokens_per_s_cached']} "
          f"tokens/s, without {gen['tokens_per_s_uncached']} tokens/s, cache speed-up {gen['cache_speedup']:.2f}x "
          f"(rows equal {gen['greedy_rows_equal_cache_vs_no_cache']:.3f})")
    print(f"beam search ({BEAMS} beams) with cache {gen['beam_tokens_per_s_cached']} tokens/s, "
          f"{gen['ratio_beam_over_greedy']:.2f}x the time of greedy")
    result = {"quick": quick, "matmul_gflops_fp32": round(peak / 1e9, 2), "warmup_steps": warmup, "timed_steps": steps,
              "sizes": {**asdict(config), "mlp_ratio": config.text_config().mlp_ratio, "batch": BATCH,
                        "new_tokens": NEW_TOKENS, "beams": BEAMS},
              "tokens_counted": "image tokens + real text tokens (padding excluded); generation: new tokens returned",
              "train": train, "generation": gen}
    print("wrote", write("prefix_lm_step_quick" if quick else "prefix_lm_step", result))


if __name__ == "__main__":
    main()
