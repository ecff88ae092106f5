"""The real track of notebook 04 on tiny stand-ins: a random 2-layer Hugging Face Llama (width 64) for SmolLM2 and
random vectors for EfficientNet's features. Caption tokens and labels, the prefix's labels, training that leaves the
LM untouched, generation through the LM's own `generate`, the two baselines and the score."""

import types

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from vlmlab.backbones import preprocess_images
from vlmlab.data.loaders import IGNORE_INDEX
from vlmlab.data.real import ImageText
from vlmlab.strategies import frozen_prefix
from vlmlab.strategies import stamp_captions as sc
from vlmlab.tokenizer import load_tokenizer

CAPTIONS = ["a red star", "a small blue circle", "a green square", "a large yellow triangle"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def tiny_llama(tok, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    """A random Llama; weights drawn with std 0.3, not 0.02: at 0.02 its logits are too flat for any prefix to steer."""
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config).eval()


def test_captions_are_the_targets_with_eos_and_no_bos(tok):
    text = sc.encode_captions(tok, ["a red star", "a green square and a blue circle"])
    first = tok.encode("a red star") + [tok.eos_token_id]
    assert text.input_ids[0, : len(first)].tolist() == first and text.labels[0, : len(first)].tolist() == first
    assert text.attention_mask[0].sum() == len(first)
    assert (text.labels[0, len(first) :] == IGNORE_INDEX).all()  # padding: no loss
    assert tok.bos_token_id not in text.input_ids.tolist()[1]


def test_a_prompt_gets_no_loss_and_the_caption_follows_it_after_a_space(tok):
    text = sc.encode_captions(tok, ["a red star"], prompt="caption:")
    prompt, caption = tok.encode("caption:"), tok.encode(" a red star")
    assert text.input_ids[0].tolist() == prompt + caption + [tok.eos_token_id]
    assert text.labels[0].tolist() == [IGNORE_INDEX] * len(prompt) + caption + [tok.eos_token_id]


def test_long_captions_are_cut_at_max_length(tok):
    text = sc.encode_captions(tok, ["a large red star left of a small blue circle"], max_length=4)
    assert text.input_ids.shape == (1, 4) and tok.eos_token_id not in text.input_ids[0].tolist()


@pytest.mark.parametrize("captions, max_length, name", [([], 16, "captions"), (["a star", " "], 16, "captions"),
                                                        (["a star"], 1, "max_length")])
def test_bad_captions_are_refused_by_name(tok, captions, max_length, name):
    with pytest.raises(ValueError, match=name):
        sc.encode_captions(tok, captions, max_length=max_length)


@pytest.mark.parametrize("mapper, features", [("mlp", torch.randn(3, 20)), ("transformer", torch.randn(3, 5, 20))])
def test_the_prefix_has_k_vectors_of_the_lm_width(tok, mapper, features):
    model = sc.build_captioner(tiny_llama(tok), feature_dim=20, k=6, mapper=mapper)
    assert model.prefix(features).shape == (3, 6, 64)
    table = {row["part"]: row for row in frozen_prefix.parameter_table({"lm": model.lm, "mapper": model.mapper})}
    assert table["lm"]["trainable"] == 0 and table["mapper"]["trainable"] == table["mapper"]["params"] > 0


@pytest.mark.parametrize("kwargs, name", [({"mapper": "cnn"}, "mapper"), ({"k": 0}, "k"), ({"feature_dim": 0}, "feature_dim")])
def test_bad_captioner_settings_are_refused_by_name(tok, kwargs, name):
    with pytest.raises(ValueError, match=name):
        sc.build_captioner(tiny_llama(tok), **({"feature_dim": 20} | kwargs))


def test_the_lm_sees_labels_ignored_on_the_prefix_then_the_caption_labels(tok):
    model = sc.build_captioner(tiny_llama(tok), feature_dim=8, k=3)
    text = sc.encode_captions(tok, CAPTIONS[:2])
    seen = {}
    model.lm.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    out = model(torch.randn(2, 8), text)
    assert seen["inputs_embeds"].shape == (2, 3 + text.input_ids.shape[1], 64)
    assert (seen["labels"][:, :3] == IGNORE_INDEX).all()
    assert torch.equal(seen["labels"][:, 3:], text.labels)
    assert seen["attention_mask"][:, :3].eq(1).all() and torch.isfinite(out.loss)


def test_batches_trim_padding_and_refuse_a_length_mismatch(tok):
    text = sc.encode_captions(tok, CAPTIONS)
    batches = sc.caption_batches(torch.randn(4, 8), text, batch_size=2, seed=0)
    batch = batches(0)
    assert batch["inputs"].shape == (2, 8) and batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
    assert torch.equal(batches(0)["input_ids"], batch["input_ids"])  # a pure function of the step
    with pytest.raises(ValueError, match="features"):
        sc.caption_batches(torch.randn(3, 8), text, batch_size=2)


def test_training_overfits_four_stamps_and_leaves_the_lm_untouched(tok):
    """Four images, four captions: the mapper alone learns to make the random frozen LM say each one."""
    model = sc.build_captioner(tiny_llama(tok), feature_dim=8, k=4, hidden=64)
    features = torch.eye(4, 8) * 3  # four clearly different images
    before, mapper_before = frozen_prefix.checksum(model.lm), frozen_prefix.checksum(model.mapper)
    history = sc.train_captioner(model, features, sc.encode_captions(tok, CAPTIONS), steps=80, batch_size=4, lr=1e-2)
    assert history.loss[-1] < 0.1 * history.loss[0]
    assert frozen_prefix.checksum(model.lm) == before and frozen_prefix.checksum(model.mapper) != mapper_before
    captions = sc.generate_stamp_captions(model, tok, features, max_new_tokens=12, batch_size=3)
    assert captions == CAPTIONS


def test_generation_gives_one_string_per_image_greedy_or_beam(tok):
    model = sc.build_captioner(tiny_llama(tok), feature_dim=8, k=2)
    features = torch.randn(5, 8)
    greedy = sc.generate_stamp_captions(model, tok, features, prompt="a", max_new_tokens=4, batch_size=2)
    beam = sc.generate_stamp_captions(model, tok, features, max_new_tokens=4, num_beams=3)
    assert len(greedy) == len(beam) == 5 and all(isinstance(c, str) for c in greedy + beam)
    assert greedy == sc.generate_stamp_captions(model, tok, features, prompt="a", max_new_tokens=4)  # batching changes nothing


def test_generation_refuses_features_of_the_wrong_rank(tok):
    model = sc.build_captioner(tiny_llama(tok), feature_dim=8, k=2)
    with pytest.raises(ValueError, match="features"):
        sc.generate_stamp_captions(model, tok, torch.randn(8))


def test_baselines_have_known_answers():
    assert sc.most_common_caption(["a cat.", "a dog.", "a cat."], 2) == ["a cat.", "a cat."]
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[0.1, 5.0], [3.0, 0.2], [2.0, 2.1]])  # cosine picks direction, not length
    assert sc.nearest_neighbour_captions(train, ["x", "y", "xy"], queries) == ["y", "x", "xy"]
    with pytest.raises(ValueError, match="train_features"):
        sc.nearest_neighbour_captions(train, ["x", "y"], queries)


