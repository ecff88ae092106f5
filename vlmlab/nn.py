"""Shared transformer blocks: attention, the pre-norm block, a ViT, a text transformer and a GPT-style
causal LM. Introduced in notebook 01.

Read top to bottom: the block, the image encoder (ViT), the text models (bidirectional encoder and causal LM).
Attention, its masks and the KV cache are in `vlmlab.attention`, BERT's masked-LM pieces in `vlmlab.mlm`,
generation (greedy, sampling, beam search) in `vlmlab.generation`, and the converters that copy Hugging Face
weights into these classes in `vlmlab.hf_convert`.

Letters in the shape comments: B batch, T query length, S key length, D width, H heads, hd = D // H,
N image patches, V vocabulary. Masks are bool tensors where True means "may attend".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Cache, KVCache, MultiHeadAttention, causal_mask, combine_masks, padding_mask
from .params import require

ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # our name -> nn.GELU(approximate=...)


# ----------------------------------------------------------------------------------------------
# The transformer block


class MLP(nn.Module):
    """Linear -> GELU -> Linear, applied to each position alone. Introduced in notebook 01."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        require(activation in ACTIVATIONS, "activation", activation, f"one of {sorted(ACTIVATIONS)}")
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=ACTIVATIONS[activation])
        self.proj = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))  # [B, T, D]


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2 / ViT): x += attn(ln1(x)); [x += cross(ln_cross(x), context)];
    x += mlp(ln2(x)). Introduced in notebook 01."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, cross_attention: bool = False,
                 kv_dim: int | None = None, activation: str = "gelu", norm_eps: float = 1e-5):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, n_heads, dropout)
        self.ln_cross = nn.LayerNorm(dim, eps=norm_eps) if cross_attention else None
        self.cross = MultiHeadAttention(dim, n_heads, dropout, kv_dim=kv_dim) if cross_attention else None
        self.ln2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, round(dim * mlp_ratio), dropout, activation)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, causal: bool = False,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, D], context [B, S, kv_dim] (cross-attention blocks only) -> [B, T, D]."""
        require((context is not None) == (self.cross is not None), "context", None if context is None else "a tensor",
               "a tensor exactly when the block was built with cross_attention=True")
        x = x + self.attn(self.ln1(x), mask=mask, causal=causal, kv_cache=kv_cache)
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), context=context, mask=context_mask)
        return x + self.mlp(self.ln2(x))


def _init_weights(module: nn.Module) -> None:
    """GPT-2 / ViT initialisation: weights ~ N(0, 0.02), biases 0 (LayerNorm keeps 1 and 0)."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# Vision transformer


