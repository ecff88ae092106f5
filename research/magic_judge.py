"""Notebook 07: would a judge that reads word order help MaGiC? Notebook 02's CLIP is a bag of words (relation swaps
0.51) and binds attributes to objects loosely; notebook 02's NegCLIP, the same towers fine-tuned with swapped captions
as hard negatives (no labels), reads both (relation swaps 0.97, attribute swaps 0.997). Scene F1 of MaGiC's captions
with each judge (k 8, α 0) at several β, over all k candidates (the paper's) and over their nucleus (top-p 0.95,
notebook 07's section 10), and the share of two-object scenes whose caption names both objects.

    python research/magic_judge.py [--seed 0] [--n 100] [--split val]
"""

import argparse

import torch
from common import save_result

from vlmlab import lm, zoo
from vlmlab.data import evalsets
from vlmlab.evaluate import caption_scores, parse_objects
from vlmlab.strategies import magic
from vlmlab.tokenizer import load_tokenizer

JUDGES = ("clip-shapes", "negclip-shapes")
BETAS = (0.5, 1.0, 2.0)
TOP_PS = (1.0, 0.95)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100, help="validation scenes")
    p.add_argument("--split", default="val", help="val (where the notebook chooses) or test (where it reports)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    tok = load_tokenizer()
    writer = lm.load_language_model("tiny-lm")
    scenes = evalsets.generation_scenes(args.seed, args.n, args.split)
    images = evalsets.images_of(scenes)
    two = [i for i, s in enumerate(scenes) if len(s.objects) == 2]
    rows = {}
    for judge in JUDGES:
        model = magic.Magic(magic.Config(k=8, alpha=0.0), writer, zoo.load_model(judge)[0])
        for top_p in TOP_PS:
            for beta in BETAS:
                said = model.caption(tok, images, beta=beta, top_p=top_p)
                named_two = sum(len(parse_objects(said[i])) == 2 for i in two) / max(1, len(two))
                key = f"{judge} top_p {top_p} beta {beta}"
                rows[key] = {"f1": round(caption_scores(said, scenes)["f1"], 4),
                             "two_object_scenes_named_two": round(named_two, 3)}
                print(f"{key}: scene F1 {rows[key]['f1']:.3f}, two-object scenes named whole {named_two:.0%}; "
                      f"e.g. {said[two[0]]!r}", flush=True)
    save_result(__file__, f"judges-{args.split}-seed{args.seed}", {"seed": args.seed, "split": args.split,
                                                                  "scenes": args.n, "k": 8, "alpha": 0.0, "runs": rows})


if __name__ == "__main__":
    main()
