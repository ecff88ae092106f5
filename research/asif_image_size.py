"""Notebook 07: does ASIF recognise shape better when the MAE reads the scenes at 48 px, each 16 px patch one of the
world's 3 x 3 cells, than at the 64 px they are drawn at, where the patches cut the objects? Zero-shot colour and
shape of 1,000 one-object scenes (validation and test), over 20,000 anchors, for several k_image and p (k_text is
every anchor, as the notebook chooses), with the patch vectors averaged (the notebook's pooling) or max-pooled.

    python research/asif_image_size.py
    python research/asif_image_size.py --seed 1
"""

import argparse
import time

import torch
from common import save_result

from vlmlab import harness, zoo
from vlmlab.data import evalsets, language, shapes
from vlmlab.encoders import resize
from vlmlab.strategies import asif
from vlmlab.tokenizer import load_tokenizer


class MaxPatches(asif.MeanPatches):
    """The same reading, the patch vectors max-pooled instead of averaged."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(resize(pixels, self.vit.config.image_size, bounds=(-1.0, 1.0))).patches.max(dim=1).values


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anchors", type=int, default=20_000)
    args = p.parse_args()

    tok = load_tokenizer()
    mae, bert = zoo.load_model("tiny-vit-mae")[0].eval(), zoo.load_model("tiny-bert")[0].eval()
    scenes = shapes.ShapesWorld(seed=args.seed).scenes(args.anchors, "train")
    anchor_images, captions = evalsets.images_of(scenes), [language.caption(s) for s in scenes]
    sets = {split: evalsets.single_objects(args.seed, 1000, split) for split in ("val", "test")}
    text = asif.MeanWordEmbedding(bert)
    text_vectors = None
    results, start = {}, time.perf_counter()
    for size in (64, 48):
        for pool, reader in (("mean", asif.MeanPatches), ("max", MaxPatches)):
            config = asif.Config(k_text=args.anchors, image_size=size, text_len=bert.config.max_len)
            model = asif.ASIF(config, reader(mae, size), text)
            text_vectors = model.text_vectors(tok, captions) if text_vectors is None else text_vectors
            model = model.with_anchor_vectors(model.image_vectors(anchor_images), text_vectors)
            for k_image in (1, 3, 10):
                for power in (1.0, 8.0):
                    model.config.k_image, model.config.p = k_image, power
                    row = {}
                    for split, single in sets.items():
                        embedded = harness.embed_images(model, evalsets.images_of(single))
                        for attribute in ("color", "shape"):
                            row[f"{split}_{attribute}"] = round(
                                harness.zero_shot_attribute(model, tok, embedded, single, attribute), 4)
                    results[f"{size}px_{pool}_k{k_image}_p{power:g}"] = row
                    print(size, pool, k_image, power, row, flush=True)
    save_result(__file__, f"seed{args.seed}", {"args": vars(args), "results": results,
                                                "seconds": round(time.perf_counter() - start)})


if __name__ == "__main__":
    main()
