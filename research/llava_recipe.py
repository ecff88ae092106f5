"""Notebook 09's LLaVA recipe outside the notebook, with four times its stage-2 chats (600 steps of 64 against 300 of
32): notebook 02's frozen CLIP tower (the patches after its second-to-last block) -> an MLP projector -> the tiny LM.
Stage 1 (feature alignment): the projector alone on captions asked as one-turn chats. Stage 2 (visual instruction
tuning): projector and LM on the world's instruction data (conversations, detailed descriptions, complex reasoning)
plus one-turn questions, or on captions only (LLaVA's data ablation, `--data captions`); `--stage1-steps 0` skips the
alignment stage; `--lora-rank 8` trains LoRA adapters of that rank in stage 2 instead of all the LM's weights.
Measures VQA, reasoning, detailed-description F1 and POPE on held-out scenes.

    python research/llava_recipe.py --stage1-steps 200 --stage2-steps 600 [--data captions] [--tower vit:tiny-vit-detector]
    python research/llava_recipe.py --stage1-steps 150 --stage2-steps 300 --batch 32 --lora-rank 8
    python research/llava_recipe.py --stage1-steps 150 --batch1 64 --stage2-steps 600 --batch 16 --scenes 5000 \
        --tower imagenet:stride16@192     # EfficientNet-Lite0 (ImageNet) cells in place of CLIP's patches
    python research/llava_recipe.py --stage1-steps 150 --stage2-steps 2400 --batch 16 --buckets 4 --lm-lr-scale 0.33
"""

from __future__ import annotations

import argparse
import time

import torch
from common import frozen_parts, run_name, save_result

from vlmlab.data import evalsets, language
from vlmlab.data.language import IMAGE_TOKEN
from vlmlab.data.loaders import StepBatches, indexed_collate
from vlmlab.strategies import llava
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


def caption_chat(scene) -> list[dict]:
    return language.instructions(scene)["conversation"][:2]  # "<image>\nWhat do you see in this image?" -> the caption


def question_chat(scene) -> list[dict]:
    qa = language.sample_vqa(scene, 1, salt="train")[0]
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{qa.question}"}, {"from": "gpt", "value": qa.answer}]


def stage_batches(tok, feats, chats, rows, batch, seed, max_length, buckets=1):
    text = llava.encode_chats(tok, chats, max_length)
    collate = indexed_collate(feats, text, key="image_features", rows=torch.tensor(rows), buckets=buckets)
    return StepBatches(range(len(chats)), batch, collate, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage1-steps", type=int, default=200)
    ap.add_argument("--stage2-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch1", type=int, default=None, help="stage 1's batch (default: --batch)")
    ap.add_argument("--lr1", type=float, default=3e-3)
    ap.add_argument("--lr2", type=float, default=1e-3)
    ap.add_argument("--lm-lr-scale", type=float, default=1.0,
                    help="stage 2: the LM's rate as a multiple of the projector's (notebook 03's two rates)")
    ap.add_argument("--buckets", type=int, default=1, help="stage 2: each batch cut into this many length buckets")
    ap.add_argument("--data", choices=("instructions", "captions"), default="instructions")
    ap.add_argument("--lora-rank", type=int, default=0, help="stage 2: LoRA adapters of this rank (0: the whole LM)")
    ap.add_argument("--scenes", type=int, default=20_000)
    ap.add_argument("--tower", default="clip-penultimate:clip-shapes", help="kind:name of a vision tower")
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default=None, help="the result's file name (default: from the settings)")
    args = ap.parse_args()
    tok = load_tokenizer()
    tower, lm, scenes, feats = frozen_parts(args.tower, args.scenes, args.seed)  # feats [N, 16, Dv]
    config = llava.Config(projector="mlp", visual_dim=feats.size(-1), n_visual=feats.size(1),
                          image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), lm=lm.ref, vision=tower.spec)
    torch.manual_seed(args.seed)
    model = llava.Llava(config, lm=lm, vision=tower)
    n = len(scenes)
    start = time.perf_counter()
    if args.stage1_steps:
        batches = stage_batches(tok, feats, [caption_chat(s) for s in scenes], list(range(n)),
                                args.batch1 or args.batch, args.seed, model.max_text_len)
        fit(model, llava.batch_loss, batches, steps=args.stage1_steps, lr=args.lr1, seed=args.seed, progress=False)
    stage1_seconds = time.perf_counter() - start

    model = llava.instruction_tuning(model, lora_rank=args.lora_rank)  # stage 2: the LM trains too
    if args.data == "instructions":
        chats = [turns for s in scenes for turns in language.instructions(s).values()] + [question_chat(s) for s in scenes]
        rows = [i for i in range(n) for _ in range(3)] + list(range(n))
    else:
        chats, rows = [caption_chat(s) for s in scenes], list(range(n))
    start = time.perf_counter()
    batches = stage_batches(tok, feats, chats, rows, args.batch, args.seed, model.max_text_len, args.buckets)
    lr_scales = {"lm": args.lm_lr_scale} if args.lm_lr_scale != 1 else None
    fit(model, llava.batch_loss, batches, steps=args.stage2_steps, lr=args.lr2, lr_scales=lr_scales, seed=args.seed,
        progress=False)
    stage2_seconds = time.perf_counter() - start
    bench = evalsets.SceneBench.build(args.seed, args.eval)
    scores = llava.measure(model.eval(), tok, bench)
    keep = ("vqa_acc", "reasoning_acc", "description_f1", "pope_acc", "pope_yes_to_absent", "caption_f1")
    suffix = f"-lora{args.lora_rank}-lr{args.lr2:g}" if args.lora_rank else ""
    suffix += f"-lmscale{args.lm_lr_scale:g}" if args.lm_lr_scale != 1 else ""
    suffix += f"-lr1_{args.lr1:g}" if args.lr1 != 3e-3 else ""
    run = args.run or run_name(args.tower, f"{args.data}-s1_{args.stage1_steps}x{args.batch1 or args.batch}"
                               f"-s2_{args.stage2_steps}x{args.batch}{suffix}", args.seed,
                               args.scenes)
    save_result(__file__, run, {"args": vars(args), "scores": {k: round(v, 4) for k, v in scores.items() if k in keep or
                                                               k.startswith(("vqa_", "reasoning_"))},
                                "seconds": [round(stage1_seconds, 1), round(stage2_seconds, 1)]})


if __name__ == "__main__":
    main()
