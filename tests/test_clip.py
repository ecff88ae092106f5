"""CLIP (notebook 02): parity with Hugging Face CLIPModel, the loss on hand-made cases, the clamped temperature,
NegCLIP negatives, EOS pooling, prompt-ensembled zero-shot, and a tiny model that learns 8 Shapes World pairs."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from vlmlab.data.evalsets import DualEncoderBench, prompt_templates, single_objects
from vlmlab.data.language import NEGATIVE_SETS, a, caption, hard_negatives, leaving_out
from vlmlab.data.loaders import ShapesDataset, caption_collate, encode_texts, indexed_collate, negatives_collate, to_float
from vlmlab.data.shapes import COLORS, SHAPES, ShapesWorld, relation
from vlmlab.encoders import preprocess_images
from vlmlab.evaluate import retrieval_recall
from vlmlab.harness import embed_images, embed_texts, zero_shot_attribute, zero_shot_classifier, zero_shot_in_caption
from vlmlab.nn import TextConfig, ViT, ViTConfig
from vlmlab.protocols import DualEncoder, PairScorer
from vlmlab.strategies.clip import (
    CLIP,
    Config,
    ImageTower,
    batch_loss,
    both_captions_loss,
    clip_loss,
    contrastive_loss,
    from_hf_clip,
    last_token_positions,
    left_out_with_negatives,
    measure,
    negclip_batch_loss,
    negclip_left_out_loss,
    negclip_negatives,
)
from vlmlab.train import fit

PAD, BOS, EOS = 0, 98, 99  # inside the HF test vocabulary of 100 (its defaults, 49406/49407, are not)


def tiny_config(vocab_size=100, patch_size=8, **kw) -> Config:
    return Config(vision=ViTConfig(image_size=32, patch_size=patch_size, dim=32, depth=1, n_heads=2),
                  text=TextConfig(vocab_size=vocab_size, max_len=64, dim=32, depth=1, n_heads=2, causal=True),
                  **({"embed_dim": 16} | kw))


def captions_batch():
    """Three right-padded 'captions' <bos> ... <eos> of lengths 6, 9 and 4."""
    g = torch.Generator().manual_seed(3)
    lengths = [6, 9, 4]
    ids = torch.full((3, 9), PAD)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.cat([torch.tensor([BOS]), torch.randint(3, 98, (n - 2,), generator=g), torch.tensor([EOS])])
        mask[i, :n] = 1
    return ids, mask


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def clip_pair(request):
    torch.manual_seed(0)
    config = HFCLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=16, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                         hidden_act=request.param),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, hidden_act=request.param),
        projection_dim=16)
    hf = CLIPModel(config).eval()
    return hf, from_hf_clip(hf).eval()


# ---------------------------------------------------------------- parity with Hugging Face


def test_hf_config_is_carried_over(clip_pair):
    hf, ours = clip_pair
    c = ours.config
    assert (c.embed_dim, c.vision.image_size, c.vision.patch_size, c.vision.dim, c.vision.depth, c.vision.mlp_ratio) == (
        16, 32, 8, 32, 2, 2.0)
    assert (c.text.vocab_size, c.text.max_len, c.text.dim, c.text.depth, c.text.n_heads) == (100, 16, 32, 2, 4)
    assert c.text.causal and c.vision_pre_norm and c.quick_gelu == (hf.config.text_config.hidden_act == "quick_gelu")
    assert_close(ours.scale, torch.tensor(1 / 0.07), rtol=1e-4, atol=0)  # HF's init 2.6592 = log(1 / 0.07)


def test_hf_embeddings_logits_and_loss_match(clip_pair):
    hf, ours = clip_pair
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids, mask = captions_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, pixel_values=images, attention_mask=mask, return_loss=True)
        image_emb, text_emb = ours.encode_image(images), ours.encode_text(ids, mask)
        logits_per_image, logits_per_text = ours(images, ids, mask)
    assert_close(image_emb, expected.image_embeds, atol=1e-5, rtol=1e-5)
    assert_close(text_emb, expected.text_embeds, atol=1e-5, rtol=1e-5)
    assert_close(logits_per_image, expected.logits_per_image, atol=1e-5, rtol=1e-5)
    assert_close(logits_per_text, expected.logits_per_text, atol=1e-5, rtol=1e-5)
    assert_close(clip_loss(logits_per_image), expected.loss, atol=1e-5, rtol=1e-5)


def test_loss_and_scale_match_hf_on_the_same_embeddings(clip_pair):
    hf, ours = clip_pair
    g = torch.Generator().manual_seed(4)
    image_emb = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    text_emb = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    with torch.no_grad():
        hf.logit_scale.fill_(math.log(20.0))
        ours.logit_scale.fill_(math.log(20.0))
    assert_close(ours.scale, hf.logit_scale.exp())
    expected = image_text_contrastive_loss(hf.logit_scale.exp() * text_emb @ image_emb.T)  # HF takes logits_per_text
    assert_close(contrastive_loss(image_emb, text_emb, ours.scale), expected)


def test_from_hf_clip_refuses_other_models():
    with pytest.raises(ValueError, match="transformers.CLIPModel"):
        from_hf_clip(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- temperature


def test_logit_scale_starts_at_one_over_init_temperature_and_is_clamped_at_100():
    model = CLIP(tiny_config())
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.temperature == pytest.approx(0.07)
    with torch.no_grad():
        model.logit_scale.fill_(20.0)  # exp(20) ~ 5e8 without the clamp
    assert model.scale.item() == pytest.approx(100.0)
    assert model.temperature == pytest.approx(0.01)
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(3, 100, (2, 5))
    logits_per_image, _ = model(images, ids)
    assert logits_per_image.abs().max() <= 100.0 + 1e-4
    clip_loss(logits_per_image).backward()
    assert model.logit_scale.grad.item() == 0.0  # above the clamp the scale no longer moves


def test_learned_temperature_gets_a_gradient_and_fixed_one_does_not():
    images, ids = torch.randn(4, 3, 32, 32), torch.randint(3, 100, (4, 5))
    learned = CLIP(tiny_config())
    clip_loss(learned(images, ids)[0]).backward()
    assert learned.logit_scale.grad is not None and learned.logit_scale.grad.item() != 0.0

    fixed = CLIP(tiny_config(learn_temperature=False, init_temperature=0.1))
    assert "logit_scale" not in dict(fixed.named_parameters()) and "logit_scale" in fixed.state_dict()
    clip_loss(fixed(images, ids)[0]).backward()
    assert not fixed.logit_scale.requires_grad and fixed.logit_scale.grad is None
    assert fixed.temperature == pytest.approx(0.1)


def test_config_validation_names_the_parameter():
    with pytest.raises(ValueError, match="init_temperature"):
        tiny_config(init_temperature=0.001)  # 1 / 0.001 = 1000 > max_logit_scale = 100
    with pytest.raises(ValueError, match="embed_dim"):
        tiny_config(embed_dim=0)


def test_config_round_trips_through_a_dict():
    config = tiny_config(learn_temperature=False)
    assert Config.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------- the loss on hand-made cases


def test_clip_loss_by_hand_on_two_pairs():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-2))) / 2  # image i -> text i
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2  # text i -> image i
    assert clip_loss(logits).item() == pytest.approx((rows + cols) / 2, abs=1e-6)


def test_clip_loss_is_symmetric():
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(5))
    assert_close(clip_loss(logits), clip_loss(logits.T))


def test_perfect_alignment_gives_zero_loss_at_scale_100_and_log_b_at_scale_0():
    emb = torch.eye(4, 8)  # 4 orthogonal unit vectors; each text equals its image
    assert contrastive_loss(emb, emb, 100.0).item() < 1e-6
    assert contrastive_loss(emb, emb, 0.0).item() == pytest.approx(math.log(4))


def test_negclip_negatives_raise_the_loss_only_through_image_to_text():
    g = torch.Generator().manual_seed(6)
    image_emb = torch.eye(16)[:4]  # 4 orthogonal unit vectors
    text_emb = F.normalize(image_emb + 0.1 * torch.randn(4, 16, generator=g), dim=-1)
    close_negatives = F.normalize(text_emb + 0.1 * torch.randn(4, 16, generator=g), dim=-1)  # "swapped word" captions
    far_negatives = torch.eye(16)[8:12]  # orthogonal to every image
    plain = contrastive_loss(image_emb, text_emb, 10.0)
    with_close = contrastive_loss(image_emb, text_emb, 10.0, close_negatives)
    assert with_close > plain + 0.1
    assert_close(contrastive_loss(image_emb, text_emb, 20.0, far_negatives), contrastive_loss(image_emb, text_emb, 20.0),
                 atol=1e-4, rtol=0)
    targets = torch.arange(4)
    by_hand = (F.cross_entropy(10 * image_emb @ torch.cat([text_emb, close_negatives]).T, targets)
               + F.cross_entropy(10 * text_emb @ image_emb.T, targets)) / 2
    assert_close(with_close, by_hand)
    with pytest.raises(ValueError, match="negative_text_emb"):
        contrastive_loss(image_emb, text_emb, 10.0, close_negatives[:2])


def test_negclip_trains_a_scene_against_its_swaps_or_else_its_replaced_shape():
    scenes = ShapesWorld(seed=0).scenes(200, "train")
    for s in scenes:
        every = [n.text for n in hard_negatives(s)]
        assert negclip_negatives(s) == every
        swaps = negclip_negatives(s, NEGATIVE_SETS["swaps"])
        if len(s.objects) == 2:  # two objects: an attribute or relation swap, never the replaced shape
            assert swaps and set(swaps) < set(every)
        if len(s.objects) == 1:  # one object has no swap: it keeps its replaced shape
            assert swaps == every == [n.text for n in hard_negatives(s, ("object_replacement",))]
    assert {len(s.objects) for s in scenes} >= {1, 2}


def test_negclip_batch_loss_is_contrastive_loss_with_the_batch_negatives(tok):
    tokenizer = tok
    data = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", n=6, task="negatives")
    batch = negatives_collate(tokenizer)([data[i] for i in range(6)])
    torch.manual_seed(0)
    model = CLIP(tiny_config(vocab_size=len(tokenizer), patch_size=8)).eval()
    loss, logs = negclip_batch_loss(model, batch)
    image_emb = model.encode_image(to_float(batch["images"]))
    text_emb = model.encode_text(batch["input_ids"], batch["attention_mask"])
    negative_emb = model.encode_text(batch["negative_input_ids"], batch["negative_attention_mask"])
    assert_close(loss, contrastive_loss(image_emb, text_emb, model.scale, negative_emb))
    assert loss > batch_loss(model, batch)[0]  # the extra columns only add competitors
    assert logs == {"temperature": pytest.approx(0.07)}


def test_both_captions_loss_averages_the_loss_against_each_set_of_captions(tok):
    data = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", n=6)
    whole = [caption(s) for s in data.scenes]
    left_out = [leaving_out(s, text, 1.0, random.Random(0)) for s, text in zip(data.scenes, whole)]
    collate = lambda texts: indexed_collate(data.images, encode_texts(tok, texts, max_length=40))(list(range(6)))
    batch = collate(whole) | {"left_out": collate(left_out)}
    torch.manual_seed(0)
    model = CLIP(tiny_config(vocab_size=len(tok), patch_size=8)).eval()
    loss, logs = both_captions_loss(model, batch)
    assert_close(loss, (batch_loss(model, batch)[0] + batch_loss(model, batch["left_out"])[0]) / 2)
    same = both_captions_loss(model, batch | {"left_out": collate(whole)})[0]
    assert_close(same, batch_loss(model, batch)[0])  # nothing left out: CLIP's loss
    assert logs == {"temperature": pytest.approx(0.07)}


def test_left_out_captions_keep_negatives_that_leave_the_same_words_out():
    scenes = ShapesWorld(seed=0).scenes(300, "train")
    for i, s in enumerate(scenes):  # nothing left out: the canonical caption and NegCLIP's own negatives
        assert left_out_with_negatives(s, 0.0, f"k{i}", NEGATIVE_SETS["swaps"]) == (
            caption(s), negclip_negatives(s, NEGATIVE_SETS["swaps"]))
    star_circle = [s for s in scenes if len(s.objects) == 2 and s.objects[0].shape != s.objects[1].shape][0]
    p, q = star_circle.objects
    text, negatives = left_out_with_negatives(star_circle, 1.0, "k", ("relation_swap",))
    assert text == f"{a(p.shape)} {relation(p, q)} {a(q.shape)}"  # every size and colour left out
    assert negatives == [f"{a(q.shape)} {relation(p, q)} {a(p.shape)}"]  # the swap leaves the same words out
    for i, s in enumerate(scenes):  # half left out: the same words go from the caption and from its negatives
        text, negatives = left_out_with_negatives(s, 0.5, f"k{i}", NEGATIVE_SETS["swaps"])
        assert text == leaving_out(s, caption(s), 0.5, random.Random(f"k{i}")) and negatives and text not in negatives


def test_negclip_left_out_loss_weighs_the_loss_of_each_set_of_captions(tok):
    data = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", n=6, task="negatives")
    left = [left_out_with_negatives(s, 1.0, f"k{i}") for i, s in enumerate(data.scenes)]
    collate = negatives_collate(tok)
    batch = collate([data[i] for i in range(6)])
    left_batch = collate([data[i] | {"text": t, "negatives": n} for i, (t, n) in enumerate(left)])
    torch.manual_seed(0)
    model = CLIP(tiny_config(vocab_size=len(tok), patch_size=8)).eval()
    whole, left_out = negclip_batch_loss(model, batch)[0], negclip_batch_loss(model, left_batch)[0]
    for weight in (0.0, 0.2, 1.0):
        loss, logs = negclip_left_out_loss(model, batch | {"left_out": left_batch}, weight)
        assert_close(loss, (1 - weight) * whole + weight * left_out)
    assert logs == {"temperature": pytest.approx(0.07)}
    with pytest.raises(ValueError, match="left_out_weight"):
        negclip_left_out_loss(model, batch | {"left_out": left_batch}, 1.5)


# ---------------------------------------------------------------- encoders


def test_image_tower_without_pre_norm_is_a_plain_vit():
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, n_heads=2)
    vit, tower = ViT(config).eval(), ImageTower(config).eval()
    tower.load_state_dict(vit.state_dict())  # a notebook-01 ViT checkpoint loads as it is
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(tower(images).hidden, vit(images).hidden)


def test_image_tower_reads_images_of_another_size_resized_to_its_own():
    """Notebook 02's tower reads the world's 64 px scenes at 48 px: any input is resized (bicubic, antialiased, in
    [-1, 1]) before the patches are cut, exactly as a backbone's preprocessing would resize it."""
    torch.manual_seed(0)
    tower = ImageTower(ViTConfig(image_size=24, patch_size=8, dim=32, depth=1, n_heads=2)).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    by_hand = F.interpolate(to_float(images), size=(24, 24), mode="bicubic", antialias=True).clamp(-1, 1)
    with torch.no_grad():
        assert_close(tower(to_float(images)).hidden, tower(by_hand).hidden)
        preprocessed = preprocess_images(images, 24, (0.5,) * 3, (0.5,) * 3)  # the tiny-clip-vit backbone's way
        assert_close(tower(to_float(images)).hidden, tower(preprocessed).hidden, atol=1e-5, rtol=1e-4)
        assert tower.tokens(to_float(images)).shape == (2, 1 + 9, 32)


