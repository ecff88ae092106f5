"""vlmlab.lm: one interface over notebook 01's tiny GPT and a Hugging Face causal LM (logits, positions, loss, KV
cache, deep-prefix caches, freezing), and `splice_visual`, which puts visual tokens in front of the text or at its
<image> slot."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vlmlab.attention import Cache
from vlmlab.data.loaders import IGNORE_INDEX
from vlmlab.lm import (
    HFLanguageModel,
    TinyLanguageModel,
    default_positions,
    load_language_model,
    splice_visual,
    wrap_language_model,
)
from vlmlab.nn import CausalLM, TextConfig

V = 64  # vocabulary of both tiny language models


def tiny_gpt() -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(TextConfig(vocab_size=V, max_len=32, dim=32, depth=2, n_heads=4))
    for p in model.parameters():
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.3)  # large weights: logits that differ from position to position
    return model.eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=V, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


RAW = {"tiny-gpt": tiny_gpt, "llama": tiny_llama}


@pytest.fixture(params=list(RAW))
def raw(request):
    return RAW[request.param]()


def ids_and_padded(seed=0, T=7, pad=3):
    """Two rows of T tokens, and the same batch with row 0 shortened to T - pad tokens, left-padded with junk."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, T), generator=g)
    padded, mask = ids.clone(), torch.ones(2, T, dtype=torch.long)
    padded[0, :pad], mask[0, :pad] = torch.randint(1, V, (pad,), generator=g), 0
    return ids, padded, mask


def raw_logits(raw, **kw):
    return raw(**kw).logits


# ---------------------------------------------------------------------------------- the interface


def test_wrap_picks_the_adapter_and_reports_sizes():
    gpt, llama = wrap_language_model(tiny_gpt()), wrap_language_model(tiny_llama())
    assert isinstance(gpt, TinyLanguageModel) and isinstance(llama, HFLanguageModel)
    assert wrap_language_model(gpt) is gpt
    assert (gpt.dim, gpt.n_layers, gpt.max_len, gpt.kv_dim) == (32, 2, 32, 32)
    assert (llama.dim, llama.n_layers, llama.max_len, llama.kv_dim) == (32, 2, 64, 16)  # 2 kv heads of 8
    ids = torch.randint(0, V, (2, 3))
    assert_close(gpt.embed(ids), gpt.model.transformer.tok_emb(ids))
    assert_close(llama.embed(ids), llama.model.get_input_embeddings()(ids))


