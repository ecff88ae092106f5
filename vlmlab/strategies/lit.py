"""LiT on real images: frozen pretrained towers, small trained heads. Introduced in notebook 02.

Zhai et al. 2022 ("locked-image tuning"): a pretrained image tower is kept frozen and only the text side
learns to meet it. Here both towers are frozen (EfficientNet-Lite0 for images, MiniLM-L6 for captions),
their features are computed once, and only two small projection heads are trained with CLIP's symmetric
contrastive loss and a learned temperature. With a few hundred captioned images that takes seconds.

A frozen ImageNet classifier can also *say* what it sees: `class_text` turns its top-k ImageNet classes
into MiniLM's sentence space (the embeddings of the class names, weighted by probability). That vector is
a zero-shot guess at the caption, and an extra input the image head can use.

On the Tux Paint stamps (640 to train, 145 held out) three things beat two plain linear heads: dropout on the
frozen features, the class text appended to the image vector (`append_class_text`), and adding the zero-shot
similarity (class text . caption) to the learned one when scoring. Notebook 02 measures each.

Letters in the shape comments: N pairs, Di / Dt image / text feature widths, E shared embedding width,
C ImageNet classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.real import ImageText, load_rgb
from ..evaluate import retrieval_recall
from ..params import is_int, require
from ..train import History, fit
from .clip import contrastive_loss

# ----------------------------------------------------------------------------------------------
# Frozen features, computed once


@torch.no_grad()
def embed_images(paths: Sequence, image_encoder, batch_size: int = 4) -> torch.Tensor:
    """Image files -> the encoder's pooled vectors [N, Di] (EfficientNet-Lite0: 1280), a few images at a time.

    Small batches are faster on a CPU here: the activations of a few 224 x 224 images stay in cache.
    """
    require(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an int >= 1")
    vectors = []
    for start in range(0, len(paths), batch_size):
        images = [load_rgb(path) for path in paths[start : start + batch_size]]
        vector, _ = image_encoder.model(image_encoder.preprocess(images))  # [b, Di], grid [b, Di, 7, 7] unused
        vectors.append(vector)
    return torch.cat(vectors)


@torch.no_grad()
def embed_texts(texts: Sequence[str], text_encoder, batch_size: int = 64) -> torch.Tensor:
    """Texts -> the encoder's unit sentence embeddings [N, Dt] (MiniLM-L6: 384), in the order given.

    Texts are batched shortest first, so a batch is padded only to its own longest text, not to the
    longest of all (one 100-character caption would otherwise pad all 785 to its length).
    """
    require(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an int >= 1")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), text_encoder.dims["vector"])
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        emb, _ = text_encoder.model(**text_encoder.preprocess([texts[i] for i in rows]))  # [b, Dt], tokens unused
        out[rows] = emb
    return out


def extract_features(items: Sequence[ImageText], image_encoder, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """N image-text pairs -> (image vectors [N, Di], caption embeddings [N, Dt]) from the frozen encoders."""
    require(len(items) >= 1, "items", items, "at least one ImageText")
    return embed_images([it.path for it in items], image_encoder), embed_texts([it.text for it in items], text_encoder)


def class_text(logits: torch.Tensor, class_embeddings: torch.Tensor, k: int = 5) -> torch.Tensor:
    """What the classifier sees, said in the text encoder's space: logits [N, C], class-name embeddings [C, Dt]
    -> unit vectors [N, Dt], the class-name embeddings of each image's top-k classes weighted by their probability."""
    require(logits.ndim == 2 and class_embeddings.ndim == 2 and logits.shape[1] == class_embeddings.shape[0],
           "logits/class_embeddings shapes", (tuple(logits.shape), tuple(class_embeddings.shape)), "[N, C] and [C, Dt]")
    require(is_int(k) and 1 <= k <= logits.shape[1], "k", k, f"an int in [1, {logits.shape[1]}]")
    top = logits.softmax(dim=-1).topk(k, dim=-1)  # values, indices [N, k]
    weighted = top.values.unsqueeze(-1) * class_embeddings[top.indices]  # [N, k, Dt]
    return F.normalize(weighted.sum(dim=1), dim=-1)


def append_class_text(vectors: torch.Tensor, guess: torch.Tensor) -> torch.Tensor:
    """The image head's input: image vectors [N, Di] and their class text [N, Dt] scaled to the vector's length
    -> [N, Di + Dt]. Same length, so neither part starts out drowning the other."""
    require(vectors.ndim == 2 and guess.ndim == 2 and len(vectors) == len(guess), "vectors/guess shapes",
           (tuple(vectors.shape), tuple(guess.shape)), "[N, Di] and [N, Dt]")
    return torch.cat([vectors, guess * vectors.norm(dim=1, keepdim=True)], dim=1)


# ----------------------------------------------------------------------------------------------
# The trained part: two heads and a temperature


def _head(in_dim: int, embed_dim: int, hidden: int | None, dropout: float) -> nn.Sequential:
    """Dropout on the frozen features, then a linear map, or a one-hidden-layer MLP when `hidden` is given."""
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, embed_dim))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, embed_dim))


