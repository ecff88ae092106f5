"""Shared transformer blocks: attention, the pre-norm block, a ViT, a text transformer and a GPT-style
causal LM. Introduced in notebook 01.

Read top to bottom: attention and its masks, the KV cache, the block, the image encoder (ViT), the text
models (bidirectional encoder and causal LM), the BERT masked-LM pieces, and the converters that copy
Hugging Face GPT-2 / ViT weights into these classes (the parity tests use them to show that the same
weights give the same numbers). Generation (greedy, sampling, beam search) is in `vlmlab.generation`.

Letters in the shape comments: B batch, T query length, S key length, D width, H heads, hd = D // H,
N image patches, V vocabulary. Masks are bool tensors where True means "may attend".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .params import require

ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # our name -> nn.GELU(approximate=...)


# ----------------------------------------------------------------------------------------------
# Attention and masks


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) over the keys, masked keys at -inf: [B, H, T, S]. Introduced in notebook 01.

    A query whose mask allows no key at all gets a row of NaN here; `attention()` avoids that."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # [B, H, T, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, training: bool = False, use_sdpa: bool = True) -> torch.Tensor:
    """Scaled dot-product attention: q [B, H, T, hd], k and v [B, H, S, hd] -> [B, H, T, hd].
    Introduced in notebook 01.

    `mask` is bool, broadcastable to [B, H, T, S], True = may attend. `use_sdpa=True` calls PyTorch's fused
    `F.scaled_dot_product_attention`; False runs the readable reference path (`attention_weights(q, k) @ v`).
    Both give the same numbers. A query that may attend to no key at all (a left-padding position under a
    causal mask, say) outputs zeros in both paths: it is shown every key so the softmax stays finite, then
    its output is zeroed.
    """
    empty = None
    if mask is not None:
        require(mask.dtype == torch.bool, "mask.dtype", mask.dtype, "torch.bool (True = may attend)")
        empty = ~mask.any(dim=-1, keepdim=True)  # [..., T, 1] queries with no key to look at
        mask = mask | empty
    p = dropout_p if training else 0.0
    if use_sdpa:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # [B, H, T, hd]
    else:
        weights = F.dropout(attention_weights(q, k, mask), p=p)  # [B, H, T, S]
        out = weights @ v  # [B, H, T, hd]
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """[T, S] bool: the T queries are the last T of S positions, and each may attend to itself and to every
    earlier position. S > T when the earlier keys come from a KV cache. Introduced in notebook 01."""
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def prefix_mask(T: int, S: int | None = None, prefix_len: int | torch.Tensor = 0,
                device: torch.device | str | None = None) -> torch.Tensor:
    """A causal mask whose first `prefix_len` positions every query may see: [T, S] for an int prefix_len,
    [B, 1, T, S] for a LongTensor [B] of them. Inside the prefix attention is bidirectional, after it causal
    (SimVLM's PrefixLM). Introduced in notebook 03."""
    mask = causal_mask(T, S, device)  # [T, S]
    keys = torch.arange(mask.size(1), device=device)  # [S]
    if isinstance(prefix_len, torch.Tensor):
        return mask | (keys < prefix_len.to(device)[:, None, None, None])  # [B, 1, T, S]
    return mask | (keys < prefix_len)  # [T, S]


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] with 1 on real tokens and 0 on padding -> [B, 1, 1, S] bool key mask. Introduced in notebook 01."""
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Allowed by every mask (logical AND, broadcasting); None entries are skipped, None if all are None."""
    result = None
    for mask in masks:
        if mask is not None:
            result = mask if result is None else result & mask
    return result