class PatchEmbed(nn.Module):
    """Cut the image into patch_size x patch_size squares and project each to D numbers: one Conv2d whose
    stride equals its kernel. [B, C, H, W] -> [B, N, D]. Introduced in notebook 01."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int = 3, dim: int = 128):
        super().__init__()
        require(image_size % patch_size == 0, "image_size", image_size, f"a multiple of patch_size={patch_size}")
        self.image_size, self.in_channels = image_size, in_channels
        self.grid = (image_size // patch_size, image_size // patch_size)  # (h, w) patches
        self.n_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        require(images.ndim == 4 and tuple(images.shape[1:]) == expected, "images.shape", tuple(images.shape),
               f"[B, {expected[0]}, {expected[1]}, {expected[2]}]")
        x = self.proj(images)  # [B, D, h, w]
        return x.flatten(2).transpose(1, 2)  # [B, N, D], patches in raster order


@dataclass
class ViTConfig:
    image_size: int = 64
    patch_size: int = 8
    in_channels: int = 3
    dim: int = 128
    depth: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        require(self.dim % self.n_heads == 0, "dim", self.dim, f"a multiple of n_heads={self.n_heads}")
        require(self.image_size % self.patch_size == 0, "image_size", self.image_size,
               f"a multiple of patch_size={self.patch_size}")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "a number in [0, 1)")


@dataclass
class ViTOutput:
    cls: torch.Tensor  # [B, D] the CLS token: a summary of the image
    patches: torch.Tensor  # [B, N, D] one vector per patch, raster order
    hidden: torch.Tensor  # [B, 1 + N, D] both, as the last layer produced them


class ViT(nn.Module):
    """Vision transformer (Dosovitskiy et al. 2021): patches + CLS token + learned positions, pre-norm blocks,
    final LayerNorm. Introduced in notebook 01."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = self.config = config
        self.patch_embed = PatchEmbed(c.image_size, c.patch_size, c.in_channels, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.n_patches, c.dim))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.dim, c.n_heads, c.mlp_ratio, c.dropout, norm_eps=c.norm_eps) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.pre_norm = nn.Identity()  # CLIP's image tower puts a LayerNorm here (strategies/clip.py)
        self.apply(_init_weights)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    @classmethod
    def from_config(cls, config: dict) -> ViT:
        """Rebuilt from the config a checkpoint keeps (`vlmlab.zoo.load_model`)."""
        return cls(ViTConfig(**config))

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): how the N patches are laid out."""
        return self.patch_embed.grid

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """What the first block reads: the CLS token and the patch embeddings, with positions [B, 1 + N, D]."""
        x = self.patch_embed(images)  # [B, N, D]
        cls = self.cls_token.expand(x.size(0), -1, -1)  # [B, 1, D]
        return self.drop(self.pre_norm(torch.cat([cls, x], dim=1) + self.pos_embed))  # [B, 1 + N, D]

    def forward(self, images: torch.Tensor) -> ViTOutput:
        x = self.tokens(images)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return ViTOutput(cls=x[:, 0], patches=x[:, 1:], hidden=x)


def resized_vit(vit: ViT, image_size: int) -> ViT:
    """A copy of `vit` that reads `image_size` px images: the same weights, the grid of position embeddings resized
    bicubically to the new patch grid (how a ViT moves to another resolution, Dosovitskiy et al. 2021, section
    3.2). The CLS position is kept as it is. Introduced in notebook 02 (where the patches fall)."""
    c = replace(vit.config, image_size=image_size)
    out = copy.deepcopy(vit)
    out.config = c
    out.patch_embed = PatchEmbed(c.image_size, c.patch_size, c.in_channels, c.dim).to(vit.pos_embed.device)
    out.patch_embed.proj.load_state_dict(vit.patch_embed.proj.state_dict())
    (h, w), (new_h, new_w), pos = vit.grid, out.grid, vit.pos_embed.detach()  # pos: [1, 1 + N, D], CLS first
    grid = pos[:, 1:].reshape(1, h, w, -1).permute(0, 3, 1, 2)  # [1, D, h, w]
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False)  # [1, D, new_h, new_w]
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, -1)  # [1, N', D]
    out.pos_embed = nn.Parameter(torch.cat([pos[:, :1], grid], dim=1))  # [1, 1 + N', D]
    return out


# ----------------------------------------------------------------------------------------------
# Text transformer and causal language model


@dataclass
class TextConfig:
    vocab_size: int
    max_len: int = 64
    dim: int = 128
    depth: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    causal: bool = False
    norm_eps: float = 1e-5
    activation: str = "gelu"
    pad_token_id: int = 0  # the tokenizer's padding id, kept with the model for collators and generate()
    cross_attention_dim: int | None = None  # width of a context every block cross-attends to (VirTex, notebook 03)

    def __post_init__(self):
        require(self.vocab_size >= 1, "vocab_size", self.vocab_size, "an integer >= 1")
        require(self.dim % self.n_heads == 0, "dim", self.dim, f"a multiple of n_heads={self.n_heads}")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "a number in [0, 1)")
        require(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {sorted(ACTIVATIONS)}")


class TextTransformer(nn.Module):
    """Token + learned position embeddings, pre-norm blocks, final LayerNorm. Causal (GPT) or bidirectional
    (BERT) as `config.causal` says; with `config.cross_attention_dim` every block also cross-attends to a
    context (a text decoder over image features). Introduced in notebook 01."""

    def __init__(self, config: TextConfig):
        super().__init__()
        c = self.config = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.drop = nn.Dropout(c.dropout)
        cross = c.cross_attention_dim is not None
        self.blocks = nn.ModuleList(Block(c.dim, c.n_heads, c.mlp_ratio, c.dropout, cross_attention=cross,
                                          kv_dim=c.cross_attention_dim, activation=c.activation, norm_eps=c.norm_eps)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.apply(_init_weights)

    @classmethod
    def from_config(cls, config: dict) -> TextTransformer:
        """Rebuilt from the config a checkpoint keeps (`vlmlab.zoo.load_model`)."""
        return cls(TextConfig(**config))

    def forward(self, *, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: Cache | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] or inputs_embeds [B, T, D] (token embeddings, positions not yet added) -> [B, T, D].

        attention_mask: [B, past + T] with 1 on real tokens and 0 on padding, covering the cached tokens too
        (the causal mask is added for a causal model); or a bool mask [B, 1, T, past + T] used as it is (True =
        may attend), as notebook 03's prefix mask is. position_ids [B, T]: by default each input's count of real
        tokens before it, so left padding changes nothing. cache: extended in place (causal models only).
        context [B, S, cross_attention_dim]: what every block cross-attends to, when the config has one."""
        require((input_ids is None) != (inputs_embeds is None), "input_ids/inputs_embeds", "both or neither", "exactly one")
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        B, T, _ = x.shape
        past = 0
        if cache is not None:
            require(self.config.causal, "cache", "a cache", "None for a bidirectional model")
            require(len(cache.layers) == len(self.blocks), "cache", f"{len(cache.layers)} layers", f"{len(self.blocks)}")
            past = len(cache)
        S = past + T
        if position_ids is None:  # positions count the sequence, so max_len bounds its length
            require(S <= self.config.max_len, "sequence length", f"{S} (cached {past} + new {T})",
                    f"<= max_len={self.config.max_len}")
        else:  # given positions (a deep prefix holds no position of its own): max_len bounds them alone
            require(int(position_ids.max()) < self.config.max_len, "position_ids", int(position_ids.max()),
                    f"< max_len={self.config.max_len}")
        causal = self.config.causal
        if attention_mask is None:
            positions, mask = torch.arange(past, S, device=x.device), None  # [T]
        elif attention_mask.dtype == torch.bool and attention_mask.ndim == 4:  # a ready mask: used as it is
            require(position_ids is not None, "position_ids", None, "given when attention_mask is a [B, 1, T, S] bool mask")
            positions, mask, causal = position_ids, attention_mask, False
        else:
            require(tuple(attention_mask.shape) == (B, S), "attention_mask.shape", tuple(attention_mask.shape), f"{(B, S)}")
            positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, past:]  # [B, T]
            mask = padding_mask(attention_mask)  # [B, 1, 1, S]
        if position_ids is not None:
            positions = position_ids
        if causal:  # built once here, not again in every block
            mask = combine_masks(mask, causal_mask(T, S, x.device))
        x = self.drop(x + self.pos_emb(positions))
        layers = cache.layers if cache is not None else [None] * len(self.blocks)
        for block, layer_cache in zip(self.blocks, layers):
            x = block(x, mask=mask, context=context, kv_cache=layer_cache)
        return self.norm(x)