def test_measure_names_the_notebook_keys_and_prefers_the_right_captions():
    references = ["A red apple on a plate.", "The letter x in blue.", "A green bus in town.", "A zebra eating grass."]
    right = sc.measure(references, references)  # 4+ words each: every n-gram order up to 4 counts, so CIDEr-D is 10
    wrong = sc.measure(references[1:] + references[:1], references)
    assert set(right) == {"real_cider", "real_bleu4", "real_rouge_l"}
    assert right["real_cider"] == pytest.approx(10.0) and right["real_rouge_l"] == pytest.approx(1.0)
    assert wrong["real_cider"] < 0.5 * right["real_cider"]


def test_stamp_features_are_the_encoders_vectors_in_item_order(tmp_path):
    paths = []
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        paths.append(tmp_path / f"{name}.png")
        Image.new("RGB", (10, 6), color).save(paths[-1])
    encoder = types.SimpleNamespace(preprocess=lambda images: preprocess_images(images, 8, (0, 0, 0), (1, 1, 1)),
                                    model=lambda x: (x.mean(dim=(2, 3)), x))  # vector: the mean colour in [0, 1]
    vectors = sc.stamp_features([ImageText(p, "a square") for p in paths], encoder, batch_size=1)
    torch.testing.assert_close(vectors, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="items"):
        sc.stamp_features([], encoder)
