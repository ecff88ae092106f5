"""The evaluation harness (`vlmlab.harness`): embedding helpers, zero-shot classifiers, pair scores, image features
and `suite`, on hand-made models whose answers are known."""

import pytest
import torch

from vlmlab.data.evalsets import prompt_templates
from vlmlab.data.loaders import encode_texts, to_float
from vlmlab.data.shapes import COLORS, ShapesWorld


class BagOfWords(torch.nn.Module):
    """A hand-made dual encoder: an image is its mean colour (3 numbers), a text its bag of token ids; both
    L2-normalised. Its outputs are computed by hand below."""

    max_text_len = 16

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = torch.nn.Parameter(torch.ones(1))  # a parameter, so the harness finds the device

    def encode_image(self, images):
        return torch.nn.functional.normalize(images.mean(dim=(2, 3)) * self.scale, dim=-1)  # [B, 3]

    def encode_text(self, input_ids, attention_mask):
        bags = torch.zeros(len(input_ids), self.vocab_size).scatter_add_(1, input_ids, attention_mask.float())
        return torch.nn.functional.normalize(bags, dim=-1)  # [B, V]

    def score(self, images, input_ids, attention_mask):  # a pair scorer: image brightness + text length
        return images.mean(dim=(1, 2, 3)) + attention_mask.sum(dim=1)

    def image_features(self, pixels):
        return pixels.mean(dim=(2, 3))


