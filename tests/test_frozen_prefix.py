"""Frozen LM + trained visual prefix (notebook 04): mappers, what trains, the LM checksum, captions, few-shot."""

import pytest
import torch

from vlmlab.data.loaders import IGNORE_INDEX, encode_texts
from vlmlab.nn import CausalLM, TextConfig, ViT, ViTConfig
from vlmlab.strategies import frozen_prefix as FP
from vlmlab.tokenizer import load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def small_lm(max_len: int = 24) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(TextConfig(vocab_size=512, max_len=max_len, dim=32, depth=2, n_heads=2))


@pytest.mark.parametrize("mapper", [FP.MLPMapper(8, 32, k=3, hidden=16), FP.TransformerMapper(8, 32, k=3, dim=16)])
def test_mappers_turn_image_features_into_k_prefix_vectors(mapper):
    assert mapper(torch.randn(5, 4, 8)).shape == (5, 3, 32)


def test_the_mlp_mapper_reads_only_the_first_token():
    mapper = FP.MLPMapper(8, 32, k=2, hidden=16)
    x = torch.randn(2, 4, 8)
    y = x.clone()
    y[:, 1:] = 0
    assert torch.equal(mapper(x), mapper(y)) and torch.equal(mapper(x), mapper(x[:, 0]))


def test_training_the_prefix_moves_the_mapper_and_never_the_lm(tok):
    lm = small_lm()
    model = FP.PrefixCaptioner(lm, FP.TransformerMapper(8, 32, k=3, dim=16))
    text = encode_texts(tok, ["", ""], ["a large red star", "a small blue circle"], max_length=20)
    batch = {"inputs": torch.randn(2, 4, 8), "input_ids": text.input_ids, "attention_mask": text.attention_mask,
             "labels": text.labels}
    before_lm, before_mapper = FP.checksum(lm), FP.checksum(model.mapper)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    first = None
    for _ in range(30):
        loss, _ = FP.batch_loss(model, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    assert FP.checksum(lm) == before_lm and FP.checksum(model.mapper) != before_mapper
    assert not lm.training  # the frozen LM stays in eval mode (no dropout) while the captioner trains


def test_the_prefix_takes_no_loss(tok):
    lm = small_lm()
    model = FP.PrefixCaptioner(lm, FP.MLPMapper(8, 32, k=3, hidden=16))
    text = encode_texts(tok, [""], ["a large red star"], max_length=20)
    out = model(torch.randn(1, 4, 8), text)
    expected = lm(inputs_embeds=torch.cat([model.prefix(torch.randn(1, 4, 8)) * 0, model.embed(text.input_ids)], dim=1),
                  attention_mask=torch.ones(1, 3 + text.input_ids.size(1), dtype=torch.long))
    assert out.logits.shape == expected.logits.shape
    # the loss is the mean over the caption tokens only: recompute it from the logits
    labels = torch.cat([torch.full((1, 3), IGNORE_INDEX), text.labels], dim=1)
    manual = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX)
    assert torch.allclose(out.loss, manual)


def test_the_frozen_variant_trains_its_vision_encoder_from_images():
    vit = ViT(ViTConfig(image_size=16, patch_size=8, dim=8, depth=1, n_heads=2))
    model = FP.PrefixCaptioner(small_lm(), FP.MLPMapper(8, 32, k=2, hidden=16), vision=vit)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert model.prefix(images).shape == (2, 2, 32)
    rows = {r["part"]: r for r in FP.parameter_table({"vision": vit, "mapper": model.mapper, "lm": model.lm})}
    assert rows["vision"]["trainable"] == rows["vision"]["params"] > 0
    assert rows["lm"]["trainable"] == 0 and rows["lm"]["params"] == sum(p.numel() for p in model.lm.parameters())
    assert rows["total"]["trainable"] == rows["vision"]["params"] + rows["mapper"]["params"]


def test_checksum_changes_with_any_weight():
    lm = small_lm()
    before = FP.checksum(lm)
    with torch.no_grad():
        lm.transformer.blocks[1].ln2.bias[3] += 1e-6
    assert FP.checksum(lm) != before