def test_embeddings_are_unit_vectors_of_the_shared_width():
    model = CLIP(tiny_config()).eval()
    ids, mask = captions_batch()
    image_emb, text_emb = model.encode_image(torch.randn(3, 3, 32, 32)), model.encode_text(ids, mask)
    assert image_emb.shape == text_emb.shape == (3, 16)
    assert_close(image_emb.norm(dim=-1), torch.ones(3))
    assert_close(text_emb.norm(dim=-1), torch.ones(3))
    assert isinstance(model, DualEncoder) and isinstance(model, PairScorer) and model.max_text_len == 64


def test_as_a_pair_scorer_clip_gives_each_image_the_cosine_with_its_own_text():
    torch.manual_seed(0)
    model = CLIP(tiny_config()).eval()
    images, (ids, mask) = torch.randn(3, 3, 32, 32), captions_batch()
    with torch.no_grad():
        logits_per_image, _ = model(images, ids, mask)
        assert_close(model.score(images, ids, mask), logits_per_image.diagonal() / model.scale)


def test_the_harness_embeds_in_batches_what_the_model_embeds_at_once(tok):
    """`evaluate.embed_images` / `embed_texts` (what every dual-encoder number is measured with): uint8 images and
    strings in, the model's unit vectors out, the same in batches of 2 as in one batch."""
    torch.manual_seed(0)
    model = CLIP(tiny_config(vocab_size=len(tok))).eval()
    data = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", n=5)
    texts = [data.text(i) for i in range(5)]
    text = encode_texts(tok, texts)
    with torch.no_grad():
        images, captions = model.encode_image(to_float(data.images)), model.encode_text(text.input_ids, text.attention_mask)
    assert_close(embed_images(model, data.images, batch_size=2), images, atol=1e-6, rtol=1e-5)
    assert_close(embed_texts(model, tok, texts, batch_size=2), captions, atol=1e-6, rtol=1e-5)


