"""Side runs for notebook 01's tiny LM: how many steps before it answers questions blind as well as the prior?

    python research/lm_blind_vqa.py --kinds qa --steps 1500          # question-answer documents only
    python research/lm_blind_vqa.py --kinds all --steps 4000         # all of the world's text, as notebook 01

The notebook's LM architecture (dim 128, depth 4, 160 positions) on the documents of `--kinds` from 20,000 training
scenes, length-grouped batches of 64 as in the notebook, then blind VQA on 1,000 held-out scenes (3 questions
each) next to the counting baseline fitted on the same question-answer documents. Writes
research/results/lm_blind_vqa/<name>.json.
"""

import argparse
import time

import torch
from common import save_result

from vlmlab import evaluate, unimodal
from vlmlab import nn as vnn
from vlmlab.data import evalsets, shapes, world_text
from vlmlab.data.loaders import encode_texts
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default="all", help="all | a comma-separated list of world_text.KINDS")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--scenes", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batching", default="pooled", help="pooled (sort a random pool of 8 batches by length, take one) "
                   "| windows (a random window of the whole corpus sorted by length) | random")
    p.add_argument("--name", default=None)
    args = p.parse_args()
    kinds = world_text.KINDS if args.kinds == "all" else tuple(args.kinds.split(","))

    torch.manual_seed(args.seed)
    tok = load_tokenizer()
    scenes = shapes.ShapesWorld(seed=args.seed).scenes(args.scenes, "train")
    docs = [text for kind, text in world_text.documents(scenes, args.seed) if kind in kinds]
    text = encode_texts(tok, docs, max_length=160)
    lengths = text.attention_mask.sum(dim=1)
    by_length = lengths.argsort()

    def batch(step):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        if args.batching == "windows":
            start = torch.randint(len(by_length) - 64 + 1, (1,), generator=g).item()
            return by_length[start : start + 64]
        if args.batching == "random":
            return torch.randint(len(docs), (64,), generator=g)
        pool = torch.randint(len(docs), (8 * 64,), generator=g)  # eight batches' worth, drawn at random
        pool = pool[lengths[pool].argsort()]  # sorted by length
        k = torch.randint(8, (1,), generator=g).item()
        return pool[k * 64 : (k + 1) * 64]  # one batch of neighbours in length

    def loss(m, idx):
        width = lengths[idx].max()
        return m(input_ids=text.input_ids[idx, :width], attention_mask=text.attention_mask[idx, :width],
                 labels=text.labels[idx, :width]).loss

    lm = vnn.CausalLM(vnn.TextConfig(vocab_size=len(tok), max_len=160, dim=128, depth=4, n_heads=4, causal=True,
                                     pad_token_id=tok.pad_token_id))
    start = time.perf_counter()
    fit(lm, loss, batch, steps=args.steps, lr=args.lr, warmup=0.05, seed=args.seed)
    seconds = time.perf_counter() - start

    bench = evalsets.build({"kind": "world_text", "seed": args.seed, "n": 1000})
    metrics = unimodal.world_text_metrics(lm.eval(), tok, bench)
    counting = evaluate.blind_answerer([qa for s in scenes for qa in world_text.questions(s)])
    baseline = evaluate.vqa_accuracy([counting(qa) for qa in bench.questions], [qa.answer for qa in bench.questions],
                                     [qa.qtype for qa in bench.questions])
    result = {"args": vars(args), "train_seconds": round(seconds, 1), "documents": len(docs),
              **{k: round(v, 4) for k, v in metrics.items() if k.startswith("lm_blind") or k.startswith("lm_ppl")},
              "counting_baseline_acc": round(baseline["overall"], 4),
              **{f"counting_{t}_acc": round(v, 4) for t, v in baseline["by_type"].items()}}
    save_result(__file__, args.name or f"{args.kinds.replace(',', '+')}-{args.steps}-{args.batching}", result)


if __name__ == "__main__":
    main()
