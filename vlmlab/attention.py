"""Attention and what it needs: scaled dot-product attention, the masks (causal, prefix, padding), the KV cache,
and multi-head attention (self or cross). Introduced in notebook 01; `vlmlab.nn` builds the blocks and models on it.

Letters in the shape comments: B batch, T query length, S key length, D width, H heads, hd = D // H.
Masks are bool tensors where True means "may attend".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .params import require

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


class Cache:
    """What a decoder keeps between calls: one KVCache per layer. Introduced in notebook 01.

    A model extends it in place on every call it is given to; `len(cache)` is the number of positions cached."""

    def __init__(self, n_layers: int):
        self.layers = [KVCache() for _ in range(n_layers)]

    def __len__(self) -> int:
        return len(self.layers[0])

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and reorder) these batch rows in every layer (beam search)."""
        for layer in self.layers:
            layer.select(rows)


# ----------------------------------------------------------------------------------------------
# Multi-head attention


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

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
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
