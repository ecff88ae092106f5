"""Datasets, collators and step-indexed batches. Introduced in notebook 00.

`ShapesDataset` renders its scenes once and keeps them as one uint8 tensor, so an epoch
costs no drawing. `StepBatches` turns a dataset into `batches(step) -> batch`: the batch of
step k depends only on (seed, k), which is what lets `vlmlab.train.fit` resume exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .language import QA, caption, captions, hard_negatives, sample_vqa
from .shapes import Scene, ShapesWorld, render_array

TASKS = ("caption", "vqa", "negatives")
IGNORE_INDEX = -100  # label value that cross-entropy skips


class ShapesDataset(torch.utils.data.Dataset):
    """`n` scenes of one split with their text, images cached as uint8 [n, 3, H, W].

    task='caption': item text is the canonical caption, or a paraphrase per item when
    `paraphrase=True`; task='vqa': one question per scene; task='negatives': the caption
    and its hard negatives (scenes with none are kept, with an empty list).
    """

    def __init__(self, world: ShapesWorld, split: str = "train", n: int = 1000, start: int = 0,
                 task: str = "caption", paraphrase: bool = False):
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}")
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        self.world, self.split, self.task, self.paraphrase = world, split, task, paraphrase
        self.scenes: list[Scene] = world.scenes(n, split, start)
        pixels = np.stack([render_array(s, world.image_size) for s in self.scenes])  # [n, H, W, 3]
        self.images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # [n, 3, H, W] uint8

    def __len__(self) -> int:
        return len(self.scenes)

    def text(self, i: int) -> str:
        scene = self.scenes[i]
        if not self.paraphrase:
            return caption(scene)
        return random.Random(f"para:{scene.seed}:{scene.split}:{scene.index}").choice(captions(scene))

    def qa(self, i: int) -> QA:
        return sample_vqa(self.scenes[i])[0]

    def __getitem__(self, i: int) -> dict:
        item = {"index": i, "image": self.images[i]}
        if self.task == "vqa":
            qa = self.qa(i)
            item.update(question=qa.question, answer=qa.answer, qtype=qa.qtype)
        else:
            item["text"] = self.text(i)
        if self.task == "negatives":
            item["negatives"] = [n.text for n in hard_negatives(self.scenes[i])]
        return item


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] in 0..255 -> float in [-1, 1], the input every image encoder takes."""
    return images.float().div(127.5).sub(1.0)


@dataclass
class TextBatch:
    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 = real token
    labels: torch.Tensor  # [B, T] long, IGNORE_INDEX where no loss is taken


def encode_texts(tokenizer, prompts: Sequence[str], targets: Sequence[str] | None = None,
                 max_length: int = 64, bos: bool = True, eos: bool = True,
                 ends: tuple[str, str] | None = None) -> TextBatch:
    """Tokenise `prompt + target` pairs, right-padded.

    Each text opens with <bos> and closes with <eos> (`bos`, `eos` switch them off); `ends` names two other tokens
    to open and close it with, e.g. BERT's ("[CLS]", "[SEP]") for notebook 06's fusion encoders.

    Labels are the input ids on the target tokens (and the final <eos>) and IGNORE_INDEX on
    the prompt and the padding, so a loss on them teaches answering, not repeating the question.
    With `targets=None` the whole text is the target (plain language modelling).
    """
    if targets is not None and len(targets) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    first, last = tokenizer.convert_tokens_to_ids(list(ends)) if ends else (tokenizer.bos_token_id, tokenizer.eos_token_id)
    if ends and (len(ends) != 2 or None in (first, last) or tokenizer.unk_token_id in (first, last)):
        raise ValueError(f"ends={ends!r} must name two tokens the tokenizer has")
    prefix, suffix = [first] if bos else [], [last] if eos else []
    prompt_ids = tokenizer(list(prompts))["input_ids"] if len(prompts) else []  # one batched call: fast
    target_ids = tokenizer(list(targets))["input_ids"] if targets is not None and len(targets) else [[]] * len(prompts)
    rows, label_rows = [], []
    for p, t in zip(prompt_ids, target_ids):
        p, t = prefix + p, t + suffix
        rows.append((p + t)[:max_length])
        label_rows.append((p + t if targets is None else [IGNORE_INDEX] * len(p) + t)[:max_length])
    width = max(map(len, rows), default=0)
    pad = lambda row, value: row + [value] * (width - len(row))  # noqa: E731
    input_ids = torch.tensor([pad(r, tokenizer.pad_token_id) for r in rows], dtype=torch.long).view(len(rows), width)
    labels = torch.tensor([pad(r, IGNORE_INDEX) for r in label_rows], dtype=torch.long).view(len(rows), width)
    mask = torch.tensor([pad([1] * len(r), 0) for r in rows], dtype=torch.long).view(len(rows), width)
    return TextBatch(input_ids, mask, labels)


def _with_images(items: list[dict], text: TextBatch) -> dict:
    """images uint8 [B, 3, H, W], index [B], input_ids / attention_mask / labels [B, T]."""
    return {"images": torch.stack([it["image"] for it in items]), "index": torch.tensor([it["index"] for it in items]),
            "input_ids": text.input_ids, "attention_mask": text.attention_mask, "labels": text.labels}


def caption_collate(tokenizer, max_length: int = 64) -> Callable[[list[dict]], dict]:
    """Collate ShapesDataset(task='caption') items into images + tokenised captions."""

    def collate(items: list[dict]) -> dict:
        return _with_images(items, encode_texts(tokenizer, [it["text"] for it in items], max_length=max_length))

    return collate


