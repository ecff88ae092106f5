"""Side runs for notebook 01: masked autoencoding at a chosen mask ratio and budget, then the notebook's linear
probe (`unimodal.probe_accuracy`) on the frozen patches of the MAE ViT and of the same ViT at random init.

    python research/mae_probe.py --mask 0.75
    python research/mae_probe.py --mask 0.25 --steps 3000

Each run writes research/results/mae_probe/mask<ratio>_<steps>.json.
"""

import argparse
import time

import torch
from common import save_result

from vlmlab import mae, unimodal
from vlmlab import nn as vnn
from vlmlab.data import evalsets
from vlmlab.data.loaders import ShapesDataset
from vlmlab.data.shapes import ShapesWorld
from vlmlab.train import fit


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mask", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n-train", dest="n_train", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    images = ShapesDataset(ShapesWorld(seed=args.seed), "train", args.n_train).images
    config = vnn.ViTConfig(image_size=64, patch_size=16, dim=96, depth=4, n_heads=4)
    torch.manual_seed(args.seed)
    model = mae.MaskedAutoencoder(vnn.ViT(config), mask_ratio=args.mask)

    def batch(step):
        return images[torch.randint(len(images), (args.batch,), generator=torch.Generator().manual_seed(step))]

    start = time.perf_counter()
    history = fit(model, lambda m, b: m(b).loss, batch, steps=args.steps, lr=1.5e-3, weight_decay=0.05, seed=args.seed,
                  progress=False)
    train_s = time.perf_counter() - start
    bench, probe_data = evalsets.SceneBench.build(args.seed, 1000), unimodal.probe_set()
    torch.manual_seed(args.seed)
    last = history.loss[-50:]
    result = {"args": vars(args), "train_s": round(train_s, 1), "final_loss": sum(last) / len(last),
              "mae": unimodal.probe_accuracy(model.vit, bench, probe_data),
              "random": unimodal.probe_accuracy(vnn.ViT(config), bench, probe_data)}
    save_result(__file__, f"mask{args.mask}_{args.steps}", result)


if __name__ == "__main__":
    main()