class ProjectionHeads(nn.Module):
    """Image features [N, Di] and text features [N, Dt] -> unit vectors in one shared space [N, E], plus CLIP's
    learned temperature, stored as log(1 / T) and clamped at max_logit_scale. Introduced in notebook 02."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 256, hidden: int | None = None,
                 dropout: float = 0.0, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        for name, value in (("image_dim", image_dim), ("text_dim", text_dim), ("embed_dim", embed_dim)):
            require(is_int(value) and value >= 1, name, value, "an int >= 1")
        require(hidden is None or (is_int(hidden) and hidden >= 1), "hidden", hidden, "None (a linear head) or an int >= 1")
        require(0 <= dropout < 1, "dropout", dropout, "a number in [0, 1)")
        require(max_logit_scale > 0, "max_logit_scale", max_logit_scale, "a number > 0")
        require(init_temperature * max_logit_scale >= 1 - 1e-6, "init_temperature", init_temperature,
               f"a number >= 1 / max_logit_scale = {1 / max_logit_scale:g}")
        self.max_logit_scale = max_logit_scale
        self.image_head = _head(image_dim, embed_dim, hidden, dropout)
        self.text_head = _head(text_dim, embed_dim, hidden, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))  # log(1 / T)

    @property
    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at max_logit_scale (T >= 0.01 by default), as CLIP clamps it."""
        return self.logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale.item()

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        """[N, Di] -> unit vectors [N, E]."""
        return F.normalize(self.image_head(features), dim=-1)

    def encode_text(self, features: torch.Tensor) -> torch.Tensor:
        """[N, Dt] -> unit vectors [N, E]."""
        return F.normalize(self.text_head(features), dim=-1)


def pair_loss(heads: ProjectionHeads, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """CLIP's symmetric loss on a batch of (image features [B, Di], text features [B, Dt]), as `fit` takes it."""
    image_features, text_features = batch
    loss = contrastive_loss(heads.encode_image(image_features), heads.encode_text(text_features), heads.scale)
    return loss, {"temperature": heads.temperature}


def train_heads(heads: ProjectionHeads, image_features: torch.Tensor, text_features: torch.Tensor, *, steps: int = 150,
                batch_size: int | None = 256, lr: float = 1e-3, seed: int = 0, **fit_kwargs) -> History:
    """Train the heads on N matching pairs of frozen features with `vlmlab.train.fit`; returns its History.

    Batch k is `batch_size` pairs drawn without replacement by a generator seeded with (seed, k), so it is a
    pure function of the step; batch_size=None uses all N pairs every step. Other keywords go to `fit`.
    """
    require(image_features.ndim == 2 and text_features.ndim == 2 and len(image_features) == len(text_features) >= 2,
           "image_features/text_features shapes", (tuple(image_features.shape), tuple(text_features.shape)),
           "[N, Di] and [N, Dt] with the same N >= 2")
    require(batch_size is None or (is_int(batch_size) and batch_size >= 2), "batch_size", batch_size,
            "None (all pairs) or an int >= 2")
    n = len(image_features)

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if batch_size is None or batch_size >= n:
            return image_features, text_features
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randperm(n, generator=generator)[:batch_size]  # [B]
        return image_features[rows], text_features[rows]

    fit_kwargs.setdefault("progress", False)
    return fit(heads, pair_loss, batches, steps=steps, lr=lr, seed=seed, **fit_kwargs)


@torch.no_grad()
def similarity(heads: ProjectionHeads, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarities in the shared space [Ni, Nt], computed in eval mode (no dropout)."""
    was_training = heads.training
    heads.eval()
    try:
        return heads.encode_image(image_features) @ heads.encode_text(text_features).T
    finally:
        heads.train(was_training)


# ----------------------------------------------------------------------------------------------
# Scoring: a caption shared by several images is right for all of them


def caption_targets(texts: Sequence[str]) -> list[set[int]]:
    """For each of N captions, the indices of all N captions with exactly the same text (itself included)."""
    where: dict[str, set[int]] = {}
    for i, text in enumerate(texts):
        where.setdefault(text, set()).add(i)
    return [where[text] for text in texts]


def retrieval_scores(similarity: torch.Tensor, texts: Sequence[str], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->text and text->image R@k for N images and their N captions, similarity [N, N] (row: image i,
    column: caption j). Every image whose caption has the same text counts as correct, in both directions.
    Keys "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"."""
    require(similarity.ndim == 2 and similarity.shape[0] == similarity.shape[1] == len(texts), "similarity.shape",
           tuple(similarity.shape), f"[{len(texts)}, {len(texts)}], one row and one column per text")
    targets = caption_targets(texts)
    i2t = retrieval_recall(similarity, ks, targets=targets)
    t2i = retrieval_recall(similarity.T, ks, targets=targets)
    return {f"i2t_{k}": v for k, v in i2t.items()} | {f"t2i_{k}": v for k, v in t2i.items()}