def negatives_collate(tokenizer, max_length: int = 64) -> Callable[[list[dict]], dict]:
    """Collate ShapesDataset(task='negatives') items for NegCLIP: images + captions as in `caption_collate`,
    plus one hard negative per item in `negative_input_ids` / `negative_attention_mask`. Which of the item's
    negatives is used depends on the item index only. Introduced in notebook 02."""

    def collate(items: list[dict]) -> dict:
        missing = [it["index"] for it in items if not it["negatives"]]
        if missing:
            raise ValueError(f"items {missing[:5]} have no hard negative; negatives_collate needs one per item")
        picked = [random.Random(f"negative:{it['index']}").choice(it["negatives"]) for it in items]
        negatives = encode_texts(tokenizer, picked, max_length=max_length)
        batch = _with_images(items, encode_texts(tokenizer, [it["text"] for it in items], max_length=max_length))
        return batch | {"negative_input_ids": negatives.input_ids, "negative_attention_mask": negatives.attention_mask}

    return collate


def vqa_collate(tokenizer, max_length: int = 64) -> Callable[[list[dict]], dict]:
    """Collate ShapesDataset(task='vqa') items: the question is the prompt (it ends in "?"), " " + the answer the
    target, as the VQA models of notebooks 03 on are trained."""

    def collate(items: list[dict]) -> dict:
        prompts, answers = [it["question"] for it in items], [" " + it["answer"] for it in items]
        return _with_images(items, encode_texts(tokenizer, prompts, answers, max_length=max_length))

    return collate


def length_buckets(indices: torch.Tensor, lengths: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Cut one batch's item indices into n groups of similar length (shortest first), so that each group is
    padded only to its own longest row. lengths [N]: every item's length. Introduced in notebook 03."""
    if not 1 <= n <= len(indices):
        raise ValueError(f"n={n} buckets must be between 1 and the batch size {len(indices)}")
    order = lengths[indices].argsort(stable=True)
    return list(indices[order].chunk(n))


def indexed_collate(inputs: torch.Tensor, text: TextBatch, key: str = "images",
                    rows: torch.Tensor | None = None, buckets: int = 1) -> Callable[[list[int]], dict]:
    """Collate item indices into pre-computed inputs (rendered images [N, 3, H, W] under "images", or what a frozen
    tower made of them under "image_features") and pre-tokenised texts, trimming the padding to the longest text of
    the batch. `rows` [M] (optional) says which input row each of M texts belongs to (several texts per image);
    by default text i goes with input i. With `StepBatches(range(M), ...)` this skips per-batch tokenisation, which
    matters when a training step takes milliseconds. Introduced in notebook 02. With buckets > 1 the batch comes
    cut into that many groups of similar length ({"buckets": [batch, ...]}, `length_buckets`, notebook 03), each
    trimmed to its own longest text (at most as many buckets as the batch has items)."""
    rows = torch.arange(len(inputs)) if rows is None else rows
    if len(rows) != len(text.input_ids):
        raise ValueError(f"{len(rows)} inputs but {len(text.input_ids)} texts")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets={buckets!r} must be an int >= 1")
    lengths = text.attention_mask.sum(dim=1)  # [M]

    def one(idx: torch.Tensor) -> dict:
        width = int(lengths[idx].max())
        return {key: inputs[rows[idx]], "index": idx, "input_ids": text.input_ids[idx, :width],
                "attention_mask": text.attention_mask[idx, :width], "labels": text.labels[idx, :width]}

    def collate(indices: list[int]) -> dict:
        idx = torch.tensor(indices)
        if buckets == 1:
            return one(idx)
        return {"buckets": [one(group) for group in length_buckets(idx, lengths, min(buckets, len(idx)))]}

    return collate


class StepBatches:
    """`batches(step) -> batch`, a pure function of (seed, step).

    Each epoch visits every item once in an order drawn from (seed, epoch); the last
    incomplete batch of an epoch is dropped so every batch has `batch_size` items.
    """

    def __init__(self, dataset, batch_size: int, collate: Callable[[list], dict], seed: int = 0):
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(f"batch_size={batch_size} must be between 1 and the dataset size {len(dataset)}")
        self.dataset, self.batch_size, self.collate, self.seed = dataset, batch_size, collate, seed
        self.steps_per_epoch = len(dataset) // batch_size
        self._order: tuple[int, torch.Tensor] | None = None

    def order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.dataset), generator=g))
        return self._order[1]

    def __call__(self, step: int) -> dict:
        epoch, k = divmod(step, self.steps_per_epoch)
        idx = self.order(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        return self.collate([self.dataset[int(i)] for i in idx])


def corrupt_captions(texts: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """ALIGN-style noise: a random `fraction` of the items gets the caption of another random item, so
    that image-text pair no longer matches. The rest keep their own. Introduced in notebook 02."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be a number in [0, 1]")
    n = len(texts)
    if n < 2 and fraction > 0:
        raise ValueError(f"corrupting captions needs at least 2 texts, got {n}")
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randperm(n, generator=g)[: round(fraction * n)]  # the items whose caption is replaced
    donors = (noisy + torch.randint(1, max(n, 2), (len(noisy),), generator=g)) % n  # never the item itself
    out = list(texts)
    for i, j in zip(noisy.tolist(), donors.tolist()):
        out[i] = texts[j]
    return out
