"""Training-step time and greedy-generation speed of notebook 09's LLaVA (`vlmlab.strategies.llava`: our projector,
our splice at the `<image>` slot, the one decoding loop) against Hugging Face's `LlavaForConditionalGeneration` of
the same size and weights (DESIGN.md §7).

Run from bench/: `../.venv/bin/python llava_step.py` (`--quick`: a few steps only, to check that it runs; it writes
llava_step_quick.json). Both models are the same function: a CLIP vision tower (HF's, frozen, its penultimate layer's
patches: 16 image tokens), a two-layer GELU projector and a Llama of 4 layers of width 128 (SmolLM2's shape, scaled
down), ours built from HF's weights; their first losses must agree within 1e-5. A training step is zero_grad +
forward + the LM loss on the text (the 16 image positions carry no loss) + backward + AdamW on the projector and the
LM. Steps of the two alternate in the same process on the same batch of 16 prompts; we report median step times and
the median over pairs of the ratio ours / HF (target <= 1). Generation: 16 prompts, 32 new tokens, greedy, KV cache,
every row forced to run all 32 tokens (no end token); tokens per second, ours / HF as a time ratio (target <= 1).
"""

from __future__ import annotations

import statistics
import time

import torch
from common import compare, machine, matmul_flops, quick_or_full, step_fn, write
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from vlmlab.generation import generate
from vlmlab.lm import wrap_language_model
from vlmlab.strategies import llava

VOCAB, DIM, LAYERS, HEADS, KV_HEADS, HIDDEN = 512, 128, 4, 4, 2, 512
IMAGE_ID, N_IMAGE, BATCH, TEXT, NEW = VOCAB - 1, 16, 16, 48, 32
LOSS_TOLERANCE = 1e-5


