"""Frozen LM + trained visual prefix (notebook 04): mappers, what trains, the LM checksum, captions, few-shot, deep
prefixes; and its real track on tiny stand-ins (a random 2-layer Hugging Face Llama of width 64 for SmolLM2, random
vectors for EfficientNet's features): caption tokens and labels, training that leaves the LM untouched, generation
through the one decoding loop, the two baselines and the score."""

import types

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from vlmlab import zoo
from vlmlab.data.loaders import IGNORE_INDEX, StepBatches, encode_texts, indexed_collate, to_float
from vlmlab.encoders import image_vectors, preprocess_images
from vlmlab.evaluate import caption_metrics, most_common_caption, nearest_neighbour_captions
from vlmlab.frozen import checksum, parameter_table, tower_features
from vlmlab.generation import generate, generate_text
from vlmlab.lm import wrap_language_model
from vlmlab.nn import CausalLM, TextConfig, ViT, ViTConfig
from vlmlab.strategies import frozen_prefix as FP
from vlmlab.train import fit
from vlmlab.unimodal import ViTFeatures


def small_lm(max_len: int = 24):
    """Notebook 01's GPT, small, behind the LanguageModel interface every captioner steers."""
    torch.manual_seed(0)
    return wrap_language_model(CausalLM(TextConfig(vocab_size=512, max_len=max_len, dim=32, depth=2, n_heads=2)))


def captioner(lm=None, *, given_mapper=None, vision=None, **config) -> FP.PrefixCaptioner:
    """A PrefixCaptioner on a given LM (a fresh small one by default) and, if given, mapper; `config` is its Config's
    fields (restart_positions False unless given: the prefix takes the first k positions)."""
    config = FP.Config(**({"restart_positions": False} | config))
    return FP.PrefixCaptioner(config, lm=lm if lm is not None else small_lm(), vision=vision, mapper=given_mapper)


def caption_batch(features, text) -> dict:
    return {"image_features": features, "input_ids": text.input_ids, "attention_mask": text.attention_mask,
            "labels": text.labels}


def train(model, batch, steps, lr=1e-2, optimizer=torch.optim.AdamW) -> tuple[float, float]:
    """Plain optimisation of the parts that train; (first loss, last loss)."""
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    first = None
    for _ in range(steps):
        loss, _ = FP.batch_loss(model, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss.item()


@pytest.mark.parametrize("mapper", [FP.MLPMapper(8, 32, k=3, hidden=16), FP.TransformerMapper(8, 32, k=3, dim=16)])
def test_mappers_turn_image_features_into_k_prefix_vectors(mapper):
    assert mapper(torch.randn(5, 4, 8)).shape == (5, 3, 32)


def test_the_transformer_mapper_reads_one_vector_as_one_token():
    mapper = FP.TransformerMapper(8, 32, k=3, dim=16)  # ClipCap's transformer mapper, given CLIP's embedding
    x = torch.randn(5, 8)
    torch.testing.assert_close(mapper(x), mapper(x[:, None]))
    assert mapper(x).shape == (5, 3, 32)


def test_the_linear_mapper_writes_one_prefix_vector_per_image_token():
    mapper = FP.LinearMapper(8, 32)  # Frozen's
    x = torch.randn(5, 17, 8)
    torch.testing.assert_close(mapper(x), x @ mapper.proj.weight.T + mapper.proj.bias)
    assert mapper(x).shape == (5, 17, 32) and not mapper.deep


def test_the_mlp_mapper_reads_only_the_first_token():
    mapper = FP.MLPMapper(8, 32, k=2, hidden=16)
    x = torch.randn(2, 4, 8)
    y = x.clone()
    y[:, 1:] = 0
    assert torch.equal(mapper(x), mapper(y)) and torch.equal(mapper(x), mapper(x[:, 0]))


@pytest.mark.parametrize("kwargs, name", [({"mapper": "cnn"}, "mapper"), ({"k": 0}, "k"), ({"in_dim": 0}, "in_dim"),
                                          ({"hidden": 0}, "hidden"), ({"n_tokens": 0}, "n_tokens")])
def test_bad_captioner_settings_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        FP.Config(**kwargs)


def test_training_the_prefix_moves_the_mapper_and_never_the_lm(tok):
    model = captioner(mapper="transformer", in_dim=8, k=3, dim=16)
    text = encode_texts(tok, ["", ""], ["a large red star", "a small blue circle"], max_length=20)
    before_lm, before_mapper = checksum(model.lm), checksum(model.mapper)
    first, last = train(model, caption_batch(torch.randn(2, 4, 8), text), steps=30)
    assert last < first
    assert checksum(model.lm) == before_lm and checksum(model.mapper) != before_mapper
    assert not model.lm.training and not model.lm.model.training  # the frozen LM stays in eval mode (no dropout)


def test_the_prefix_takes_no_loss(tok):
    model = captioner(mapper="mlp", in_dim=8, k=3, hidden=16)
    text = encode_texts(tok, [""], ["a large red star"], max_length=20)
    out = model(input_ids=text.input_ids, attention_mask=text.attention_mask, labels=text.labels,
                **model.condition(torch.randn(1, 4, 8)))
    assert out.logits.shape == (1, 3 + text.input_ids.size(1), 512)
    # the loss is the mean over the caption tokens only: recompute it from the logits
    labels = torch.cat([torch.full((1, 3), IGNORE_INDEX), text.labels], dim=1)
    manual = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX)
    assert torch.allclose(out.loss, manual)


