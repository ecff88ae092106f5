"""Notebook 08's BLIP-2 recipe outside the notebook (its section 8 runs the same ablation): stage 1 (the Q-Former's
ITC + ITM + ITG over notebook 02's frozen CLIP tower), then stage 2 (the query outputs as a soft prompt into the
frozen tiny LM, trained on captions and questions), against stage 2 from a fresh Q-Former at equal stage-2 steps:
BLIP-2's ablation.
Measures ITC retrieval and the ITM head on the swap probes after stage 1, captions and VQA after stage 2.

    python research/blip2_recipe.py --stage1-steps 300 --stage2-steps 1500 --lr2 3e-3 [--tower vit:tiny-vit-detector]
        [--tower imagenet:stride16@192 --scenes 5000]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch
from common import features_of, frozen_parts, run_name, save_result

from vlmlab import harness
from vlmlab.data import evalsets, language
from vlmlab.data.loaders import StepBatches, encode_texts, indexed_collate
from vlmlab.evaluate import retrieval_recall
from vlmlab.strategies import blip2, frozen_prefix
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


def stage2(qformer_config, lm, tower, feats, text, scene_of, args, start_from=None) -> tuple[dict, float]:
    torch.manual_seed(args.seed)
    config = frozen_prefix.Config(mapper="qformer", in_dim=qformer_config.visual_dim, k=qformer_config.n_queries,
                                  qformer=asdict(qformer_config), lm=lm.ref, vision=tower.spec)
    model = frozen_prefix.PrefixCaptioner(config, lm=lm, vision=tower)
    if start_from is not None:
        model.mapper.qformer.load_state_dict(start_from.state_dict())
    batches = StepBatches(range(len(scene_of)), args.batch, indexed_collate(feats, text, key="image_features", rows=scene_of),
                          seed=args.seed)
    start = time.perf_counter()
    fit(model, frozen_prefix.batch_loss, batches, steps=args.stage2_steps, lr=args.lr2, seed=args.seed, progress=False)
    seconds = time.perf_counter() - start
    bench = evalsets.SceneBench.build(args.seed, args.eval)
    scores = harness.suite(model, load_tokenizer(), "captioner", bench) | harness.suite(model, load_tokenizer(), "vqa", bench)
    return {k: round(v, 4) for k, v in scores.items() if k in ("caption_f1", "caption_attr_f1", "vqa_acc")}, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage1-steps", type=int, default=300)
    ap.add_argument("--stage2-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr1", type=float, default=1e-3)
    ap.add_argument("--lr2", type=float, default=3e-3)
    ap.add_argument("--scenes", type=int, default=20_000)
    ap.add_argument("--tower", default="clip:clip-shapes",
                    help="kind:name of a vision tower, e.g. vit:tiny-vit-detector or imagenet:stride16@192 (common.frozen_tower)")
    ap.add_argument("--eval", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tok = load_tokenizer()
    tower, lm, scenes, feats = frozen_parts(args.tower, args.scenes, args.seed)  # feats [N, 17, Dv]
    qc = blip2.QFormerConfig(vocab_size=len(tok), visual_dim=feats.size(-1), n_queries=8, dim=96, depth=4, n_heads=4,
                             mlp_dim=384, text_len=32)

    torch.manual_seed(args.seed)
    model = blip2.Blip2(blip2.Config(qformer=qc, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id), vision=tower)
    captions = encode_texts(tok, [language.caption(s) for s in scenes], max_length=32, ends=blip2.Blip2.text_ends)
    batches = StepBatches(range(len(scenes)), args.batch, indexed_collate(feats, captions, key="image_features"), seed=args.seed)
    start = time.perf_counter()
    history = fit(model, blip2.stage1_loss, batches, steps=args.stage1_steps, lr=args.lr1, seed=args.seed, progress=False)
    stage1_seconds = time.perf_counter() - start
    model.eval()
    pairs = evalsets.DualEncoderBench.build(args.seed, args.eval)
    with torch.no_grad():
        texts = encode_texts(tok, [language.caption(s) for s in pairs.retrieval], max_length=32, ends=blip2.Blip2.text_ends)
        similarity = model.itc_similarity(model.image_embeddings(features_of(tower, pairs.images["retrieval"])),
                                          model.text_embeddings(texts.input_ids, texts.attention_mask))
    stage1 = {"itc_t2i_r1": round(retrieval_recall(similarity.T)["r1"], 4),
              "itc_i2t_r1": round(retrieval_recall(similarity)["r1"], 4)}
    stage1 |= {f"itm_{k}": round(v, 4) for k, v in harness.suite(model, tok, "pair_scorer", pairs).items()}
    stage1["final_losses"] = {k: round(sum(h[k] for h in history.logs[-10:]) / 10, 4) for k in ("itc", "itm", "itg")}

    qas = [language.sample_vqa(s, 1, salt="train")[0] for s in scenes]
    prompts = [""] * len(scenes) + [qa.question for qa in qas]
    targets = [language.caption(s) for s in scenes] + [" " + qa.answer for qa in qas]
    text = encode_texts(tok, prompts, targets, max_length=lm.max_len - qc.n_queries)
    scene_of = torch.arange(len(scenes)).repeat(2)
    with_stage1, with_seconds = stage2(qc, lm, tower, feats, text, scene_of, args, start_from=model.qformer)
    without_stage1, without_seconds = stage2(qc, lm, tower, feats, text, scene_of, args)
    run = run_name(args.tower, f"s1_{args.stage1_steps}-s2_{args.stage2_steps}-lr2_{args.lr2:g}", args.seed, args.scenes)
    save_result(__file__, run, {"args": vars(args), "stage1": stage1, "stage1_seconds": round(stage1_seconds, 1),
                                "stage2_from_stage1": with_stage1, "stage2_without_stage1": without_stage1,
                                "stage2_seconds": [round(with_seconds, 1), round(without_seconds, 1)]})


if __name__ == "__main__":
    main()
