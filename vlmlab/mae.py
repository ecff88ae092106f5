"""Masked image modelling (MAE, He et al. 2022): pre-training the tiny ViT from pixels alone. Introduced in
notebook 01.

Hide most of an image's patches, let the ViT encode only the visible ones, and ask a small decoder to paint the
hidden patches back from the encoder's output plus a shared mask token at each hidden position. The loss counts
the hidden patches only, each normalised by its own mean and variance (`norm_pix`), so that flat background
costs nothing and edges and shapes carry the signal. No label of any kind is used; after pre-training the decoder
is dropped and the ViT is a backbone like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data.loaders import to_float
from .nn import Block, ViT


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut [B, C, H, W] into non-overlapping patches, raster order: -> [B, N, C * p * p] (channel, row, column
    within each patch, the order of `PatchEmbed`'s Conv2d weights)."""
    B, C, H, W = images.shape
    x = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # [B, C, h, w, p, p]
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, (H // patch_size) * (W // patch_size), -1)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of `patchify` for a square grid: [B, N, C * p * p] -> [B, C, H, W]."""
    B, N, _ = patches.shape
    side = round(N**0.5)
    x = patches.reshape(B, side, side, channels, patch_size, patch_size)  # [B, h, w, C, p, p]
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, channels, side * patch_size, side * patch_size)


def random_masking(batch: int, n_patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Which patches each image keeps: [B, keep] indices, a uniformly random subset of size
    round(N * (1 - mask_ratio)) per image, in random order."""
    keep = max(1, round(n_patches * (1 - mask_ratio)))
    noise = torch.rand(batch, n_patches, generator=generator, device=device)
    return noise.argsort(dim=1)[:, :keep]


def hidden_mask(visible: torch.Tensor, n_patches: int) -> torch.Tensor:
    """[B, keep] visible indices -> [B, N] float, 1 where the patch was hidden (the positions the loss counts)."""
    hidden = torch.ones(visible.size(0), n_patches, device=visible.device)
    return hidden.scatter(1, visible, 0.0)


@dataclass
class MAEOutput:
    loss: torch.Tensor  # mean squared error over the hidden patches
    prediction: torch.Tensor  # [B, N, C p p] the decoder's pixels for every patch (normalised if norm_pix)
    target: torch.Tensor  # [B, N, C p p] what it was asked for
    hidden: torch.Tensor  # [B, N] 1 where the patch was hidden


class MaskedAutoencoder(nn.Module):
    """A ViT encoder over the visible patches and a small transformer decoder over all positions."""

    def __init__(self, vit: ViT, mask_ratio: float = 0.75, decoder_dim: int = 64, decoder_depth: int = 2,
                 norm_pix: bool = True):
        super().__init__()
        self.vit, self.mask_ratio, self.norm_pix = vit, mask_ratio, norm_pix
        c, n = vit.config, vit.patch_embed.n_patches
        self.decoder_embed = nn.Linear(c.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, 1 + n, decoder_dim) * 0.02)
        self.decoder = nn.ModuleList(Block(decoder_dim, 4) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.to_pixels = nn.Linear(decoder_dim, c.in_channels * c.patch_size**2)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(self, pixels: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The ViT on the CLS token and the visible patches only: [B, 3, H, W], [B, keep] -> [B, 1 + keep, D]."""
        v = self.vit
        x = v.patch_embed(pixels) + v.pos_embed[:, 1:]  # [B, N, D], each patch knows where it is
        x = x.gather(1, visible[..., None].expand(-1, -1, x.size(-1)))  # [B, keep, D]
        cls = (v.cls_token + v.pos_embed[:, :1]).expand(x.size(0), -1, -1)
        x = v.pre_norm(torch.cat([cls, x], dim=1))
        for block in v.blocks:
            x = block(x)
        return v.norm(x)

    def decode(self, encoded: torch.Tensor, visible: torch.Tensor, n_patches: int) -> torch.Tensor:
        """Encoded visible tokens, mask tokens everywhere else, positions added: -> [B, N, C p p] pixels."""
        x = self.decoder_embed(encoded)  # [B, 1 + keep, d]
        full = self.mask_token.expand(x.size(0), n_patches, -1)
        full = full.scatter(1, visible[..., None].expand(-1, -1, x.size(-1)), x[:, 1:])  # [B, N, d]
        y = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos
        for block in self.decoder:
            y = block(y)
        return self.to_pixels(self.decoder_norm(y[:, 1:]))

    def target(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patches to reconstruct, each normalised by its own mean and variance if norm_pix."""
        target = patchify(pixels, self.vit.config.patch_size)
        if self.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward(self, images: torch.Tensor, visible: torch.Tensor | None = None) -> MAEOutput:
        """uint8 or float images [B, 3, H, W]; `visible` [B, keep] fixes the mask (else drawn at mask_ratio)."""
        pixels = to_float(images) if images.dtype == torch.uint8 else images
        n = self.vit.patch_embed.n_patches
        if visible is None:
            visible = random_masking(pixels.size(0), n, self.mask_ratio, device=pixels.device)
        prediction = self.decode(self.encode(pixels, visible), visible, n)
        target, hidden = self.target(pixels), hidden_mask(visible, n)
        loss = (((prediction - target) ** 2).mean(-1) * hidden).sum() / hidden.sum()
        return MAEOutput(loss, prediction, target, hidden)