def test_the_frozen_variant_trains_its_vision_encoder_from_images(tok):
    vit = ViT(ViTConfig(image_size=16, patch_size=8, dim=8, depth=1, n_heads=2))
    model = captioner(vision=ViTFeatures(vit), mapper="mlp", in_dim=8, k=2, hidden=16, train_vision=True)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert model.condition(model.image_features(to_float(images)))["prefix"].shape == (2, 2, 32)
    rows = {r["part"]: r for r in parameter_table({"vision": vit, "mapper": model.mapper, "lm": model.lm})}
    assert rows["vision"]["trainable"] == rows["vision"]["params"] > 0
    assert rows["lm"]["trainable"] == 0 and rows["lm"]["params"] == sum(p.numel() for p in model.lm.parameters())
    assert rows["total"]["trainable"] == rows["vision"]["params"] + rows["mapper"]["params"]
    assert set(model.saved_state()) == {k for k in model.state_dict() if not k.startswith("lm.")}  # the tower is kept
    text = encode_texts(tok, ["", ""], ["a large red star", "a cross"], max_length=20)
    loss, _ = FP.batch_loss(model.train(), {"images": images, "input_ids": text.input_ids,
                                            "attention_mask": text.attention_mask, "labels": text.labels})
    loss.backward()  # from uint8 images in the batch, the gradient reaches the vision tower
    assert vit.patch_embed.proj.weight.grad.abs().sum() > 0


def test_checksum_changes_with_any_weight():
    lm = small_lm()
    before = checksum(lm)
    with torch.no_grad():
        lm.model.transformer.blocks[1].ln2.bias[3] += 1e-6
    assert checksum(lm) != before


class CountingTower(torch.nn.Module):
    """A frozen tower that counts the images it reads; `spec` pins its weights as `unimodal.vision_tower`'s do."""

    def __init__(self, sha256: str | None):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)
        self.spec = {"tower": "toy", "name": "toy", "sha256": sha256}
        self.seen = 0

    def forward(self, pixels):
        self.seen += len(pixels)
        return self.proj(pixels.mean((2, 3)))[:, None]  # [B, 1, 5]


def test_tower_features_are_computed_once_and_read_back_from_the_user_cache(user_cache):
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    tower = CountingTower("ab" * 32).requires_grad_(False)
    first = tower_features(tower, images, batch_size=3, keep=True)
    assert first.shape == (7, 1, 5) and tower.seen == 7
    torch.testing.assert_close(first, tower(to_float(images)))
    tower.seen = 0
    again = tower_features(tower, images, keep=True)
    assert tower.seen == 0 and torch.equal(again, first)  # read back, not computed
    other = images.clone()
    other[3, 0, 0, 0] ^= 1  # one pixel's lowest bit
    tower_features(tower, other, keep=True)
    assert tower.seen == 7  # other images: computed
    files = sorted((user_cache.parent / "features").glob("toy-*.safetensors"))
    assert len(files) == 2
    for file in files:
        file.write_bytes(b"not a safetensors file")  # a broken file is computed again, not trusted
    tower.seen = 0
    recomputed = tower_features(tower, images, batch_size=3, keep=True)  # the first call's batches: the same bits
    assert torch.equal(recomputed, first) and tower.seen == 7
    assert torch.equal(tower_features(tower, images, keep=True), first) and tower.seen == 7  # and written again
    tower_features(tower, images)
    assert tower.seen == 14  # not asked to keep them: computed, and nothing read or written
    assert sorted((user_cache.parent / "features").glob("*")) == files


