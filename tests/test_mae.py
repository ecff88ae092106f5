"""Masked image modelling (notebook 01): patches, masks, and a loss that counts the hidden patches only."""

import torch

from vlmlab import mae
from vlmlab.nn import PatchEmbed, ViT, ViTConfig
from vlmlab.train import fit


def tiny_mae(**kwargs):
    torch.manual_seed(0)
    return mae.MaskedAutoencoder(ViT(ViTConfig(image_size=32, patch_size=8, dim=16, depth=1, n_heads=2)), **kwargs)


def test_patchify_is_the_order_patch_embed_projects():
    embed = PatchEmbed(16, 4, 3, 10)
    x = torch.randn(2, 3, 16, 16)
    flat = mae.patchify(x, 4)  # [2, 16, 48]
    weight = embed.proj.weight.reshape(10, -1)
    torch.testing.assert_close(flat @ weight.T + embed.proj.bias, embed(x))


def test_unpatchify_undoes_patchify():
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(x, 8), 8), x)


def test_random_masking_keeps_distinct_patches_at_the_ratio():
    g = torch.Generator().manual_seed(0)
    visible = mae.random_masking(5, 16, 0.75, generator=g)
    assert visible.shape == (5, 4)
    assert all(len(set(row.tolist())) == 4 for row in visible)
    hidden = mae.hidden_mask(visible, 16)
    assert hidden.sum(1).tolist() == [12.0] * 5
    assert torch.equal(mae.random_masking(5, 16, 0.75, generator=torch.Generator().manual_seed(0)), visible)


def test_encoding_every_patch_in_order_is_the_vit_itself():
    model = tiny_mae().eval()
    x = torch.randn(3, 3, 32, 32)
    every = torch.arange(16).expand(3, -1)
    torch.testing.assert_close(model.encode(x, every), model.vit(x).hidden)


def test_loss_is_the_error_on_hidden_patches_only():
    model = tiny_mae(mask_ratio=0.5)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = model(images)
    per_patch = ((out.prediction - out.target) ** 2).mean(-1)  # [2, 16]
    torch.testing.assert_close(out.loss, per_patch[out.hidden.bool()].mean())
    assert out.hidden.sum() == 16  # half of 2 x 16
    # norm_pix: every target patch has mean 0 and variance 1 (unless flat)
    torch.testing.assert_close(out.target.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)


def test_a_few_steps_lower_the_reconstruction_error():
    model = tiny_mae(mask_ratio=0.5, norm_pix=False)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    fixed = mae.random_masking(8, 16, 0.5, generator=torch.Generator().manual_seed(1))
    before = model(images, fixed).loss.item()
    fit(model, lambda m, b: m(b).loss, lambda s: images, steps=30, lr=3e-3, seed=0, progress=False)
    assert model(images, fixed).loss.item() < 0.7 * before
