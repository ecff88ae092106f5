"""vlmlab.nn and vlmlab.mlm: attention paths and masks, blocks, ViT, text models, the KV cache, BERT masking,
and a tiny LM that learns. The decoding loop is tested in test_generation.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vlmlab.attention import (
    Cache,
    KVCache,
    MultiHeadAttention,
    attention,
    attention_weights,
    causal_mask,
    combine_masks,
    padding_mask,
    prefix_mask,
)
from vlmlab.mlm import MLMHead, mask_tokens
from vlmlab.nn import MLP, Block, CausalLM, PatchEmbed, TextConfig, TextTransformer, ViT, ViTConfig, next_token_loss, resized_vit

V = 40  # the vocabulary of conftest's tiny_lm


def qkv(B=2, H=3, T=5, S=7, hd=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, hd, generator=g), torch.randn(B, H, S, hd, generator=g), torch.randn(B, H, S, hd, generator=g))


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
    block = Block(32, 4, cross_attention=True, kv_dim=24).eval()  # the block hands context_mask to its cross-attention
    out = block(x, context=context, context_mask=context_mask)
    changed = context.clone()
    changed[0, 6:] = torch.randn(3, 24)
    assert_close(block(x, context=changed, context_mask=context_mask), out)


def test_padded_keys_never_change_real_outputs():
    torch.manual_seed(0)
    model = TextTransformer(TextConfig(vocab_size=V, dim=32, depth=2, n_heads=4)).eval()
    ids = torch.randint(8, V, (2, 7))
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    hidden = model(input_ids=ids, attention_mask=attention_mask)
    changed = ids.clone()
    changed[0, 4:] = torch.tensor([1, 2, 3])
    assert_close(model(input_ids=changed, attention_mask=attention_mask)[0, :4], hidden[0, :4])
    changed[0, 3] = 5  # bidirectional: a real token changes every real output
    assert not torch.allclose(model(input_ids=changed, attention_mask=attention_mask)[0, 0], hidden[0, 0])


def test_causal_future_tokens_do_not_change_the_past(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 8))
    logits = model(input_ids=ids).logits
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % V
    new = model(input_ids=changed).logits
    assert_close(new[:, :5], logits[:, :5])
    assert not torch.allclose(new[:, 5], logits[:, 5])


def test_reference_path_model_equals_sdpa_model(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 8))
    logits = model(input_ids=ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])).logits
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.use_sdpa = False
    assert_close(model(input_ids=ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])).logits, logits)


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


def test_resized_vit_reads_another_size_with_the_same_weights():
    """Same size: the same function. 48 px from 64 px: a 3 x 3 grid whose corner positions are the 4 x 4 grid's
    bicubic resample, every other weight shared by value, and the original left untouched."""
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=64, patch_size=16, dim=32, depth=2, n_heads=4)).eval()
    images = torch.randn(2, 3, 64, 64)
    assert_close(resized_vit(vit, 64)(images).hidden, vit(images).hidden)
    small = resized_vit(vit, 48)
    assert small.grid == (3, 3) and small.config.image_size == 48 and vit.config.image_size == 64
    assert small(torch.randn(2, 3, 48, 48)).patches.shape == (2, 9, 32)
    assert_close(small.pos_embed[:, 0], vit.pos_embed[:, 0])
    expected = F.interpolate(vit.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2).detach(), size=(3, 3),
                             mode="bicubic", align_corners=False)
    assert_close(small.pos_embed[0, 1:].T.reshape(32, 3, 3), expected[0])
    shared = {k: v for k, v in small.state_dict().items() if k != "pos_embed"}
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in shared.items())
    with pytest.raises(ValueError, match="image_size"):
        resized_vit(vit, 50)


# ---------------------------------------------------------------------------------- text models


def test_text_transformer_inputs_embeds_equals_input_ids(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 6))
    assert_close(model(inputs_embeds=model.embed(ids)).logits, model(input_ids=ids).logits)
    encoder = TextTransformer(TextConfig(vocab_size=V, dim=32, depth=1, n_heads=4))
    assert_close(encoder(inputs_embeds=encoder.tok_emb(ids)), encoder(input_ids=ids))
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids=ids, inputs_embeds=model.embed(ids))


def test_max_len_and_mask_shape_are_checked(tiny_lm):
    model = tiny_lm()
    with pytest.raises(ValueError, match="max_len=32"):
        model(input_ids=torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask.shape"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))


def test_models_take_keyword_arguments_only(tiny_lm):
    model, ids = tiny_lm(), torch.randint(0, V, (1, 4))
    with pytest.raises(TypeError):
        model(ids)
    with pytest.raises(TypeError):
        model.transformer(ids)
    with pytest.raises(TypeError):
        Block(32, 4)(torch.randn(1, 4, 32), causal_mask(4))
    with pytest.raises(TypeError):
        MultiHeadAttention(32, 4)(torch.randn(1, 4, 32), torch.randn(1, 2, 32))


def test_a_ready_bool_mask_is_used_as_it_is(tiny_lm):
    """A [B, 1, T, S] bool mask built from prefix_mask and padding_mask, with explicit positions: with no prefix it
    equals the [B, S] padding mask path; with a prefix, tokens inside it see each other both ways."""
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 6))
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    expected = model(input_ids=ids, attention_mask=attention_mask).logits
    ready = prefix_mask(6, prefix_len=0) & padding_mask(attention_mask)  # [2, 1, 6, 6]
    assert ready.shape == (2, 1, 6, 6)
    assert_close(model(input_ids=ids, attention_mask=ready, position_ids=positions).logits[1], expected[1])
    assert_close(model(input_ids=ids, attention_mask=ready, position_ids=positions).logits[0, 2:], expected[0, 2:])
    with pytest.raises(ValueError, match="position_ids"):
        model(input_ids=ids, attention_mask=ready)
    bidirectional = prefix_mask(6, prefix_len=3) & padding_mask(torch.ones(2, 6))
    first = model(input_ids=ids, attention_mask=bidirectional, position_ids=positions).logits
    changed = ids.clone()
    changed[:, 2] = (changed[:, 2] + 1) % V
    second = model(input_ids=changed, attention_mask=bidirectional, position_ids=positions).logits
    assert not torch.allclose(second[:, 0], first[:, 0])  # position 0 sees position 2 inside the prefix
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % V
    assert_close(model(input_ids=changed, attention_mask=bidirectional, position_ids=positions).logits[:, :4],
                 first[:, :4])  # after the prefix it is causal


def test_from_config_rebuilds_the_same_architecture(tiny_lm):
    model = tiny_lm()
    again = CausalLM.from_config(vars(model.config))
    again.load_state_dict(model.state_dict())
    ids = torch.randint(0, V, (2, 5))
    assert_close(again.eval()(input_ids=ids).logits, model(input_ids=ids).logits)
    vit = ViT.from_config({"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "n_heads": 4})
    assert vit.grid == (4, 4) and vit.config.dim == 32
    encoder = TextTransformer.from_config({"vocab_size": V, "dim": 32, "depth": 1, "n_heads": 4})
    assert not encoder.config.causal and len(encoder.blocks) == 1


def test_kv_cache_decoding_equals_full_forward(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 9))
    full = model(input_ids=ids).logits
    out = model(input_ids=ids[:, :4], use_cache=True)
    steps = [out.logits]
    for t in range(4, 9):
        out = model(input_ids=ids[:, t : t + 1], cache=out.cache)
        steps.append(out.logits)
    assert isinstance(out.cache, Cache) and len(out.cache.layers) == 2 and len(out.cache) == 9
    assert_close(torch.cat(steps, dim=1), full)


def test_kv_cache_after_an_embedded_prefix(tiny_lm):
    """A (visual) prefix given as inputs_embeds, then text tokens one at a time."""
    model = tiny_lm()
    prefix, ids = torch.randn(2, 3, 32), torch.randint(0, V, (2, 4))
    full = model(inputs_embeds=torch.cat([prefix, model.embed(ids)], dim=1)).logits
    out = model(inputs_embeds=prefix, use_cache=True)
    steps = [out.logits]
    for t in range(4):
        out = model(input_ids=ids[:, t : t + 1], cache=out.cache)
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


def test_cache_select_keeps_rows_in_every_layer():
    cache = Cache(3)
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    for layer, kv_cache in enumerate(cache.layers):
        kv_cache.update(k + layer, v - layer)
    assert len(cache) == 4 and len(cache.layers) == 3
    cache.select(torch.tensor([1, 0]))
    for layer, kv_cache in enumerate(cache.layers):
        assert_close(kv_cache.k, (k + layer)[[1, 0]])
        assert_close(kv_cache.v, (v - layer)[[1, 0]])


def test_next_token_loss_hand_computed(tiny_lm):
    uniform = torch.zeros(1, 4, 5)
    labels = torch.tensor([[3, 1, -100, 2]])
    assert_close(next_token_loss(uniform, labels), torch.tensor(math.log(5)))
    logits = torch.full((1, 3, 5), -30.0)
    logits[0, 0, 1] = logits[0, 1, 4] = 30.0  # position t predicts labels[t + 1]
    assert next_token_loss(logits, torch.tensor([[0, 1, 4]])) < 1e-6
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 6))
    out = model(input_ids=ids, labels=ids)
    assert_close(out.loss, F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)))


def test_tiny_lm_memorises_a_sequence():
    torch.manual_seed(0)
    model = CausalLM(TextConfig(vocab_size=16, max_len=16, dim=32, depth=2, n_heads=2))
    ids = torch.randint(0, 16, (1, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


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
