"""What notebooks 05, 08 and 09 save by keeping their frozen tower's features of the training scenes in the user cache
(`vlmlab.frozen.tower_features(..., keep=True)`): computing them against reading them back (DESIGN.md §7).

Run from bench/: `../.venv/bin/python kept_features.py` (`--quick`: 500 scenes, to check that it runs; it writes
kept_features_quick.json). For each tower of the notebooks (notebook 02's CLIP grid, the main run; EfficientNet-Lite0's
cells, the arm), the features of the notebooks' 20,000 training scenes are computed and kept, then read back, in the
same process, into a cache folder of its own that is deleted afterwards; the two must be equal. We report the seconds
of each and their ratio, read / computed.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from common import matmul_flops, quick_or_full, write

from vlmlab import frozen, unimodal
from vlmlab.data import evalsets
from vlmlab.data.shapes import ShapesWorld

TOWERS = {"clip": {"tower": "clip", "name": "clip-shapes"},
          "imagenet": {"tower": "imagenet-cells", "name": "efficientnet-lite0"}}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    quick = quick_or_full(__doc__)[0]
    scenes = 500 if quick else 20_000
    images = evalsets.images_of(ShapesWorld(seed=0).scenes(scenes, "train"))  # uint8 [N, 3, 64, 64]
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["VLMLAB_CACHE"] = cache  # the kept files go here, not into the user's cache
        for name, spec in TOWERS.items():
            vision = unimodal.vision_tower(spec)
            computed, compute_s = timed(lambda v=vision: frozen.tower_features(v, images, keep=True))
            read, read_s = timed(lambda v=vision: frozen.tower_features(v, images, keep=True))
            assert torch.equal(computed, read), f"{name}: the kept features differ from the computed ones"
            rows[name] = {"shape": list(computed.shape), "megabytes": round(computed.numel() * 4 / 2**20, 1),
                          "compute_s": round(compute_s, 2), "read_s": round(read_s, 3),
                          "ratio_read_over_compute": round(read_s / compute_s, 4)}
            print(f"{name}: {tuple(computed.shape)} computed in {compute_s:.1f} s, read back in {read_s:.2f} s "
                  f"(ratio {read_s / compute_s:.4f})")
    peak = matmul_flops()
    print(f"matmul {peak / 1e9:.1f} GFLOP/s")
    result = {"quick": quick, "matmul_gflops_fp32": round(peak / 1e9, 1), "scenes": scenes, "towers": rows}
    print("wrote", write("kept_features_quick" if quick else "kept_features", result))


if __name__ == "__main__":
    main()
