"""Notebook 04's upper bound with its order taken away: does the frozen tiny LM caption well from the detector's
object list because the list hands it the objects in the order the caption names them?

Every mapper on CLIP's features ends at scene F1 0.38-0.43 (`frozen_lm_captioning.py`), while the object list
(`unimodal.object_list`: one slot per object, column by column as captions go, and the count) reaches 0.83 through the
same frozen LM. Here the same objects are handed over in another order, with everything else as notebook 04's run
(the deep prefix `frozen_prefix.ObjectPrefixMapper`, 3 keys per layer, the detector's probabilities):

    python research/object_order.py --order caption    # notebook 04's object list
    python research/object_order.py --order reversed   # the same slots, last object first: fixed, not the caption's
    python research/object_order.py --order shuffled   # the same slots in a random order, drawn once per scene
    python research/object_order.py --order cells      # no list: all nine cells, empty ones too, in raster order
    python research/object_order.py --order cells --mapper grid-list --steps 1600   # a mapper that can make the list

`--order cells` hands over the detector's scores of every cell (its shape, colour and size probabilities, empty cells
among them) with no list made of them: the object prefix maps them linearly, or `--mapper grid-list`
(`frozen_prefix.GridListMapper`, notebook 04's label-free arm: an MLP on each cell, then one over all of them) has
to learn which cell to hand over first. Captions only, 20,000 training scenes, 500 held-out scenes. Writes
research/results/object_order/<order>[-grid-list]-<steps>.json.
"""

import argparse
import time

import torch
from common import features_of, save_result

from vlmlab import evaluate, unimodal
from vlmlab.data import evalsets, language, shapes
from vlmlab.data.loaders import StepBatches, encode_texts, indexed_collate
from vlmlab.generation import generate_text
from vlmlab.lm import load_language_model
from vlmlab.strategies import frozen_prefix
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit

SLOT = sum(len(values) for values in unimodal.ATTRIBUTES.values()) + 1  # 7 shape, 8 colour, 2 size probabilities, a 1


def reorder(lists: torch.Tensor, order: str, seed: int, max_objects: int = 4) -> torch.Tensor:
    """Object lists [N, max_objects * SLOT + max_objects] with each list's occupied slots put in `order`."""
    if order == "caption":
        return lists
    slots, count = lists[:, : max_objects * SLOT].view(len(lists), max_objects, SLOT), lists[:, max_objects * SLOT :]
    n_objects = count.argmax(dim=1) + 1  # [N]
    g = torch.Generator().manual_seed(seed)
    out = slots.clone()
    for i, n in enumerate(n_objects.tolist()):
        perm = torch.arange(n - 1, -1, -1) if order == "reversed" else torch.randperm(n, generator=g)
        out[i, :n] = slots[i, perm]
    return torch.cat([out.flatten(1), count], dim=1)


def cell_probabilities(regions: torch.Tensor) -> torch.Tensor:
    """The detector's region scores [N, 9, 20] as probabilities, attribute by attribute (empty is a shape)."""
    return torch.cat([scores.softmax(dim=-1) for scores in regions.split(list(unimodal.CLASSES.values()), dim=-1)], dim=-1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--order", choices=("caption", "reversed", "shuffled", "cells"), default="caption")
    p.add_argument("--mapper", choices=("object", "grid-list"), default="object",
                   help="grid-list: only with --order cells (an MLP of 128 on each cell, then one of 512 over them)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--n-train", dest="n_train", type=int, default=20_000)
    p.add_argument("--n-eval", dest="n_eval", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.mapper != "object" and args.order != "cells":
        p.error("--mapper grid-list reads cells: use it with --order cells")
    torch.manual_seed(args.seed)
    tok, lm = load_tokenizer(), load_language_model({"name": "tiny-lm", "sha256": None})
    scenes = shapes.ShapesWorld(seed=args.seed).scenes(args.n_train, "train")
    test = evalsets.generation_scenes(args.seed, args.n_eval)
    if args.order == "cells":
        regions = unimodal.vision_tower({"tower": "regions", "name": "tiny-vit-detector-probe"})
        x, test_x = (cell_probabilities(features_of(regions, evalsets.images_of(s))) for s in (scenes, test))  # [N, 9, 20]
        if args.mapper == "object":
            x, test_x = x.flatten(1), test_x.flatten(1)
    else:
        objects = unimodal.vision_tower({"tower": "objects", "name": "tiny-vit-detector-probe"})
        x = reorder(features_of(objects, evalsets.images_of(scenes)), args.order, args.seed)
        test_x = reorder(features_of(objects, evalsets.images_of(test)), args.order, args.seed + 1)

    text = encode_texts(tok, [""] * len(scenes), [language.caption(s) for s in scenes], max_length=lm.max_len)
    torch.manual_seed(args.seed)
    config = frozen_prefix.Config(mapper=args.mapper, in_dim=x.shape[-1], n_tokens=x.shape[1] if x.ndim == 3 else 1, k=3,
                                  dim=128, hidden=512, lm=lm.ref)
    model = frozen_prefix.PrefixCaptioner(config, lm=lm)
    start = time.perf_counter()
    batches = StepBatches(range(len(scenes)), args.batch, indexed_collate(x, text, key="image_features"), seed=args.seed)
    fit(model, frozen_prefix.batch_loss, batches, steps=args.steps, lr=args.lr, seed=args.seed, progress=False)
    seconds = time.perf_counter() - start
    said = generate_text(model.eval(), tok, test_x)
    r = evaluate.caption_scores(said, test)
    for s, c in list(zip(test, said))[:4]:
        print(repr(language.caption(s)), "->", repr(c))
    mapper = "" if args.mapper == "object" else f"-{args.mapper}"
    save_result(__file__, f"{args.order}{mapper}-{args.steps}", {
        "order": args.order, "mapper": args.mapper, "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "seconds": round(seconds, 1), "scene_f1": round(r["f1"], 4), "attr_f1": round(r["attr_f1"], 4),
        "exact": round(r["exact"], 4)})


if __name__ == "__main__":
    main()
