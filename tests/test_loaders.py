"""Datasets, collation with masks and -100 labels, step-indexed batches."""

import pytest
import torch

from vlmlab.data.loaders import (
    IGNORE_INDEX,
    ShapesDataset,
    StepBatches,
    caption_collate,
    corrupt_captions,
    encode_texts,
    indexed_collate,
    length_buckets,
    negatives_collate,
    to_float,
    vqa_collate,
)
from vlmlab.data.shapes import ShapesWorld, render_array

WORLD = ShapesWorld(seed=0, image_size=32)


def test_dataset_caches_uint8_images_matching_the_renderer():
    ds = ShapesDataset(WORLD, "val", 20)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[7].permute(1, 2, 0), torch.from_numpy(render_array(ds.scenes[7], 32)))


def test_to_float_range():
    x = to_float(torch.tensor([0, 255], dtype=torch.uint8))
    assert x.tolist() == [-1.0, 1.0]


def test_encode_texts_pads_masks_and_labels_only_targets(tok):
    batch = encode_texts(tok, ["question: what color is the star? answer:", "q"], [" red", " there is no star"])
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
    for row in range(2):
        n = int(batch.attention_mask[row].sum())
        assert (batch.input_ids[row, n:] == tok.pad_token_id).all()
        assert (batch.labels[row, n:] == IGNORE_INDEX).all()
        targets = batch.labels[row][batch.labels[row] != IGNORE_INDEX]
        assert targets[-1] == tok.eos_token_id
    assert tok.decode(batch.labels[0][batch.labels[0] != IGNORE_INDEX][:-1]) == " red"


def test_plain_lm_labels_equal_inputs_on_real_tokens(tok):
    batch = encode_texts(tok, ["a red star", "a small blue circle left of a red star"])
    real = batch.attention_mask.bool()
    assert torch.equal(batch.labels[real], batch.input_ids[real])
    assert batch.input_ids[0, 0] == tok.bos_token_id