class KVCache:
    """The keys and values one self-attention layer has already computed. Introduced in notebook 01.

    Decoding one token at a time, the new token's query attends to the cached keys/values plus its own,
    so nothing already seen is recomputed. `update` appends IN PLACE and returns everything so far."""

    def __init__(self):
        self.k: torch.Tensor | None = None  # [B, H, S, hd]
        self.v: torch.Tensor | None = None  # [B, H, S, hd]

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and reorder) these batch rows: beam search calls it when beams are re-ranked."""
        self.k, self.v = self.k[rows], self.v[rows]


# ----------------------------------------------------------------------------------------------
# The transformer block


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, S, D] -> [B, H, S, hd]."""
    B, S, D = x.shape
    return x.view(B, S, n_heads, D // n_heads).transpose(1, 2)


class MultiHeadAttention(nn.Module):
    """Multi-head attention. Self-attention when `context` is None, cross-attention (keys and values from
    `context` [B, S, kv_dim]) when it is given. Introduced in notebook 01."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, bias: bool = True, kv_dim: int | None = None):
        super().__init__()
        require(dim % n_heads == 0, "dim", dim, f"a multiple of n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.use_sdpa = True  # set False to run the reference attention path
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=bias)  # keys and values in one matmul
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                causal: bool = False, kv_cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]. `mask` broadcasts to [B, H, T, S]; `causal` adds a causal mask;
        `kv_cache` (self-attention only) is extended with this call's keys and values."""
        require(context is None or kv_cache is None, "kv_cache", kv_cache, "None for cross-attention")
        B, T, D = x.shape
        source = x if context is None else context  # [B, S, D or kv_dim]
        k, v = self.kv(source).chunk(2, dim=-1)  # 2 x [B, S, D]
        q, k, v = split_heads(self.q(x), self.n_heads), split_heads(k, self.n_heads), split_heads(v, self.n_heads)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # [B, H, past + T, hd]
        if causal:
            mask = combine_masks(mask, causal_mask(T, k.size(2), x.device))
        out = attention(q, k, v, mask, self.dropout, self.training, self.use_sdpa)  # [B, H, T, hd]
        out = out.transpose(1, 2).reshape(B, T, D)  # heads side by side again
        return self.resid_drop(self.proj(out))


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
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

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): how the N patches are laid out."""
        return self.patch_embed.grid

    def forward(self, images: torch.Tensor) -> ViTOutput:
        x = self.patch_embed(images)  # [B, N, D]
        cls = self.cls_token.expand(x.size(0), -1, -1)  # [B, 1, D]
        x = self.drop(self.pre_norm(torch.cat([cls, x], dim=1) + self.pos_embed))  # [B, 1 + N, D]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return ViTOutput(cls=x[:, 0], patches=x[:, 1:], hidden=x)


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

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, past_key_values: list[KVCache] | None = None,
                prefix_len: int | torch.Tensor | None = None, context: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] or inputs_embeds [B, T, D] (token embeddings, positions not yet added) -> [B, T, D].

        attention_mask [B, past + T]: 1 on real tokens, 0 on padding, covering the cached tokens too.
        A token's position is the number of real tokens before it, so left padding changes nothing.
        past_key_values: one KVCache per block, extended in place (causal models only).
        prefix_len (causal models, notebook 03): the first prefix_len positions (an int, or [B]) attend to
        each other both ways. context [B, S, cross_attention_dim]: what the blocks cross-attend to.
        position_ids [B, T] (notebook 04): the positions of the T inputs, instead of counting real tokens."""
        require((input_ids is None) != (inputs_embeds is None), "input_ids/inputs_embeds", "both or neither", "exactly one")
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        B, T, _ = x.shape
        past = 0
        if past_key_values is not None:
            require(self.config.causal, "past_key_values", "a cache", "None for a bidirectional model")
            require(len(past_key_values) == len(self.blocks), "len(past_key_values)", len(past_key_values), f"{len(self.blocks)}")
            past = len(past_key_values[0])
        S = past + T
        if position_ids is None:  # positions count the sequence, so max_len bounds its length
            require(S <= self.config.max_len, "sequence length", f"{S} (cached {past} + new {T})",
                    f"<= max_len={self.config.max_len}")
        else:  # given positions (a deep prefix holds no position of its own): max_len bounds them alone
            require(int(position_ids.max()) < self.config.max_len, "position_ids", int(position_ids.max()),
                    f"< max_len={self.config.max_len}")
        if attention_mask is None:
            positions, mask = torch.arange(past, S, device=x.device), None  # [T]
        else:
            require(tuple(attention_mask.shape) == (B, S), "attention_mask.shape", tuple(attention_mask.shape), f"{(B, S)}")
            positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, past:]  # [B, T]
            mask = padding_mask(attention_mask)  # [B, 1, 1, S]
        if position_ids is not None:
            positions = position_ids
        causal = self.config.causal
        if prefix_len is not None:
            require(causal, "prefix_len", prefix_len, "None for a bidirectional model")
            mask, causal = combine_masks(mask, prefix_mask(T, S, prefix_len, x.device)), False
        if causal:  # built once here, not again in every block
            mask, causal = combine_masks(mask, causal_mask(T, S, x.device)), False
        x = self.drop(x + self.pos_emb(positions))
        caches = past_key_values if past_key_values is not None else [None] * len(self.blocks)
        for block, cache in zip(self.blocks, caches):
            x = block(x, mask=mask, causal=causal, context=context, kv_cache=cache)
        return self.norm(x)


