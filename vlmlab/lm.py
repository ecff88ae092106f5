"""One interface over the language models a strategy steers, and the splice that puts visual tokens into them.
Introduced in notebook 04.

    lm = load_language_model({"name": "tiny-lm"})      # notebook 01's tiny LM (or tiny-gpt), "smollm2-135m", "hf:<id>"
    lm.embed(ids)                                      # [B, T, D] token embeddings, the form inputs_embeds takes
    lm(inputs_embeds=..., attention_mask=..., position_ids=..., labels=..., cache=..., use_cache=...) -> LMOutput
    lm.dim, lm.n_layers, lm.max_len, lm.kv_dim, lm.freeze(), lm.checksum()
    lm.blocks                                          # its transformer layers, in order (notebook 05's Flamingo)
    lm.prefix_cache(kv)                                # a deep prefix [B, L, 2, k, kv_dim] as k past positions

`TinyLanguageModel` wraps `vlmlab.nn.CausalLM`, `HFLanguageModel` any Hugging Face causal LM (SmolLM2 on the real
tracks). Both count positions the same way (each token's number of real tokens before it), take labels aligned
with the inputs (-100 = no loss) and return the same `LMOutput`, so a mapper, a Q-Former or a projector steers
either without knowing which it is. `splice_visual` puts visual tokens in front of the text or at `<image>` slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Cache, split_heads
from .data.loaders import IGNORE_INDEX
from .frozen import checksum, freeze
from .nn import CausalLM, LMOutput
from .params import require


def default_positions(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """Positions of the last `new` inputs: each one's count of real tokens before it. [B, S] -> [B, new]."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, attention_mask.size(1) - new:]


class LanguageModel(nn.Module):
    """The interface every language model of the workbook answers. `ref` is {"name", "sha256"} of the checkpoint
    or backbone it was loaded from (sha256 None for a pretrained package), which a config pins."""

    dim: int  # width of a token embedding
    n_layers: int
    max_len: int  # the most positions it has learned
    kv_dim: int  # width of one layer's keys (smaller than dim with grouped-query attention)

    def __init__(self, model: nn.Module, ref: dict | None = None):
        super().__init__()
        self.model, self.ref = model, ref

    def freeze(self) -> LanguageModel:
        return freeze(self)

    def checksum(self) -> str:
        return checksum(self.model)


class TinyLanguageModel(LanguageModel):
    """Notebook 01's tiny GPT (`vlmlab.nn.CausalLM`) behind the LanguageModel interface."""

    def __init__(self, model: CausalLM, ref: dict | None = None):
        super().__init__(model, ref)
        c = model.config
        self.dim, self.n_layers, self.n_heads, self.max_len, self.kv_dim = c.dim, c.depth, c.n_heads, c.max_len, c.dim

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids)

    def forward(self, *, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, labels=None,
                cache: Cache | None = None, use_cache: bool = False) -> LMOutput:
        return self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                          position_ids=position_ids, labels=labels, cache=cache, use_cache=use_cache)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last layer's states [B, T, D], what the next-token head reads (contrastive search, notebook 07)."""
        return self.model.transformer(input_ids=input_ids, attention_mask=attention_mask)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def prefix_cache(self, kv: torch.Tensor) -> Cache:
        """kv [B, L, 2, k, D] -> a Cache holding k past keys and values in each of the L layers."""
        require(kv.ndim == 5 and kv.shape[1:3] == (self.n_layers, 2) and kv.size(-1) == self.kv_dim, "kv.shape",
                tuple(kv.shape), f"[B, {self.n_layers}, 2, k, {self.kv_dim}]")
        cache = Cache(self.n_layers)
        for layer, layer_cache in enumerate(cache.layers):
            layer_cache.update(split_heads(kv[:, layer, 0], self.n_heads), split_heads(kv[:, layer, 1], self.n_heads))
        return cache


class HFCache:
    """A Hugging Face `DynamicCache` with the two methods the decoding loop uses."""

    def __init__(self, cache):
        self.hf = cache

    def __len__(self) -> int:
        return self.hf.get_seq_length()

    def select(self, rows: torch.Tensor) -> None:
        self.hf.reorder_cache(rows)


