"""What cutting a batch into length buckets buys a training step (`loaders.length_buckets`, introduced in notebook 03;
used by notebooks 05 and 09), DESIGN.md §7.

Run from bench/: `../.venv/bin/python length_buckets.py` (`--quick`: a few steps only, to check that it runs; it
writes length_buckets_quick.json). The model is notebook 09's stage 2: the shipped tiny LM (training) behind an MLP
projector, on one batch of 32 of the world's instruction chats drawn as the notebook draws them (conversations,
detailed descriptions, reasoning questions and short answers of 2,000 training scenes, shuffled); the visual
features [32, 9, 96] are random (timing does not depend on them). A step is zero_grad + `llava.batch_loss` +
backward + AdamW step, on the batch padded to its longest chat or cut into 2 or 4 buckets of similar length, each
padded to its own longest chat. The losses must agree within 1e-5 (each bucket's mean is weighted by its labelled
tokens). Steps of the uncut batch and of the cut one alternate in the same process; we report median step times,
the median over pairs of the ratio cut / uncut, and the positions each computes (padding included).
"""

from __future__ import annotations

import torch
from common import compare, matmul_flops, quick_or_full, step_fn, write

from vlmlab.data import language
from vlmlab.data.language import IMAGE_TOKEN
from vlmlab.data.loaders import StepBatches, TextBatch, indexed_collate
from vlmlab.data.shapes import ShapesWorld
from vlmlab.lm import load_language_model
from vlmlab.strategies import llava
from vlmlab.tokenizer import load_tokenizer

SCENES, BATCH, VISUAL_DIM, N_VISUAL, SEED = 2000, 32, 96, 9, 0
LOSS_TOLERANCE = 1e-5


def instruction_chats(tokenizer, max_length: int) -> tuple[list[int], torch.Tensor, TextBatch]:
    """Notebook 09's stage-2 data: (the first batch's chat indices, visual features [M, 9, 96], the chats' text)."""
    chats = []
    for scene in ShapesWorld(seed=SEED).scenes(SCENES, "train"):
        qa = language.sample_vqa(scene, 1, salt="train")[0]
        chats += [*language.instructions(scene).values(),
                  [{"from": "human", "value": f"{IMAGE_TOKEN}\n{qa.question}"}, {"from": "gpt", "value": qa.answer}]]
    text = llava.encode_chats(tokenizer, chats, max_length=max_length)
    features = torch.randn(len(chats), N_VISUAL, VISUAL_DIM, generator=torch.Generator().manual_seed(SEED))
    first = StepBatches(range(len(chats)), BATCH, lambda idx: idx, seed=SEED)(0)
    return first, features, text


def main() -> None:
    quick, warmup, steps = quick_or_full(__doc__, 20)
    tok = load_tokenizer()
    torch.manual_seed(SEED)
    lm = load_language_model({"name": "tiny-lm", "sha256": None})
    config = llava.Config(projector="mlp", visual_dim=VISUAL_DIM, n_visual=N_VISUAL,
                          image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), lm=lm.ref)
    idx, features, text = instruction_chats(tok, max_length=lm.max_len - (N_VISUAL - 1))
    lengths = text.attention_mask.sum(dim=1)
    uncut = indexed_collate(features, text, key="image_features")(idx)
    rows = []
    for n in (2, 4):
        cut = indexed_collate(features, text, key="image_features", buckets=n)(idx)
        models = [llava.instruction_tuning(llava.Llava(config, lm=lm)) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        with torch.no_grad():
            loss_uncut, loss_cut = (llava.batch_loss(m, b)[0].item() for m, b in zip(models, (uncut, cut)))
        if abs(loss_uncut - loss_cut) > LOSS_TOLERANCE:
            raise RuntimeError(f"{n} buckets: loss {loss_cut:.6f} against {loss_uncut:.6f} uncut")
        step_uncut = step_fn(models[0], lambda m=models[0]: llava.batch_loss(m, uncut)[0])
        step_cut = step_fn(models[1], lambda m=models[1], b=cut: llava.batch_loss(m, b)[0])
        s_cut, s_uncut, ratio = compare(step_cut, step_uncut, warmup, steps)
        row = {"buckets": n, "positions_uncut": uncut["input_ids"].numel(),
               "positions_cut": sum(b["input_ids"].numel() for b in cut["buckets"]),
               "step_s_uncut": round(s_uncut, 4), "step_s_cut": round(s_cut, 4), "ratio_cut_over_uncut": round(ratio, 3),
               "first_loss_uncut": round(loss_uncut, 6), "first_loss_cut": round(loss_cut, 6)}
        rows.append(row)
        print(f"{n} buckets: positions {row['positions_cut']:,} of {row['positions_uncut']:,}; step {s_cut:.4f} s "
              f"against {s_uncut:.4f} s uncut, ratio {ratio:.3f}")
    result = {"quick": quick, "matmul_gflops_fp32": round(matmul_flops() / 1e9, 1), "warmup_steps": warmup, "timed_steps": steps,
              "sizes": {"batch": BATCH, "scenes": SCENES, "n_visual": N_VISUAL, "visual_dim": VISUAL_DIM,
                        "lm_dim": lm.dim, "lm_positions": lm.max_len},
              "chat_tokens": {"min": int(lengths.min()), "median": int(lengths.median()), "max": int(lengths.max())},
              "rows": rows}
    print("wrote", write("length_buckets_quick" if quick else "length_buckets", result))


if __name__ == "__main__":
    main()
