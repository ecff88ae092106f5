"""A frozen language model steered by a trained visual prefix (Frozen, ClipCap, MAPL). Introduced in notebook 04.

    image features --mapper--> k prefix vectors [B, k, D_lm] --+
                                                               +--> frozen LM --> caption
    caption tokens --frozen embedding---------> [B, T, D_lm] --+

Only the mapper learns (ClipCap, MAPL), or the mapper and the vision encoder (Frozen). The gradient still
flows back THROUGH the frozen LM to reach the prefix; the LM's weights just never change. Two mappers:

- `MLPMapper` (ClipCap's MLP): one global image vector -> k prefix vectors through one hidden layer.
- `TransformerMapper` (ClipCap's transformer mapper, MAPL's design): k learned query vectors read the
  image tokens through a small bidirectional transformer; the outputs at the queries are the prefix.

`DeepPrefixMapper` puts the prefix elsewhere: prefix-tuning (Li & Liang 2021) written by the image. Instead of
k input vectors it writes k keys and values for EVERY layer's attention, which the frozen LM reads as if they
were cached past tokens (`DeepPrefixCaptioner`). `FreePrefix` learns one prefix per caption with no image at
all: the ceiling of what a prefix of either kind can make the LM say. `ObjectPrefixMapper` is the deep prefix
notebook 04 ends with: constant keys, values a linear map of a detector's object list.

The LM may be `vlmlab.nn.CausalLM` (tiny-gpt) or a Hugging Face causal LM (SmolLM2 on the real track):
both take `inputs_embeds`, `attention_mask` and `labels` and shift the labels the same way.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .. import zoo
from ..data.evalsets import generation_scenes, images_of
from ..data.loaders import IGNORE_INDEX, TextBatch, to_float
from ..data.shapes import Scene
from ..evaluate import caption_scores
from ..generation import generate
from ..nn import Block, KVCache, split_heads
from ..params import require
from .prefix_lm import prompt_ids


class MLPMapper(nn.Module):
    """ClipCap's MLP mapper: [B, in_dim] -> [B, k, lm_dim]. Introduced in notebook 04."""

    def __init__(self, in_dim: int, lm_dim: int, k: int, hidden: int = 256):
        super().__init__()
        self.k, self.lm_dim = k, lm_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, k * lm_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, in_dim] (the first token, CLS, is read) or [B, in_dim] -> [B, k, lm_dim]."""
        vector = features[:, 0] if features.ndim == 3 else features  # [B, in_dim]
        return self.net(vector).view(len(vector), self.k, self.lm_dim)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: k learned queries appended to the projected image tokens go through
    `depth` bidirectional blocks; the outputs at the queries, projected to lm_dim, are the prefix.
    [B, N, in_dim] -> [B, k, lm_dim]. Introduced in notebook 04."""

    def __init__(self, in_dim: int, lm_dim: int, k: int, dim: int = 64, depth: int = 1, n_heads: int = 4):
        super().__init__()
        self.k = k
        self.config = {"in_dim": in_dim, "lm_dim": lm_dim, "k": k, "dim": dim, "depth": depth, "n_heads": n_heads}
        self.inp = nn.Linear(in_dim, dim)
        self.queries = nn.Parameter(torch.randn(1, k, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, n_heads) for _ in range(depth))
        self.out = nn.Linear(dim, lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.inp(features)  # [B, N, dim]
        x = torch.cat([x, self.queries.expand(len(x), -1, -1)], dim=1)  # [B, N + k, dim]
        for block in self.blocks:
            x = block(x)
        return self.out(x[:, -self.k :])  # [B, k, lm_dim]


class DeepPrefixMapper(nn.Module):
    """Prefix-tuning written by the image: a TransformerMapper with 2 * n_layers * k queries, whose outputs are
    k keys and k values for each of the LM's n_layers attention layers. [B, N, in_dim] -> [B, n_layers, 2, k,
    lm_dim]. Introduced in notebook 04."""

    def __init__(self, in_dim: int, lm_dim: int, k: int, n_layers: int, dim: int = 64, depth: int = 1, n_heads: int = 4):
        super().__init__()
        self.k, self.n_layers = k, n_layers
        self.body = TransformerMapper(in_dim, lm_dim, 2 * n_layers * k, dim, depth, n_heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features).view(len(features), self.n_layers, 2, self.k, -1)


class ObjectPrefixMapper(nn.Module):
    """A deep prefix this frozen LM can follow: its keys are learned constants, the same for every image (which
    prefix position a step reads is left to the LM's own queries, which differ from phrase to phrase), and its
    values are a linear map of the image's object list (`unimodal.object_list`).
    [B, in_dim] -> [B, n_layers, 2, k, lm_dim]. Introduced in notebook 04."""

    def __init__(self, in_dim: int, lm_dim: int, k: int, n_layers: int):
        super().__init__()
        self.config = {"in_dim": in_dim, "lm_dim": lm_dim, "k": k, "n_layers": n_layers}
        self.keys = nn.Parameter(torch.randn(n_layers, k, lm_dim) * 0.02)
        self.values = nn.Linear(in_dim, n_layers * k * lm_dim)

    def forward(self, objects: torch.Tensor) -> torch.Tensor:
        B, (L, k, D) = len(objects), self.keys.shape
        values = self.values(objects).view(B, L, k, D)
        return torch.stack([self.keys.expand(B, -1, -1, -1), values], dim=2)  # [B, L, 2, k, D]


class FreePrefix(nn.Module):
    """No image and no mapper: one freely trained prefix per caption, looked up by row number. Fitting it to
    the captions measures how far a prefix of that shape can steer the frozen LM at all (notebook 04's ceiling).
    `shape` is (k, lm_dim) for an input prefix or (n_layers, 2, k, lm_dim) for a deep one.
    rows [B] (long) -> [B, *shape]. Introduced in notebook 04."""

    def __init__(self, n: int, shape: tuple[int, ...], std: float = 0.02):
        super().__init__()
        self.prefixes = nn.Parameter(torch.randn(n, *shape) * std)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.prefixes[rows]


def save_mapper(name: str, mapper: ObjectPrefixMapper, metrics: dict, root=None):
    """Save notebook 04's object-list mapper to the zoo (fp16 safetensors, its config and metrics); returns the
    path. The frozen LM and vision encoder are not saved: they are notebook 01's, unchanged."""
    return zoo.save_checkpoint(name, mapper.state_dict(), mapper.config, metrics, root=root, dtype="fp16")


def load_mapper(name: str, root=None) -> ObjectPrefixMapper:
    """A mapper saved with `save_mapper` (notebook 04 ships `frozen-prefix-shapes`), fp32."""
    state, record = zoo.load_checkpoint(name, root=root)
    mapper = ObjectPrefixMapper(**record["config"])
    mapper.load_state_dict(state)
    return mapper.float()


SAVED = ("frozen-prefix-shapes",)  # what notebook 04 saves


def measure(model: PrefixCaptioner, tokenizer, inputs: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Notebook 04's held-out caption numbers: greedy captions of `inputs` (features or images) against `scenes`."""
    return {f"caption_{k}": v for k, v in caption_scores(generate_captions(model, tokenizer, inputs), scenes).items()}


def verify(name: str, root=None, tolerance: float = 0.01) -> tuple[bool, str]:
    """Re-measure a saved mapper with notebook 01's frozen ViT, probe and GPT and compare with its record (`zoo verify`)."""
    from ..tokenizer import load_tokenizer
    from ..unimodal import build_tiny, object_list, region_encoder, region_features

    recorded = zoo.load_checkpoint(name, root=root)[1]["metrics"]
    model = DeepPrefixCaptioner(build_tiny("tiny-gpt"), load_mapper(name, root))
    scenes = generation_scenes(recorded.get("eval_seed", 0), recorded.get("eval_n", 1000))
    objects = object_list(region_features(region_encoder(), images_of(scenes)))
    return zoo.compare_metrics(recorded, measure(model, load_tokenizer(), objects, scenes), tolerance)


def token_embeddings(lm: nn.Module) -> nn.Embedding:
    """The LM's input embedding table: `get_input_embeddings()` (Hugging Face) or `transformer.tok_emb` (ours)."""
    return lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else lm.transformer.tok_emb


def caption_positions(attention_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Positions that restart at the caption: each input's count of real inputs before it, minus the k prefix
    vectors, which all sit at 0 (as does <bos>). [B, S] -> [B, S]. Introduced in notebook 04."""
    return (attention_mask.long().cumsum(dim=-1) - 1 - k).clamp(min=0)


class CaptionPositions:
    """The LM as `vlmlab.generation.generate` drives it, with `caption_positions` passed on every call."""

    def __init__(self, lm: nn.Module, k: int):
        self.lm, self.k = lm, k

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)

    def __call__(self, **kwargs):
        new = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        positions = caption_positions(kwargs["attention_mask"], self.k)[:, -new.shape[1]:]  # the new inputs only
        return self.lm(**kwargs, position_ids=positions)


class PrefixCaptioner(nn.Module):
    """A frozen LM, a trained mapper and optionally a vision encoder that trains too (Frozen).
    Introduced in notebook 04.

    Without `vision` the inputs are precomputed image features [B, N, Dv]; with it they are uint8 images,
    and the features are `vision(images).hidden`. `caption_positions=True` (our tiny GPT, which learned
    positions only as far as its longest caption) numbers the caption from 0 as in the LM's training, with
    the prefix vectors at position 0; otherwise the prefix takes the first k positions (Hugging Face LMs)."""

    def __init__(self, lm: nn.Module, mapper: nn.Module, vision: nn.Module | None = None, caption_positions: bool = False):
        super().__init__()
        self.lm, self.mapper, self.vision = lm, mapper, vision
        self.caption_positions = caption_positions
        self.lm.requires_grad_(False)

    def train(self, mode: bool = True) -> PrefixCaptioner:
        super().train(mode)
        self.lm.eval()  # frozen: no dropout either
        return self

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return token_embeddings(self.lm)(input_ids)  # [B, T, D_lm]

    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images (with a vision encoder) or features -> the visual prefix [B, k, D_lm]."""
        features = inputs if self.vision is None else self.vision(to_float(inputs)).hidden  # [B, N, Dv]
        return self.mapper(features)

    def forward(self, inputs: torch.Tensor, text: TextBatch):
        """The LM's output (with .loss) for [prefix | text]; labels are -100 on the prefix."""
        prefix = self.prefix(inputs)  # [B, k, D]
        B, k = prefix.shape[:2]
        ones = text.attention_mask.new_ones(B, k)
        mask = torch.cat([ones, text.attention_mask], dim=1)  # [B, k + T]
        return self.decoder(k)(inputs_embeds=torch.cat([prefix, self.embed(text.input_ids)], dim=1), attention_mask=mask,
                               labels=torch.cat([torch.full_like(ones, IGNORE_INDEX), text.labels], dim=1))

    def decoder(self, k: int):
        """What reads a sequence that starts with a k-vector prefix: the LM, with caption positions if asked."""
        return CaptionPositions(self.lm, k) if self.caption_positions else self.lm


def batch_loss(model: PrefixCaptioner, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The captioning loss for `vlmlab.train.fit`. batch: "inputs" (features or images), input_ids,
    attention_mask, labels."""
    text = TextBatch(batch["input_ids"], batch["attention_mask"], batch["labels"])
    return model(batch["inputs"], text).loss, {}


class DeepPrefixCaptioner(PrefixCaptioner):
    """A frozen `vlmlab.nn.CausalLM` that reads a `DeepPrefixMapper`'s keys and values in every layer, before
    the caption, as a KV cache of k past positions; `prefix(inputs)` is [B, L, 2, k, D]. The caption keeps its
    own positions (from 0). Introduced in notebook 04."""

    def forward(self, inputs: torch.Tensor, text: TextBatch):
        return DeepPrefixDecoder(self.lm, self.prefix(inputs))(input_ids=text.input_ids,
                                                               attention_mask=text.attention_mask, labels=text.labels)


class DeepPrefixDecoder:
    """The frozen LM with a deep prefix kv [B, L, 2, k, D] in front, as `fit` and `vlmlab.generation.generate`
    drive it: on a call without `past_key_values` the prefix becomes one KVCache per layer (rows repeated for
    beams: row b * K + j belongs to image b), the attention mask is extended over it, and the text's positions
    count from 0. Introduced in notebook 04."""

    def __init__(self, lm: nn.Module, kv: torch.Tensor):
        self.lm, self.kv = lm, kv

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)

    def caches(self, rows: int) -> list[KVCache]:
        """One fresh KVCache per layer holding the prefix keys and values [rows, H, k, hd]: the LM extends a cache
        in place, so every call that starts over gets its own."""
        kv, heads = self.kv.repeat_interleave(rows // len(self.kv), dim=0), self.lm.config.n_heads
        caches = [KVCache() for _ in range(kv.size(1))]
        for layer, cache in enumerate(caches):
            cache.update(split_heads(kv[:, layer, 0], heads), split_heads(kv[:, layer, 1], heads))
        return caches

    def __call__(self, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None, past_key_values=None,
                 use_cache: bool = False):
        B, k = attention_mask.size(0), self.kv.size(3)
        new = (input_ids if input_ids is not None else inputs_embeds).size(1)
        positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, -new:]  # the text from 0
        mask = torch.cat([attention_mask.new_ones(B, k), attention_mask], dim=1)  # the prefix is always visible
        past = past_key_values if past_key_values is not None else self.caches(B)
        return self.lm(input_ids, inputs_embeds, mask, labels, past, use_cache=True, position_ids=positions)


# ---------------------------------------------------------------- what is frozen, what trains


def checksum(module: nn.Module) -> str:
    """sha256 over every parameter and buffer, in order: equal before and after training means untouched."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameter_table(parts: dict[str, nn.Module]) -> list[dict]:
    """One row per named part: its parameters and how many of them train; plus a "total" row."""
    rows = [{"part": name, "params": sum(p.numel() for p in m.parameters()),
             "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad)} for name, m in parts.items()]
    total = {"part": "total", "params": sum(r["params"] for r in rows), "trainable": sum(r["trainable"] for r in rows)}
    return rows + [total]


# ---------------------------------------------------------------- captions, greedy or beam


@torch.no_grad()
def generate_captions(model: PrefixCaptioner, tokenizer, inputs: torch.Tensor, prompts: str | list[str] = "",
                      max_new_tokens: int = 24, batch_size: int = 256, **generate_kwargs) -> list[str]:
    """Continue each image's prompt (features or images): prefix, then <bos> + prompt (one for all, or one per
    image: a question, say), then the LM writes. `vlmlab.generation.generate` drives our CausalLM;
    generate_kwargs go to it. Introduced in notebook 04."""
    prompts = [prompts] * len(inputs) if isinstance(prompts, str) else list(prompts)
    require(len(prompts) == len(inputs), "prompts", f"{len(prompts)} prompts", f"one per input ({len(inputs)})")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size].to(device)
        ids, mask = (t.to(device) for t in prompt_ids(tokenizer, prompts[start : start + batch_size]))  # left-padded
        prefix = model.prefix(chunk)  # [b, k, D], or [b, L, 2, k, D] for a deep prefix
        if isinstance(model, DeepPrefixCaptioner):  # the prefix is in every layer's cache, not in the sequence
            decoder, embeds, used = DeepPrefixDecoder(model.lm, prefix), model.embed(ids), ids.size(1)  # it holds no position
        else:
            embeds = torch.cat([prefix, model.embed(ids)], dim=1)  # [b, k + T, D]
            mask = torch.cat([mask.new_ones(prefix.shape[:2]), mask], dim=1)  # padding may sit after the prefix
            decoder, used = model.decoder(prefix.size(1)), embeds.size(1)
        room = room_left(model.lm, used)
        new = generate(decoder, inputs_embeds=embeds, attention_mask=mask,
                       max_new_tokens=min(max_new_tokens, room), eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
        out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def room_left(lm: nn.Module, used: int) -> int:
    """How many tokens fit after `used` positions: the LM's max_len minus used (unbounded for HF models)."""
    max_len = getattr(getattr(lm, "config", None), "max_len", None)
    require(max_len is None or used < max_len, "prompt", f"{used} positions", f"fewer than the LM's max_len={max_len}")
    return 10**9 if max_len is None else max_len - used


def interleave(model: PrefixCaptioner, tokenizer, shots: list[tuple[torch.Tensor, str]], query: torch.Tensor,
               query_text: str = "") -> torch.Tensor:
    """Frozen's few-shot prompt: [prefix(img_1)] <bos> text_1 [prefix(img_2)] <bos> text_2 ... [prefix(query)]
    <bos> query_text, as one sequence of embeddings [1, S, D]. Each shot is (input [N, Dv] or image, text).
    Introduced in notebook 04."""
    device = next(model.parameters()).device
    parts = []
    for inputs, text in [*shots, (query, query_text)]:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(text)], device=device)
        parts += [model.prefix(inputs[None].to(device)), model.embed(ids)]
    embeds = torch.cat(parts, dim=1)  # [1, S, D]
    room_left(model.lm, embeds.size(1))
    return embeds