class HFLanguageModel(LanguageModel):
    """A Hugging Face causal LM (`AutoModelForCausalLM`) behind the LanguageModel interface."""

    def __init__(self, model: nn.Module, ref: dict | None = None):
        super().__init__(model, ref)
        c = model.config
        self.dim, self.n_layers, self.max_len = c.hidden_size, c.num_hidden_layers, c.max_position_embeddings
        self.n_kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.kv_dim = self.n_kv_heads * self.head_dim

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, *, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, labels=None,
                cache: HFCache | None = None, use_cache: bool = False) -> LMOutput:
        from transformers import DynamicCache

        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        if attention_mask is None:
            past = len(cache) if cache is not None else 0
            attention_mask = torch.ones(inputs_embeds.shape[0], past + inputs_embeds.shape[1], dtype=torch.long,
                                        device=inputs_embeds.device)
        if position_ids is None:
            position_ids = default_positions(attention_mask, inputs_embeds.shape[1])
        if cache is None and use_cache:
            cache = HFCache(DynamicCache())
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         labels=labels, past_key_values=cache.hf if cache is not None else None, use_cache=cache is not None)
        return LMOutput(out.logits, out.loss, cache)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last layer's states [B, T, D], what the next-token head reads (contrastive search, notebook 07)."""
        positions = default_positions(attention_mask, input_ids.shape[1])
        return self.model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.layers  # the decoder layers of a Llama-style causal LM (SmolLM2)

    def prefix_cache(self, kv: torch.Tensor) -> HFCache:
        """kv [B, L, 2, k, kv_dim] -> a DynamicCache holding k past keys and values in each of the L layers."""
        from transformers import DynamicCache

        require(kv.ndim == 5 and kv.shape[1:3] == (self.n_layers, 2) and kv.size(-1) == self.kv_dim, "kv.shape",
                tuple(kv.shape), f"[B, {self.n_layers}, 2, k, {self.kv_dim}]")
        cache = DynamicCache()
        for layer in range(self.n_layers):
            cache.update(split_heads(kv[:, layer, 0], self.n_kv_heads), split_heads(kv[:, layer, 1], self.n_kv_heads), layer)
        return HFCache(cache)


def wrap_language_model(model: nn.Module, ref: dict | None = None) -> LanguageModel:
    """A loaded model behind the LanguageModel interface: `vlmlab.nn.CausalLM` or a Hugging Face causal LM."""
    if isinstance(model, LanguageModel):
        return model
    return TinyLanguageModel(model, ref) if isinstance(model, CausalLM) else HFLanguageModel(model, ref)


def load_language_model(ref: dict | str) -> LanguageModel:
    """The language model a ref names, frozen: {"name": "tiny-gpt", "sha256": ...} loads exactly that checkpoint
    (any sha256 when it is None); "smollm2-135m" and "hf:<id or folder>" load through `vlmlab.backbones`."""
    ref = {"name": ref, "sha256": None} if isinstance(ref, str) else ref
    from . import backbones

    if ref["name"] in backbones.TINY:
        from .unimodal import load

        model, loaded = load(ref["name"], ref["sha256"])
        return TinyLanguageModel(model, loaded).freeze()
    return HFLanguageModel(backbones.load_language_model(ref["name"]).model, {"name": ref["name"], "sha256": None}).freeze()


# ---------------------------------------------------------------- visual tokens into the sequence


@dataclass
class Spliced:
    inputs_embeds: torch.Tensor  # [B, S, D] text and visual tokens, in order
    attention_mask: torch.Tensor  # [B, S] 1 on real tokens, visual ones included
    labels: torch.Tensor | None  # [B, S] -100 on every visual position


def splice_visual(visual: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor | None = None, *, input_ids: torch.Tensor | None = None,
                  image_token_id: int | None = None) -> Spliced:
    """Put visual tokens [B, N, D] into an embedded text [B, T, D]. Introduced in notebook 03 (in front), used at
    `<image>` slots from notebook 09 on.

    Without `image_token_id` the N visual tokens go in front of the text. With it, each row's one `<image>` token
    in `input_ids` [B, T] is replaced by the N visual tokens (LLaVA's merge): the row grows by N - 1. The mask is 1
    on every visual position and labels are -100 there, so no loss is ever taken on the image."""
    B, N = visual.shape[:2]
    require(visual.ndim == 3 and visual.shape[0] == inputs_embeds.shape[0] and visual.shape[2] == inputs_embeds.shape[2],
            "visual.shape", tuple(visual.shape), f"[B={inputs_embeds.shape[0]}, N, D={inputs_embeds.shape[2]}]")
    ones = attention_mask.new_ones(B, N)
    ignore = None if labels is None else torch.full_like(ones, IGNORE_INDEX)
    if image_token_id is None:
        return Spliced(torch.cat([visual, inputs_embeds], dim=1), torch.cat([ones, attention_mask], dim=1),
                       None if labels is None else torch.cat([ignore, labels], dim=1))
    require(input_ids is not None, "input_ids", None, "the token ids, to find the <image> slots")
    slots = input_ids == image_token_id  # [B, T]
    require(bool((slots.sum(dim=1) == 1).all()), "input_ids", f"{slots.sum(dim=1).tolist()} <image> tokens per row",
            "exactly one <image> token in every row")
    at = slots.int().argmax(dim=1).tolist()  # where each row's <image> token sits

    def merge(sequence: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> [B, T - 1 + N, ...]
        return torch.stack([torch.cat([s[:i], v, s[i + 1:]]) for s, v, i in zip(sequence, inserted, at)])

    return Spliced(merge(inputs_embeds, visual), merge(attention_mask, ones), None if labels is None else merge(labels, ignore))
