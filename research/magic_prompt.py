"""Notebook 07: which prompt should MaGiC's frozen tiny LM continue? The notebook starts every caption from "a picture
of", one of the world's caption templates. The tiny LM read captions, questions, chats and interleaved few-shot text
(notebook 01), so it also knows "Output:" before a caption and "there is" before one; with no prompt at all it may
write a question. Scene F1 of MaGiC's captions (k 8, α 0, the notebook's chosen values) at several β, on the 100
validation scenes the notebook chooses its settings on, with notebook 02's shipped CLIP as the judge, over all k
candidates or (`--top-p 0.95`) over their nucleus.

    python research/magic_prompt.py [--top-p 0.95]
"""

import argparse

import torch
from common import save_result

from vlmlab import lm, zoo
from vlmlab.data import evalsets
from vlmlab.evaluate import caption_scores
from vlmlab.strategies import magic
from vlmlab.tokenizer import load_tokenizer

PROMPTS = ("a picture of", "there is", "Output:", "<image>Output:", "")
BETAS = (0.0, 0.5, 1.0, 2.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100, help="validation scenes")
    p.add_argument("--top-p", type=float, default=1.0, help="keep the candidates' nucleus (1: all k, as the paper)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    tok = load_tokenizer()
    model = magic.Magic(magic.Config(k=8, alpha=0.0, top_p=args.top_p), lm.load_language_model("tiny-lm"),
                        zoo.load_model("clip-shapes")[0])
    scenes = evalsets.generation_scenes(args.seed, args.n, "val")
    images = evalsets.images_of(scenes)
    f1 = {}
    for prompt in PROMPTS:
        for beta in BETAS:
            said = model.caption(tok, images, beta=beta, prompt=prompt)
            key = f"{prompt!r} beta {beta}"
            f1[key] = round(caption_scores(said, scenes)["f1"], 4)
            print(f"{prompt!r:16} β {beta}: scene F1 {f1[key]:.3f}; e.g. {said[0]!r}")
    run = f"prompts-seed{args.seed}" + (f"-top-p{args.top_p:g}" if args.top_p < 1 else "")
    save_result(__file__, run, {"seed": args.seed, "val_scenes": args.n, "k": 8, "alpha": 0.0, "top_p": args.top_p,
                                "scene_f1": f1})


if __name__ == "__main__":
    main()