class PenultimatePatches(nn.Module):
    """HF's CLIP vision tower as LLaVA reads it: the penultimate layer's hidden states, CLS dropped."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]


def make_models() -> tuple[LlavaForConditionalGeneration, llava.Llava]:
    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=HIDDEN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256)
    vision = CLIPVisionConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                              image_size=64, patch_size=16)
    hf = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_ID,
                                                   projector_hidden_act="gelu", vision_feature_layer=-2,
                                                   vision_feature_select_strategy="default"))
    hf.model.vision_tower.requires_grad_(False)
    causal = LlamaForCausalLM(text)
    causal.model.load_state_dict(hf.model.language_model.state_dict())
    causal.lm_head.load_state_dict(hf.lm_head.state_dict())
    config = llava.Config(projector="mlp", visual_dim=96, image_token_id=IMAGE_ID, train_lm=True,
                          lm={"name": "bench", "sha256": None})
    ours = llava.Llava(config, lm=wrap_language_model(causal), vision=PenultimatePatches(hf.model.vision_tower))
    p = hf.model.multi_modal_projector
    ours.projector.load_state_dict({"0.weight": p.linear_1.weight, "0.bias": p.linear_1.bias,
                                    "2.weight": p.linear_2.weight, "2.bias": p.linear_2.bias})
    return hf.train(), ours.train()


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(BATCH, 3, 64, 64, generator=g)
    before, after = torch.randint(1, VOCAB - 1, (BATCH, 4), generator=g), torch.randint(1, VOCAB - 1, (BATCH, TEXT), generator=g)
    ids = torch.cat([before, torch.full((BATCH, 1), IMAGE_ID), after], dim=1)  # ours: one <image> token
    hf_ids = torch.cat([before, torch.full((BATCH, N_IMAGE), IMAGE_ID), after], dim=1)  # HF's processor repeats it
    labels = ids.masked_fill(ids == IMAGE_ID, -100)
    hf_labels = hf_ids.masked_fill(hf_ids == IMAGE_ID, -100)
    return {"pixels": pixels, "ids": ids, "labels": labels, "hf_ids": hf_ids, "hf_labels": hf_labels}


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__, 30)
    peak = matmul_flops()
    hf, ours = make_models()
    b = make_batch()

    def loss_ours() -> torch.Tensor:
        condition = ours.condition(ours.image_features(b["pixels"]))
        return ours(input_ids=b["ids"], attention_mask=torch.ones_like(b["ids"]), labels=b["labels"], **condition).loss

    def loss_hf() -> torch.Tensor:
        return hf(input_ids=b["hf_ids"], pixel_values=b["pixels"], attention_mask=torch.ones_like(b["hf_ids"]),
                  labels=b["hf_labels"]).loss

    with torch.no_grad():
        first_ours, first_hf = loss_ours().item(), loss_hf().item()
    if abs(first_ours - first_hf) > LOSS_TOLERANCE:
        raise RuntimeError(f"first losses differ: ours {first_ours:.7f}, HF {first_hf:.7f} (allowed {LOSS_TOLERANCE})")
    s_ours, s_hf, ratio = compare(step_fn(ours, loss_ours), step_fn(hf, loss_hf), warmup, steps)

    hf.eval(), ours.eval()
    prompt, hf_prompt = b["ids"][:, :8], b["hf_ids"][:, : 8 + N_IMAGE - 1]  # the image and a few words

    @torch.no_grad()
    def gen_ours() -> torch.Tensor:
        condition = ours.condition(ours.image_features(b["pixels"]))
        return generate(ours, input_ids=prompt, condition=condition, max_new_tokens=NEW)

    @torch.no_grad()
    def gen_hf() -> torch.Tensor:
        return hf.generate(input_ids=hf_prompt, pixel_values=b["pixels"], attention_mask=torch.ones_like(hf_prompt),
                           max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)

    same = torch.equal(gen_ours(), gen_hf()[:, hf_prompt.size(1):])
    times = {"ours": [], "hf": []}
    for _ in range(3 if quick else 10):
        for name, fn in (("ours", gen_ours), ("hf", gen_hf)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    g_ours, g_hf = statistics.median(times["ours"]), statistics.median(times["hf"])
    peak = max(peak, matmul_flops())
    row = {"first_loss_ours": round(first_ours, 7), "first_loss_hf": round(first_hf, 7),
           "step_s_ours": round(s_ours, 5), "step_s_hf": round(s_hf, 5), "step_ratio_ours_over_hf": round(ratio, 3),
           "generate_tokens_per_s_ours": round(BATCH * NEW / g_ours, 1),
           "generate_tokens_per_s_hf": round(BATCH * NEW / g_hf, 1),
           "generate_time_ratio_ours_over_hf": round(g_ours / g_hf, 3), "same_greedy_tokens": same}
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, matmul {peak / 1e9:.1f} GFLOP/s fp32"
          f"{' (quick)' if quick else ''}")
    print(f"first loss ours {first_ours:.7f}, HF {first_hf:.7f}; step ours {s_ours * 1e3:.1f} ms, HF {s_hf * 1e3:.1f} ms, "
          f"ours/HF {ratio:.3f}")
    print(f"generation ({BATCH} x {NEW} tokens): ours {row['generate_tokens_per_s_ours']} tok/s, HF "
          f"{row['generate_tokens_per_s_hf']} tok/s, time ours/HF {row['generate_time_ratio_ours_over_hf']}; "
          f"the same greedy tokens: {same}")
    sizes = {"vocab": VOCAB, "dim": DIM, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "ff_hidden": HIDDEN,
             "image_tokens": N_IMAGE, "batch": BATCH, "text_tokens": TEXT + 4, "new_tokens": NEW}
    result = {"quick": quick, "machine": machine(), "matmul_gflops_fp32": round(peak / 1e9, 2), "warmup_steps": warmup,
              "timed_steps": steps, "sizes": sizes, "target_ratio_ours_over_hf": 1.0,
              "meets_target": ratio <= 1.0 and g_ours / g_hf <= 1.0, "llava": row}
    print("wrote", write("llava_step_quick" if quick else "llava_step", result))


if __name__ == "__main__":
    main()