def test_tower_features_are_kept_only_for_a_tower_that_pins_its_weights(user_cache):
    with pytest.raises(ValueError, match=r"tower_features\(\): keep=True .* pins its weights by sha256"):
        tower_features(CountingTower(None), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), keep=True)


def test_generate_text_overfits_two_images(tok):
    """The LM first learns both captions as text (it cannot know which image is which); then, frozen, it
    must be steered by the trained prefix to say each image's own caption."""
    lm = small_lm()
    captions = ["a large red star", "a small blue circle"]
    text = encode_texts(tok, captions, max_length=20)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    for _ in range(60):
        loss = lm(input_ids=text.input_ids, attention_mask=text.attention_mask, labels=text.labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = captioner(lm, mapper="transformer", in_dim=8, k=3, dim=16)
    features = torch.randn(2, 4, 8)
    train(model, caption_batch(features, encode_texts(tok, ["", ""], captions, max_length=20)), steps=200)
    assert generate_text(model, tok, features) == captions


def test_interleave_builds_one_sequence_whose_shots_restart_their_positions(tok):
    model = captioner(small_lm(max_len=24), mapper="mlp", in_dim=8, k=3, hidden=16)
    shot = (torch.randn(4, 8), "a large red star")
    n_text = 1 + len(tok.encode("a large red star"))  # <bos> and the words
    embeds, positions = FP.interleave(model, tok, [shot], torch.randn(4, 8), "a")
    assert embeds.shape == (1, 3 + n_text + 3 + 2, 32) and positions.shape == (1, embeds.shape[1])
    torch.testing.assert_close(embeds[:, :3], model.mapper(shot[0][None]))  # the first image's prefix opens the prompt
    bos = model.embed(torch.tensor([[tok.bos_token_id]]))
    torch.testing.assert_close(embeds[:, 3:4], bos)  # each shot's text opens with <bos>, the query's too
    torch.testing.assert_close(embeds[:, 3 + n_text + 3 : 3 + n_text + 4], bos)
    assert positions[0].tolist() == [0] * 3 + list(range(n_text)) + [0] * 3 + [0, 1]  # every shot from 0
    logits = model.lm(inputs_embeds=embeds, attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long),
                      position_ids=positions).logits
    assert logits.shape == (1, embeds.shape[1], 512) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="max_len=24"):
        FP.interleave(model, tok, [shot] * 3, torch.randn(4, 8))


def test_the_shot_prompted_lm_generates_what_a_step_by_step_greedy_loop_does(tok):
    torch.manual_seed(0)
    model = captioner(small_lm(max_len=48), mapper="mlp", in_dim=8, k=3, hidden=16).eval()
    embeds, positions = FP.interleave(model, tok, [(torch.randn(8), "a large red star")], torch.randn(8))
    expected, e, p = [], embeds, positions  # the LM stepped by hand, positions counting on from the prompt's last
    with torch.no_grad():
        for _ in range(6):
            token = int(model.lm(inputs_embeds=e, attention_mask=torch.ones(e.shape[:2], dtype=torch.long),
                                 position_ids=p).logits[0, -1].argmax())
            expected.append(token)
            e, p = torch.cat([e, model.lm.embed(torch.tensor([[token]]))], dim=1), torch.cat([p, p[:, -1:] + 1], dim=1)
    for use_cache in (True, False):
        new = generate(FP.ShotPrompted(model.lm), inputs_embeds=embeds, condition={"positions": positions},
                       max_new_tokens=6, use_cache=use_cache)
        assert new[0].tolist() == expected


def test_interleave_refuses_a_deep_prefix_by_name(tok):
    model = captioner(mapper="deep", in_dim=8, k=2, dim=16)
    with pytest.raises(ValueError, match="^model="):
        FP.interleave(model, tok, [], torch.randn(4, 8))


def test_shot_positions_restart_at_every_shot_and_put_each_prefix_at_zero():
    assert FP.shot_positions([3, 2], 2).tolist() == [0, 0, 0, 1, 2, 0, 0, 0, 1]
    assert FP.shot_positions([1], 1).tolist() == [0, 0]


