"""ASIF (Norelli et al., 2023): images and texts compared with no training at all, through relative
representations over a set of anchor image-caption pairs. Introduced in notebook 07.

Two frozen unimodal encoders that never saw each other's modality cannot be compared directly: their vectors live
in unrelated spaces. But each can say how similar its input is to the anchors of its own modality. An image
becomes the vector of its cosine similarities to the A anchor images, a text the vector of its similarities to the
A anchor captions; anchor a is the same pair on both sides, so the two vectors share their coordinates:

    relative(x, anchors)   sims [B, A] -> keep the top k, clamp at 0, raise to the power p, L2-normalise
    score(image, text)     relative(image) . relative(text): high when the anchors that look like the image are
                           the anchors whose captions read like the text

Before the cosine, both sides are centred on their anchors' mean vector: the tiny towers' vectors all point one
way (every raw cosine sits near 1), so without centring top-k and the power p have nothing to separate.
`k_image` and `k_text` are separate: an image resembles a few anchors closely, while a short prompt ("a red shape")
resembles every caption that names red about equally, so it keeps many.

`ASIF` is a `DualEncoder` and a `PairScorer` (`vlmlab.protocols`), so notebook 02's evaluation runs on it unchanged;
its checkpoint is its anchor set (the encoders are pinned by name and sha256). Nothing here has a gradient step:
`batch_loss` is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import harness
from ..data.evalsets import DualEncoderBench
from ..data.loaders import encode_texts, to_float
from ..encoders import resize
from ..frozen import FrozenParts, freeze
from ..nn import ViT, resized_vit
from ..params import SavedConfig, is_int, is_number, require
from ..protocols import cosine_score
from ..unimodal import load


@dataclass
class Config(SavedConfig):
    """How ASIF compares: `k_image` / `k_text` anchors kept per image / text, the power `p`, and the two frozen
    encoders' checkpoints ({"name", "sha256"}; tiny-vit-* images, tiny-bert texts). `n_anchors`: the anchor set's
    size (it is the model's state). `image_dim` / `text_dim`: the encoders' vector widths. `image_size`: the size the
    image encoder reads the pictures at (None: the size it was trained at; notebook 07 reads the MAE at 48 px)."""

    k_image: int = 5
    k_text: int = 20_000
    p: float = 1.0
    n_anchors: int = 0
    image_dim: int = 96
    text_dim: int = 128
    text_len: int = 48
    image_size: int | None = None
    image: dict | None = None
    text: dict | None = None

    def __post_init__(self):
        for name in ("k_image", "k_text", "image_dim", "text_dim", "text_len"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, name, value, "an integer >= 1")
        require(is_int(self.n_anchors) and self.n_anchors >= 0, "n_anchors", self.n_anchors, "an integer >= 0")
        require(is_number(self.p) and self.p > 0, "p", self.p, "a number > 0")
        require(self.image_size is None or (is_int(self.image_size) and self.image_size >= 1), "image_size",
                self.image_size, "None or an integer >= 1")


class MeanPatches(nn.Module):
    """A ViT's image vector: the mean of its patch vectors (MAE's global average pooling, used instead of a CLS
    token that masked-image modelling never trains), the pictures read at `image_size` px (None: the ViT's own
    size; another size resizes the pictures and the ViT's position grid, `vlmlab.nn.resized_vit`).
    pixels [B, 3, H, W] -> [B, D]."""

    def __init__(self, vit: ViT, image_size: int | None = None):
        super().__init__()
        self.vit = vit if image_size in (None, vit.config.image_size) else resized_vit(vit, image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = resize(pixels, self.vit.config.image_size, bounds=(-1.0, 1.0))  # [B, 3, S, S]
        return self.vit(pixels).patches.mean(dim=1)


class MeanWordEmbedding(nn.Module):
    """A text vector from a BERT's input word embeddings, averaged over the real tokens: ids, mask [B, T] -> [B, D].
    Notebook 07 shows why not its last layer: mean-pooled, the masked-LM's output states of two captions are about
    as similar whatever words they share."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.words = bert.tok_emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.words.weight.dtype)  # [B, T, 1]
        return (self.words(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def centred_cosine(x: torch.Tensor, anchors: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of vectors x [B, D] with anchors [A, D], both centred on `mean` [D] -> [B, A]."""
    return F.normalize(x - mean, dim=-1) @ F.normalize(anchors - mean, dim=-1).T


def relative(x: torch.Tensor, anchors: torch.Tensor, mean: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """ASIF's relative representation: vectors x [B, D] against anchors [A, D] of the same encoder, both centred on
    `mean` [D] -> [B, A], non-zero at (at most) the k most similar anchors, whose cosines (clamped at 0) are raised
    to the power p; L2-normalised."""
    sims = centred_cosine(x, anchors, mean)  # [B, A]
    top = sims.topk(min(k, sims.size(1)), dim=-1)
    sparse = torch.zeros_like(sims).scatter(1, top.indices, top.values.clamp(min=0) ** p)
    return F.normalize(sparse, dim=-1)


def similarity(images: torch.Tensor, texts: torch.Tensor, anchor_images: torch.Tensor, anchor_texts: torch.Tensor,
               k_image: int, k_text: int, p: float) -> torch.Tensor:
    """ASIF on vectors computed once (notebook 07's real track): images [Ni, Di] and texts [Nt, Dt] against the
    anchor pairs' vectors [A, Di] and [A, Dt] -> [Ni, Nt], the cosine of their relative representations."""
    require(len(anchor_images) == len(anchor_texts) >= 1, "anchors", (len(anchor_images), len(anchor_texts)),
            "as many anchor images as anchor texts, at least one")
    image = relative(images, anchor_images, anchor_images.mean(dim=0), k_image, p)
    text = relative(texts, anchor_texts, anchor_texts.mean(dim=0), k_text, p)
    return image @ text.T


class ASIF(FrozenParts):
    """Two frozen encoders and the anchors' vectors of each (buffers [A, Di] and [A, Dt]): a dual encoder made
    without training. Build one with `from_pairs`; `keep` and `extend` make another with fewer or more anchors."""

    FROZEN = ("image_encoder", "text_encoder")

    def __init__(self, config: Config, image_encoder: nn.Module | None = None, text_encoder: nn.Module | None = None):
        super().__init__()
        c = self.config = config
        if image_encoder is None:
            image_encoder = MeanPatches(load(c.image["name"], c.image["sha256"])[0], c.image_size)
        if text_encoder is None:
            text_encoder = MeanWordEmbedding(load(c.text["name"], c.text["sha256"])[0])
        self.image_encoder, self.text_encoder = freeze(image_encoder), freeze(text_encoder)
        self.register_buffer("anchor_images", torch.zeros(c.n_anchors, c.image_dim))
        self.register_buffer("anchor_texts", torch.zeros(c.n_anchors, c.text_dim))

    @classmethod
    def from_config(cls, config: dict) -> ASIF:
        return cls(Config(**config))

    @property
    def max_text_len(self) -> int:
        return self.config.text_len

    # ---- the two frozen encoders, and the anchors they see

    @torch.no_grad()
    def image_vectors(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """uint8 images [N, 3, H, W] -> the image encoder's vectors [N, Di], on the encoder's device."""
        device = next(self.image_encoder.parameters(), self.anchor_images).device
        return torch.cat([self.image_encoder(to_float(chunk).to(device)) for chunk in images.split(batch_size)])

    @torch.no_grad()
    def text_vectors(self, tokenizer, texts: Sequence[str], batch_size: int = 1000) -> torch.Tensor:
        """Texts -> the text encoder's vectors [N, Dt], on the encoder's device."""
        device, out = next(self.text_encoder.parameters(), self.anchor_texts).device, []
        for start in range(0, len(texts), batch_size):
            batch = encode_texts(tokenizer, texts[start : start + batch_size], max_length=self.max_text_len)
            out.append(self.text_encoder(batch.input_ids.to(device), batch.attention_mask.to(device)))
        return torch.cat(out)

    def with_anchor_vectors(self, image_vectors: torch.Tensor, text_vectors: torch.Tensor) -> ASIF:
        """The same encoders and settings over these anchors' vectors ([A, Di], [A, Dt])."""
        require(len(image_vectors) == len(text_vectors) >= 1, "anchors", (len(image_vectors), len(text_vectors)),
                "as many anchor images as anchor texts, at least one")
        config = Config(**{**self.config.to_dict(), "n_anchors": len(image_vectors)})
        model = ASIF(config, self.image_encoder, self.text_encoder).to(image_vectors.device)
        model.anchor_images.copy_(image_vectors)
        model.anchor_texts.copy_(text_vectors)
        return model

    @classmethod
    def from_pairs(cls, config: Config, tokenizer, images: torch.Tensor, texts: Sequence[str],
                   image_encoder: nn.Module | None = None, text_encoder: nn.Module | None = None) -> ASIF:
        """ASIF over the anchor pairs (uint8 images [A, 3, H, W], A captions): each side encoded once."""
        require(len(images) == len(texts) >= 1, "anchors", (len(images), len(texts)), "one caption per image, at least one")
        empty = cls(Config(**{**config.to_dict(), "n_anchors": 0}), image_encoder, text_encoder)
        return empty.with_anchor_vectors(empty.image_vectors(images), empty.text_vectors(tokenizer, texts))

    def keep(self, which: torch.Tensor) -> ASIF:
        """Only these anchors (a bool mask [A] or indices): what the model forgets when anchors are removed."""
        return self.with_anchor_vectors(self.anchor_images[which], self.anchor_texts[which])

    def extend(self, tokenizer, images: torch.Tensor, texts: Sequence[str]) -> ASIF:
        """More anchors: a new concept is known as soon as its pairs are here, with no training."""
        return self.with_anchor_vectors(torch.cat([self.anchor_images, self.image_vectors(images)]),
                                        torch.cat([self.anchor_texts, self.text_vectors(tokenizer, texts)]))

    # ---- the DualEncoder and PairScorer protocols

    def relative_image(self, vectors: torch.Tensor) -> torch.Tensor:
        """Image vectors [B, Di] -> relative representations [B, A]."""
        return relative(vectors, self.anchor_images, self.anchor_images.mean(dim=0), self.config.k_image, self.config.p)

    def relative_text(self, vectors: torch.Tensor) -> torch.Tensor:
        """Text vectors [B, Dt] -> relative representations [B, A]."""
        return relative(vectors, self.anchor_texts, self.anchor_texts.mean(dim=0), self.config.k_text, self.config.p)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Float pixels [B, 3, H, W] -> unit vectors [B, A] over the anchors."""
        return self.relative_image(self.image_encoder(images))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Texts [B, T] -> unit vectors [B, A] over the anchors."""
        return self.relative_text(self.text_encoder(input_ids, attention_mask))

    def score(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return cosine_score(self, images, input_ids, attention_mask)

    def top_anchors(self, images: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """The k anchor images each image is closest to: (centred cosine similarities, indices) [B, k], best first.
        ASIF's explanation of a prediction is these anchors and their captions (the first `k_image` of them vote)."""
        sims = centred_cosine(self.image_encoder(images), self.anchor_images, self.anchor_images.mean(dim=0))  # [B, A]
        return sims.topk(min(k, sims.size(1)), dim=-1)


batch_loss = None  # the contract's name; None: ASIF has nothing to train


def measure(model: ASIF, tokenizer, bench: DualEncoderBench) -> dict[str, float]:
    """Notebook 02's dual-encoder numbers (retrieval, zero-shot colour and shape, swap probes), on ASIF."""
    return harness.suite(model, tokenizer, "dual_encoder", bench)


TARGETS = {  # notebook 07, on held-out one-object scenes (zero-shot) and 145 held-out Tux Paint stamps (real)
    "smoke": {"trained_parameters": ("<=", 0.0)},
    "cpu": {"trained_parameters": ("<=", 0.0), "asif_zs_color_acc": (">=", 0.90), "asif_zs_shape_acc": (">=", 0.80),
            "asif_r1_real": (">", 0.26)},
    "gpu": {"trained_parameters": ("<=", 0.0), "asif_zs_color_acc": (">=", 0.90), "asif_zs_shape_acc": (">=", 0.80),
            "asif_r1_real": (">", 0.26)},
}
SAVED: tuple[str, ...] = ()  # nothing trained, nothing shipped: an ASIF model is rebuilt from its anchors in seconds
