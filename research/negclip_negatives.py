"""Notebook 02's NegCLIP fine-tune: does it matter which hard negative a caption gets at each visit? A scene has up
to three hard negatives (`language.hard_negatives`: an attribute swap, a relation swap for two-object scenes, an
object replacement). Notebook 02's collate (`negatives_collate`) picks one per scene by the scene's index alone,
so a two-object scene whose pick is its attribute swap never shows its relation swap. NegCLIP's own data loader
draws a caption's negative at random at every visit. Both fine-tune notebook 02's shipped CLIP (`clip-shapes`)
as its section 8 did: 400 steps of 256 at 5e-4, weight decay 0.1, the canonical captions of 30,000 training scenes.

    python research/negclip_negatives.py --draw fixed        # notebook 02's earlier fine-tune (400 steps, all kinds)
    python research/negclip_negatives.py --draw per-visit    # a fresh draw at each visit, fixed by the batch
    python research/negclip_negatives.py --kinds swaps --steps 1600   # only the swaps, where a scene has one; longer
    python research/negclip_negatives.py --kinds swaps --steps 1600 --clip NAME   # a CLIP saved by a research run
    python research/negclip_negatives.py --kinds swaps --steps 1600 --left-out 0.5  # also each image's left-out caption
    python research/negclip_negatives.py --kinds swaps --steps 1600 --left-out 0.5 --left-out-negatives  # with its own

`--kinds swaps` keeps a scene's attribute and relation swaps as its negatives (a one-object scene, which has
neither, keeps its replaced shape: `clip.negclip_negatives`), as notebook 02's section 8 does by default
(`NEGCLIP_NEGATIVES`). `--left-out P` keeps reading, beside the whole caption and its negative, a caption of the
same image that leaves each size and colour word out with probability P (`language.leaving_out`, as notebook 02's
main run reads), CLIP's loss on it averaged with NegCLIP's. `--left-out-negatives` gives the left-out caption hard
negatives of its own, the scene's negatives with the same words left out ("a star left of a red circle" against "a
circle left of a red star" and "a red star left of a circle"; `clip.left_out_with_negatives`), so that its half of
the loss also asks for word order and binding. `--left-out-weight W` gives the left-out captions W of the loss (0.5:
averaged). Writes
research/results/negclip_negatives/[<clip>_]<draw>_<steps>_lr<lr>[_<kinds>][_leftout<P>[neg][_w<W>]][_b<batch>]_seed<seed>.json."""

from __future__ import annotations

import argparse
import functools
import random
import time

from common import save_result

from vlmlab import zoo
from vlmlab.data import evalsets, language, shapes
from vlmlab.data.loaders import ShapesDataset, StepBatches, encode_texts, indexed_collate, negatives_collate, to_float
from vlmlab.strategies import clip
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


def per_visit_collate(tokenizer, max_length: int = 40):
    """`negatives_collate` with the negative drawn from the item's index and the whole batch's indices: a pure
    function of the batch, so a scene met again in another epoch (in another batch) gets a fresh draw."""

    once_per_scene = negatives_collate(tokenizer, max_length=max_length)

    def collate(items: list[dict]) -> dict:
        batch_key = ",".join(str(it["index"]) for it in items)
        return once_per_scene([it | {"negatives": [random.Random(f"negative:{it['index']}:{batch_key}").choice(it["negatives"])]}
                               for it in items])

    return collate


