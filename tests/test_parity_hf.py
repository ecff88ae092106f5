"""Same weights, same numbers: Hugging Face GPT-2 and ViT (small random configs) against our CausalLM and ViT,
through the converters of vlmlab.hf_convert that would also load real hub checkpoints."""

import pytest
import torch
from torch.testing import assert_close
from transformers import GPT2Config, GPT2LMHeadModel, ViTModel
from transformers import ViTConfig as HFViTConfig

from vlmlab.generation import generate
from vlmlab.hf_convert import from_hf_gpt2, from_hf_vit, load_exactly
from vlmlab.nn import CausalLM, TextConfig, ViT

EOS = 2


@pytest.fixture(scope="module")
def gpt2_pair():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=1, eos_token_id=EOS)
    hf = GPT2LMHeadModel(config).eval()
    for p in hf.parameters():  # larger than GPT-2's init, so that greedy decoding does not just repeat a token
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.15)
    return hf, from_hf_gpt2(hf).eval()


@pytest.fixture(scope="module")
def vit_pair():
    torch.manual_seed(0)
    config = HFViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256)
    hf = ViTModel(config, add_pooling_layer=False).eval()
    return hf, from_hf_vit(hf).eval()


def test_gpt2_config_is_carried_over(gpt2_pair):
    _, ours = gpt2_pair
    assert isinstance(ours, CausalLM)
    c = ours.config
    assert (c.vocab_size, c.max_len, c.dim, c.depth, c.n_heads, c.mlp_ratio) == (100, 32, 64, 2, 4, 4.0)
    assert c.causal and c.activation == "gelu_tanh" and c.norm_eps == 1e-5


def test_gpt2_logits_match(gpt2_pair):
    hf, ours = gpt2_pair
    ids = torch.randint(0, 100, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(ours(input_ids=ids).logits, hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_gpt2_logits_match_with_right_padding(gpt2_pair):
    hf, ours = gpt2_pair
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 8:] = 0
    with torch.no_grad():
        expected, got = hf(input_ids=ids, attention_mask=mask).logits, ours(input_ids=ids, attention_mask=mask).logits
    assert_close(got[0, :8], expected[0, :8], atol=1e-5, rtol=1e-5)
    assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)


def test_gpt2_loss_matches(gpt2_pair):
    hf, ours = gpt2_pair
    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :5] = -100  # e.g. no loss on a prompt
    with torch.no_grad():
        assert_close(ours(input_ids=ids, labels=labels).loss, hf(input_ids=ids, labels=labels).loss, atol=1e-5, rtol=1e-5)


def test_gpt2_gradients_match(gpt2_pair):
    hf, ours = gpt2_pair
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(4))
    hf.zero_grad()
    ours.zero_grad()
    hf(input_ids=ids, labels=ids).loss.backward()
    ours(input_ids=ids, labels=ids).loss.backward()
    assert_close(ours.transformer.tok_emb.weight.grad, hf.transformer.wte.weight.grad, atol=1e-5, rtol=1e-4)
    fc_grad = hf.transformer.h[0].mlp.c_fc.weight.grad.t()  # Conv1D stores [in, out]
    assert_close(ours.transformer.blocks[0].mlp.fc.weight.grad, fc_grad, atol=1e-5, rtol=1e-4)


def until_eos(tokens: torch.Tensor) -> torch.Tensor:
    """Everything after a row's first eos becomes pad (0): HF and we pad finished beams differently."""
    after_eos = (tokens == EOS).long().cumsum(dim=1) - (tokens == EOS).long() > 0
    return tokens.masked_fill(after_eos, 0)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_gpt2_generation_matches_with_left_padding(gpt2_pair, strategy):
    """Row 0 is left-padded: HF generate also counts positions from the first real token."""
    hf, ours = gpt2_pair
    ids = torch.randint(3, 100, (3, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0
    kw = {"num_beams": 3} if strategy == "beam" else {}
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, **kw)[:, 6:]
    got = generate(ours, input_ids=ids, attention_mask=mask, max_new_tokens=8, strategy=strategy, eos_token_id=EOS, **kw)
    assert len(expected.unique()) > 5  # a real test: the model does not just repeat one token
    assert torch.equal(until_eos(got), until_eos(expected))


def test_vit_hidden_states_match(vit_pair):
    hf, ours = vit_pair
    assert isinstance(ours, ViT) and ours.grid == (4, 4) and ours.config.norm_eps == 1e-12
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = hf(pixel_values=images).last_hidden_state
        out = ours(images)
    assert_close(out.hidden, expected, atol=1e-5, rtol=1e-5)
    assert_close(out.cls, expected[:, 0], atol=1e-5, rtol=1e-5)


def test_converters_reject_other_models(gpt2_pair, vit_pair):
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        from_hf_gpt2(vit_pair[0])
    with pytest.raises(ValueError, match="ViTModel"):
        from_hf_vit(CausalLM(TextConfig(vocab_size=10)))
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=10, n_positions=8, activation_function="relu")
    with pytest.raises(ValueError, match="activation_function"):
        from_hf_gpt2(GPT2LMHeadModel(config))


def test_load_exactly_refuses_an_incomplete_or_foreign_state():
    model = CausalLM(TextConfig(vocab_size=10, max_len=8, dim=16, depth=1, n_heads=2))
    state = model.state_dict()
    assert load_exactly(CausalLM(model.config), state, "test") is not None
    with pytest.raises(ValueError, match="test: conversion is incomplete: missing"):
        load_exactly(CausalLM(model.config), {k: v for k, v in state.items() if "norm" not in k}, "test")
    with pytest.raises(ValueError, match="unexpected"):
        load_exactly(CausalLM(model.config), state | {"extra.weight": torch.zeros(1)}, "test")
