"""Notebooks 04, 05, 08, 09: what do the shipped frozen-LM models answer when asked about an object that IS in the
picture? The world names that object by its shape in every colour and size question ("what color is the star?"),
and asks the same words about absent shapes ("what color is the hexagon?" -> "there is no hexagon"), so a model
that cannot find the star answers as if it were absent. This counts the answers of each kind, for each question type.

    python research/answer_census.py                       # the four shipped models, 300 test scenes
    python research/answer_census.py --models llava-shapes

Greedy answers, as the notebooks measure VQA (`harness.suite(..., "vqa", ...)`)."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from common import save_result

from vlmlab import harness, zoo
from vlmlab.data import evalsets
from vlmlab.tokenizer import load_tokenizer

MODELS = ("frozen-prefix-shapes", "flamingo-shapes", "blip2-shapes", "llava-shapes")
ASKED = ("color", "size", "shape")  # question types about an object in the picture


def census(answers: list[str], truths: list[str]) -> dict:
    """Share of right answers, of 'there is no ...' answers, and the five most common answers."""
    absent = ["there is no ..." if a.startswith("there is no") else a for a in answers]
    return {"n": len(answers), "right": round(sum(a == t for a, t in zip(answers, truths)) / len(answers), 3),
            "says_absent": round(absent.count("there is no ...") / len(answers), 3),
            "most_common": Counter(absent).most_common(5)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start, tok = time.time(), load_tokenizer()
    bench = evalsets.SceneBench.build(seed=args.seed, n=args.scenes)
    picked = [j for j, qa in enumerate(bench.questions) if qa.qtype in ASKED]
    result = {"args": vars(args), "models": {}}
    for name in args.models:
        answers = harness.vqa_answers(zoo.load_model(name)[0], tok, bench, picked)
        for qtype in ASKED:
            keep = [k for k, j in enumerate(picked) if bench.questions[j].qtype == qtype]
            result["models"].setdefault(name, {})[qtype] = census([answers[k] for k in keep],
                                                                  [bench.questions[picked[k]].answer for k in keep])
    result["seconds"] = round(time.time() - start, 1)
    save_result(__file__, f"shipped_seed{args.seed}", result)


if __name__ == "__main__":
    main()
