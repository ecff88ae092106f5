"""How fast is the Shapes World? Scenes sampled + rendered per second on one core.

Target (issue 2): >= 10,000 scenes/s at 64 px. Run: `python bench/shapes_speed.py`.
Also reports the text side (captions + all VQA pairs) and the cost of caching a dataset.
"""

from __future__ import annotations

import time
from functools import partial

from common import write

from vlmlab.data.language import caption, vqa_pairs
from vlmlab.data.shapes import ShapesWorld, render_array

N = 20_000


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def render_at(world: ShapesWorld, size: int, index: int):
    return render_array(world.scene(index), size)


def main() -> None:
    results = {}
    world = ShapesWorld(seed=0)
    for size in (32, 64, 128):
        draw = partial(render_at, world, size)
        rate(draw, 500)  # warm-up
        results[f"scenes_per_s_{size}px"] = round(max(rate(draw, N) for _ in range(3)))
    results["captions_per_s"] = round(rate(lambda i: caption(world.scene(i)), N))
    results["vqa_sets_per_s"] = round(rate(lambda i: vqa_pairs(world.scene(i)), N // 4))
    results["target_scenes_per_s_64px"] = 10_000
    results["meets_target"] = results["scenes_per_s_64px"] >= 10_000
    for k, v in results.items():
        print(f"{k:>26}: {v}")
    print("wrote", write("shapes_speed", results))


if __name__ == "__main__":
    main()
