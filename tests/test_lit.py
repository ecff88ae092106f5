"""LiT on frozen features (notebook 02): the heads, the temperature clamp, class text, training on pairs with a known
answer, duplicate captions in scoring, and (when installed) the real stamps through the real backbones."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vlmlab import backbones, zoo
from vlmlab.data import real
from vlmlab.encoders import image_vectors, text_vectors
from vlmlab.strategies import lit


def heads(image_dim, text_dim, embed_dim=256, **kwargs) -> lit.ProjectionHeads:
    return lit.ProjectionHeads(lit.Config(image_dim, text_dim, embed_dim, **kwargs))


@pytest.mark.parametrize("hidden", [None, 16])
def test_heads_give_unit_vectors_of_the_shared_width(hidden):
    model = heads(image_dim=12, text_dim=7, embed_dim=5, hidden=hidden, dropout=0.5)
    image, text = model.encode_image(torch.randn(3, 12)), model.encode_text(torch.randn(4, 7))
    assert image.shape == (3, 5) and text.shape == (4, 5)
    assert_close(image.norm(dim=1), torch.ones(3))
    assert_close(text.norm(dim=1), torch.ones(4))
    assert model.temperature == pytest.approx(0.07)


def test_temperature_is_clamped_at_max_logit_scale():
    model = heads(4, 4, 2)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))  # T = 0.001 asked for
    assert model.scale.item() == pytest.approx(100.0)
    assert model.temperature == pytest.approx(0.01)
    loss, logs = lit.batch_loss(model, {"image_features": torch.randn(3, 4), "text_features": torch.randn(3, 4)})
    assert logs == {"temperature": pytest.approx(0.01)}
    loss.backward()
    assert model.logit_scale.grad.item() == 0.0  # above the clamp the scale learns nothing


@pytest.mark.parametrize("kwargs, name", [({"embed_dim": 0}, "embed_dim"), ({"hidden": 0}, "hidden"),
                                          ({"dropout": 1.0}, "dropout"), ({"init_temperature": 0.001}, "init_temperature")])
def test_bad_head_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lit.Config(**({"image_dim": 4, "text_dim": 4} | kwargs))


def test_dropout_is_off_when_scoring_and_the_mode_is_restored():
    model = heads(8, 8, 4, dropout=0.9)
    x, t = torch.randn(5, 8), torch.randn(5, 8)
    first = lit.similarity(model, x, t)
    assert model.training  # similarity put it back in train mode
    assert_close(lit.similarity(model, x, t), first)  # no dropout: the same scores twice
    assert first.shape == (5, 5)
    # measured on held-out pairs: the same scores, as the notebook's retrieval keys (the tokenizer is unused)
    assert lit.measure(model, None, lit.FeaturePairs(x, t, list("abcde"))) == lit.retrieval_scores(first, list("abcde"))


def test_class_text_weights_class_names_by_probability():
    names = torch.eye(4)  # class c's name embeds as the unit vector e_c
    logits = torch.tensor([[10.0, -10.0, -10.0, -10.0],  # sure of class 0
                           [0.0, 0.0, -30.0, -30.0]])  # torn between 0 and 1
    out = lit.class_text(logits, names, k=2)
    assert_close(out[0], torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert_close(out[1], torch.tensor([1.0, 1.0, 0.0, 0.0]) / math.sqrt(2))
    with pytest.raises(ValueError, match="k=5"):
        lit.class_text(logits, names, k=5)


def test_append_class_text_gives_both_parts_the_same_length():
    vectors, guess = torch.randn(3, 6) * 10, F.normalize(torch.randn(3, 4), dim=-1)
    out = lit.append_class_text(vectors, guess)
    assert out.shape == (3, 10)
    assert_close(out[:, :6], vectors)
    assert_close(out[:, 6:].norm(dim=1), vectors.norm(dim=1))


def test_duplicate_captions_count_for_every_image_that_has_them():
    texts = ["A flower.", "A frog.", "A flower."]
    assert lit.caption_targets(texts) == [{0, 2}, {1}, {0, 2}]
    similarity = torch.tensor([[0.1, 0.0, 0.9],  # image 0 picks caption 2: the same text as its own, a hit
                               [0.0, 0.9, 0.1],
                               [0.9, 0.0, 0.1]])  # image 2 picks caption 0: a hit too
    scores = lit.retrieval_scores(similarity, texts, ks=(1,))
    assert scores == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    assert lit.retrieval_scores(similarity, ["a", "b", "c"], ks=(1,))["i2t_r1"] == pytest.approx(1 / 3)  # distinct texts
    with pytest.raises(ValueError, match="similarity.shape"):
        lit.retrieval_scores(similarity, texts[:2])


def test_training_finds_a_known_pairing_and_generalises_to_new_pairs():
    """Text features are a fixed linear map of the image features plus noise, so a linear pair of heads exists
    that matches every pair; trained on 96 pairs, the heads must match 32 pairs they never saw."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(128, 20, generator=g)
    texts = images @ torch.randn(20, 12, generator=g) + 0.05 * torch.randn(128, 12, generator=g)
    model = heads(20, 12, embed_dim=16)
    untrained = lit.retrieval_scores(lit.similarity(model, images[96:], texts[96:]), [str(i) for i in range(32)], ks=(1,))
    history = lit.train_heads(model, images[:96], texts[:96], steps=150, batch_size=32, lr=1e-2)
    scores = lit.retrieval_scores(lit.similarity(model, images[96:], texts[96:]), [str(i) for i in range(32)], ks=(1,))
    assert untrained["i2t_r1"] < 0.3
    assert scores["i2t_r1"] >= 0.95 and scores["t2i_r1"] >= 0.95
    assert history.loss[-1] < history.loss[0] / 4
    assert history.logs[-1]["temperature"] < 0.07  # the temperature learned to sharpen