def test_generate_captions_overfits_two_images(tok):
    """The LM first learns both captions as text (it cannot know which image is which); then, frozen, it
    must be steered by the trained prefix to say each image's own caption."""
    lm = small_lm()
    captions = ["a large red star", "a small blue circle"]
    text = encode_texts(tok, captions, max_length=20)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    for _ in range(60):
        loss = lm(text.input_ids, attention_mask=text.attention_mask, labels=text.labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = FP.PrefixCaptioner(lm, FP.TransformerMapper(8, 32, k=3, dim=16))
    features = torch.randn(2, 4, 8)
    text = encode_texts(tok, ["", ""], captions, max_length=20)
    batch = {"inputs": features, "input_ids": text.input_ids, "attention_mask": text.attention_mask, "labels": text.labels}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(200):
        loss, _ = FP.batch_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert FP.generate_captions(model, tok, features) == captions


def test_interleave_builds_one_sequence_and_refuses_one_too_long(tok):
    model = FP.PrefixCaptioner(small_lm(max_len=24), FP.MLPMapper(8, 32, k=3, hidden=16))
    shot = (torch.randn(4, 8), "a large red star")
    n_shot = 3 + 1 + len(tok.encode("a large red star"))
    embeds = FP.interleave(model, tok, [shot], torch.randn(4, 8), "a")
    assert embeds.shape == (1, n_shot + 3 + 1 + 1, 32)
    with pytest.raises(ValueError, match="max_len=24"):
        FP.interleave(model, tok, [shot] * 3, torch.randn(4, 8))


def test_a_saved_mapper_loads_back_with_its_config(tmp_path):
    torch.manual_seed(0)
    mapper = FP.ObjectPrefixMapper(76, 32, k=3, n_layers=2)
    FP.save_mapper("m", mapper, {"attr_f1": 0.5}, root=tmp_path)
    back = FP.load_mapper("m", root=tmp_path)
    assert back.config == mapper.config
    x = torch.randn(2, 76)
    torch.testing.assert_close(back(x), mapper(x), atol=2e-3, rtol=2e-3)  # saved as fp16


def test_the_object_prefix_has_the_same_keys_for_every_image_and_values_from_its_objects(tok):
    torch.manual_seed(0)
    mapper = FP.ObjectPrefixMapper(76, 32, k=3, n_layers=2)
    objects = torch.randn(2, 76)
    kv = mapper(objects)
    assert kv.shape == (2, 2, 2, 3, 32)  # [B, layers, keys/values, k, D]
    torch.testing.assert_close(kv[0, :, 0], kv[1, :, 0])  # keys: one set for all images
    assert not torch.allclose(kv[0, :, 1], kv[1, :, 1])  # values: the image's own
    model = FP.DeepPrefixCaptioner(small_lm(), mapper)
    said = FP.generate_captions(model, tok, objects, max_new_tokens=4)
    assert len(said) == 2


def test_caption_positions_restart_at_bos_and_put_the_prefix_at_zero():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    assert FP.caption_positions(mask, k=3).tolist() == [[0, 0, 0, 0, 1, 2, 2], [0, 0, 0, 0, 1, 2, 3]]


def test_caption_positions_give_the_same_greedy_text_with_and_without_the_cache(tok):
    model = FP.PrefixCaptioner(small_lm(), FP.TransformerMapper(8, 32, k=3, dim=16), caption_positions=True)
    features = torch.randn(3, 4, 8)
    cached = FP.generate_captions(model, tok, features, max_new_tokens=6)
    assert cached == FP.generate_captions(model, tok, features, max_new_tokens=6, use_cache=False)
    # and the LM really reads the caption at positions 0, 1, ...: the first caption token's logits match a plain
    # call whose prefix sits at position 0 with <bos>
    text = encode_texts(tok, [""], ["a large red star"], max_length=20)
    out = model(features[:1], text)
    prefix = model.prefix(features[:1])
    S = 3 + text.input_ids.size(1)
    positions = torch.tensor([[0, 0, 0] + list(range(text.input_ids.size(1)))])
    direct = model.lm(inputs_embeds=torch.cat([prefix, model.embed(text.input_ids)], dim=1),
                      attention_mask=torch.ones(1, S, dtype=torch.long), position_ids=positions)
    torch.testing.assert_close(out.logits, direct.logits)


def test_one_prompt_per_image_gives_what_each_alone_gives(tok):
    model = FP.PrefixCaptioner(small_lm(max_len=32), FP.TransformerMapper(8, 32, k=3, dim=16), caption_positions=True)
    features = torch.randn(3, 4, 8)
    prompts = ["", "is there a star?", "a large"]
    together = FP.generate_captions(model, tok, features, prompts, max_new_tokens=4)
    alone = [FP.generate_captions(model, tok, features[i : i + 1], prompts[i], max_new_tokens=4)[0] for i in range(3)]
    assert together == alone
    with pytest.raises(ValueError, match="one per input"):
        FP.generate_captions(model, tok, features, prompts[:2])


def deep_captioner() -> FP.DeepPrefixCaptioner:
    lm = small_lm()
    torch.manual_seed(1)
    return FP.DeepPrefixCaptioner(lm, FP.DeepPrefixMapper(8, 32, k=3, n_layers=2, dim=16))


def test_the_deep_prefix_is_every_layers_first_keys_and_values(tok):
    """One attention layer by hand: the caption's queries see the mapper's k keys/values before its own."""
    model = deep_captioner()
    features = torch.randn(2, 4, 8)
    kv = model.mapper(features)
    assert kv.shape == (2, 2, 2, 3, 32)  # [B, layers, keys/values, k, D]
    text = encode_texts(tok, ["", ""], ["a large red star", "a cross"], max_length=20)
    lm = model.lm.transformer
    x = lm.tok_emb(text.input_ids) + lm.pos_emb(torch.arange(text.input_ids.size(1)))  # positions from 0
    block, T = lm.blocks[0], text.input_ids.size(1)
    h = block.ln1(x)
    q, k, v = block.attn.q(h), *block.attn.kv(h).chunk(2, dim=-1)
    k, v = torch.cat([kv[:, 0, 0], k], dim=1), torch.cat([kv[:, 0, 1], v], dim=1)  # [B, 3 + T, D]
    heads = lambda t: t.view(2, t.size(1), 2, 16).transpose(1, 2)  # noqa: E731
    allowed = torch.cat([torch.ones(T, 3, dtype=torch.bool), torch.ones(T, T, dtype=torch.bool).tril()], dim=1)
    allowed = allowed & torch.cat([torch.ones(2, 3, dtype=torch.bool), text.attention_mask.bool()], dim=1)[:, None, None]
    scores = (heads(q) @ heads(k).transpose(-1, -2) / 4.0).masked_fill(~allowed, float("-inf"))
    by_hand = block.attn.proj((scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, T, 32))
    caches = FP.DeepPrefixDecoder(model.lm, model.prefix(features)).caches(2)
    assert len(caches) == 2 and len(caches[0]) == 3
    mask = torch.cat([torch.ones(2, 3, dtype=torch.long), text.attention_mask], dim=1)
    ours = block.attn(h, mask=mask.bool()[:, None, None], causal=True, kv_cache=caches[0])
    torch.testing.assert_close(ours, by_hand)


def test_training_the_deep_prefix_moves_the_mapper_and_never_the_lm(tok):
    model = deep_captioner()
    text = encode_texts(tok, ["", ""], ["a large red star", "a small blue circle"], max_length=20)
    batch = {"inputs": torch.randn(2, 4, 8), "input_ids": text.input_ids, "attention_mask": text.attention_mask,
             "labels": text.labels}
    before = FP.checksum(model.lm)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = FP.batch_loss(model, batch)[0].item()
    for _ in range(30):
        loss, _ = FP.batch_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.2 and FP.checksum(model.lm) == before


def test_deep_prefix_captions_are_the_same_with_and_without_the_cache_and_beams_run(tok):
    model = deep_captioner()
    features, prompts = torch.randn(3, 4, 8), ["", "a large", "is there a star?"]
    cached = FP.generate_captions(model, tok, features, prompts, max_new_tokens=5)
    assert cached == FP.generate_captions(model, tok, features, prompts, max_new_tokens=5, use_cache=False)
    alone = [FP.generate_captions(model, tok, features[i : i + 1], prompts[i], max_new_tokens=5)[0] for i in range(3)]
    assert cached == alone
    beams = FP.generate_captions(model, tok, features, prompts, max_new_tokens=5, strategy="beam", num_beams=3)
    assert len(beams) == 3


def test_a_deep_prefix_holds_no_position_so_it_may_be_longer_than_the_room_left(tok):
    """max_len bounds the positions the LM learned; a deep prefix takes none, so k + caption may exceed it."""
    torch.manual_seed(0)
    model = FP.DeepPrefixCaptioner(small_lm(max_len=12), FP.DeepPrefixMapper(8, 32, k=10, n_layers=2, dim=16))
    said = FP.generate_captions(model, tok, torch.randn(2, 4, 8), max_new_tokens=8)
    assert len(said) == 2
    text = encode_texts(tok, [""], ["a large red star"], max_length=12)
    with pytest.raises(ValueError, match="position_ids"):  # a position past the table is still refused
        model.lm(text.input_ids, position_ids=torch.arange(12, 12 + text.input_ids.size(1))[None])


def test_free_prefixes_fit_one_caption_each_and_look_up_by_row(tok):
    """The ceiling of notebook 04: a free deep prefix per caption makes the frozen LM say exactly that caption."""
    torch.manual_seed(0)
    lm = small_lm()
    captions = ["a large red star", "a small blue circle", "a cross"]
    text = encode_texts(tok, [""] * 3, captions, max_length=20)
    free = FP.FreePrefix(3, (2, 2, 4, 32))
    assert free(torch.tensor([2, 0])).shape == (2, 2, 2, 4, 32)
    torch.testing.assert_close(free(torch.tensor([2]))[0], free.prefixes[2])
    model = FP.DeepPrefixCaptioner(lm, free)
    batch = {"inputs": torch.arange(3), "input_ids": text.input_ids, "attention_mask": text.attention_mask,
             "labels": text.labels}
    before = FP.checksum(lm)
    opt = torch.optim.Adam(free.parameters(), lr=0.1)
    for _ in range(200):
        loss, _ = FP.batch_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert FP.generate_captions(model, tok, torch.arange(3), max_new_tokens=8) == captions
    assert FP.checksum(lm) == before
