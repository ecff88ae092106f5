"""vlmlab.nn and vlmlab.generation: attention paths and masks, blocks, ViT, text models, KV cache,
generation strategies, BERT masking, and a tiny LM that learns."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vlmlab.generation import generate, sample_token
from vlmlab.nn import (
    MLP,
    Block,
    CausalLM,
    KVCache,
    LMOutput,
    MLMHead,
    MultiHeadAttention,
    PatchEmbed,
    TextConfig,
    TextTransformer,
    ViT,
    ViTConfig,
    attention,
    attention_weights,
    causal_mask,
    combine_masks,
    mask_tokens,
    next_token_loss,
    padding_mask,
)

V = 40  # vocabulary of the tiny language models


def qkv(B=2, H=3, T=5, S=7, hd=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, hd, generator=g), torch.randn(B, H, S, hd, generator=g), torch.randn(B, H, S, hd, generator=g))


def tiny_lm(seed: int = 0, **kw) -> CausalLM:
    """A 2-layer GPT with large random weights, so its greedy choices vary from step to step."""
    torch.manual_seed(seed)
    model = CausalLM(TextConfig(**{"vocab_size": V, "max_len": 32, "dim": 32, "depth": 2, "n_heads": 4} | kw))
    for p in model.parameters():
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


# ---------------------------------------------------------------------------------- attention and masks


def test_attention_hand_computed():
    """Zero queries give uniform weights, so each output is the mean of the allowed values."""
    q = torch.zeros(1, 1, 2, 2)
    k = torch.randn(1, 1, 3, 2)
    v = torch.tensor([[[[1.0, 0.0], [3.0, 6.0], [5.0, 3.0]]]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    expected = torch.tensor([[[[3.0, 3.0], [3.0, 1.5]]]])
    for use_sdpa in (True, False):
        assert_close(attention(q, k, v, mask, use_sdpa=use_sdpa), expected)


def arbitrary_mask(seed=1):
    mask = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(seed)) < 0.6
    mask[..., 0] = True  # every query keeps at least one key
    return mask


@pytest.mark.parametrize("mask", [None, causal_mask(5, 7), padding_mask(torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])),
                                  arbitrary_mask()], ids=["none", "causal", "padding", "arbitrary"])
def test_attention_paths_agree(mask):
    q, k, v = qkv()
    out = attention(q, k, v, mask, use_sdpa=True)
    assert out.shape == (2, 3, 5, 4)
    assert_close(out, attention(q, k, v, mask, use_sdpa=False))


def test_attention_weights_are_a_distribution_over_allowed_keys():
    q, k, _ = qkv()
    mask = arbitrary_mask()
    w = attention_weights(q, k, mask)
    assert_close(w.sum(-1), torch.ones(2, 3, 5))
    assert (w[~mask.expand_as(w)] == 0).all()


def test_fully_masked_rows_give_zeros_not_nan():
    q, k, v = qkv()
    q.requires_grad_(True)
    mask = arbitrary_mask()
    mask[0, 1, 2] = False  # query 2 of head 1 in batch 0 may attend to nothing
    for use_sdpa in (True, False):
        out = attention(q, k, v, mask, use_sdpa=use_sdpa)
        assert not out.isnan().any()
        assert (out[0, 1, 2] == 0).all() and (out[0, 1, 3] != 0).any()
        out.sum().backward()
        assert not q.grad.isnan().any()
        q.grad = None


def test_masks():
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    pad = padding_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert pad.shape == (2, 1, 1, 3) and pad.dtype == torch.bool and pad[0, 0, 0].tolist() == [True, True, False]
    both = combine_masks(None, causal_mask(3), pad)
    assert both.shape == (2, 1, 3, 3)
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert combine_masks(None, None) is None
    with pytest.raises(ValueError, match="mask.dtype"):
        attention(*qkv(), mask=torch.ones(5, 7))


# ---------------------------------------------------------------------------------- blocks


def test_block_shapes_and_cross_attention():
    torch.manual_seed(0)
    x, context = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    assert MLP(32, 64)(x).shape == (2, 5, 32)
    assert Block(32, 4)(x, causal=True).shape == (2, 5, 32)
    block = Block(32, 4, cross_attention=True, kv_dim=24)
    assert block(x, context=context).shape == (2, 5, 32)
    with pytest.raises(ValueError, match="context"):
        block(x)
    with pytest.raises(ValueError, match="activation"):
        MLP(32, 64, activation="relu")


def test_cross_attention_ignores_masked_context():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, kv_dim=24).eval()
    x, context = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    context_mask = padding_mask(torch.tensor([[1] * 6 + [0] * 3, [1] * 9]))
    out = attn(x, context=context, mask=context_mask)
    changed = context.clone()
    changed[0, 6:] = torch.randn(3, 24)
    assert_close(attn(x, context=changed, mask=context_mask), out)
    changed[0, 0] += 1.0  # a real context position does matter
    assert not torch.allclose(attn(x, context=changed, mask=context_mask)[0], out[0])


def test_padded_keys_never_change_real_outputs():
    torch.manual_seed(0)
    model = TextTransformer(TextConfig(vocab_size=V, dim=32, depth=2, n_heads=4)).eval()
    ids = torch.randint(8, V, (2, 7))
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    hidden = model(ids, attention_mask)
    changed = ids.clone()
    changed[0, 4:] = torch.tensor([1, 2, 3])
    assert_close(model(changed, attention_mask)[0, :4], hidden[0, :4])
    changed[0, 3] = 5  # bidirectional: a real token changes every real output
    assert not torch.allclose(model(changed, attention_mask)[0, 0], hidden[0, 0])


def test_causal_future_tokens_do_not_change_the_past():
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 8))
    logits = model(ids).logits
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % V
    new = model(changed).logits
    assert_close(new[:, :5], logits[:, :5])
    assert not torch.allclose(new[:, 5], logits[:, 5])


def test_reference_path_model_equals_sdpa_model():
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 8))
    logits = model(ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])).logits
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.use_sdpa = False
    assert_close(model(ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])).logits, logits)


# ---------------------------------------------------------------------------------- ViT


def test_vit_shapes_and_grid():
    model = ViT(ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, n_heads=4))
    out = model(torch.randn(3, 3, 32, 32))
    assert model.grid == (4, 4)
    assert out.cls.shape == (3, 32) and out.patches.shape == (3, 16, 32) and out.hidden.shape == (3, 17, 32)
    assert_close(out.hidden[:, 0], out.cls)
    with pytest.raises(ValueError, match="images.shape"):
        model(torch.randn(3, 3, 64, 64))
    with pytest.raises(ValueError, match="image_size"):
        ViTConfig(image_size=30, patch_size=8)


def test_patch_embed_raster_order():
    """Light only the patch in row 1, column 2 of a 4 x 4 grid: only token 1 * 4 + 2 = 6 differs from the rest."""
    embed = PatchEmbed(32, 8, in_channels=1, dim=4)
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 8:16, 16:24] = 1.0
    tokens = embed(image)[0]  # [16, 4]
    differs = ~torch.isclose(tokens, embed.proj.bias).all(dim=-1)
    assert differs.nonzero().flatten().tolist() == [6]


# ---------------------------------------------------------------------------------- text models


def test_text_transformer_inputs_embeds_equals_input_ids():
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 6))
    assert_close(model(inputs_embeds=model.embed(ids)).logits, model(ids).logits)
    encoder = TextTransformer(TextConfig(vocab_size=V, dim=32, depth=1, n_heads=4))
    assert_close(encoder(inputs_embeds=encoder.tok_emb(ids)), encoder(ids))
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.embed(ids))


def test_max_len_and_mask_shape_are_checked():
    model = tiny_lm()
    with pytest.raises(ValueError, match="max_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask.shape"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))


def test_kv_cache_decoding_equals_full_forward():
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 9))
    full = model(ids).logits
    out = model(ids[:, :4], use_cache=True)
    steps = [out.logits]
    for t in range(4, 9):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values)
        steps.append(out.logits)
    assert len(out.past_key_values) == 2 and len(out.past_key_values[0]) == 9
    assert_close(torch.cat(steps, dim=1), full)


def test_kv_cache_after_an_embedded_prefix():
    """A (visual) prefix given as inputs_embeds, then text tokens one at a time."""
    model = tiny_lm()
    prefix, ids = torch.randn(2, 3, 32), torch.randint(0, V, (2, 4))
    full = model(inputs_embeds=torch.cat([prefix, model.embed(ids)], dim=1)).logits
    out = model(inputs_embeds=prefix, use_cache=True)
    steps = [out.logits]
    for t in range(4):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values)
        steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), full)


def test_kv_cache_select_keeps_rows():
    cache = KVCache()
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    cache.update(k, v)
    cache.update(k, v)
    assert len(cache) == 8
    cache.select(torch.tensor([2, 2, 0]))
    assert_close(cache.k[:, :, :4], k[[2, 2, 0]])


def test_next_token_loss_hand_computed():
    uniform = torch.zeros(1, 4, 5)
    labels = torch.tensor([[3, 1, -100, 2]])
    assert_close(next_token_loss(uniform, labels), torch.tensor(math.log(5)))
    logits = torch.full((1, 3, 5), -30.0)
    logits[0, 0, 1] = logits[0, 1, 4] = 30.0  # position t predicts labels[t + 1]
    assert next_token_loss(logits, torch.tensor([[0, 1, 4]])) < 1e-6
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 6))
    out = model(ids, labels=ids)
    assert_close(out.loss, F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)))


def test_tiny_lm_memorises_a_sequence():
    torch.manual_seed(0)
    model = CausalLM(TextConfig(vocab_size=16, max_len=16, dim=32, depth=2, n_heads=2))
    ids = torch.randint(0, 16, (1, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


# ---------------------------------------------------------------------------------- generation


class Bigram(torch.nn.Module):
    """A hand-made 'language model': the next-token logits are table[last token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [V, V]

    def embed(self, ids):
        return F.one_hot(ids, self.table.size(0)).float()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, past_key_values=None, use_cache=False):
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return LMOutput(logits=x @ self.table, past_key_values=[] if use_cache else None)


