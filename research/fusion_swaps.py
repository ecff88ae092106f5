"""Side runs for notebook 06's ITM head on the world's attribute and relation swaps. Its earlier main run (2,400 steps,
half of the ITM negatives from the world's three kinds, half mined in the batch with CLIP) scored the swaps at chance
on held-out pairs. Does it learn them on its own training scenes, and what changes that? ViLT's patches at 48 px from
the label-free MAE with MLM + ITM + the VQA head, or the detector's region tokens (`--image regions`: every cell's
colour and shape handed over, so only the binding is left to learn), with the share of ITM negatives taken from the
world (`--swap`) and which kinds they are (`--kinds`). Notebook 06's main run is `--steps 8000 --swap 1 --kinds
swaps`.

    python research/fusion_swaps.py --steps 800                              # the earlier recipe, shorter
    python research/fusion_swaps.py --steps 800 --image regions              # the detector's region tokens
    python research/fusion_swaps.py --steps 800 --swap 1 --kinds swaps       # every negative an attribute or relation swap
    python research/fusion_swaps.py --steps 8000 --swap 1 --kinds swaps      # ... for long enough to learn them (~20 min)
    python research/fusion_swaps.py --steps 8000 --swap 1 --kinds swaps --one-object replaced   # no random caption
    python research/fusion_swaps.py --shipped                                # notebook 06's shipped model, no training

Each run measures the ITM head on 1,500 training scenes against their own world negative, by kind, and notebook 06's
held-out numbers (`fusion.measure`); it writes research/results/fusion_swaps/<name>.json.
"""

import argparse
import time
from collections import defaultdict
from dataclasses import replace

import torch
from common import save_result

from vlmlab import harness, unimodal, zoo
from vlmlab.data import evalsets, language, shapes
from vlmlab.data.loaders import StepBatches, encode_texts
from vlmlab.strategies import fusion
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


@torch.no_grad()
def train_swap_accuracy(model, tok, images, captions, negatives, kinds) -> dict[str, float]:
    """Paired accuracy of the ITM head on training scenes: their caption scored above their own world negative."""
    own, wrong = harness.score_pairs(model, tok, images, captions), harness.score_pairs(model, tok, images, negatives)
    hits = defaultdict(list)
    for kind, a, b in zip(kinds, own.tolist(), wrong.tolist()):
        hits[kind].append(a > b)
    return {f"train_{k}": sum(v) / len(v) for k, v in hits.items()}


