"""The interfaces every strategy's model answers, so that one evaluation harness, one decoding loop and the showdown
work on all of them. Introduced in notebook 02 (DualEncoder, PairScorer) and notebook 03 (Captioner).

    DualEncoder   encode_image(pixels) / encode_text(ids, mask) -> unit vectors [B, E]: CLIP, LiT, BLIP-2's ITC head
    PairScorer    score(pixels, ids, mask) -> [B], higher = a better match: every dual encoder (cosine), ITM heads
    AnswerClassifier  answer_logits(pixels, ids, mask) -> [B, A] over `answers`: a VQA head (notebook 06)
    Captioner     image_features(pixels), condition(features), embed(ids), forward(...), max_text_len:
                  PrefixLM, VirTex, a frozen LM with a visual prefix; `vlmlab.generation.generate_text` writes with it

A model that wants its texts opened and closed by other tokens than <bos> and <eos> names them in `text_ends`
(BERT's ("[CLS]", "[SEP]"), notebook 06); `encode_for` tokenises for it.

Models read float pixels in [-1, 1] (`vlmlab.data.loaders.to_float`); datasets keep uint8. A batch uses the
canonical keys `images` (uint8) or `image_features` (what a frozen tower made of them once), `input_ids`,
`attention_mask`, `labels` (-100 = no loss) and `index`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .data.loaders import TextBatch, encode_texts, to_float


@runtime_checkable
class DualEncoder(Protocol):
    """Images and texts in one space. Notebook 02."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...  # [B, E], unit length

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...  # [B, E], unit length


@runtime_checkable
class PairScorer(Protocol):
    """How well each text matches its image. Notebook 02 (a dual encoder's cosine); notebooks 06 and 08 (ITM heads)."""

    def score(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...  # [B]


@runtime_checkable
class AnswerClassifier(Protocol):
    """VQA as classification over a fixed answer vocabulary `answers` (ViLT's head on [CLS]). Notebook 06."""

    answers: list[str]

    def answer_logits(self, images: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor: ...  # [B, A]


@runtime_checkable
class Captioner(Protocol):
    """A model that writes text about an image. Notebook 03.

    `image_features(pixels)` runs the vision tower (once per image); `condition(features)` turns them into the
    per-row tensors every forward call takes; `forward(*, input_ids | inputs_embeds, attention_mask, labels, cache,
    use_cache, **condition)` is a language model's forward whose first call (no cache) puts the image in;
    `max_text_len` is how many text positions it can hold. A captioner trained on its own prompt format says so in
    an optional `prompt_format` {"caption": ..., "vqa": "... {} ..."}, which the harness asks it with (notebook 05)."""

    max_text_len: int

    def image_features(self, images: torch.Tensor) -> torch.Tensor: ...

    def condition(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...


def encode_for(model, tokenizer, texts, targets=None) -> TextBatch:
    """Texts tokenised the way `model` reads them: its `max_text_len`, and its `text_ends` when it names them."""
    return encode_texts(tokenizer, texts, targets, max_length=model.max_text_len, ends=getattr(model, "text_ends", None))


def cosine_score(model: DualEncoder, images: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """A dual encoder as a pair scorer: the cosine of each image with its own text, [B]."""
    return (model.encode_image(images) * model.encode_text(input_ids, attention_mask)).sum(dim=-1)


def batch_image_features(model: Captioner, batch: dict) -> torch.Tensor:
    """A batch's image features: precomputed (`image_features`) or made from its uint8 `images` now."""
    if "image_features" in batch:
        return batch["image_features"]
    return model.image_features(to_float(batch["images"]))


def caption_loss(model: Captioner, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss of a captioner on a batch with canonical keys, for `vlmlab.train.fit`. A batch may come cut
    into length buckets ({"buckets": [batch, ...]}, `loaders.length_buckets`): each bucket's mean is weighted by
    its target tokens, which gives the loss of the uncut batch with less padding computed. Introduced in notebook 03."""
    if "buckets" in batch:
        counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batch["buckets"]]
        loss = sum(caption_loss(model, b)[0] * n for b, n in zip(batch["buckets"], counts)) / sum(counts)
        return loss, {}
    condition = model.condition(batch_image_features(model, batch))
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], **condition)
    return out.loss, {}