def sequence_logprob(table, start, tokens):
    logprobs = table.log_softmax(-1)
    return sum(logprobs[a, b].item() for a, b in zip([start, *tokens[:-1]], tokens))


def test_greedy_same_with_and_without_cache():
    model = tiny_lm()
    ids = torch.randint(0, V, (3, 5))
    cached = generate(model, ids, max_new_tokens=12)
    assert cached.shape == (3, 12) and len(cached.unique()) > 5  # the test model does not just repeat itself
    assert torch.equal(generate(model, ids, max_new_tokens=12, use_cache=False), cached)


def test_greedy_is_argmax_of_full_forward():
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 4))
    new = generate(model, ids, max_new_tokens=3)
    seq = torch.cat([ids, new], dim=1)
    assert torch.equal(model(seq).logits[:, 3:-1].argmax(-1), new)


def test_beam_of_one_is_greedy():
    model = tiny_lm()
    ids = torch.randint(0, V, (3, 5))
    greedy = generate(model, ids, max_new_tokens=10)
    assert torch.equal(generate(model, ids, max_new_tokens=10, strategy="beam", num_beams=1), greedy)
    assert torch.equal(generate(model, ids, max_new_tokens=10, strategy="beam", num_beams=1, use_cache=False), greedy)


def test_beam_escapes_the_greedy_trap():
    """From token 0: A=1 (p .6) or B=2 (p .4). After A every token is equally likely (.25); after B token 3 is
    certain. Greedy takes A (best path .15); two beams find B, 3 (.4)."""
    p = torch.full((4, 4), 1e-9)
    p[0, 1], p[0, 2] = 0.6, 0.4
    p[1] = 0.25
    p[2, 3] = 1.0
    p[3] = 0.25
    model = Bigram(p.log())
    start = torch.tensor([[0]])
    assert generate(model, start, max_new_tokens=2)[0, 0].item() == 1
    assert generate(model, start, max_new_tokens=2, strategy="beam", num_beams=2).tolist() == [[2, 3]]


