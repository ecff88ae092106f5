"""Notebook 06's fusion encoders: one sequence of two modalities, the two-stream and FLAVA variants, the ITM
negatives, the masked-word probe, retrieve-then-rerank, and parity with Hugging Face's ViLT."""

import pytest
import torch
from torch.testing import assert_close

from vlmlab import harness
from vlmlab.data import evalsets
from vlmlab.data.language import answer_vocabulary, caption, hard_negatives
from vlmlab.data.loaders import StepBatches, encode_texts, to_float
from vlmlab.strategies import fusion
from vlmlab.train import fit

ENDS = fusion.Fusion.text_ends


def tiny(tok, **changes) -> fusion.Fusion:
    torch.manual_seed(0)
    config = fusion.Config(**{"vocab_size": len(tok), "text_len": 30, "dim": 32, "depth": 2, "n_heads": 2,
                              "answers": answer_vocabulary()} | changes)
    return fusion.Fusion(config).eval()


@pytest.fixture(scope="module")
def scenes():
    return evalsets.generation_scenes(0, 8)


@pytest.fixture
def batch(tok, scenes):
    captions = encode_texts(tok, [caption(s) for s in scenes], max_length=30, ends=ENDS)
    negatives = encode_texts(tok, [n.text for n in fusion.world_negatives(scenes)], max_length=30, ends=ENDS)
    return fusion.pretraining_collate(evalsets.images_of(scenes), captions, negatives)(list(range(len(scenes))))


def test_texts_open_with_cls_and_close_with_sep(tok):
    ids = encode_texts(tok, ["a red star"], ends=ENDS).input_ids[0].tolist()
    assert ids[0] == tok.convert_tokens_to_ids("[CLS]") and ids[-1] == tok.convert_tokens_to_ids("[SEP]")
    with pytest.raises(ValueError, match="ends"):
        encode_texts(tok, ["a red star"], ends=("[CLS]", "<no-such-token>"))