def test_default_positions_count_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert default_positions(mask, 5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert default_positions(mask, 2).tolist() == [[1, 2], [3, 4]]


def test_same_logits_as_the_raw_model(raw):
    lm = wrap_language_model(raw)
    ids, padded, mask = ids_and_padded()
    assert_close(lm(input_ids=ids).logits, raw_logits(raw, input_ids=ids))
    assert_close(lm(inputs_embeds=lm.embed(ids)).logits, raw_logits(raw, input_ids=ids))
    positions = default_positions(mask, mask.size(1))
    assert_close(lm(input_ids=padded, attention_mask=mask).logits[1],
                 raw_logits(raw, input_ids=padded, attention_mask=mask, position_ids=positions)[1])
    # positions from the mask: the left-padded row's last token scores as if the row were alone and unpadded
    alone = lm(input_ids=ids[:1, 3:]).logits[0, -1]
    assert_close(lm(input_ids=padded, attention_mask=mask).logits[0, -1], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(lm(input_ids=padded).logits[0, -1], alone, atol=1e-3)  # without the mask it differs


def test_loss_with_labels_matches_the_raw_model(raw):
    """Labels are aligned with the inputs (-100 = no loss) for both, and the loss is the raw model's own."""
    lm = wrap_language_model(raw)
    ids, _, _ = ids_and_padded(seed=1)
    labels = ids.masked_fill(torch.tensor([[True, True, False, False, False, True, False]] * 2), IGNORE_INDEX)
    out = lm(input_ids=ids, labels=labels)
    assert_close(out.loss, raw(input_ids=ids, labels=labels).loss)
    by_hand = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert_close(out.loss, by_hand)


def test_cached_steps_equal_a_full_forward(raw):
    lm = wrap_language_model(raw)
    _, padded, mask = ids_and_padded(seed=2)
    full = lm(input_ids=padded, attention_mask=mask).logits
    out = lm(input_ids=padded[:, :4], attention_mask=mask[:, :4], use_cache=True)
    assert out.cache is not None and len(out.cache) == 4
    steps = [out.logits]
    for t in range(4, padded.size(1)):
        out = lm(input_ids=padded[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=out.cache)
        steps.append(out.logits)
    assert len(out.cache) == padded.size(1)
    logits = torch.cat(steps, dim=1)
    assert_close(logits[1], full[1], atol=1e-5, rtol=1e-4)
    assert_close(logits[0, 3:], full[0, 3:], atol=1e-5, rtol=1e-4)  # the real tokens of the padded row


def test_cache_select_reorders_rows(raw):
    lm = wrap_language_model(raw)
    ids, _, _ = ids_and_padded(seed=3)
    out = lm(input_ids=ids[:, :5], use_cache=True)
    out.cache.select(torch.tensor([1, 1, 0]))
    step = lm(input_ids=ids[[1, 1, 0], 5:6], cache=out.cache).logits
    assert_close(step, lm(input_ids=ids[[1, 1, 0], :6]).logits[:, -1:], atol=1e-5, rtol=1e-4)


def keys_and_values(lm, cache) -> torch.Tensor:
    """A cache of k positions as the deep-prefix tensor prefix_cache takes: [B, L, 2, k, kv_dim]."""
    if isinstance(lm, TinyLanguageModel):
        pairs = [(layer.k, layer.v) for layer in cache.layers]  # [B, H, k, hd] each
    else:
        pairs = [(layer.keys, layer.values) for layer in cache.hf.layers]
    merge = lambda x: x.transpose(1, 2).flatten(2)  # [B, H, k, hd] -> [B, k, H * hd]
    return torch.stack([torch.stack([merge(k), merge(v)], dim=1) for k, v in pairs], dim=1)


def test_prefix_cache_equals_running_the_prefix_tokens(raw):
    """Keys and values of k real tokens, handed back as a deep prefix, give the continuation the same logits. The
    prefix holds no position, so the continuation gets the positions it had after the k tokens."""
    lm = wrap_language_model(raw)
    ids = torch.randint(1, V, (3, 7), generator=torch.Generator().manual_seed(4))
    k, T = 3, ids.size(1)
    full = lm(input_ids=ids).logits
    kv = keys_and_values(lm, lm(input_ids=ids[:, :k], use_cache=True).cache)
    assert kv.shape == (3, lm.n_layers, 2, k, lm.kv_dim)
    cache = lm.prefix_cache(kv)
    assert len(cache) == k
    positions = torch.arange(k, T).expand(3, -1)
    out = lm(input_ids=ids[:, k:], attention_mask=torch.ones(3, T, dtype=torch.long), position_ids=positions, cache=cache)
    assert_close(out.logits, full[:, k:], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="kv.shape"):
        lm.prefix_cache(kv[:, :1])


def test_tiny_prefix_cache_is_a_cache_of_the_tiny_gpt():
    lm = wrap_language_model(tiny_gpt())
    cache = lm.prefix_cache(torch.randn(3, 2, 2, 4, 32))
    assert isinstance(cache, Cache) and len(cache.layers) == 2 and cache.layers[0].k.shape == (3, 4, 4, 8)


def test_freeze_and_checksum(raw):
    lm = wrap_language_model(raw)
    before = lm.checksum()
    assert lm.checksum() == before
    assert lm.freeze() is lm
    assert not any(p.requires_grad for p in lm.parameters()) and not lm.training
    with torch.no_grad():
        next(lm.model.parameters()).view(-1)[0] += 1.0
    assert lm.checksum() != before


def test_load_language_model_pins_the_tiny_gpt(tiny_zoo):
    lm = load_language_model(tiny_zoo["tiny-gpt"])
    assert isinstance(lm, TinyLanguageModel) and lm.ref == tiny_zoo["tiny-gpt"]
    assert not any(p.requires_grad for p in lm.parameters())
    assert load_language_model("tiny-gpt").checksum() == lm.checksum()


# ---------------------------------------------------------------------------------- splice_visual


def test_splice_in_front():
    visual, text = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, 7], [4, 5, 6, 7]])
    out = splice_visual(visual, text, mask, labels)
    assert_close(out.inputs_embeds, torch.cat([visual, text], dim=1))
    assert out.attention_mask.tolist() == [[1, 1, 1, 0, 1, 1, 1], [1] * 7]
    assert out.labels[:, :3].eq(IGNORE_INDEX).all() and torch.equal(out.labels[:, 3:], labels)
    assert splice_visual(visual, text, mask).labels is None
    with pytest.raises(ValueError, match="visual.shape"):
        splice_visual(torch.randn(2, 3, 6), text, mask)