def test_wide_beam_finds_the_most_likely_sequence():
    """With num_beams >= V ** (steps - 1) nothing is pruned, so beam search must match brute force."""
    table = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)) * 2
    model = Bigram(table)
    best = max(itertools.product(range(3), repeat=3), key=lambda seq: sequence_logprob(table, 0, seq))
    beam = generate(model, torch.tensor([[0]]), max_new_tokens=3, strategy="beam", num_beams=9)
    assert beam[0].tolist() == list(best)


def test_beam_score_not_below_greedy_on_tiny_lm():
    model = tiny_lm()
    ids = torch.randint(0, V, (4, 3))

    def logprob(new):
        seq = torch.cat([ids, new], dim=1)
        logprobs = model(seq).logits[:, 2:-1].log_softmax(-1)
        return logprobs.gather(-1, new[..., None]).sum(dim=(1, 2))

    greedy = generate(model, ids, max_new_tokens=6)
    beam = generate(model, ids, max_new_tokens=6, strategy="beam", num_beams=4)
    assert (logprob(beam) >= logprob(greedy) - 1e-5).all()


def test_eos_then_padding_and_early_stop():
    """Token 1 -> eos (3) surely; token 2 -> 2 forever. Row 0 ends after one token, row 1 runs to the limit."""
    p = torch.full((4, 4), 1e-9)
    p[1, 3], p[2, 2], p[3, 3] = 1.0, 1.0, 1.0
    model = Bigram(p.log())
    out = generate(model, torch.tensor([[1], [2]]), max_new_tokens=4, eos_token_id=3, pad_token_id=0)
    assert out.tolist() == [[3, 0, 0, 0], [2, 2, 2, 2]]
    assert generate(model, torch.tensor([[1]]), max_new_tokens=4, eos_token_id=3).tolist() == [[3]]  # stops early
    beam = generate(model, torch.tensor([[1], [2]]), max_new_tokens=4, strategy="beam", num_beams=2, eos_token_id=3)
    assert beam.tolist() == [[3, 0, 0, 0], [2, 2, 2, 2]]  # row 1 never ends, so no early stop