def test_a_saved_captioner_holds_its_mapper_and_loads_back_on_the_pinned_lm(tiny_zoo, tmp_path):
    torch.manual_seed(0)
    config = FP.Config(mapper="object", in_dim=76, k=3, lm=tiny_zoo["tiny-gpt"])
    model = FP.PrefixCaptioner(config)
    assert model.lm.ref == tiny_zoo["tiny-gpt"]
    path = zoo.save_model("m", model, {"caption_attr_f1": 0.5}, strategy="frozen_prefix", root=tmp_path)  # fp16
    state, record = zoo.load_checkpoint(path)
    assert set(state) == set(model.mapper.state_dict(prefix="mapper."))  # only what trains: no LM inside
    assert record["depends"] == {"tiny-gpt": tiny_zoo["tiny-gpt"]["sha256"]} and record["model"] == "PrefixCaptioner"
    back, _ = zoo.load_model("m", root=tmp_path)
    assert back.config == config and checksum(back.lm) == checksum(model.lm)
    x = torch.randn(2, 76)
    torch.testing.assert_close(back.mapper(x), model.mapper(x), atol=2e-3, rtol=2e-3)  # saved as fp16


def test_the_object_prefix_has_the_same_keys_for_every_image_and_values_from_its_objects(tok):
    torch.manual_seed(0)
    mapper = FP.ObjectPrefixMapper(76, 32, k=3, n_layers=2)
    objects = torch.randn(2, 76)
    kv = mapper(objects)
    assert kv.shape == (2, 2, 2, 3, 32)  # [B, layers, keys/values, k, D]
    torch.testing.assert_close(kv[0, :, 0], kv[1, :, 0])  # keys: one set for all images
    assert not torch.allclose(kv[0, :, 1], kv[1, :, 1])  # values: the image's own
    model = captioner(given_mapper=mapper, mapper="object", in_dim=76, k=3)
    said = generate_text(model, tok, objects, max_new_tokens=4)
    assert len(said) == 2


def test_the_grid_list_mapper_reads_each_token_where_it_stands_into_the_object_prefix(tok):
    torch.manual_seed(0)
    model = captioner(mapper="grid-list", in_dim=8, n_tokens=4, k=3, dim=16, hidden=12)
    assert isinstance(model.mapper, FP.GridListMapper) and model.mapper.deep
    tokens = torch.randn(2, 4, 8)
    kv = model.mapper(tokens)
    assert kv.shape == (2, 2, 2, 3, 32)  # [B, layers, keys/values, k, D]
    torch.testing.assert_close(kv[0, :, 0], kv[1, :, 0])  # the object prefix's keys: one set for all images
    assert not torch.allclose(kv[0, :, 1], kv[1, :, 1])
    swapped = tokens[:, [1, 0, 2, 3]]  # the same tokens, two of them trading places
    assert not torch.allclose(model.mapper(swapped)[:, :, 1], kv[:, :, 1])  # where a token stands counts
    before = checksum(model.lm)
    first, last = train(model, caption_batch(tokens, encode_texts(tok, ["", ""], ["a red star", "a blue cube"], 12)), 80)
    assert last < first - 0.2 and checksum(model.lm) == before
    assert len(generate_text(model, tok, tokens, max_new_tokens=4)) == 2


def test_caption_positions_restart_at_bos_and_put_the_prefix_at_zero():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    assert FP.caption_positions(mask, k=3).tolist() == [[0, 0, 0, 0, 1, 2, 2], [0, 0, 0, 0, 1, 2, 3]]


def test_caption_positions_give_the_same_greedy_text_with_and_without_the_cache(tok):
    model = captioner(mapper="transformer", in_dim=8, k=3, dim=16, restart_positions=True)
    features = torch.randn(3, 4, 8)
    cached = generate_text(model, tok, features, max_new_tokens=6)
    assert cached == generate_text(model, tok, features, max_new_tokens=6, use_cache=False)
    # and the LM really reads the caption at positions 0, 1, ...: the first caption token's logits match a plain
    # call whose prefix sits at position 0 with <bos>
    text = encode_texts(tok, [""], ["a large red star"], max_length=20)
    condition = model.condition(features[:1])
    out = model(input_ids=text.input_ids, attention_mask=text.attention_mask, **condition)
    S = 3 + text.input_ids.size(1)
    positions = torch.tensor([[0, 0, 0] + list(range(text.input_ids.size(1)))])
    direct = model.lm(inputs_embeds=torch.cat([condition["prefix"], model.embed(text.input_ids)], dim=1),
                      attention_mask=torch.ones(1, S, dtype=torch.long), position_ids=positions)
    torch.testing.assert_close(out.logits, direct.logits)