def test_splice_at_the_image_slot(tok):
    """Row 0 has its <image> token in the middle, row 1 at the start: each row grows by N - 1, the visual tokens
    land exactly where the slot was, and the text after it shifts by N - 1."""
    image = tok.convert_tokens_to_ids("<image>")
    N, D = 3, 8
    ids = torch.tensor([[20, 21, image, 22, 23], [image, 30, 31, 32, 33]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[IGNORE_INDEX, 21, IGNORE_INDEX, 22, IGNORE_INDEX], [IGNORE_INDEX, 30, 31, 32, 33]])
    text, visual = torch.randn(2, 5, D), torch.randn(2, N, D)
    out = splice_visual(visual, text, mask, labels, input_ids=ids, image_token_id=image)
    assert out.inputs_embeds.shape == (2, 5 + N - 1, D)
    assert_close(out.inputs_embeds[0], torch.cat([text[0, :2], visual[0], text[0, 3:]]))
    assert_close(out.inputs_embeds[1], torch.cat([visual[1], text[1, 1:]]))
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7]
    assert out.labels.tolist() == [[IGNORE_INDEX, 21] + [IGNORE_INDEX] * N + [22, IGNORE_INDEX],
                                   [IGNORE_INDEX] * N + [30, 31, 32, 33]]


@pytest.mark.parametrize("row", [[20, 21, 22, 23, 24], "two"], ids=["none", "two"])
def test_splice_refuses_a_row_without_exactly_one_slot(tok, row):
    image = tok.convert_tokens_to_ids("<image>")
    row = [20, image, 21, image, 22] if row == "two" else row
    ids = torch.tensor([[image, 30, 31, 32, 33], row])
    with pytest.raises(ValueError, match="input_ids") as error:
        splice_visual(torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.ones(2, 5), input_ids=ids, image_token_id=image)
    assert "exactly one <image>" in str(error.value)
    with pytest.raises(ValueError, match="input_ids"):
        splice_visual(torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.ones(2, 5), image_token_id=image)


@pytest.mark.parametrize("kw", [{}, {"strategy": "beam", "num_beams": 3}], ids=["greedy", "beam"])
def test_the_decoding_loop_drives_either_model_with_or_without_its_cache(raw, kw):
    """generate() steps the tiny GPT's Cache and the Hugging Face DynamicCache alike (beam search reorders both),
    and a left-padded row writes what it writes alone."""
    from vlmlab.generation import generate

    for p in raw.parameters():  # larger weights, so that greedy choices vary from step to step
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.3, generator=torch.Generator().manual_seed(p.numel()))
    lm = wrap_language_model(raw)
    _, padded, mask = ids_and_padded(seed=5, T=5, pad=2)
    cached = generate(lm, input_ids=padded, attention_mask=mask, max_new_tokens=6, **kw)
    assert cached.shape == (2, 6) and len(cached.unique()) > 2
    assert torch.equal(generate(lm, input_ids=padded, attention_mask=mask, max_new_tokens=6, use_cache=False, **kw), cached)
    assert torch.equal(generate(lm, input_ids=padded[:1, 2:], max_new_tokens=6, **kw)[0], cached[0])
    if not kw:
        seq = torch.cat([padded[1:], cached[1:]], dim=1)  # the unpadded row
        assert torch.equal(lm(input_ids=seq).logits[0, 4:-1].argmax(-1), cached[1])  # greedy = argmax of one forward
