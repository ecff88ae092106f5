"""BLIP-2's Q-Former (notebook 08): its three attention masks, and parity with Hugging Face's `Blip2QFormerModel`."""

import pytest
import torch

from vlmlab.strategies import blip2

SMALL = blip2.QFormerConfig(vocab_size=50, visual_dim=12, n_queries=3, dim=16, depth=3, n_heads=2, mlp_dim=24,
                            cross_every=2, text_len=10)


def test_the_three_masks_say_who_sees_whom():
    text = torch.tensor([[1, 1, 1, 0]])  # three tokens and one pad
    Q = 2
    uni, bi, causal = (blip2.self_attention_mask(k, Q, text)[0, 0] for k in ("unimodal", "bidirectional", "causal"))
    assert uni[:Q, :Q].all() and not uni[:Q, Q:].any() and not uni[Q:, :Q].any()  # ITC: two separate worlds
    assert bi[:, : Q + 3].all() and not bi[:, -1].any()  # ITM: all see all but the pad
    assert not causal[:Q, Q:].any() and causal[Q:, :Q].all()  # ITG: queries never see the text, the text sees them
    text_part = causal[Q : Q + 3, Q : Q + 3]
    assert torch.equal(text_part, torch.tril(torch.ones(3, 3, dtype=torch.bool)))  # and itself causally


def test_queries_are_blind_to_the_text_under_the_causal_mask():
    torch.manual_seed(0)
    model = blip2.QFormer(SMALL).eval()
    image = torch.randn(2, 5, SMALL.visual_dim)
    a, b = torch.randint(1, 50, (2, 6)), torch.randint(1, 50, (2, 6))
    qa, ta = model(image, a, torch.ones_like(a), kind="causal")
    qb, _ = model(image, b, torch.ones_like(b), kind="causal")
    torch.testing.assert_close(qa, qb)  # what the queries carry cannot depend on the text they will caption
    alone, _ = model(image)
    torch.testing.assert_close(qa, alone)
    changed = a.clone()
    changed[:, 3] = (changed[:, 3] % 49) + 1
    _, tc = model(image, changed, torch.ones_like(changed), kind="causal")
    torch.testing.assert_close(tc[:, :3], ta[:, :3])  # text positions before the change see nothing of it


def test_unimodal_text_side_equals_the_text_alone():
    torch.manual_seed(1)
    model = blip2.QFormer(SMALL).eval()
    ids = torch.randint(1, 50, (2, 7))
    _, with_queries = model(torch.randn(2, 5, SMALL.visual_dim), ids, torch.ones_like(ids), kind="unimodal")
    _, alone = model(None, ids, torch.ones_like(ids))
    torch.testing.assert_close(with_queries, alone)


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dim"):
        blip2.QFormerConfig(dim=10, n_heads=4)
    with pytest.raises(ValueError, match="kind"):
        blip2.self_attention_mask("sideways", 2, torch.ones(1, 3))


def hf_pair():
    from transformers import Blip2QFormerModel
    from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

    torch.manual_seed(0)
    hf_config = blip2.hf_qformer_config(SMALL)
    hf, embeddings = Blip2QFormerModel(hf_config).eval(), Blip2TextEmbeddings(hf_config).eval()
    query_tokens = torch.randn(1, SMALL.n_queries, SMALL.dim)
    return hf, embeddings, query_tokens, blip2.from_hf_qformer(hf, embeddings, query_tokens, SMALL).eval()


