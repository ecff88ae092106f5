"""PrefixLM (notebook 03): the prefix mask, the joined sequence, text-only initialisation, generation and VirTex."""

import random

import pytest
import torch

from vlmlab import zoo
from vlmlab.attention import prefix_mask
from vlmlab.data.language import QA
from vlmlab.data.loaders import IGNORE_INDEX, encode_texts, length_buckets
from vlmlab.encoders import resize
from vlmlab.generation import continuation_logprob, generate_text
from vlmlab.nn import CausalLM, TextConfig
from vlmlab.strategies import prefix_lm as P

CONFIG = P.Config(vision_dim=8, n_image_tokens=3, text_len=24, dim=32, depth=2, n_heads=2)


def test_prefix_mask_is_bidirectional_inside_the_prefix_and_causal_after():
    expected = torch.tensor([[1, 1, 1, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(prefix_mask(5, prefix_len=3), expected)
    assert torch.equal(prefix_mask(5, prefix_len=0), torch.ones(5, 5).tril().bool())
    per_row = prefix_mask(5, prefix_len=torch.tensor([3, 0]))  # [2, 1, 5, 5]
    assert per_row.shape == (2, 1, 5, 5) and torch.equal(per_row[0, 0], expected) and torch.equal(per_row[1, 0], expected.tril())
    # with a KV cache: two new queries at positions 3 and 4 of 5 keys
    assert torch.equal(prefix_mask(2, 5, prefix_len=3), expected[3:])


def test_prompt_tokens_see_later_prompt_tokens_but_not_the_continuation():
    """The prompt is the text before the first label: read both ways (with the image), the rest causally."""
    torch.manual_seed(0)
    model = P.PrefixLM(CONFIG).eval()
    image = model.condition(torch.randn(1, 3, 8))["image"]  # [1, 3, 32]
    ids = torch.randint(3, 512, (1, 6))
    mask = torch.ones(1, 6, dtype=torch.long)

    def out(x, prompt):  # logits over [image | text]; the first `prompt` text tokens take no loss
        labels = torch.cat([torch.full((1, prompt), IGNORE_INDEX), x[:, prompt:]], dim=1)
        return model(image=image, input_ids=x, attention_mask=mask, labels=labels).logits

    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % 512  # a later prompt token
    assert not torch.allclose(out(ids, 4)[0, 3], out(changed, 4)[0, 3])  # text position 0 sees position 2 in the prompt
    assert not torch.allclose(out(ids, 4)[0, 0], out(changed, 4)[0, 0])  # and so do the image tokens
    assert torch.allclose(out(ids, 1)[0, 3], out(changed, 1)[0, 3])  # a prompt of <bos> alone: it does not
    after = ids.clone()
    after[0, 5] = (ids[0, 5] + 1) % 512  # a continuation token
    assert torch.allclose(out(ids, 4)[0, : 3 + 5], out(after, 4)[0, : 3 + 5])


def test_the_image_goes_first_and_the_prompt_joins_the_prefix(tok):
    """What the PrefixLM hands its LM: image tokens in front of the text, no loss on them, and one bidirectional
    prefix of the image and each row's prompt (<bos> and the question), causal after it."""
    model = P.PrefixLM(CONFIG)
    text = encode_texts(tok, ["", "question: is there a star? answer:"], ["a large red star", " yes"], max_length=24)
    seen = {}
    model.lm.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    batch = {"image_features": torch.randn(2, 3, 8), "input_ids": text.input_ids, "attention_mask": text.attention_mask,
             "labels": text.labels}
    loss, _ = P.batch_loss(model, batch)
    assert torch.isfinite(loss)
    T = text.input_ids.size(1)
    assert seen["inputs_embeds"].shape == (2, 3 + T, 32)
    assert (seen["labels"][:, :3] == IGNORE_INDEX).all() and torch.equal(seen["labels"][:, 3:], text.labels)
    n_prompt = 1 + len(tok.encode("question: is there a star? answer:"))  # <bos> + question
    assert P.prefix_lengths(text.labels).tolist() == [1, n_prompt]
    for row, prefix in enumerate([3 + 1, 3 + n_prompt]):
        allowed = prefix_mask(3 + T, prefix_len=prefix) & torch.cat([torch.ones(3), text.attention_mask[row]]).bool()
        assert torch.equal(seen["attention_mask"][row, 0], allowed)


def test_a_batch_cut_into_length_buckets_has_the_loss_of_the_whole_batch(tok):
    torch.manual_seed(0)
    prompts = ["", "a large", "is there a star?", "", "how many objects are there?", "a"]
    targets = ["a large red star left of a small blue circle", " red star", " yes", "a cross", " two", " small cross"]
    text = encode_texts(tok, prompts, targets, max_length=24)
    features, lengths = torch.randn(6, 3, 8), text.attention_mask.sum(dim=1)

    def batch(rows):
        width = int(lengths[rows].max())
        return {"image_features": features[rows], "input_ids": text.input_ids[rows, :width],
                "attention_mask": text.attention_mask[rows, :width], "labels": text.labels[rows, :width]}

    buckets = length_buckets(torch.arange(6), lengths, 3)
    assert [len(b) for b in buckets] == [2, 2, 2] and lengths[buckets[0]].max() <= lengths[buckets[2]].min()
    for model in (P.PrefixLM(CONFIG), P.VirTex(CONFIG)):  # VirTex trains with the same loss
        whole = P.batch_loss(model, batch(torch.arange(6)))[0]
        cut = P.batch_loss(model, {"buckets": [batch(b) for b in buckets]})[0]
        torch.testing.assert_close(cut, whole)


@pytest.mark.parametrize("kind", [P.PrefixLM, P.VirTex])
def test_image_features_of_the_wrong_shape_are_refused_with_the_expected_one(kind):
    with pytest.raises(ValueError, match=r"image_features.shape.*\[B, 3, 8\]"):
        kind(CONFIG).condition(torch.randn(2, 4, 8))


def test_split_caption_keeps_the_words_and_a_nonempty_continuation():
    rng = random.Random(0)
    caption = "a large red star left of a small blue circle"
    for _ in range(50):
        prefix, rest = P.split_caption(caption, rng)
        assert (prefix + rest) == caption and rest.strip()
    assert {P.split_caption("a star", random.Random(s))[0] for s in range(20)} == {"", "a"}


def test_training_texts_mix_captions_completions_and_questions():
    prompts, targets = P.training_texts(["a large red star"] * 40, [QA("is there a star?", "yes", "exists")], seed=0)
    assert len(prompts) == 41 and prompts[-1] == "is there a star?" and targets[-1] == " yes"  # the question is the prompt
    assert 0 < sum(p != "" for p in prompts[:40]) < 40  # some captions are split, some whole


def test_from_text_lm_copies_the_text_model_and_places_its_positions_after_the_image():
    torch.manual_seed(0)
    text_lm = CausalLM(TextConfig(vocab_size=512, max_len=8, dim=32, depth=2, n_heads=2))
    model = P.from_text_lm(CONFIG, text_lm)
    ours, theirs = model.lm.transformer, text_lm.transformer
    assert torch.equal(ours.tok_emb.weight, theirs.tok_emb.weight)
    assert torch.equal(ours.blocks[1].mlp.fc.weight, theirs.blocks[1].mlp.fc.weight)
    assert torch.equal(ours.pos_emb.weight[3:11], theirs.pos_emb.weight)
    with pytest.raises(ValueError, match="text_lm.config"):
        P.from_text_lm(CONFIG, CausalLM(TextConfig(vocab_size=512, dim=16, depth=2, n_heads=2)))


@pytest.mark.parametrize("kind", ["prefix", "virtex"])
def test_generation_is_the_same_with_and_without_the_kv_cache_and_beams_run(tok, kind):
    torch.manual_seed(0)
    model = (P.PrefixLM if kind == "prefix" else P.VirTex)(CONFIG)
    features, prompts = torch.randn(3, 3, 8), ["", "a large", "is there a star?"]
    cached = generate_text(model, tok, features, prompts, max_new_tokens=5, use_cache=True)
    uncached = generate_text(model, tok, features, prompts, max_new_tokens=5, use_cache=False)
    assert cached == uncached and len(cached) == 3
    beams = generate_text(model, tok, features, prompts, max_new_tokens=5, strategy="beam", num_beams=3)
    assert len(beams) == 3 and all(isinstance(b, str) for b in beams)


def test_greedy_decoding_returns_the_continuation_a_trained_model_prefers(tok):
    """Overfit two images to two captions; greedy decoding must read them back and the log-probability of
    each image's own caption must beat the other's."""
    torch.manual_seed(0)
    model = P.PrefixLM(CONFIG)
    captions = ["a large red star", "a small blue circle"]
    features = torch.randn(2, 3, 8)
    text = encode_texts(tok, ["", ""], captions, max_length=16)
    batch = {"image_features": features, "input_ids": text.input_ids, "attention_mask": text.attention_mask,
             "labels": text.labels}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = P.batch_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert generate_text(model, tok, features) == captions
    own = continuation_logprob(model, tok, features, ["", ""], captions)
    swapped = continuation_logprob(model, tok, features, ["", ""], captions[::-1])
    assert (own > swapped).all() and (own < 0).all()


@pytest.mark.parametrize("kind", [P.PrefixLM, P.VirTex])
def test_a_saved_captioner_loads_back(kind, tmp_path):
    torch.manual_seed(0)
    model = kind(CONFIG).eval()
    path = zoo.save_model("p", model, {"caption_attr_f1": 0.5}, strategy="prefix_lm", root=tmp_path)  # fp16
    back, record = zoo.load_model("p", root=tmp_path)
    assert type(back) is kind and back.config == CONFIG and record["path"] == str(path)
    condition = model.condition(torch.randn(2, 3, 8))
    ids, mask = torch.randint(3, 512, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    torch.testing.assert_close(back(input_ids=ids, attention_mask=mask, **condition).logits,
                               model(input_ids=ids, attention_mask=mask, **condition).logits, atol=2e-2, rtol=2e-2)


def test_a_saved_captioner_keeps_no_vision_tower_and_pins_it(tiny_zoo, tmp_path):
    """The frozen region reader is notebook 01's file: the checkpoint pins it by hash instead of holding it."""
    vision = {"tower": "regions", **tiny_zoo["tiny-vit-detector-probe"]}
    model = P.PrefixLM.from_config(P.Config(vision_dim=20, n_image_tokens=9, text_len=24, dim=32, depth=2, n_heads=2,
                                            vision=vision).to_dict())
    assert model.vision.spec == vision and not any(p.requires_grad for p in model.vision.parameters())
    path = zoo.save_model("p", model, {}, strategy="prefix_lm", root=tmp_path)
    state, record = zoo.load_checkpoint(path)
    assert state.keys() == {k for k in model.state_dict() if not k.startswith("vision.")}
    assert record["depends"] == {"tiny-vit-detector-probe": tiny_zoo["tiny-vit-detector-probe"]["sha256"]}


def test_a_pixel_stem_learns_with_the_model_and_is_saved_with_it(tok, tmp_path):
    """SimVLM's way (notebook 03's main run): the image tokens come from a stem that trains and is kept in the
    checkpoint, [B, 3, 64, 64] -> [B, 9, vision_dim] at 48 px, one token per cell."""
    config = P.Config(vocab_size=len(tok), vision_dim=24, n_image_tokens=9, text_len=24, dim=32, depth=2, n_heads=2,
                      stem="conv")
    torch.manual_seed(0)
    model = P.PrefixLM(config)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    assert model.image_features(pixels).shape == (2, 9, 24)
    text = encode_texts(tok, ["", "what color is the star?"], ["a large red star", "red"], max_length=24)
    batch = {"images": (torch.rand(2, 3, 64, 64) * 255).to(torch.uint8), "input_ids": text.input_ids,
             "attention_mask": text.attention_mask, "labels": text.labels}
    P.batch_loss(model, batch)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.stem.parameters())  # the text loss reaches the pixels
    path = zoo.save_model("p", model.eval(), {}, strategy="prefix_lm", root=tmp_path, dtype=None)
    assert any(k.startswith("stem.") for k in zoo.load_checkpoint(path)[0])
    back, _ = zoo.load_model("p", root=tmp_path)
    assert back.config.image_size == 48
    torch.testing.assert_close(back.image_features(pixels), model.image_features(pixels))


def test_the_stem_reads_the_scenes_at_its_image_size():
    """The stem resizes what it is given: 64 px input equals input resized beforehand; 64 px keeps a 4 x 4 grid."""
    torch.manual_seed(0)
    stem = P.PixelStem(8, image_size=48)
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(stem(pixels), stem(resize(pixels, 48, bounds=(-1.0, 1.0))))
    assert stem(pixels).shape == (3, 9, 8) and P.PixelStem(8, image_size=64)(pixels).shape == (3, 16, 8)
    assert P.Config(stem="conv", image_size=64, n_image_tokens=16).image_size == 64
    with pytest.raises(ValueError, match="image_size"):
        P.Config(stem="conv", image_size=40)
    with pytest.raises(ValueError, match="n_image_tokens.*16"):
        P.Config(stem="conv", image_size=64, n_image_tokens=9)


def test_image_tokens_come_from_a_stem_or_a_tower_not_both():
    with pytest.raises(ValueError, match="stem"):
        P.Config(stem="resnet")
    with pytest.raises(ValueError, match="stem"):
        P.Config(stem="conv", vision={"tower": "regions", "name": "tiny-vit-detector-probe"})
    with pytest.raises(ValueError, match="a stem or a vision tower"):
        P.PrefixLM(P.Config()).image_features(torch.zeros(1, 3, 64, 64))
