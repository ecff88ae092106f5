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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.real import ImageText
from ..encoders import image_vectors, text_vectors
from ..evaluate import retrieval_recall
from ..params import SavedConfig, is_int, require, require_positive_ints
from ..train import History, fit
from .clip import contrastive_loss

# ----------------------------------------------------------------------------------------------
# Frozen features, computed once


def extract_features(items: Sequence[ImageText], image_encoder, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """N image-text pairs -> (image vectors [N, Di], caption embeddings [N, Dt]) from the frozen encoders."""
    require(len(items) >= 1, "items", items, "at least one ImageText")
    return image_vectors(image_encoder, [it.path for it in items]), text_vectors(text_encoder, [it.text for it in items])


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


@dataclass
class Config(SavedConfig):
    """LiT's trained part: two heads from frozen features into one space, and a temperature."""

    image_dim: int  # Di, the frozen image features' width (EfficientNet-Lite0: 1280)
    text_dim: int  # Dt, the frozen text features' width (MiniLM-L6: 384)
    embed_dim: int = 256
    hidden: int | None = None  # None: linear heads; an int: one hidden layer
    dropout: float = 0.0  # on the frozen features
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self):
        require_positive_ints(self, ("image_dim", "text_dim", "embed_dim"))
        require(self.hidden is None or (is_int(self.hidden) and self.hidden >= 1), "hidden", self.hidden,
                "None (a linear head) or an int >= 1")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "a number in [0, 1)")
        require(self.max_logit_scale > 0, "max_logit_scale", self.max_logit_scale, "a number > 0")
        require(self.init_temperature * self.max_logit_scale >= 1 - 1e-6, "init_temperature", self.init_temperature,
                f"a number >= 1 / max_logit_scale = {1 / self.max_logit_scale:g}")


class ProjectionHeads(nn.Module):
    """Image features [N, Di] and text features [N, Dt] -> unit vectors in one shared space [N, E], plus CLIP's
    learned temperature, stored as log(1 / T) and clamped at max_logit_scale. A dual encoder whose inputs are the
    frozen towers' features. Introduced in notebook 02."""

    def __init__(self, config: Config):
        super().__init__()
        c = self.config = config
        self.image_head = _head(c.image_dim, c.embed_dim, c.hidden, c.dropout)
        self.text_head = _head(c.text_dim, c.embed_dim, c.hidden, c.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))  # log(1 / T)

    @classmethod
    def from_config(cls, config: dict) -> ProjectionHeads:
        """Rebuilt from the config a checkpoint keeps (`vlmlab.zoo.load_model`)."""
        return cls(Config.from_dict(config))

    @property
    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at max_logit_scale (T >= 0.01 by default), as CLIP clamps it."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale.item()

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        """[N, Di] -> unit vectors [N, E]."""
        return F.normalize(self.image_head(features), dim=-1)

    def encode_text(self, features: torch.Tensor) -> torch.Tensor:
        """[N, Dt] -> unit vectors [N, E]."""
        return F.normalize(self.text_head(features), dim=-1)


def batch_loss(heads: ProjectionHeads, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """CLIP's symmetric loss on a batch of frozen features, `image_features` [B, Di] and `text_features` [B, Dt],
    as `fit` takes it."""
    loss = contrastive_loss(heads.encode_image(batch["image_features"]), heads.encode_text(batch["text_features"]), heads.scale)
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

    def batches(step: int) -> dict:
        if batch_size is None or batch_size >= n:
            return {"image_features": image_features, "text_features": text_features}
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randperm(n, generator=generator)[:batch_size]  # [B]
        return {"image_features": image_features[rows], "text_features": text_features[rows], "index": rows}

    fit_kwargs.setdefault("progress", False)
    return fit(heads, batch_loss, batches, steps=steps, lr=lr, seed=seed, **fit_kwargs)


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


# ----------------------------------------------------------------------------------------------
# Measured on held-out pairs; what notebook 02 expects


@dataclass
class FeaturePairs:
    """Held-out image-text pairs as the frozen towers see them: what LiT is measured on."""

    image_features: torch.Tensor  # [N, Di]
    text_features: torch.Tensor  # [N, Dt]
    texts: list[str]  # the captions, so identical captions count as the same answer


def measure(heads: ProjectionHeads, tokenizer, pairs: FeaturePairs) -> dict[str, float]:
    """Image->text and text->image R@1 and R@5 on held-out pairs (the tokenizer is unused: the features are
    already computed)."""
    return retrieval_scores(similarity(heads, pairs.image_features, pairs.text_features), pairs.texts)


SAVED = ()  # the heads train in seconds; notebook 02 does not ship them
TARGETS = {  # notebook 02's real track: image->text R@1 over 145 held-out Tux Paint stamps
    "smoke": {},
    "cpu": {"lit_r1_real": (">=", 0.17)},
    "gpu": {"lit_r1_real": (">=", 0.17)},
}