def test_one_prompt_per_image_gives_what_each_alone_gives(tok):
    model = captioner(small_lm(max_len=32), mapper="transformer", in_dim=8, k=3, dim=16, restart_positions=True)
    features = torch.randn(3, 4, 8)
    prompts = ["", "is there a star?", "a large"]
    together = generate_text(model, tok, features, prompts, max_new_tokens=4)
    alone = [generate_text(model, tok, features[i : i + 1], prompts[i], max_new_tokens=4)[0] for i in range(3)]
    assert together == alone
    with pytest.raises(ValueError, match="one per image"):
        generate_text(model, tok, features, prompts[:2])


def deep_captioner() -> FP.PrefixCaptioner:
    lm = small_lm()
    torch.manual_seed(1)
    return captioner(lm, mapper="deep", in_dim=8, k=3, dim=16)


def test_the_deep_prefix_is_every_layers_first_keys_and_values(tok):
    """One attention layer by hand: the caption's queries see the mapper's k keys/values before its own."""
    model = deep_captioner()
    assert isinstance(model.mapper, FP.DeepPrefixMapper)
    features = torch.randn(2, 4, 8)
    kv = model.mapper(features)
    assert kv.shape == (2, 2, 2, 3, 32)  # [B, layers, keys/values, k, D]
    text = encode_texts(tok, ["", ""], ["a large red star", "a cross"], max_length=20)
    lm = model.lm.model.transformer
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
    cache = model.lm.prefix_cache(model.condition(features)["prefix"])
    assert len(cache.layers) == 2 and len(cache) == 3
    mask = torch.cat([torch.ones(2, 3, dtype=torch.long), text.attention_mask], dim=1)
    ours = block.attn(h, mask=mask.bool()[:, None, None], causal=True, kv_cache=cache.layers[0])
    torch.testing.assert_close(ours, by_hand)


def test_training_the_deep_prefix_moves_the_mapper_and_never_the_lm(tok):
    model = deep_captioner()
    text = encode_texts(tok, ["", ""], ["a large red star", "a small blue circle"], max_length=20)
    before = checksum(model.lm)
    first, last = train(model, caption_batch(torch.randn(2, 4, 8), text), steps=30)
    assert last < first - 0.2 and checksum(model.lm) == before


def test_deep_prefix_captions_are_the_same_with_and_without_the_cache_and_beams_run(tok):
    model = deep_captioner()
    features, prompts = torch.randn(3, 4, 8), ["", "a large", "is there a star?"]
    cached = generate_text(model, tok, features, prompts, max_new_tokens=5)
    assert cached == generate_text(model, tok, features, prompts, max_new_tokens=5, use_cache=False)
    alone = [generate_text(model, tok, features[i : i + 1], prompts[i], max_new_tokens=5)[0] for i in range(3)]
    assert cached == alone
    beams = generate_text(model, tok, features, prompts, max_new_tokens=5, strategy="beam", num_beams=3)
    assert len(beams) == 3


def test_a_deep_prefix_holds_no_position_so_it_may_be_longer_than_the_room_left(tok):
    """max_len bounds the positions the LM learned; a deep prefix takes none, so k + caption may exceed it."""
    torch.manual_seed(0)
    model = captioner(small_lm(max_len=12), mapper="deep", in_dim=8, k=10, dim=16)
    assert model.max_text_len == 12
    said = generate_text(model, tok, torch.randn(2, 4, 8), max_new_tokens=8)
    assert len(said) == 2
    text = encode_texts(tok, [""], ["a large red star"], max_length=12)
    with pytest.raises(ValueError, match="position_ids"):  # a position past the table is still refused
        model.lm(input_ids=text.input_ids, position_ids=torch.arange(12, 12 + text.input_ids.size(1))[None])