def trained(args, tok, scenes, images, texts: list[str], negative_texts: list[str]):
    """Notebook 06's recipe for `args.steps` steps (`args.image`'s tokens, `args.swap` of the negatives from the
    world's) -> (the model, its History, seconds of training)."""
    ends, text_len = fusion.Fusion.text_ends, 32
    captions = encode_texts(tok, texts, max_length=text_len, ends=ends)
    negatives = encode_texts(tok, negative_texts, max_length=text_len, ends=ends)
    answers = language.answer_vocabulary()
    qas = [(i, qa) for i, s in enumerate(scenes) for qa in language.sample_vqa(s, 2, salt="train")]
    questions = encode_texts(tok, [qa.question for _, qa in qas], max_length=text_len, ends=ends)
    question_scene, answer_ids = torch.tensor([i for i, _ in qas]), torch.tensor([answers.index(qa.answer) for _, qa in qas])

    mae = zoo.load_model("tiny-vit-mae")[0]
    regions = unimodal.vision_tower({"tower": "regions", "name": "tiny-vit-detector-probe"})
    config = fusion.Config(vocab_size=len(tok), text_len=text_len, dim=mae.config.dim, depth=mae.config.depth,
                           n_heads=mae.config.n_heads, image_size=48, patch_size=mae.config.patch_size, answers=answers,
                           swap_negatives=args.swap, mlm_prob=0.3, pad_token_id=tok.pad_token_id,
                           mask_token_id=tok.mask_token_id, cls_token_id=tok.convert_tokens_to_ids("[CLS]"),
                           sep_token_id=tok.convert_tokens_to_ids("[SEP]"))
    inputs, key = images, "images"
    if args.image == "regions":
        config = replace(config, image="regions", vision=regions.spec)
        inputs, key = unimodal.region_features(regions, images), "image_features"
    clip_model = zoo.load_model("negclip-shapes")[0].eval()  # notebook 06 mines its in-batch negatives with it
    miner = (harness.embed_images(clip_model, images) * clip_model.scale.item(), harness.embed_texts(clip_model, tok, texts))

    torch.manual_seed(args.seed)
    model = fusion.Fusion(config, vision=regions if args.image == "regions" else None)
    fusion.init_from_vit(model, mae)
    caption_batches = StepBatches(range(len(scenes)), args.batch, seed=args.seed,
                                  collate=fusion.pretraining_collate(inputs, captions, negatives, key, miner=miner))
    question_batches = StepBatches(range(len(qas)), args.batch, seed=args.seed + 1,
                                   collate=fusion.answer_collate(inputs, questions, question_scene, answer_ids, key))
    start = time.perf_counter()
    started = {"image_embed", "image_alone", "layers"}  # what init_from_vit fills from the MAE (single stream)
    history = fit(model, fusion.batch_loss, lambda step: caption_batches(step) | {"vqa": question_batches(step)},
                  steps=args.steps, lr=args.lr, lr_scales={name: args.mae_lr_scale for name in started}, seed=args.seed,
                  progress=False)
    return model, history, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--swap", type=float, default=0.5, help="share of ITM negatives from the world's swaps (notebook 06: 1)")
    p.add_argument("--kinds", default="all", choices=sorted(language.NEGATIVE_SETS),
                   help="which world negatives: all, or the two swaps")
    p.add_argument("--image", default="patches", choices=("patches", "regions"))
    p.add_argument("--one-object", dest="one_object", default="caption", choices=("caption", "replaced"),
                   help="the negative of a scene that has no negative of --kinds: another scene's caption (notebook 06) "
                        "or one of its objects with the shape replaced")
    p.add_argument("--n-train", dest="n_train", type=int, default=20_000)
    p.add_argument("--n-eval", dest="n_eval", type=int, default=1000)
    p.add_argument("--mae-lr-scale", dest="mae_lr_scale", type=float, default=1.0,
                   help="the rate of the parts started from the MAE, as a fraction of --lr (the rest keeps --lr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shipped", action="store_true", help="measure notebook 06's shipped vilt-shapes instead of training")
    p.add_argument("--name", default=None)
    args = p.parse_args()

    tok = load_tokenizer()
    scenes = shapes.ShapesWorld(seed=args.seed).scenes(args.n_train, "train")
    images, texts = evalsets.images_of(scenes), [language.caption(s) for s in scenes]
    negatives = fusion.world_negatives(scenes, args.seed, kinds=language.NEGATIVE_SETS[args.kinds])
    if args.one_object == "replaced":  # a scene without a swap (one object, mostly) gets a shape replaced, not a caption
        negatives = [(language.hard_negatives(s) or [n])[0] if n.kind == "random" else n for s, n in zip(scenes, negatives)]
    negative_texts, negative_kinds = [n.text for n in negatives], [n.kind for n in negatives]
    result = {"args": vars(args)}
    if args.shipped:
        model = zoo.load_model("vilt-shapes")[0]
    else:
        model, history, train_s = trained(args, tok, scenes, images, texts, negative_texts)
        itm = [log["itm"] for log in history.logs]
        windows = [itm[i:i + 200] for i in range(0, len(itm), 200)]  # when the binding starts, the ITM loss drops
        result |= {"train_s": round(train_s, 1), "itm_loss_last_50": sum(itm[-50:]) / len(itm[-50:]),
                   "itm_loss_by_200_steps": [round(sum(w) / len(w), 4) for w in windows]}
    model.eval()

    n = 1500
    result |= train_swap_accuracy(model, tok, images[:n], texts[:n], negative_texts[:n], negative_kinds[:n])
    bench = evalsets.FusionBench.build(args.seed, args.n_eval)
    measured = fusion.measure(model, tok, bench, evalsets.novel(bench.scenes.scenes, scenes))
    result |= {k: measured[k] for k in ("relation_swap_acc", "attribute_swap_acc", "itm_acc", "mlm_acc_image", "vqa_acc")}
    print(result)
    name = args.name or ("shipped" if args.shipped else f"{args.image}_{args.steps}_swap{args.swap:g}_{args.kinds}"
                              + (f"_maelr{args.mae_lr_scale:g}" if args.mae_lr_scale != 1 else "")
                              + ("_replaced1obj" if args.one_object == "replaced" else "") + f"_s{args.seed}")
    save_result(__file__, name, result)


if __name__ == "__main__":
    main()