def uint8_images(n=5, size=8, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_embed_images_and_texts_batch_by_batch_in_eval_mode(tok):
    from vlmlab.harness import embed_images, embed_texts

    model, images = BagOfWords(len(tok)).train(), uint8_images()
    emb = embed_images(model, images, batch_size=2)
    assert not model.training and not emb.requires_grad
    expected = torch.nn.functional.normalize(to_float(images).mean(dim=(2, 3)), dim=-1)
    torch.testing.assert_close(emb, expected)
    texts = ["a red star", "two", "a small blue circle left of a large red star and a green square above a yellow cross"]
    assert len(tok.encode(texts[2])) > 16
    batch = encode_texts(tok, texts, max_length=16)  # <bos> text <eos>, at most the model's max_text_len
    expected = model.encode_text(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(embed_texts(model, tok, texts, batch_size=2), expected)


def test_zero_shot_classifier_averages_the_templates_of_each_class(tok):
    from vlmlab.harness import embed_texts, zero_shot_classifier

    model = BagOfWords(len(tok))
    templates = ["a {}", "a large {} star"]
    classes = zero_shot_classifier(model, tok, ["red", "blue"], templates)
    assert classes.shape == (2, len(tok))
    for k, name in enumerate(["red", "blue"]):
        mean = embed_texts(model, tok, [t.format(name) for t in templates]).mean(dim=0)
        torch.testing.assert_close(classes[k], mean / mean.norm())
    with pytest.raises(ValueError, match="classnames"):
        zero_shot_classifier(model, tok, [], templates)
    with pytest.raises(ValueError, match="templates"):
        zero_shot_classifier(model, tok, ["red"], ["no slot here"])


def test_zero_shot_attribute_maps_each_scene_to_its_class(tok):
    from vlmlab.harness import zero_shot_attribute, zero_shot_classifier

    model = BagOfWords(len(tok))
    scenes = ShapesWorld(seed=0, min_objects=1, max_objects=1).scenes(12, "test")
    classes = zero_shot_classifier(model, tok, COLORS, prompt_templates("color"))
    truth = torch.stack([classes[COLORS.index(s.objects[0].color)] for s in scenes])  # images that ARE their class
    assert zero_shot_attribute(model, tok, truth, scenes, "color") == 1.0
    shifted = torch.stack([classes[(COLORS.index(s.objects[0].color) + 1) % len(COLORS)] for s in scenes])
    assert zero_shot_attribute(model, tok, shifted, scenes, "color") == 0.0


def test_score_pairs_and_image_features_read_float_pixels(tok):
    from vlmlab.harness import image_features, score_pairs

    model, images = BagOfWords(len(tok)), uint8_images()
    texts = ["a", "a red star", "two", "a small blue circle", "three"]
    scores = score_pairs(model, tok, images, texts, batch_size=2)
    lengths = encode_texts(tok, texts, max_length=16).attention_mask.sum(dim=1)
    torch.testing.assert_close(scores, to_float(images).mean(dim=(1, 2, 3)) + lengths)
    torch.testing.assert_close(image_features(model, images, batch_size=3), to_float(images).mean(dim=(2, 3)))


def test_suite_measures_a_pair_scorer_on_the_swap_probes(tok):
    """An oracle that knows each image's true caption scores 1.0 on both swap probes; a constant scorer ties every
    pair, and ties are wrong."""
    from vlmlab.data.evalsets import DualEncoderBench
    from vlmlab.harness import suite

    bench = DualEncoderBench.build(seed=0, n=6, image_size=32)
    truth = {}
    for kind, swap in bench.swaps.items():
        text = encode_texts(tok, swap.positives, max_length=16)
        for image, ids, mask in zip(to_float(bench.images[kind]), text.input_ids, text.attention_mask):
            truth[image.numpy().tobytes()] = ids[mask.bool()].tolist()

    class Oracle(BagOfWords):
        def score(self, images, input_ids, attention_mask):
            return torch.tensor([float(ids[mask.bool()].tolist() == truth[image.numpy().tobytes()])
                                 for image, ids, mask in zip(images, input_ids, attention_mask)])

    class Constant(BagOfWords):
        def score(self, images, input_ids, attention_mask):
            return torch.zeros(len(images))

    assert suite(Oracle(len(tok)), tok, "pair_scorer", bench) == {"relation_swap_acc": 1.0, "attribute_swap_acc": 1.0}
    assert suite(Constant(len(tok)), tok, "pair_scorer", bench) == {"relation_swap_acc": 0.0, "attribute_swap_acc": 0.0}
    with pytest.raises(ValueError, match="kind='captions' is not one of"):
        suite(Oracle(len(tok)), tok, "captions", bench)


def test_novel_scenes_get_their_own_caption_vqa_and_retrieval_numbers(tiny_zoo, tok):
    from vlmlab.data.evalsets import DualEncoderBench, SceneBench
    from vlmlab.data.language import caption
    from vlmlab.evaluate import caption_scores, retrieval_recall
    from vlmlab.generation import generate_text
    from vlmlab.harness import embed_images, embed_texts, image_features, suite
    from vlmlab.strategies import prefix_lm

    torch.manual_seed(0)
    config = prefix_lm.Config(vocab_size=len(tok), text_len=30, dim=32, depth=1, n_heads=2,
                              vision={"tower": "regions", **tiny_zoo["tiny-vit-detector-probe"]})
    model = prefix_lm.PrefixLM.from_config(config.to_dict())
    bench = SceneBench.build(seed=0, n=6, questions_per_scene=1)
    novel = [1, 4]
    out = suite(model, tok, "captioner", bench, novel) | suite(model, tok, "vqa", bench, novel)
    said = generate_text(model, tok, image_features(model, bench.images))
    expected = caption_scores([said[i] for i in novel], [bench.scenes[i] for i in novel])
    assert {k: out[f"caption_{k}_novel"] for k in expected} == expected
    assert "caption_f1" in out and "caption_exact" in out and 0 <= out["vqa_acc_novel"] <= 1
    assert suite(model, tok, "captioner", bench) == {k: v for k, v in out.items() if k.startswith("caption") and "novel" not in k}

    from vlmlab.nn import TextConfig, ViTConfig
    from vlmlab.strategies import clip

    dual = clip.CLIP(clip.Config(ViTConfig(image_size=64, patch_size=16, dim=16, depth=1, n_heads=2),
                                 TextConfig(vocab_size=len(tok), max_len=40, dim=16, depth=1, n_heads=2, causal=True), 8))
    retrieval = DualEncoderBench.build(seed=0, n=8)
    numbers = suite(dual, tok, "dual_encoder", retrieval, novel=[0, 5])
    texts = embed_texts(dual, tok, [caption(s) for s in retrieval.retrieval])
    similarity = embed_images(dual, retrieval.images["retrieval"]) @ texts.T
    assert numbers["t2i_r1_novel"] == retrieval_recall(similarity.T[[0, 5]], targets=[0, 5])["r1"]
    assert numbers["i2t_r5_novel"] == retrieval_recall(similarity[[0, 5]], targets=[0, 5])["r5"]


def test_absent_object_replies_scores_the_answers_to_the_colour_and_size_questions(tiny_zoo, tok, monkeypatch):
    from vlmlab import harness
    from vlmlab.data.evalsets import SceneBench
    from vlmlab.strategies import prefix_lm

    torch.manual_seed(0)
    config = prefix_lm.Config(vocab_size=len(tok), text_len=30, dim=32, depth=1, n_heads=2,
                              vision={"tower": "regions", **tiny_zoo["tiny-vit-detector-probe"]})
    model = prefix_lm.PrefixLM.from_config(config.to_dict())
    bench = SceneBench.build(seed=0, n=12, questions_per_scene=3)
    asked_about = [qa.qtype for qa in bench.questions if qa.qtype in ("color", "size")]
    assert "color" in asked_about and "size" in asked_about

    def denies_colours(model, tokenizer, features, prompts, max_new_tokens):  # "there is no" to colour questions only
        assert len(features) == len(prompts) == len(asked_about)
        return ["there is no star" if "color" in p else "large" for p in prompts]

    monkeypatch.setattr(harness, "generate_text", denies_colours)
    share = harness.absent_object_replies(model, tok, bench)
    assert share == asked_about.count("color") / len(asked_about) and 0 < share < 1
