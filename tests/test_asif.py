"""ASIF (notebook 07): relative representations over anchor pairs, and a dual encoder built from them without training."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlmlab.data.loaders import encode_texts, to_float
from vlmlab.encoders import resize
from vlmlab.nn import ViT, ViTConfig, resized_vit
from vlmlab.strategies import asif


def test_relative_keeps_k_anchors_clamps_negatives_and_has_unit_length():
    g = torch.Generator().manual_seed(0)
    x, anchors = torch.randn(5, 8, generator=g), torch.randn(30, 8, generator=g)
    rel = asif.relative(x, anchors, anchors.mean(0), k=4, p=1.0)
    assert rel.shape == (5, 30)
    assert ((rel > 0).sum(dim=1) <= 4).all() and (rel >= 0).all()
    torch.testing.assert_close(rel.norm(dim=1), torch.ones(5))
    sims = F.normalize(x - anchors.mean(0), dim=-1) @ F.normalize(anchors - anchors.mean(0), dim=-1).T
    top = sims.topk(4, dim=1)
    kept = top.values.clamp(min=0)
    torch.testing.assert_close(rel.gather(1, top.indices), F.normalize(kept, dim=-1))  # the k most similar, in proportion


def test_a_larger_power_concentrates_the_weight_on_the_closest_anchor():
    g = torch.Generator().manual_seed(1)
    x, anchors = torch.randn(3, 8, generator=g), torch.randn(50, 8, generator=g)
    flat, sharp = (asif.relative(x, anchors, anchors.mean(0), k=10, p=p) for p in (1.0, 8.0))
    assert (sharp.max(dim=1).values > flat.max(dim=1).values).all()
    assert torch.equal(sharp.argmax(dim=1), flat.argmax(dim=1))


def test_k_larger_than_the_anchor_set_keeps_them_all():
    anchors = torch.eye(4) + 0.1
    rel = asif.relative(torch.ones(1, 4), anchors, anchors.mean(0), k=100, p=1.0)
    assert rel.shape == (1, 4)


class Words(nn.Module):
    """A stand-in text encoder: a fixed random vector per token, averaged (what MeanWordEmbedding computes)."""

    def __init__(self, vocab: int, dim: int = 32):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)


class Pixels(nn.Module):
    """A stand-in image encoder: the image's mean colour per channel, as a vector."""

    def forward(self, pixels):
        return pixels.mean(dim=(2, 3))


def coloured(colours):  # uint8 [N, 3, 8, 8] plain images
    return torch.tensor(colours, dtype=torch.uint8)[:, :, None, None].expand(-1, -1, 8, 8).contiguous()


@pytest.fixture
def colour_asif(tok):
    torch.manual_seed(0)
    config = asif.Config(k_image=1, k_text=3, p=1.0, image_dim=3, text_dim=32, text_len=16)
    images = coloured([[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 20, 20], [20, 240, 20], [20, 20, 240]])
    texts = ["a red square", "a green square", "a blue square", "a red circle", "a green circle", "a blue circle"]
    return asif.ASIF.from_pairs(config, tok, images, texts, Pixels(), asif.MeanWordEmbedding(Words(len(tok))))


def test_asif_recognises_what_its_anchors_show_and_is_a_dual_encoder(colour_asif, tok):
    query = to_float(coloured([[245, 15, 15], [15, 15, 245]]))  # a red and a blue image, not anchors themselves
    batch = tok(["a red shape", "a blue shape", "a green shape"], padding=True, return_tensors="pt")
    image, text = colour_asif.encode_image(query), colour_asif.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(image.norm(dim=1), torch.ones(2))
    assert (image @ text.T).argmax(dim=1).tolist() == [0, 1]
    weights, which = colour_asif.top_anchors(query, k=1)
    assert which[:, 0].tolist() in ([0, 2], [3, 2], [0, 5], [3, 5])  # the explanation: a red and a blue anchor


def test_keep_forgets_and_extend_learns_without_touching_the_encoders(colour_asif, tok):
    no_red = colour_asif.keep(torch.tensor([False, True, True, False, True, True]))
    assert len(no_red.anchor_images) == 4 and no_red.image_encoder is colour_asif.image_encoder
    red = to_float(coloured([[245, 15, 15]]))
    assert len(colour_asif.anchor_images) == 6  # the original keeps its anchors
    back = no_red.extend(tok, coloured([[250, 10, 10]]), ["a red square"])
    assert len(back.anchor_images) == 5
    torch.testing.assert_close(back.anchor_images[-1], colour_asif.anchor_images[0])
    weights, which = back.top_anchors(red, k=1)
    assert which.item() == 4  # the added anchor is the red image's closest


def test_similarity_on_vectors_equals_the_model(colour_asif, tok):
    images = coloured([[245, 15, 15], [15, 245, 15]])
    texts = ["a red circle", "a green square", "a blue circle"]
    batch = encode_texts(tok, texts, max_length=colour_asif.max_text_len)
    c = colour_asif.config
    expected = colour_asif.encode_image(to_float(images)) @ colour_asif.encode_text(batch.input_ids, batch.attention_mask).T
    got = asif.similarity(colour_asif.image_vectors(images), colour_asif.text_vectors(tok, texts), colour_asif.anchor_images,
                          colour_asif.anchor_texts, c.k_image, c.k_text, c.p)
    torch.testing.assert_close(got, expected)


def test_nothing_in_asif_can_train(colour_asif):
    assert not any(p.requires_grad for p in colour_asif.parameters())
    assert asif.batch_loss is None


@pytest.mark.parametrize("bad", [{"k_image": 0}, {"p": 0.0}, {"k_text": 2.5}, {"n_anchors": -1}, {"image_size": 0}])
def test_config_rejects_bad_values_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        asif.Config(**bad)


def test_anchor_sets_must_pair_up(colour_asif):
    with pytest.raises(ValueError, match="anchors"):
        colour_asif.with_anchor_vectors(torch.zeros(3, 3), torch.zeros(2, 32))


def test_mean_patches_reads_the_pictures_at_its_size_without_touching_the_vit():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=64, patch_size=16, dim=32, depth=1, n_heads=2)).eval()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    same, smaller = asif.MeanPatches(vit), asif.MeanPatches(vit, 48)
    assert same.vit is vit and smaller.vit.config.image_size == 48 and smaller.vit.grid == (3, 3)
    torch.testing.assert_close(same(pixels), vit(pixels).patches.mean(dim=1))
    expected = resized_vit(vit, 48)(resize(pixels, 48, bounds=(-1.0, 1.0))).patches.mean(dim=1)  # 9 patches, averaged
    torch.testing.assert_close(smaller(pixels), expected)
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())  # the loaded ViT is not changed
    with pytest.raises(ValueError, match="image_size"):
        asif.MeanPatches(vit, 50)  # not a multiple of the 16 px patches
