"""Plots every notebook shares: image grids with captions, similarity heatmaps, training curves.

Introduced in notebook 00. Each function returns the matplotlib Figure (the notebook shows it;
a script can `savefig` it) and draws with nothing but matplotlib.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def as_image(x) -> np.ndarray:
    """uint8 [3, H, W] tensor, float [-1, 1] tensor, PIL image or HWC array -> HWC uint8 array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        x = x.permute(1, 2, 0).numpy() if x.ndim == 3 and x.shape[0] in (1, 3) else x.numpy()
    return np.asarray(x)


def image_grid(images: Sequence, captions: Sequence[str] | None = None, ncols: int = 6,
               size: float = 1.8, wrap: int = 24, fontsize: int = 8):
    """A grid of images, each with its (wrapped) caption underneath."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    text_h = 0.45 if captions is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * (1 + text_h)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(as_image(images[k]), interpolation="nearest", cmap="gray")
        if captions is not None:  # above the image, so a long caption never covers the picture below it
            ax.set_title("\n".join(textwrap.wrap(captions[k], wrap)), fontsize=fontsize)
    fig.tight_layout()
    return fig


def similarity_heatmap(sim, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                       title: str = "", annotate: bool = True, cmap: str = "viridis"):
    """A similarity matrix [R, C] as a heatmap, optionally with the values written in."""
    sim = np.asarray(sim.detach().cpu() if isinstance(sim, torch.Tensor) else sim, dtype=float)
    r, c = sim.shape
    rows, cols = (["\n".join(textwrap.wrap(str(x), 36)) for x in labels] if labels else [str(k) for k in range(n)]
                  for labels, n in ((row_labels, r), (col_labels, c)))  # long captions on up to three lines
    width = max(len(line) for label in rows + cols for line in label.split("\n"))  # characters, ~0.06 in each
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * c + 2 + 0.06 * width), max(3, 0.45 * r + 1.5 + 0.05 * width)))
    im = ax.imshow(sim, cmap=cmap)
    ax.set_xticks(range(c), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(r), rows, fontsize=8)
    if annotate and r * c <= 400:
        for i in range(r):
            for j in range(c):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if sim[i, j] < sim.mean() else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves(history, keys: Sequence[str] = ("loss",), smooth: int = 10):
    """Loss (and any logged value) against step, plus every periodic evaluation metric.

    `history` is a `vlmlab.train.History` or a dict with 'steps', the keys, and 'evals' as
    a list of (step, {metric: value}).
    """
    h = history.as_dict() if hasattr(history, "as_dict") else history
    evals = h.get("evals") or []
    eval_keys = sorted({k for _, m in evals for k in m})
    ncols = 1 + bool(eval_keys)
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.2), squeeze=False)
    ax = axes[0, 0]
    for key in keys:
        values = np.asarray(h[key], dtype=float)
        ax.plot(h["steps"], values, alpha=0.3, label=None if len(values) > smooth else key)
        if len(values) > smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(h["steps"][smooth - 1:], np.convolve(values, kernel, mode="valid"), label=f"{key} (avg {smooth})")
    ax.set_xlabel("step")
    ax.legend()
    if eval_keys:
        ax = axes[0, 1]
        for key in eval_keys:
            points = [(s, m[key]) for s, m in evals if key in m]
            ax.plot(*zip(*points), marker="o", label=key)
        ax.set_xlabel("step")
        ax.set_title("evaluation")
        ax.legend()
    fig.tight_layout()
    return fig


def bar_chart(values: dict[str, float], title: str = "", xlabel: str = "", limit: tuple[float, float] | None = (0, 1)):
    """Horizontal bars, one per label (probabilities, per-type accuracies)."""
    fig, ax = plt.subplots(figsize=(5, 0.35 * len(values) + 1))
    ax.barh(list(values), list(values.values()), color="tab:blue")
    ax.invert_yaxis()
    if limit:
        ax.set_xlim(*limit)
    for i, v in enumerate(values.values()):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    return fig