def negclip_and_left_out_loss(weight: float):
    """NegCLIP's loss (whole captions and their hard negatives) and CLIP's loss of the same images against captions
    that leave words out (batch["left_out"], no negatives of their own), weighted 1 - `weight` and `weight`; the
    images are encoded once. (With negatives of their own: `clip.negclip_left_out_loss`.)"""

    def loss(model: clip.CLIP, batch: dict):
        image_emb = model.encode_image(to_float(batch["images"]))  # [B, E]
        text_emb = model.encode_text(batch["input_ids"], batch["attention_mask"])  # [B, E]
        negative_emb = model.encode_text(batch["negative_input_ids"], batch["negative_attention_mask"])  # [B, E]
        left_emb = model.encode_text(batch["left_out"]["input_ids"], batch["left_out"]["attention_mask"])  # [B, E]
        return ((1 - weight) * clip.contrastive_loss(image_emb, text_emb, model.scale, negative_emb)
                + weight * clip.contrastive_loss(image_emb, left_emb, model.scale)), {"temperature": model.temperature}

    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draw", choices=("fixed", "per-visit"), default="fixed")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=256,
                        help="pairs per step (notebook 02's NEGCLIP_BATCH: 128 on the cpu profile, 256 before)")
    parser.add_argument("--kinds", choices=sorted(language.NEGATIVE_SETS), default="all",
                        help="which hard negatives a scene keeps")
    parser.add_argument("--clip", default="clip-shapes",
                        help="the CLIP it fine-tunes: a name in the zoo or the user cache (`clip_patch_alignment.py --save`)")
    parser.add_argument("--left-out", dest="left_out", type=float, default=0.0,
                        help="also read a caption of each image that leaves words out with this probability (0: no)")
    parser.add_argument("--left-out-negatives", dest="left_out_negatives", action="store_true",
                        help="give each left-out caption the scene's hard negatives with the same words left out")
    parser.add_argument("--left-out-weight", dest="left_out_weight", type=float, default=0.5,
                        help="the left-out captions' share of the loss (0.5: the two averaged)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 <= args.left_out < 1:
        parser.error(f"--left-out {args.left_out} must be in [0, 1)")
    if not 0 < args.left_out_weight < 1:
        parser.error(f"--left-out-weight {args.left_out_weight} must be in (0, 1)")
    if args.left_out_negatives and not args.left_out:
        parser.error("--left-out-negatives needs --left-out P")
    tok = load_tokenizer()
    train = ShapesDataset(shapes.ShapesWorld(seed=args.seed), "train", 30_000, paraphrase=True)
    items = [{"index": i, "image": train.images[i], "text": language.caption(s),
              "negatives": clip.negclip_negatives(s, language.NEGATIVE_SETS[args.kinds])} for i, s in enumerate(train.scenes)]
    collate = negatives_collate(tok, max_length=40) if args.draw == "fixed" else per_visit_collate(tok)
    loss = clip.negclip_batch_loss
    if args.left_out_negatives:
        kinds = language.NEGATIVE_SETS[args.kinds]
        left_out = [clip.left_out_with_negatives(s, args.left_out, f"leave-out:{args.seed}:{i}", kinds)
                    for i, s in enumerate(train.scenes)]
        left_items = [{"index": i, "image": train.images[i], "text": text, "negatives": negatives}
                      for i, (text, negatives) in enumerate(left_out)]
        whole_collate, left_collate = collate, negatives_collate(tok, max_length=40)
        collate = lambda batch_items: (whole_collate(batch_items)
                                       | {"left_out": left_collate([left_items[it["index"]] for it in batch_items])})
        loss = functools.partial(clip.negclip_left_out_loss, left_out_weight=args.left_out_weight)
    elif args.left_out:
        left_out = [language.leaving_out(s, language.caption(s), args.left_out, random.Random(f"leave-out:{args.seed}:{i}"))
                    for i, s in enumerate(train.scenes)]
        left_collate, whole_collate = indexed_collate(train.images, encode_texts(tok, left_out, max_length=40)), collate
        collate = lambda batch_items: whole_collate(batch_items) | {"left_out": left_collate([it["index"] for it in batch_items])}
        loss = negclip_and_left_out_loss(args.left_out_weight)
    batches = StepBatches(items, args.batch, collate, seed=args.seed + 1)
    model = zoo.load_model(args.clip)[0]
    start = time.perf_counter()
    fit(model, loss, batches, steps=args.steps, lr=args.lr, weight_decay=0.1, seed=args.seed,
        progress=False)
    seconds = time.perf_counter() - start
    measured = clip.measure(model.eval(), tok, evalsets.DualEncoderBench.build(args.seed, 1000))
    keys = ("t2i_r1", "i2t_r1", "zs_color_acc", "zs_shape_acc", "relation_swap_acc", "attribute_swap_acc",
            "heldout_combo_acc")
    start_name = "" if args.clip == "clip-shapes" else f"{args.clip}_"
    save_result(__file__, f"{start_name}{args.draw}_{args.steps}_lr{args.lr:g}{'_swaps' if args.kinds == 'swaps' else ''}"
                          f"{f'_leftout{args.left_out:g}' if args.left_out else ''}{'neg' if args.left_out_negatives else ''}"
                          f"{f'_w{args.left_out_weight:g}' if args.left_out and args.left_out_weight != 0.5 else ''}"
                          f"{f'_b{args.batch}' if args.batch != 256 else ''}_seed{args.seed}",
                {"args": vars(args), "train_s": round(seconds, 1), **{k: round(measured[k], 4) for k in keys}})


if __name__ == "__main__":
    main()