def test_batches_are_a_pure_function_of_the_step():
    images, texts = torch.randn(40, 6), torch.randn(40, 5)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = heads(6, 5, 4, dropout=0.1)
        lit.train_heads(model, images, texts, steps=5, batch_size=8, seed=3)
        runs.append(model.state_dict())
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name
    with pytest.raises(ValueError, match="batch_size"):
        lit.train_heads(model, images, texts, batch_size=1)
    with pytest.raises(ValueError, match="shapes"):
        lit.train_heads(model, images, texts[:30])


def _installed(name: str) -> bool:
    return all(backbones.package_folder(m) is not None for m in backbones.REGISTRY[name].packages)


@pytest.mark.skipif(not (_installed("efficientnet-lite0") and _installed("minilm-l6") and real.tuxpaint_root()),
                    reason="needs efficientnet-lite0, minilm-l6 and the Tux Paint stamps")
def test_real_stamps_through_the_frozen_backbones(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path / "cache"))  # the EfficientNet conversion lands here
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "shipped")
    cnn, minilm = backbones.load_image_encoder("efficientnet-lite0"), backbones.load_text_encoder("minilm-l6")
    stamps = {s.path.relative_to(real.tuxpaint_root()).as_posix(): s for s in real.tuxpaint_stamps()}
    items = [stamps[name] for name in ("animals/amphibians/frog.png", "animals/mammals/bovines/cow.png",
                                       "symbols/alphabets/english/filled/lowercase/a_filled.png", "food/fruit/banana.png")]
    vectors, texts = lit.extract_features(items, cnn, minilm)
    assert vectors.shape == (4, 1280) and texts.shape == (4, 384)
    assert_close(texts.norm(dim=1), torch.ones(4))
    with torch.no_grad():
        one_batch, _ = minilm.model(**minilm.preprocess([s.text for s in items]))
        logits = cnn.model.net._fc(vectors)  # [4, 1000]
    assert_close(text_vectors(minilm, [s.text for s in items], batch_size=3), one_batch, atol=1e-5, rtol=0)
    assert_close(image_vectors(cnn, [s.path for s in items], batch_size=3), vectors, atol=1e-4, rtol=1e-4)
    names = real.imagenet_classnames()
    top5 = [[names[i] for i in row.topk(5).indices] for row in logits]
    assert any("frog" in name for name in top5[0]) and "banana" in top5[3]
    guess = lit.class_text(logits, text_vectors(minilm, names), k=5)  # [4, 384]
    assert (guess @ texts.T)[0].argmax() == 0  # zero-shot: the frog's ImageNet guess is closest to "A frog."