def test_free_prefixes_fit_one_caption_each_and_look_up_by_row(tok):
    """The ceiling of notebook 04: a free deep prefix per caption makes the frozen LM say exactly that caption."""
    torch.manual_seed(0)
    lm = small_lm()
    captions = ["a large red star", "a small blue circle", "a cross"]
    text = encode_texts(tok, [""] * 3, captions, max_length=20)
    free = FP.FreePrefix(3, (2, 2, 4, 32))
    assert free(torch.tensor([2, 0])).shape == (2, 2, 2, 4, 32)
    torch.testing.assert_close(free(torch.tensor([2]))[0], free.prefixes[2])
    model = captioner(lm, given_mapper=free, mapper="deep", k=4)
    before = checksum(lm)
    train(model, caption_batch(torch.arange(3), text), steps=200, lr=0.1, optimizer=torch.optim.Adam)
    assert generate_text(model, tok, torch.arange(3), max_new_tokens=8) == captions
    assert checksum(lm) == before


# ---------------------------------------------------------------- the real track, on tiny stand-ins

CAPTIONS = ["a red star", "a small blue circle", "a green square", "a large yellow triangle"]


def tiny_llama(tok, seed=0):
    """A random Llama behind the LanguageModel interface, as SmolLM2 is on the real track; weights drawn with std
    0.3, not 0.02: at 0.02 its logits are too flat for any prefix to steer."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return wrap_language_model(LlamaForCausalLM(config).eval())


def stamp_captioner(tok, in_dim, k, mapper="mlp", seed=0, **config) -> FP.PrefixCaptioner:
    """The real track's captioner: a frozen HF LM (prefix at the first k positions, as SmolLM2 reads it) and a
    fresh mapper from image vectors [B, in_dim] (or tokens [B, N, in_dim])."""
    lm = tiny_llama(tok)
    torch.manual_seed(seed)
    return FP.PrefixCaptioner(FP.Config(mapper=mapper, in_dim=in_dim, k=k, restart_positions=False,
                                        lm={"name": "smollm2-135m", "sha256": None}, **config), lm=lm)


def test_captions_are_the_targets_with_eos_and_no_bos(tok):
    text = FP.encode_captions(tok, ["a red star", "a green square and a blue circle"])
    first = tok.encode("a red star") + [tok.eos_token_id]
    assert text.input_ids[0, : len(first)].tolist() == first and text.labels[0, : len(first)].tolist() == first
    assert text.attention_mask[0].sum() == len(first)
    assert (text.labels[0, len(first) :] == IGNORE_INDEX).all()  # padding: no loss
    assert tok.bos_token_id not in text.input_ids.tolist()[1]


def test_a_prompt_gets_no_loss_and_the_caption_follows_it_after_a_space(tok):
    text = FP.encode_captions(tok, ["a red star"], prompt="caption:")
    prompt, caption = tok.encode("caption:"), tok.encode(" a red star")
    assert text.input_ids[0].tolist() == prompt + caption + [tok.eos_token_id]
    assert text.labels[0].tolist() == [IGNORE_INDEX] * len(prompt) + caption + [tok.eos_token_id]


def test_long_captions_are_cut_at_max_length(tok):
    text = FP.encode_captions(tok, ["a large red star left of a small blue circle"], max_length=4)
    assert text.input_ids.shape == (1, 4) and tok.eos_token_id not in text.input_ids[0].tolist()


@pytest.mark.parametrize("captions, max_length, name", [([], 16, "captions"), (["a star", " "], 16, "captions"),
                                                        (["a star"], 1, "max_length")])
def test_bad_captions_are_refused_by_name(tok, captions, max_length, name):
    with pytest.raises(ValueError, match=name):
        FP.encode_captions(tok, captions, max_length=max_length)


@pytest.mark.parametrize("mapper, features", [("mlp", torch.randn(3, 20)), ("transformer", torch.randn(3, 5, 20))])
def test_the_prefix_has_k_vectors_of_the_lm_width(tok, mapper, features):
    model = stamp_captioner(tok, in_dim=20, k=6, mapper=mapper)
    assert model.condition(features)["prefix"].shape == (3, 6, 64)
    table = {row["part"]: row for row in parameter_table({"lm": model.lm, "mapper": model.mapper})}
    assert table["lm"]["trainable"] == 0 and table["mapper"]["trainable"] == table["mapper"]["params"] > 0


def test_the_lm_sees_labels_ignored_on_the_prefix_then_the_caption_labels(tok):
    model = stamp_captioner(tok, in_dim=8, k=3)
    text = FP.encode_captions(tok, CAPTIONS[:2])
    seen = {}
    model.lm.model.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    loss, _ = FP.batch_loss(model, caption_batch(torch.randn(2, 8), text))
    assert seen["inputs_embeds"].shape == (2, 3 + text.input_ids.shape[1], 64)
    assert (seen["labels"][:, :3] == IGNORE_INDEX).all()
    assert torch.equal(seen["labels"][:, 3:], text.labels)
    assert seen["attention_mask"][:, :3].eq(1).all() and torch.isfinite(loss)


def stamp_batches(features, text, batch_size, seed=0) -> StepBatches:
    """The real track's batches: pre-computed image vectors and tokenised captions, a pure function of the step."""
    return StepBatches(range(len(features)), batch_size, indexed_collate(features, text, key="image_features"), seed=seed)