@dataclass
class LMOutput:
    logits: torch.Tensor  # [B, T, V] scores for the token that comes next
    loss: torch.Tensor | None = None  # mean next-token cross-entropy, when labels were given
    past_key_values: list[KVCache] | None = None  # one KVCache per block, when caching


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

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, D] (no positions), the form `inputs_embeds` takes."""
        return self.transformer.tok_emb(input_ids)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                past_key_values: list[KVCache] | None = None, use_cache: bool = False,
                prefix_len: int | torch.Tensor | None = None, context: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> LMOutput:
        """Logits for the next token at every position. `inputs_embeds` lets later notebooks put a visual
        prefix in front of `embed(input_ids)`. `use_cache=True` starts a KV cache; pass it back as
        `past_key_values` with only the new tokens (and the full attention_mask) to decode step by step.
        `prefix_len`, `context` and `position_ids`: see `TextTransformer.forward`."""
        if use_cache and past_key_values is None:
            past_key_values = [KVCache() for _ in self.transformer.blocks]
        hidden = self.transformer(input_ids, attention_mask, inputs_embeds, past_key_values, prefix_len, context,
                                  position_ids)  # [B, T, D]
        logits = F.linear(hidden, self.transformer.tok_emb.weight)  # [B, T, V]
        loss = next_token_loss(logits, labels) if labels is not None else None
        return LMOutput(logits, loss, past_key_values)


# ----------------------------------------------------------------------------------------------
# Masked language modelling (BERT)


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> decoder to the vocabulary, the decoder weight
    optionally tied to the token embedding. [B, T, D] -> [B, T, V]. Introduced in notebook 01."""

    def __init__(self, dim: int, vocab_size: int, tied_embedding: nn.Embedding | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.decoder = nn.Linear(dim, vocab_size)
        if tied_embedding is not None:
            shape = tuple(tied_embedding.weight.shape)
            require(shape == (vocab_size, dim), "tied_embedding.weight.shape", shape, f"{(vocab_size, dim)}")
            self.decoder.weight = tied_embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))  # [B, T, V]