@pytest.mark.parametrize("changes", [{}, {"streams": "two"}, {"unimodal_depth": 1, "contrastive": True}])
def test_one_sequence_of_two_modalities_and_padding_changes_nothing(tok, batch, changes):
    model = tiny(tok, **changes)
    pixels = to_float(batch["images"])
    out = model.encode(pixels, batch["input_ids"], batch["attention_mask"])
    B, T = batch["input_ids"].shape
    assert out.text.shape == (B, T, 32) and out.image.shape == (B, 17, 32) and out.pooled.shape == (B, 32)
    padded = model.encode(pixels, torch.nn.functional.pad(batch["input_ids"], (0, 5)),
                          torch.nn.functional.pad(batch["attention_mask"], (0, 5)))
    real = batch["attention_mask"].bool()
    assert_close(padded.text[:, :T][real], out.text[real], atol=1e-5, rtol=1e-5)
    assert_close(padded.pooled, out.pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("changes", [{}, {"streams": "two"}])
def test_the_text_reads_the_image(tok, batch, changes):
    model = tiny(tok, **changes)
    pixels, ids, mask = to_float(batch["images"]), batch["input_ids"], batch["attention_mask"]
    assert not torch.allclose(model.encode(pixels, ids, mask).pooled, model.encode(pixels.flip(0), ids, mask).pooled)


def test_flava_unimodal_outputs_see_one_modality_only(tok, batch):
    model = tiny(tok, unimodal_depth=1, contrastive=True)
    pixels, ids, mask = to_float(batch["images"]), batch["input_ids"], batch["attention_mask"]
    text, image = model.encode(pixels, ids, mask).unimodal
    text2, image2 = model.encode(pixels.flip(0), ids, mask).unimodal
    assert_close(text, text2) and not torch.allclose(image, image2)
    logits = model.contrastive_logits(model.encode(pixels, ids, mask))  # [B, B]
    dual = fusion.UnimodalEncoders(model)
    assert_close(logits, model.logit_scale.exp() * dual.encode_image(pixels) @ dual.encode_text(ids, mask).T)
    with pytest.raises(ValueError, match="contrastive"):
        fusion.Config(vocab_size=len(tok), contrastive=True)


def test_itm_negatives_are_never_the_images_own_caption(batch):
    g = torch.Generator().manual_seed(0)
    ids, mask = fusion.itm_negatives(batch, swap_negatives=0.0, generator=g)
    assert ids.shape == batch["input_ids"].shape
    assert all(not torch.equal(ids[i], batch["input_ids"][i]) for i in range(len(ids)))
    peaked = torch.full((8, 8), -1e4)
    peaked[torch.arange(8), (torch.arange(8) + 3) % 8] = 1e4  # image i is most like caption i + 3
    peaked.fill_diagonal_(1e5)  # its own caption would win, but is never drawn
    ids, _ = fusion.itm_negatives(batch, 0.0, similarity=peaked, generator=g)
    assert torch.equal(ids, batch["input_ids"][(torch.arange(8) + 3) % 8])
    ids, mask = fusion.itm_negatives(batch, 1.0, generator=g)
    width = batch["negative_input_ids"].size(1)
    assert torch.equal(ids[:, :width], batch["negative_input_ids"]) and not ids[:, width:].any()


def test_world_negatives_keep_to_the_kinds_asked_for_and_fall_back_on_another_caption():
    scenes = evalsets.generation_scenes(0, 200, split="train")
    every = fusion.world_negatives(scenes)
    assert {n.kind for n in every} == {"attribute_swap", "relation_swap", "object_replacement"}
    swaps = fusion.world_negatives(scenes, kinds=("attribute_swap", "relation_swap"))
    assert {n.kind for n in swaps} == {"attribute_swap", "relation_swap", "random"}  # one-object scenes have no swap
    for i, n in enumerate(swaps):
        if n.kind == "random":
            assert n.text == caption(scenes[(i + 1) % len(scenes)])
            assert all(m.kind == "object_replacement" for m in hard_negatives(scenes[i]))
        else:
            assert n.text != caption(scenes[i]) and n in hard_negatives(scenes[i])
    with pytest.raises(ValueError, match="kinds"):
        fusion.world_negatives(scenes, kinds="swaps")


def test_masking_never_hides_cls_sep_or_padding(tok, batch):
    model = tiny(tok, mlm_prob=0.9)
    inputs, labels = fusion.masked_tokens(model, batch["input_ids"])
    special = torch.isin(batch["input_ids"], torch.tensor([0, model.config.cls_token_id, model.config.sep_token_id]))
    assert (labels[special] == -100).all() and (labels[~special] != -100).float().mean() > 0.7


def test_pretraining_and_vqa_losses_train(tok, batch, scenes):
    model = tiny(tok, unimodal_depth=1, contrastive=True, depth=1)
    loss, logs = fusion.batch_loss(model.train(), batch)
    assert set(logs) == {"mlm", "itm", "itc"} and torch.isfinite(loss)
    questions = encode_texts(tok, ["what color is the star?"] * 8, max_length=30, ends=ENDS)
    vqa = fusion.answer_collate(evalsets.images_of(scenes), questions, torch.arange(8), torch.arange(8))(list(range(8)))
    history = fit(model, fusion.batch_loss, lambda step: vqa, steps=25, lr=3e-3, seed=0, progress=False)
    assert history.loss[-1] < history.loss[0] - 1.0


def test_masked_word_probe_masks_each_colour_and_shape_word_alone(tok, scenes):
    red = tok.convert_tokens_to_ids("Ġred")

    class SaysRed(torch.nn.Module):  # predicts "red" at every position, and records what it was shown
        max_text_len, text_ends = 30, ENDS

        def __init__(self):
            super().__init__()
            self.w, self.seen = torch.nn.Parameter(torch.zeros(1)), []

        def mlm_logits(self, pixels, ids, mask):
            self.seen.append(ids)
            return torch.nn.functional.one_hot(torch.full_like(ids, red), len(tok)).float()

    model = SaysRed()
    texts = [caption(s) for s in scenes]
    result = harness.masked_word_accuracy(model, tok, evalsets.images_of(scenes), texts)
    words = [w for t in texts for w in t.replace(",", "").split() if w in harness.MASKED_KINDS["color"]]
    assert result["color_acc"] == pytest.approx(words.count("red") / len(words)) and result["shape_acc"] == 0.0
    shown = torch.cat(model.seen)
    assert ((shown == tok.mask_token_id).sum(dim=1) == 1).all()


def test_rank_by_scorer_picks_the_best_scored_candidate(tok):
    class Index(torch.nn.Module):  # scores a pair by how close the image's first pixel is to the text's length
        max_text_len = 30

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def score(self, pixels, ids, mask):
            return -(pixels[:, 0, 0, 0] * 127.5 + 127.5 - mask.sum(dim=1)).abs()

    images = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([3, 4, 5, 6, 7])  # image j fits texts of j + 1 words (+ <bos>, <eos>)
    texts = ["a", "a b c", "a b c d e", "a b"]
    chosen = harness.rank_by_scorer(Index(), tok, images, texts, torch.arange(5).expand(4, 5))
    assert chosen.tolist() == [0, 2, 4, 1]
    assert harness.rank_by_scorer(Index(), tok, images, texts, torch.tensor([[3, 4]] * 4)).tolist() == [3, 3, 4, 3]


def test_parity_with_hugging_face_vilt(tok):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.ViltConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_size=64, patch_size=16, max_position_embeddings=30,
                                        modality_type_vocab_size=2, max_image_length=-1, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    hf = transformers.ViltModel(hf_config).eval()
    for p in hf.parameters():  # HF starts some tensors at zero: random everywhere, so that nothing matches by luck
        torch.nn.init.normal_(p, std=0.2)
    config = fusion.Config(vocab_size=len(tok), text_len=30, dim=32, depth=2, n_heads=2, mlp_ratio=2.0)
    ours = fusion.from_hf_vilt(hf, config).eval()
    text = encode_texts(tok, ["a large red star left of a small blue circle", "a cross"], max_length=30, ends=ENDS)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        theirs = hf(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels,
                    pixel_mask=torch.ones(2, 64, 64, dtype=torch.long))
        mine = ours.encode(pixels, text.input_ids, text.attention_mask)
    T = text.input_ids.size(1)
    assert_close(mine.text, theirs.last_hidden_state[:, :T], atol=1e-5, rtol=1e-4)
    assert_close(mine.pooled, theirs.pooler_output, atol=1e-5, rtol=1e-4)
    # ViLT draws its image tokens in a random order (it samples patches); compare the image CLS and the patch set
    assert_close(mine.image[:, 0], theirs.last_hidden_state[:, T], atol=1e-5, rtol=1e-4)
    assert_close(mine.image[:, 1:].sort(dim=1).values, theirs.last_hidden_state[:, T + 1 :].sort(dim=1).values,
                 atol=1e-5, rtol=1e-4)


def test_a_short_run_learns_to_use_the_image(tok):
    scenes = evalsets.generation_scenes(0, 256, split="train")
    captions = encode_texts(tok, [caption(s) for s in scenes], max_length=30, ends=ENDS)
    negatives = encode_texts(tok, [n.text for n in fusion.world_negatives(scenes)], max_length=30, ends=ENDS)
    model = tiny(tok, depth=1, image="regions", vision=None)
    features = torch.randn(256, 9, 20)  # stand-in region vectors, one fixed set per scene: a lookup to learn
    batches = StepBatches(range(256), 32, fusion.pretraining_collate(features, captions, negatives, "image_features"))
    history = fit(model, fusion.batch_loss, batches, steps=40, lr=3e-3, seed=0, progress=False)
    assert history.loss[-1] < history.loss[0] - 1.0


def test_init_from_vit_copies_what_reads_the_image_where_shapes_match(tok):
    from vlmlab.nn import ViT, ViTConfig

    torch.manual_seed(1)
    vit = ViT(ViTConfig(image_size=64, patch_size=16, dim=32, depth=2, n_heads=2))
    single = tiny(tok)
    copied = fusion.init_from_vit(single, vit)
    assert_close(single.image_embed.patches.proj.weight, vit.patch_embed.proj.weight)
    assert_close(single.layers[1].mlp.fc.weight, vit.blocks[1].mlp.fc.weight)
    assert not any(name.startswith(("text_embed", "modality", "pooler", "itm", "mlm", "vqa")) for name in copied)
    two = tiny(tok, streams="two", depth=2, mlp_ratio=2.0)
    copied = fusion.init_from_vit(two, vit)
    assert_close(two.image_layers[0].attn.q.weight, vit.blocks[0].attn.q.weight)
    assert "image_layers.0.mlp.fc.weight" not in copied and not any(n.startswith("text_layers") for n in copied)
    regions = tiny(tok, image="regions")
    assert not any(n.startswith("image_embed") for n in fusion.init_from_vit(regions, vit))


def test_a_model_reading_48_px_resizes_the_scenes_and_starts_from_the_vit_moved_to_its_grid(tok):
    from vlmlab.encoders import resize
    from vlmlab.nn import ViT, ViTConfig, resized_vit

    torch.manual_seed(1)
    vit = ViT(ViTConfig(image_size=64, patch_size=16, dim=32, depth=2, n_heads=2))
    model = tiny(tok, image_size=48, patch_size=16)
    assert model.config.n_image_tokens == 10  # a 3 x 3 grid of patches and the image [CLS]
    copied = fusion.init_from_vit(model, vit)
    assert "image_embed.pos" in copied  # the 4 x 4 grid of positions, resized to 3 x 3
    assert_close(model.image_embed.pos, resized_vit(vit, 48).pos_embed)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1  # the world's 64 px scenes
    assert_close(model.image_embed(pixels), model.image_embed(resize(pixels, 48, bounds=(-1.0, 1.0))))
    assert model.image_embed(pixels).shape == (2, 10, 32)