def test_grid_pooling_projects_the_flattened_patch_grid():
    torch.manual_seed(0)
    model = CLIP(tiny_config(image_pool="grid")).eval()
    images = torch.randn(2, 3, 32, 32)
    grid = model.image_tower(images).patches  # [2, 16, 32]: a 4 x 4 grid of 32-d vectors
    assert model.image_proj.in_features == 16 * 32
    assert_close(model.encode_image(images), F.normalize(grid.flatten(1) @ model.image_proj.weight.T, dim=-1))
    with pytest.raises(ValueError, match="image_pool='mean'"):
        tiny_config(image_pool="mean")


def test_last_token_positions():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 1, 1, 1]])
    assert last_token_positions(mask).tolist() == [2, 4, 0, 4]
    with pytest.raises(ValueError, match="attention_mask"):
        last_token_positions(torch.tensor([[1, 1], [0, 0]]))


@pytest.mark.parametrize("causal", [True, False])
def test_text_is_pooled_at_its_last_real_token(causal):
    torch.manual_seed(0)
    config = tiny_config()
    config.text.causal = causal
    model = CLIP(config).eval()
    ids, mask = captions_batch()
    with torch.no_grad():
        batched = model.encode_text(ids, mask)  # row 2 (4 tokens) is padded to 9
        alone = model.encode_text(ids[2:, :4], mask[2:, :4])
        hidden = model.text_tower(input_ids=ids, attention_mask=mask)  # [3, 9, D]
        by_hand = F.normalize(model.text_proj(hidden[torch.arange(3), torch.tensor([5, 8, 3])]), dim=-1)
        other_padding = model.encode_text(ids.masked_fill(mask == 0, 7), mask)
    assert_close(batched, by_hand)
    assert_close(batched[2:], alone, atol=1e-6, rtol=1e-5)
    assert_close(batched, other_padding, atol=1e-6, rtol=1e-5)