def test_parity_with_hugging_face_blip2_qformer():
    hf, embeddings, query_tokens, ours = hf_pair()
    B, Q = 2, SMALL.n_queries
    image = torch.randn(B, 5, SMALL.visual_dim)
    ids = torch.randint(1, 50, (B, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        joined = embeddings(input_ids=ids, query_embeds=query_tokens.expand(B, -1, -1))  # [B, Q + T, D]
        full = torch.cat([torch.ones(B, Q, dtype=torch.long), mask], dim=1)
        expected = hf(query_embeds=joined, query_length=Q, attention_mask=full, encoder_hidden_states=image).last_hidden_state
        queries, text = ours(image, ids, mask, kind="bidirectional")  # ITM's mask is HF's
        torch.testing.assert_close(queries, expected[:, :Q])
        torch.testing.assert_close(text[mask.bool()], expected[:, Q:][mask.bool()])
        only_queries = hf(query_embeds=query_tokens.expand(B, -1, -1), encoder_hidden_states=image).last_hidden_state
        torch.testing.assert_close(ours(image)[0], only_queries)  # the queries alone: what stage 2 reads
        only_text = hf(query_embeds=embeddings(input_ids=ids), query_length=0, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours(None, ids, mask)[1][mask.bool()], only_text[mask.bool()])  # ITC's text side


def tiny_stage1(tok):
    config = blip2.Config(qformer=blip2.QFormerConfig(vocab_size=len(tok), visual_dim=12, n_queries=3, dim=16, depth=2,
                                                      n_heads=2, mlp_dim=24, text_len=32),
                          embed_dim=8, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    return blip2.Blip2(config)


def caption_batch(tok, n=6):
    from vlmlab.data.loaders import encode_texts

    texts = ["a red star", "a blue circle left of a small green square", "a red star", "two objects", "a cross", "a hexagon"]
    text = encode_texts(tok, texts[:n], max_length=32, ends=blip2.Blip2.text_ends)
    return {"image_features": torch.randn(n, 5, 12), "input_ids": text.input_ids, "attention_mask": text.attention_mask}


def test_stage1_losses_are_finite_and_train_only_the_qformer_side(tok):
    torch.manual_seed(0)
    model = tiny_stage1(tok)
    losses = blip2.stage1_losses(model, caption_batch(tok))
    assert set(losses) == {"itc", "itm", "itg"} and all(torch.isfinite(v) for v in losses.values())
    assert abs(losses["itm"].item() - torch.log(torch.tensor(2.0)).item()) < 0.5  # two classes, near chance at init
    sum(losses.values()).backward()
    assert model.qformer.queries.grad.abs().sum() > 0 and model.itm_head.weight.grad is not None


def test_itg_reads_the_text_causally_and_the_image_through_the_queries(tok):
    torch.manual_seed(0)
    model = tiny_stage1(tok).eval()
    batch = caption_batch(tok, 2)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model.itg_logits(batch["image_features"], ids, mask)
    later = ids.clone()
    later[:, 4] = 7
    torch.testing.assert_close(model.itg_logits(batch["image_features"], later, mask)[:, :4], logits[:, :4])
    other_image = model.itg_logits(torch.randn(2, 5, 12), ids, mask)
    assert not torch.allclose(other_image, logits)  # the image reaches the text (through the queries)


def test_itc_similarity_takes_the_best_query():
    image = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), dim=-1)  # two queries
    text = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    torch.testing.assert_close(blip2.Blip2.itc_similarity(image, text), torch.tensor([[1.0, 0.8]]))


def test_stage2_is_a_prefix_captioner_with_a_qformer_mapper(tiny_zoo, tok):
    from dataclasses import asdict

    from vlmlab.generation import generate_text
    from vlmlab.protocols import caption_loss
    from vlmlab.strategies import frozen_prefix

    qformer = tiny_stage1(tok).config.qformer
    config = frozen_prefix.Config(mapper="qformer", in_dim=12, k=3, qformer=asdict(qformer), lm=tiny_zoo["tiny-lm"])
    model = frozen_prefix.PrefixCaptioner(config)
    assert isinstance(model.mapper, blip2.QueryPrefix)
    batch = caption_batch(tok, 2)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss, _ = caption_loss(model.train(), batch)
    loss.backward()
    assert torch.isfinite(loss) and model.mapper.qformer.queries.grad is not None
    assert not any(p.requires_grad for p in model.lm.parameters())
    said = generate_text(model.eval(), tok, batch["image_features"], max_new_tokens=3)
    assert len(said) == 2
    with pytest.raises(ValueError, match="qformer"):
        frozen_prefix.Config(mapper="qformer", in_dim=12, k=3)


def test_query_attention_is_a_distribution_over_the_image_tokens(tok):
    torch.manual_seed(0)
    model = tiny_stage1(tok).eval()
    weights = blip2.query_image_attention(model.qformer, torch.randn(2, 5, 12))
    assert weights.shape == (2, 3, 5)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 3))


def test_itm_keep_follows_the_match_probability(tok):
    torch.manual_seed(0)
    model = tiny_stage1(tok).eval()
    batch = caption_batch(tok, 4)
    with torch.no_grad():
        model.itm_head.bias.copy_(torch.tensor([0.0, 50.0]))  # every pair a match
    assert blip2.itm_keep(model, batch["image_features"], batch["input_ids"], batch["attention_mask"]).all()
    with torch.no_grad():
        model.itm_head.bias.copy_(torch.tensor([50.0, 0.0]))  # no pair a match
    assert not blip2.itm_keep(model, batch["image_features"], batch["input_ids"], batch["attention_mask"]).any()


def test_the_itg_head_writes_through_the_one_decoding_loop(tok):
    """CapFilt's captioner: Blip2 is a Captioner whose logits are the ITG head's; each call reruns the whole text, so
    the decoding loop with a 'cache' (the text so far), without one, and step by step by hand agree."""
    from vlmlab.generation import generate, generate_text

    torch.manual_seed(0)
    model = tiny_stage1(tok).eval()
    features = torch.randn(3, 5, 12)
    cached = generate(model, input_ids=torch.full((3, 1), tok.bos_token_id), condition=model.condition(features),
                      max_new_tokens=5)
    recomputed = generate(model, input_ids=torch.full((3, 1), tok.bos_token_id), condition=model.condition(features),
                          max_new_tokens=5, use_cache=False)
    assert torch.equal(cached, recomputed)
    ids = torch.full((3, 1), tok.bos_token_id)
    for _ in range(cached.size(1)):  # greedy by hand, on the ITG head
        with torch.no_grad():
            ids = torch.cat([ids, model.itg_logits(features, ids, torch.ones_like(ids))[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(ids[:, 1:], cached)
    assert len(generate_text(model, tok, features, max_new_tokens=4)) == 3


def test_measure_reads_stage1_on_pairs_and_stage2_on_scenes(tiny_zoo, tok, monkeypatch):
    from dataclasses import asdict

    from vlmlab.strategies import frozen_prefix

    qformer = tiny_stage1(tok).config.qformer
    config = frozen_prefix.Config(mapper="qformer", in_dim=12, k=3, qformer=asdict(qformer), lm=tiny_zoo["tiny-lm"])
    stage2 = frozen_prefix.PrefixCaptioner(config)
    seen = []
    monkeypatch.setattr(blip2, "measure_captioner", lambda model, tokenizer, bench: seen.append(model) or {"vqa_acc": 0.5})
    assert blip2.measure(stage2, tok, bench=None) == {"vqa_acc": 0.5} and seen == [stage2]