def test_step_batches_are_a_function_of_seed_and_step(tok):
    ds = ShapesDataset(WORLD, "train", 30)
    a = StepBatches(ds, 4, caption_collate(tok), seed=1)
    b = StepBatches(ds, 4, caption_collate(tok), seed=1)
    assert torch.equal(a(9)["index"], b(9)["index"])  # same step, same batch, any call order
    assert not torch.equal(a(0)["index"], StepBatches(ds, 4, caption_collate(tok), seed=2)(0)["index"])
    epoch = torch.cat([a(s)["index"] for s in range(a.steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch) == 28  # each item at most once per epoch


def test_vqa_collate_uses_the_question_as_prompt(tok):
    ds = ShapesDataset(WORLD, "test", 8, task="vqa")
    batch = StepBatches(ds, 8, vqa_collate(tok))(0)
    assert batch["images"].shape == (8, 3, 32, 32)
    item = ds[int(batch["index"][0])]
    answer = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX][:-1]
    assert tok.decode(answer) == " " + item["answer"]
    prompt = batch["input_ids"][0][(batch["labels"][0] == IGNORE_INDEX) & (batch["attention_mask"][0] == 1)]
    assert prompt[0] == tok.bos_token_id and tok.decode(prompt[1:]) == item["question"]  # the question itself
    assert item["question"].endswith("?")


def test_length_buckets_group_short_with_short_and_keep_every_item():
    lengths = torch.tensor([9, 3, 7, 1, 5, 8, 2])
    buckets = length_buckets(torch.tensor([0, 1, 2, 3, 4, 5]), lengths, 2)
    assert [b.tolist() for b in buckets] == [[3, 1, 4], [2, 5, 0]]
    with pytest.raises(ValueError, match="n=7 buckets"):
        length_buckets(torch.arange(6), lengths, 7)


def test_bad_arguments_are_named(tok):
    with pytest.raises(ValueError, match="task='poems'"):
        ShapesDataset(WORLD, "train", 5, task="poems")
    with pytest.raises(ValueError, match="batch_size=10"):
        StepBatches(ShapesDataset(WORLD, "train", 5), 10, caption_collate(tok))


def test_indexed_collate_trims_padding_to_the_batch(tok):
    images = torch.arange(3 * 3 * 2 * 2, dtype=torch.uint8).view(3, 3, 2, 2)
    text = encode_texts(tok, ["a star", "a large red star left of a small blue circle", "a circle"])
    batch = StepBatches(range(3), 2, indexed_collate(images, text), seed=0)(0)
    rows = batch["index"].tolist()
    assert torch.equal(batch["images"], images[rows])
    width = int(text.attention_mask[rows].sum(1).max())
    assert batch["input_ids"].shape == (2, width) and batch["attention_mask"][:, -1].any()
    assert torch.equal(batch["input_ids"], text.input_ids[rows, :width])
    with pytest.raises(ValueError, match="3 inputs but 2 texts"):
        indexed_collate(images, encode_texts(tok, ["a", "b"]))


def test_indexed_collate_in_length_buckets_keeps_every_row_with_its_input(tok):
    features = torch.arange(4.0).view(4, 1, 1)
    text = encode_texts(tok, ["a star", "a large red star left of a small blue circle", "a circle", "a small red star"])
    whole = indexed_collate(features, text, key="image_features")([0, 1, 2, 3])
    cut = indexed_collate(features, text, key="image_features", buckets=2)([0, 1, 2, 3])["buckets"]
    assert [b["index"].tolist() for b in cut] == [[0, 2], [3, 1]]  # the two shortest texts, then the two longest
    for b in cut:
        idx = b["index"]
        assert torch.equal(b["image_features"], features[idx])
        width = int(text.attention_mask[idx].sum(1).max())
        assert torch.equal(b["input_ids"], whole["input_ids"][idx, :width]) and b["attention_mask"][:, -1].any()
    assert sum(b["input_ids"].numel() for b in cut) < whole["input_ids"].numel()
    assert len(indexed_collate(features, text, buckets=4)([1, 2])["buckets"]) == 2  # no more buckets than items
    with pytest.raises(ValueError, match="buckets=0"):
        indexed_collate(features, text, buckets=0)


def test_indexed_collate_under_another_key_with_several_texts_per_input(tok):
    features = torch.randn(2, 9, 20)
    text = encode_texts(tok, ["a star", "a circle", "is there a star?", "two"])
    rows = torch.tensor([0, 0, 1, 1])  # two texts per image
    collate = indexed_collate(features, text, key="image_features", rows=rows)
    batch = collate([3, 0, 2])
    assert "images" not in batch and torch.equal(batch["image_features"], features[[1, 0, 1]])
    assert batch["index"].tolist() == [3, 0, 2]
    width = int(text.attention_mask[[3, 0, 2]].sum(1).max())
    assert torch.equal(batch["input_ids"], text.input_ids[[3, 0, 2], :width])
    assert torch.equal(batch["labels"], text.labels[[3, 0, 2], :width])
    with pytest.raises(ValueError, match="2 inputs but 4 texts"):
        indexed_collate(features, text)


def test_corrupt_captions_replaces_exactly_the_fraction_with_other_items_captions():
    texts = [f"caption {i}" for i in range(100)]
    noisy = corrupt_captions(texts, 0.3, seed=1)
    changed = [i for i in range(100) if noisy[i] != texts[i]]
    assert len(changed) == 30 and all(noisy[i] in texts for i in changed)
    assert corrupt_captions(texts, 0.3, seed=1) == noisy and corrupt_captions(texts, 0.3, seed=2) != noisy
    assert corrupt_captions(texts, 0.0) == texts
    assert sum(a != b for a, b in zip(corrupt_captions(texts, 1.0), texts)) == 100
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="fraction="):
            corrupt_captions(texts, bad)


def test_negatives_collate_adds_one_true_hard_negative_per_item(tok):
    ds = ShapesDataset(WORLD, "train", 16, task="negatives")
    batch = negatives_collate(tok)([ds[i] for i in range(16)])
    assert batch["negative_input_ids"].shape[0] == 16 and batch["negative_attention_mask"].shape[0] == 16
    for i in range(16):
        negative = tok.decode(batch["negative_input_ids"][i], skip_special_tokens=True)
        assert negative.strip() in ds[i]["negatives"]
        assert negative.strip() != tok.decode(batch["input_ids"][i], skip_special_tokens=True).strip()
    again = negatives_collate(tok)([ds[i] for i in range(16)])
    assert torch.equal(again["negative_input_ids"], batch["negative_input_ids"])  # a function of the index