@dataclass
class LMOutput:
    logits: torch.Tensor  # [B, T, V] scores for the token that comes next
    loss: torch.Tensor | None = None  # mean next-token cross-entropy, when labels were given
    cache: Cache | None = None  # what the next call continues from, when caching


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting labels[:, t + 1] from logits[:, t]; labels aligned with the inputs,
    -100 = ignore (the Hugging Face convention). Introduced in notebook 01."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


class CausalLM(nn.Module):
    """GPT: a causal TextTransformer whose output head is the token embedding, transposed (tied weights).
    Introduced in notebook 01. `config.causal` is set to True."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = replace(config, causal=True)
        self.transformer = TextTransformer(self.config)

    @classmethod
    def from_config(cls, config: dict) -> CausalLM:
        """Rebuilt from the config a checkpoint keeps (`vlmlab.zoo.load_model`)."""
        return cls(TextConfig(**config))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, D] (no positions), the form `inputs_embeds` takes."""
        return self.transformer.tok_emb(input_ids)

    def forward(self, *, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: Cache | None = None, use_cache: bool = False,
                context: torch.Tensor | None = None) -> LMOutput:
        """Logits for the next token at every position. `inputs_embeds` lets later notebooks put a visual
        prefix in front of `embed(input_ids)`. To decode step by step, start with `use_cache=True` and pass the
        returned `cache` back with only the new tokens (and the attention_mask of everything so far).
        Other arguments: see `TextTransformer.forward`."""
        if use_cache and cache is None:
            cache = Cache(len(self.transformer.blocks))
        hidden = self.transformer(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, cache=cache, context=context)  # [B, T, D]
        logits = F.linear(hidden, self.transformer.tok_emb.weight)  # [B, T, V]
        loss = next_token_loss(logits, labels) if labels is not None else None
        return LMOutput(logits, loss, cache)