def test_zero_shot_classifier_averages_normalised_prompts(tok):
    tokenizer = tok
    model = CLIP(tiny_config(vocab_size=len(tokenizer))).eval()
    classnames, templates = ["red circle", "blue square", "green star"], ["a {}", "a picture of a {}"]
    classifier = zero_shot_classifier(model, tokenizer, classnames, templates)
    assert classifier.shape == (3, 16)
    assert_close(classifier.norm(dim=-1), torch.ones(3))
    batch = encode_texts(tokenizer, ["a blue square", "a picture of a blue square"])
    with torch.no_grad():
        by_hand = F.normalize(model.encode_text(batch.input_ids, batch.attention_mask).mean(dim=0), dim=-1)
    assert_close(classifier[1], by_hand, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="templates"):
        zero_shot_classifier(model, tokenizer, classnames, ["no placeholder"])


# ---------------------------------------------------------------- it learns


def test_tiny_clip_learns_eight_shapes_world_pairs(tok):
    tokenizer = tok
    data = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", n=8)
    assert len({data.text(i) for i in range(8)}) == 8  # every caption names its own image
    batch = caption_collate(tokenizer)([data[i] for i in range(8)])
    torch.manual_seed(0)
    model = CLIP(tiny_config(vocab_size=len(tokenizer), patch_size=4))  # 4 px patches: small objects cover a few pixels
    history = fit(model, batch_loss, lambda step: batch, steps=150, lr=3e-3, weight_decay=0.0, warmup=0.1, progress=False)
    assert history.loss[0] > 1.0 and history.loss[-1] < 0.05  # it learned the pairs
    assert history.logs[-1]["temperature"] < 0.07  # and sharpened its softmax
    model.eval()
    with torch.no_grad():
        logits_per_image, logits_per_text = model(to_float(batch["images"]), batch["input_ids"], batch["attention_mask"])
    assert retrieval_recall(logits_per_image, ks=(1,))["r1"] == 1.0
    assert retrieval_recall(logits_per_text, ks=(1,))["r1"] == 1.0


