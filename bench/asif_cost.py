"""What ASIF costs at test time (notebook 07): per-query time and memory against the number of anchors, with the
relative representations kept dense ([Q, A]) or sparse (the top k of each row, ASIF's way).

ASIF trains nothing, so its cost is all at inference: every query is compared with every anchor (a [Q, A] matmul,
unavoidable), then matched with the class or caption representations. Dense: build the [Q, A] representation and
multiply it with the [A, C] text side. Sparse: keep each query's k (index, weight) pairs and gather the text side's
rows at those indices, C * k multiply-adds instead of C * A. Vectors are random with the notebook's widths (96 for
images, 128 for texts): the cost depends on the sizes only. Run: `python bench/asif_cost.py [--quick]`.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F
from common import matmul_flops, quick_or_full, write

from vlmlab.strategies.asif import relative

IMAGE_DIM, TEXT_DIM, QUERIES, CLASSES, K_IMAGE, K_TEXT = 96, 128, 256, 56, 5, 1000


def dense_scores(queries, anchors, mean, classes):
    return relative(queries, anchors, mean, K_IMAGE, 1.0) @ classes.T  # [Q, A] @ [A, C]


def sparse_scores(queries, anchors, mean, classes):
    sims = F.normalize(queries - mean, dim=-1) @ F.normalize(anchors - mean, dim=-1).T  # [Q, A]: still every anchor
    top = sims.topk(K_IMAGE, dim=-1)
    weights = F.normalize(top.values.clamp(min=0), dim=-1)  # [Q, k]
    return torch.einsum("qk,qkc->qc", weights, classes.T[top.indices])  # gather [Q, k, C]


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    quick, _, repeats = quick_or_full(__doc__, full_steps=7)
    sizes = (1_000, 10_000) if quick else (1_000, 3_000, 10_000, 30_000, 100_000, 300_000)
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{QUERIES} queries, {CLASSES} classes, k_image={K_IMAGE}, k_text={K_TEXT}")
    print(f"{'anchors':>8} {'anchors MB':>10} {'dense ms':>9} {'sparse ms':>9} {'sparse/dense':>12} "
          f"{'dense rep MB':>12} {'sparse rep MB':>13}")
    for A in sizes:
        anchor_images, anchor_texts = torch.randn(A, IMAGE_DIM, generator=g), torch.randn(A, TEXT_DIM, generator=g)
        queries, prompts = torch.randn(QUERIES, IMAGE_DIM, generator=g), torch.randn(CLASSES, TEXT_DIM, generator=g)
        mean = anchor_images.mean(dim=0)
        classes = relative(prompts, anchor_texts, anchor_texts.mean(dim=0), min(K_TEXT, A), 1.0)  # [C, A], once
        torch.testing.assert_close(sparse_scores(queries, anchor_images, mean, classes),
                                   dense_scores(queries, anchor_images, mean, classes))
        inputs = (queries, anchor_images, mean, classes)
        dense = median_seconds(partial(dense_scores, *inputs), repeats)
        sparse = median_seconds(partial(sparse_scores, *inputs), repeats)
        row = {"anchors": A, "anchor_mb": round(A * (IMAGE_DIM + TEXT_DIM) * 4 / 1e6, 1),
               "dense_ms_per_query": round(dense / QUERIES * 1e3, 4), "sparse_ms_per_query": round(sparse / QUERIES * 1e3, 4),
               "sparse_over_dense": round(sparse / dense, 3),
               "dense_rep_mb_per_1k_queries": round(1000 * A * 4 / 1e6, 1),
               "sparse_rep_mb_per_1k_queries": round(1000 * K_IMAGE * (8 + 4) / 1e6, 3)}
        rows.append(row)
        print(f"{A:>8} {row['anchor_mb']:>10} {dense * 1e3:>9.1f} {sparse * 1e3:>9.1f} {row['sparse_over_dense']:>12.3f} "
              f"{row['dense_rep_mb_per_1k_queries']:>12} {row['sparse_rep_mb_per_1k_queries']:>13}")
    result = {"queries_per_batch": QUERIES, "classes": CLASSES, "k_image": K_IMAGE, "k_text": K_TEXT,
              "matmul_gflops": round(matmul_flops() / 1e9, 1), "quick": quick, "rows": rows}
    if not quick:
        print("wrote", write("asif_cost", result))


if __name__ == "__main__":
    main()