def test_batches_trim_padding_and_refuse_a_length_mismatch(tok):
    text = FP.encode_captions(tok, CAPTIONS)
    batches = stamp_batches(torch.randn(4, 8), text, batch_size=2, seed=0)
    batch = batches(0)
    assert batch["image_features"].shape == (2, 8)
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
    assert torch.equal(batches(0)["input_ids"], batch["input_ids"])  # a pure function of the step
    with pytest.raises(ValueError, match="3 inputs but 4 texts"):
        stamp_batches(torch.randn(3, 8), text, batch_size=2)


def test_training_overfits_four_stamps_and_leaves_the_lm_untouched(tok):
    """Four images, four captions: the mapper alone learns to make the random frozen LM say each one."""
    model = stamp_captioner(tok, in_dim=8, k=4, hidden=64)
    features = torch.eye(4, 8) * 3  # four clearly different images
    before, mapper_before = checksum(model.lm), checksum(model.mapper)
    history = fit(model, FP.batch_loss, stamp_batches(features, FP.encode_captions(tok, CAPTIONS), 4), steps=80, lr=1e-2,
                  progress=False)
    assert history.loss[-1] < 0.1 * history.loss[0]
    assert checksum(model.lm) == before and checksum(model.mapper) != mapper_before
    captions = generate_text(model, tok, features, "", bos=False, max_new_tokens=12, batch_size=3)
    assert captions == CAPTIONS


def test_generation_gives_one_string_per_image_greedy_or_beam(tok):
    model = stamp_captioner(tok, in_dim=8, k=2)
    features = torch.randn(5, 8)
    greedy = generate_text(model, tok, features, "a", bos=False, max_new_tokens=4, batch_size=2)
    beam = generate_text(model, tok, features, "", bos=False, max_new_tokens=4, strategy="beam", num_beams=3)
    assert len(greedy) == len(beam) == 5 and all(isinstance(c, str) for c in greedy + beam)
    assert greedy == generate_text(model, tok, features, "a", bos=False, max_new_tokens=4)  # batching changes nothing


def test_baselines_have_known_answers():
    assert most_common_caption(["a cat.", "a dog.", "a cat."], 2) == ["a cat.", "a cat."]
    train_features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[0.1, 5.0], [3.0, 0.2], [2.0, 2.1]])  # cosine picks direction, not length
    assert nearest_neighbour_captions(train_features, ["x", "y", "xy"], queries) == ["y", "x", "xy"]
    with pytest.raises(ValueError, match="train_features"):
        nearest_neighbour_captions(train_features, ["x", "y"], queries)


def test_the_real_track_score_prefers_the_right_captions():
    """Each stamp has one reference caption; the real track scores with `caption_metrics` against it."""
    references = ["A red apple on a plate.", "The letter x in blue.", "A green bus in town.", "A zebra eating grass."]
    score = lambda said: caption_metrics(said, [[r] for r in references])  # noqa: E731
    right = score(references)  # 4+ words each: every n-gram order up to 4 counts, so CIDEr-D is 10
    wrong = score(references[1:] + references[:1])
    assert right["cider"] == pytest.approx(10.0) and right["rouge_l"] == pytest.approx(1.0)
    assert wrong["cider"] < 0.5 * right["cider"]


def test_stamp_vectors_are_the_encoders_vectors_in_item_order(tmp_path):
    paths = []
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        paths.append(tmp_path / f"{name}.png")
        Image.new("RGB", (10, 6), color).save(paths[-1])
    encoder = types.SimpleNamespace(preprocess=lambda images: preprocess_images(images, 8, (0, 0, 0), (1, 1, 1)),
                                    model=lambda x: (x.mean(dim=(2, 3)), x))  # vector: the mean colour in [0, 1]
    vectors = image_vectors(encoder, paths, batch_size=1)
    torch.testing.assert_close(vectors, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