class ColourOracle(torch.nn.Module):
    """A stand-in dual encoder whose text vector is the one-hot of the colour word it contains."""

    def __init__(self, tokenizer, colours):
        super().__init__()
        self.tokenizer, self.colours = tokenizer, colours
        self.logit_scale = torch.nn.Parameter(torch.zeros(()))
        self.max_text_len = tiny_config().text.max_len

    def encode_text(self, input_ids, attention_mask=None):
        words = [self.tokenizer.decode(row, skip_special_tokens=True).split() for row in input_ids]
        return torch.stack([F.one_hot(torch.tensor(next(self.colours.index(w) for w in ws if w in self.colours)),
                                      len(self.colours)).float() for ws in words])


def test_zero_shot_attribute_is_exact_for_a_colour_oracle_and_chance_for_shapes(tok):
    tokenizer = tok
    scenes = single_objects(seed=0, n=60)
    oracle = ColourOracle(tokenizer, COLORS)
    image_emb = F.one_hot(torch.tensor([COLORS.index(s.objects[0].color) for s in scenes]), len(COLORS)).float()
    assert zero_shot_attribute(oracle, tokenizer, image_emb, scenes, "color") == 1.0
    assert zero_shot_attribute(oracle, tokenizer, image_emb, scenes, "color", ["a large {} star"]) == 1.0
    shapes_named_with_colours = prompt_templates("shape", "vocabulary")  # the oracle needs a colour word to read
    assert zero_shot_attribute(oracle, tokenizer, image_emb, scenes, "shape", shapes_named_with_colours) < 0.4