def test_left_padded_batch_equals_one_prompt_at_a_time():
    model = tiny_lm()
    prompts = [torch.randint(1, V, (3,)), torch.randint(1, V, (6,))]
    ids = torch.zeros(2, 6, dtype=torch.long)
    attention_mask = torch.zeros(2, 6, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, 6 - len(prompt) :], attention_mask[row, 6 - len(prompt) :] = prompt, 1
    for kw in ({}, {"use_cache": False}, {"strategy": "beam", "num_beams": 3}):
        batched = generate(model, ids, attention_mask=attention_mask, max_new_tokens=8, **kw)
        for row, prompt in enumerate(prompts):
            assert torch.equal(batched[row], generate(model, prompt[None], max_new_tokens=8, **kw)[0]), kw
    with pytest.raises(ValueError, match="left padding"):
        generate(model, ids, attention_mask=attention_mask.flip(1))


def test_sampling_reproducible_and_filtered():
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 4))
    draw = lambda seed, **kw: generate(model, ids, max_new_tokens=10, strategy="sample",
                                       generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(3, top_k=1), generate(model, ids, max_new_tokens=10))
    assert torch.equal(draw(4, top_p=1e-6), generate(model, ids, max_new_tokens=10))
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).log_softmax(-1).repeat(2000, 1)  # p = .03 .09 .24 .64
    g = torch.Generator().manual_seed(0)
    assert set(sample_token(logits, top_k=2, generator=g).tolist()) == {2, 3}
    assert set(sample_token(logits, top_p=0.8, generator=g).tolist()) == {2, 3}  # .64 < .8 <= .64 + .24
    counts = torch.bincount(sample_token(logits, generator=g), minlength=4) / 2000
    assert_close(counts, logits[0].exp(), atol=0.03, rtol=0)


def test_generate_checks_arguments():
    model = tiny_lm()
    ids = torch.zeros(1, 2, dtype=torch.long)
    for kw, name in [({"strategy": "topk"}, "strategy"), ({"temperature": 0}, "temperature"), ({"top_p": 0}, "top_p"),
                     ({"num_beams": 0}, "num_beams"), ({"max_new_tokens": 0}, "max_new_tokens")]:
        with pytest.raises(ValueError, match=name):
            generate(model, ids, **kw)


# ---------------------------------------------------------------------------------- BERT masking


def test_mask_tokens_statistics():
    special = (0, 1, 2)
    ids = torch.randint(3, 100, (200, 100), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1], ids[:, -10:-1] = 1, 2, 0  # [CLS] ... [SEP] <pad>...
    inputs, labels = mask_tokens(ids, mask_token_id=99, vocab_size=100, special_ids=special,
                                 generator=torch.Generator().manual_seed(0))
    selected = labels != -100
    is_special = torch.isin(ids, torch.tensor(special))
    assert not selected[is_special].any() and torch.equal(inputs[is_special], ids[is_special])
    assert abs(selected.float().sum().item() / (~is_special).sum().item() - 0.15) < 0.01
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])
    masked = (inputs == 99) & selected
    kept = (inputs == ids) & selected
    n = selected.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.03
    assert abs(kept.sum().item() / n - 0.1 - 0.1 / 100) < 0.03  # 10% kept, plus random draws of the same id
    assert abs((n - masked.sum().item() - kept.sum().item()) / n - 0.1) < 0.03
    with pytest.raises(ValueError, match="p="):
        mask_tokens(ids, 99, 100, p=0)


def test_mlm_head_tied_to_embedding():
    embedding = torch.nn.Embedding(V, 32)
    head = MLMHead(32, V, tied_embedding=embedding)
    assert head.decoder.weight is embedding.weight
    assert head(torch.randn(2, 5, 32)).shape == (2, 5, V)
    with pytest.raises(ValueError, match="tied_embedding"):
        MLMHead(16, V, tied_embedding=embedding)
