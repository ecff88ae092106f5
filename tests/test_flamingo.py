"""Notebook 05's Flamingo: the Perceiver Resampler, the tanh-gated cross-attention layer, the interleaved mask, the
model that starts as exactly its frozen LM and leaves it untouched, decoding, and parity with Hugging Face's Idefics."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from vlmlab.data import shapes
from vlmlab.data.language import END_OF_CHUNK, IMAGE_TOKEN
from vlmlab.data.loaders import StepBatches, encode_texts
from vlmlab.generation import generate, generate_text
from vlmlab.lm import TinyLanguageModel
from vlmlab.nn import CausalLM, TextConfig
from vlmlab.strategies import flamingo
from vlmlab.train import fit

DV = 24  # width of the fake grid features


@pytest.fixture
def lm(tok):
    torch.manual_seed(0)
    config = TextConfig(vocab_size=len(tok), max_len=40, dim=32, depth=2, n_heads=2, causal=True)
    return TinyLanguageModel(CausalLM(config)).freeze()


@pytest.fixture
def model(lm, tok):
    torch.manual_seed(1)
    config = flamingo.Config(visual_dim=DV, n_latents=3, resampler_depth=1, n_heads=2, ff_mult=2,
                             image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN))
    return flamingo.Flamingo(config, lm=lm)


def open_gates(model: flamingo.Flamingo, value: float = 0.5) -> None:
    for layer in model.gated:
        nn.init.constant_(layer.alpha_attn, value), nn.init.constant_(layer.alpha_ff, value)


def ids_of(tok, texts: list[str]) -> torch.Tensor:
    return encode_texts(tok, [""] * len(texts), texts, max_length=40).input_ids


def test_resampler_gives_r_tokens_whatever_the_number_of_features_or_frames():
    torch.manual_seed(0)
    resampler = flamingo.PerceiverResampler(DV, depth=2, n_latents=5, n_heads=2, max_frames=3)
    for shape in ((2, 16, DV), (2, 64, DV), (2, 3, 16, DV)):
        assert resampler(torch.randn(shape)).shape == (2, 5, DV)
    with pytest.raises(ValueError, match="frames"):
        resampler(torch.randn(2, 4, 16, DV))


def test_media_index_and_mask_for_three_images():
    # <bos> a <image> b c <image> d <image> e: tokens before the first image see none, then only the latest one
    where = flamingo.media_index(torch.tensor([[1, 9, 3, 9, 9, 3, 9, 3, 9]]), image_token_id=3)
    assert where.tolist() == [[0, 0, 1, 1, 1, 2, 2, 3, 3]]
    mask = flamingo.cross_attention_mask(where, n_images=3, n_tokens=2)  # [1, 1, 9, 6]
    assert mask.shape == (1, 1, 9, 6)
    assert not mask[0, 0, :2].any()  # no image yet: nothing to attend to
    assert mask[0, 0, 3].tolist() == [True, True, False, False, False, False]
    assert mask[0, 0, 8].tolist() == [False, False, False, False, True, True]


@pytest.mark.parametrize("style", flamingo.STYLES)
def test_gated_layer_is_the_identity_at_init_and_reads_only_its_image(style):
    torch.manual_seed(0)
    layer = flamingo.GatedCrossAttentionDense(16, DV, 2, style=style)
    x, visual = torch.randn(1, 4, 16), torch.randn(1, 4, DV)  # two images of two tokens
    mask = flamingo.cross_attention_mask(torch.tensor([[0, 1, 2, 2]]), 2, 2)
    assert torch.equal(layer(x, visual, mask), x)  # tanh(0) = 0: nothing added, exactly
    nn.init.constant_(layer.alpha_attn, 0.7), nn.init.constant_(layer.alpha_ff, 0.0)
    out = layer(x, visual, mask)
    assert torch.equal(out[:, 0], x[:, 0])  # a token before any image gets nothing (not even a bias)
    changed = visual.clone()
    changed[:, :2] += 1.0  # image 1 changes
    again = layer(x, changed, mask)
    assert not torch.allclose(again[:, 1], out[:, 1]) and torch.equal(again[:, 2:], out[:, 2:])


def test_model_starts_as_exactly_the_frozen_lm(model, lm, tok):
    ids = ids_of(tok, [f"{IMAGE_TOKEN}Output: a red star{END_OF_CHUNK}{IMAGE_TOKEN}Output: a blue circle"])
    mask = torch.ones_like(ids)
    media = model.condition(torch.randn(1, 2, 7, DV))["media"]
    assert media.shape == (1, 2, 3, DV)
    assert torch.equal(model(media=media, input_ids=ids, attention_mask=mask).logits,
                       lm(input_ids=ids, attention_mask=mask).logits)
    ungated = flamingo.Flamingo(flamingo.Config(visual_dim=DV, gate=False, image_token_id=model.config.image_token_id), lm=lm)
    assert not torch.allclose(ungated(media=ungated.condition(torch.randn(1, 2, 7, DV))["media"], input_ids=ids,
                                      attention_mask=mask).logits, lm(input_ids=ids, attention_mask=mask).logits)


def test_every_other_layer_and_no_resampler(lm):
    model = flamingo.Flamingo(flamingo.Config(visual_dim=DV, xattn_every=2, resampler=False), lm=lm)
    assert model.where == [0] and len(model.gated) == 1 and model.resampler is None
    assert model.condition(torch.randn(2, 7, DV))["media"].shape == (2, 1, 7, DV)  # every grid feature is a token


def test_training_moves_only_the_new_parts(model, lm, tok):
    scenes = shapes.ShapesWorld(seed=0).scenes(12, "train")
    sequences = flamingo.interleaved_sequences(scenes, 16, seed=0, max_images=3)
    assert all(1 <= len(picked) <= 3 and text.count(IMAGE_TOKEN) == len(picked) for text, picked in sequences)
    text = encode_texts(tok, [""] * len(sequences), [t for t, _ in sequences], max_length=40)
    features = torch.randn(len(scenes), 7, DV)
    collate = flamingo.interleaved_collate(features, text, flamingo.pad_images(sequences, 3), buckets=2)
    before, gates = lm.checksum(), model.gate_values().clone()
    history = fit(model, flamingo.batch_loss, StepBatches(range(16), 8, collate), steps=4, lr=1e-2, progress=False)
    assert lm.checksum() == before  # the frozen LM is untouched
    assert not torch.equal(model.gate_values(), gates) and len(history.loss) == 4
    assert {name.split(".")[0] for name in model.saved_state()} == {"resampler", "gated"}


def test_missing_images_are_zeros_nobody_reads(tok):
    sequences = [("x", [0]), ("y", [1, 0])]
    text = encode_texts(tok, ["", ""], ["a", "b"], max_length=8)
    batch = flamingo.interleaved_collate(torch.ones(2, 3, DV), text, flamingo.pad_images(sequences, 2))([0, 1])
    assert batch["image_features"].shape == (2, 2, 3, DV) and batch["image_features"][0, 1].abs().sum() == 0


def test_decoding_with_and_without_the_cache_agree(model, tok):
    open_gates(model)
    features = torch.randn(2, 2, 7, DV)
    prompts = flamingo.fewshot_prompts([[s] for s in shapes.ShapesWorld(seed=0).scenes(2, "train")], "caption")
    assert prompts[0].count(IMAGE_TOKEN) == 2 and prompts[0].endswith("Output:")
    cached = generate_text(model, tok, features, prompts, max_new_tokens=6)
    assert cached == generate_text(model, tok, features, prompts, max_new_tokens=6, use_cache=False)
    assert cached != generate_text(model, tok, features.flip(1), prompts, max_new_tokens=6)  # the images matter


def test_decoding_needs_every_image_in_the_prompt(model, tok):
    ids = ids_of(tok, [f"{IMAGE_TOKEN}Output:"])[:, :-1]  # one image shown, two given
    with pytest.raises(ValueError, match="images before decoding"):
        generate(model, input_ids=ids, condition=model.condition(torch.randn(1, 2, 7, DV)), max_new_tokens=2)
    with pytest.raises(ValueError, match="input_ids"):
        model(media=torch.randn(1, 1, 3, DV), inputs_embeds=model.embed(ids), attention_mask=torch.ones_like(ids))


# ---------------------------------------------------------------- parity with Hugging Face's Idefics


@pytest.fixture
def idefics_config():
    from transformers import IdeficsConfig

    config = IdeficsConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, vision_config={"embed_dim": DV},
                           alpha_initializer="zeros", alpha_type="float",
                           qk_layer_norms=False, perceiver_config={"qk_layer_norms_perceiver": False})
    config._attn_implementation = "eager"
    return config


def test_resampler_matches_idefics(idefics_config):
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

    torch.manual_seed(0)
    hf = IdeficsPerceiverResampler(idefics_config, DV, depth=2, n_heads=4, head_dim=DV // 4, n_latents=5).eval()
    with pytest.raises(ValueError, match="GELU"):
        flamingo.from_hf_resampler(hf)  # Idefics's feed-forward is ReLU, Flamingo's GELU: the documented difference
    for _, ff in hf.blocks:
        ff.act = nn.GELU()
    ours = flamingo.from_hf_resampler(hf).eval()
    features = torch.randn(3, 11, DV)
    assert_close(ours(features), hf(features))


def test_gated_layer_matches_idefics(idefics_config):
    from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

    torch.manual_seed(0)
    hf = IdeficsGatedCrossAttentionLayer(idefics_config, layer_idx=0).eval()
    nn.init.constant_(hf.alpha_cross_attn, 0.6), nn.init.constant_(hf.alpha_dense, -0.4)  # open, so both branches count
    ours = flamingo.from_hf_gated_layer(hf).eval()
    x, visual = torch.randn(2, 5, 32), torch.randn(2, 6, DV)  # two images of three tokens
    where = torch.tensor([[0, 1, 1, 2, 2], [0, 0, 2, 2, 2]])
    mask = flamingo.cross_attention_mask(where, 2, 3)  # [2, 1, 5, 6]
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    expected = hf(x, image_hidden_states=visual, image_attention_mask=additive, cross_attention_gate=(where > 0).long())
    assert_close(ours(x, visual, mask), expected)