class ConjunctionOracle(ColourOracle):
    """A stand-in dual encoder that knows colour-shape pairs and nothing else: its text vector is the one-hot of the
    pair a text names, and zero when the text names no colour (as a generic shape prompt does)."""

    def encode_text(self, input_ids, attention_mask=None):
        out = torch.zeros(len(input_ids), len(COLORS) * len(SHAPES))
        for row, ids in enumerate(input_ids):
            words = self.tokenizer.decode(ids, skip_special_tokens=True).split()
            colour, shape = (next((w for w in words if w in names), None) for names in (COLORS, SHAPES))
            if colour and shape:
                out[row, COLORS.index(colour) * len(SHAPES) + SHAPES.index(shape)] = 1.0
        return out


def test_zero_shot_in_caption_reads_a_conjunction_that_generic_prompts_cannot(tok):
    scenes = single_objects(seed=0, n=70)
    pair = lambda s: COLORS.index(s.objects[0].color) * len(SHAPES) + SHAPES.index(s.objects[0].shape)
    image_emb = F.one_hot(torch.tensor([pair(s) for s in scenes]), len(COLORS) * len(SHAPES)).float()
    oracle = ConjunctionOracle(tok, COLORS)
    assert zero_shot_in_caption(oracle, tok, image_emb, scenes, "shape") == 1.0
    assert zero_shot_in_caption(oracle, tok, image_emb, scenes, "color") == 1.0
    assert zero_shot_attribute(oracle, tok, image_emb, scenes, "shape") < 0.4  # no colour word, no pair to read
    shuffled = image_emb[torch.randperm(len(scenes), generator=torch.Generator().manual_seed(0))]
    assert zero_shot_in_caption(oracle, tok, shuffled, scenes, "shape") < 0.4  # another image's pair reads wrong
    with pytest.raises(ValueError, match="attribute"):
        zero_shot_in_caption(oracle, tok, image_emb, scenes, "size")


def test_measure_reports_every_benchmark_in_range(tok):
    tokenizer = tok
    bench = DualEncoderBench.build(seed=0, n=40, image_size=32)
    assert {k: len(v) for k, v in bench.images.items()} == {"retrieval": 40, "single": 40, "heldout": 20,
                                                            "relation_swap": 40, "attribute_swap": 40}
    torch.manual_seed(0)
    out = measure(CLIP(tiny_config(vocab_size=len(tokenizer), image_pool="grid")), tokenizer, bench)
    keys = {"t2i_r1", "i2t_r1", "zs_color_acc", "zs_shape_acc", "zs_color_acc_vocab", "zs_shape_acc_vocab",
            "heldout_combo_acc", "relation_swap_acc", "attribute_swap_acc"}
    assert keys <= set(out) and all(0.0 <= out[k] <= 1.0 for k in keys)
    assert out["t2i_r1"] < 0.5  # an untrained model retrieves at about chance (1/40)