def mask_tokens(input_ids: torch.Tensor, mask_token_id: int, vocab_size: int, special_ids=(), p: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption. Introduced in notebook 01.

    Each token not in `special_ids` is selected with probability p. Labels hold the original id where
    selected and -100 elsewhere. Of the selected tokens 80% become [MASK], 10% a random id from the whole
    vocabulary (as BERT and Hugging Face do) and 10% stay as they are. Returns (inputs, labels), both [B, T].
    """
    require(0 < p <= 1, "p", p, "a probability in (0, 1]")
    device = input_ids.device
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype, device=device))
    selected = (torch.rand(input_ids.shape, generator=generator, device=device) < p) & ~special
    labels = input_ids.masked_fill(~selected, -100)
    draw = torch.rand(input_ids.shape, generator=generator, device=device)  # one draw decides 80 / 10 / 10
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    inputs = input_ids.masked_fill(selected & (draw < 0.8), mask_token_id)
    inputs = torch.where(selected & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return inputs, labels


# ----------------------------------------------------------------------------------------------
# Hugging Face weights -> our classes (the same code loads real hub checkpoints when online)


def _load_exactly(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `model`; every parameter must be given, with the right shape."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: conversion is incomplete: missing {missing}, unexpected {unexpected}")
    return model


def from_hf_gpt2(hf_model) -> CausalLM:
    """Copy a `transformers.GPT2LMHeadModel` into a CausalLM that gives the same logits. Introduced in notebook 01.

    GPT-2's linear layers are `Conv1D` with weights stored [in, out]: we transpose them. Its fused c_attn
    splits into our q and kv. "gelu_new" is the tanh approximation of GELU. Our single dropout takes resid_pdrop.
    """
    from transformers import GPT2LMHeadModel

    require(isinstance(hf_model, GPT2LMHeadModel), "hf_model", type(hf_model).__name__, "a transformers.GPT2LMHeadModel")
    c = hf_model.config
    activations = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    require(c.activation_function in activations, "config.activation_function", c.activation_function,
           f"one of {list(activations)}")
    require(c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx and not c.add_cross_attention, "config",
           "non-standard attention", "scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, no cross-attention")
    D, hidden = c.n_embd, c.n_inner or 4 * c.n_embd
    config = TextConfig(vocab_size=c.vocab_size, max_len=c.n_positions, dim=D, depth=c.n_layer, n_heads=c.n_head,
                        mlp_ratio=hidden / D, dropout=c.resid_pdrop, causal=True, norm_eps=c.layer_norm_epsilon,
                        activation=activations[c.activation_function],
                        pad_token_id=c.pad_token_id if c.pad_token_id is not None else 0)
    hf = hf_model.transformer.state_dict()
    state = {"transformer.tok_emb.weight": hf["wte.weight"], "transformer.pos_emb.weight": hf["wpe.weight"],
             "transformer.norm.weight": hf["ln_f.weight"], "transformer.norm.bias": hf["ln_f.bias"]}
    for i in range(c.n_layer):
        h, ours = f"h.{i}.", f"transformer.blocks.{i}."
        qkv_w, qkv_b = hf[h + "attn.c_attn.weight"].t(), hf[h + "attn.c_attn.bias"]  # [3D, D], [3D]: q, k, v
        state |= {
            ours + "ln1.weight": hf[h + "ln_1.weight"], ours + "ln1.bias": hf[h + "ln_1.bias"],
            ours + "attn.q.weight": qkv_w[:D], ours + "attn.q.bias": qkv_b[:D],
            ours + "attn.kv.weight": qkv_w[D:], ours + "attn.kv.bias": qkv_b[D:],
            ours + "attn.proj.weight": hf[h + "attn.c_proj.weight"].t(), ours + "attn.proj.bias": hf[h + "attn.c_proj.bias"],
            ours + "ln2.weight": hf[h + "ln_2.weight"], ours + "ln2.bias": hf[h + "ln_2.bias"],
            ours + "mlp.fc.weight": hf[h + "mlp.c_fc.weight"].t(), ours + "mlp.fc.bias": hf[h + "mlp.c_fc.bias"],
            ours + "mlp.proj.weight": hf[h + "mlp.c_proj.weight"].t(), ours + "mlp.proj.bias": hf[h + "mlp.c_proj.bias"],
        }
    return _load_exactly(CausalLM(config), state, "from_hf_gpt2")


def hf_block_state(hf: dict[str, torch.Tensor], h: str, ours: str, *, ln1: str, ln2: str, attn: str,
                   out: str) -> dict[str, torch.Tensor]:
    """One Hugging Face pre-norm encoder layer (prefix `h`) renamed to a vlmlab Block (prefix `ours`): the
    separate q/k/v projections become our q and fused kv. The names of the norms and of the attention module
    differ between HF models (ViT: layernorm_before / attention / o_proj; CLIP: layer_norm1 / self_attn /
    out_proj)."""
    a = h + attn + "."
    return {
        ours + "ln1.weight": hf[h + ln1 + ".weight"], ours + "ln1.bias": hf[h + ln1 + ".bias"],
        ours + "attn.q.weight": hf[a + "q_proj.weight"], ours + "attn.q.bias": hf[a + "q_proj.bias"],
        ours + "attn.kv.weight": torch.cat([hf[a + "k_proj.weight"], hf[a + "v_proj.weight"]]),
        ours + "attn.kv.bias": torch.cat([hf[a + "k_proj.bias"], hf[a + "v_proj.bias"]]),
        ours + "attn.proj.weight": hf[a + out + ".weight"], ours + "attn.proj.bias": hf[a + out + ".bias"],
        ours + "ln2.weight": hf[h + ln2 + ".weight"], ours + "ln2.bias": hf[h + ln2 + ".bias"],
        ours + "mlp.fc.weight": hf[h + "mlp.fc1.weight"], ours + "mlp.fc.bias": hf[h + "mlp.fc1.bias"],
        ours + "mlp.proj.weight": hf[h + "mlp.fc2.weight"], ours + "mlp.proj.bias": hf[h + "mlp.fc2.bias"],
    }


def from_hf_vit(hf_model) -> ViT:
    """Copy a `transformers.ViTModel` (transformers 5 layout) into a ViT that gives the same last_hidden_state.
    Introduced in notebook 01. HF's ViT is the same design: patch conv, CLS, learned positions, pre-norm
    blocks with exact GELU, final LayerNorm; only the names differ."""
    from transformers import ViTModel

    require(isinstance(hf_model, ViTModel), "hf_model", type(hf_model).__name__, "a transformers.ViTModel")
    c = hf_model.config
    require(c.hidden_act == "gelu", "config.hidden_act", c.hidden_act, "'gelu'")
    require(c.qkv_bias, "config.qkv_bias", c.qkv_bias, "True")
    require(isinstance(c.image_size, int) and isinstance(c.patch_size, int), "config.image_size/patch_size",
           (c.image_size, c.patch_size), "integers (square images and patches)")
    config = ViTConfig(image_size=c.image_size, patch_size=c.patch_size, in_channels=c.num_channels, dim=c.hidden_size,
                       depth=c.num_hidden_layers, n_heads=c.num_attention_heads, mlp_ratio=c.intermediate_size / c.hidden_size,
                       dropout=c.hidden_dropout_prob, norm_eps=c.layer_norm_eps)
    hf = hf_model.state_dict()
    state = {"cls_token": hf["embeddings.cls_token"], "pos_embed": hf["embeddings.position_embeddings"],
             "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
             "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
             "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    for i in range(c.num_hidden_layers):
        state |= hf_block_state(hf, f"layers.{i}.", f"blocks.{i}.", ln1="layernorm_before", ln2="layernorm_after",
                                attn="attention", out="o_proj")
    return _load_exactly(ViT(config), state, "from_hf_vit")
