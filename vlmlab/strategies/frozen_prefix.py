"""A frozen language model steered by a trained visual prefix (Frozen, ClipCap, MAPL). Introduced in notebook 04.

    image --vision (frozen)--> features --mapper (trained)--> prefix --+
                                                                      +--> frozen LM --> caption
    caption tokens --------------------frozen embedding-------------> +

Only the mapper learns (ClipCap, MAPL), or the mapper and the vision tower (Frozen). The gradient still flows back
THROUGH the frozen LM to reach the prefix; the LM's weights just never change. The LM is any
`vlmlab.lm.LanguageModel`: notebook 01's tiny LM, or SmolLM2 on the real track. The mappers (`Config.mapper`):

- "mlp" (ClipCap's MLP): one global image vector (CLIP's image embedding) -> k prefix vectors through one hidden layer;
- "transformer" (MAPL's mapper; ClipCap's transformer mapper when it is given the one embedding as its only token):
  k learned queries read the image tokens through a small bidirectional transformer; the outputs at the queries are
  the prefix;
- "linear" (Frozen's): every image token mapped linearly to one prefix vector, k = the number of tokens;
- "deep": prefix-tuning (Li & Liang 2021) written by the image: k keys and values for EVERY layer's attention,
  which the frozen LM reads as if they were cached past tokens;
- "object": the deep prefix notebook 04's upper bound reads: constant keys, values a linear map of a detector's
  object list;
- "grid-list": the same deep prefix on label-free image tokens: each token read by one shared MLP, then one MLP over
  all of them, which can learn to hand the objects over in the order captions name them (no paper's mapper);
- "qformer": BLIP-2's second stage (notebook 08): a Q-Former's query outputs, projected (`blip2.QueryPrefix`).

An input prefix ([B, k, D]) goes in front of the text; a deep prefix ([B, L, 2, k, D]) goes into every layer's
cache; a mapper says which it writes with its `deep` attribute. `PrefixCaptioner` takes either, so one class is
every variant; `FreePrefix` (one prefix per caption, no image) measures the ceiling of what a prefix of either kind
can make the LM say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.evalsets import SceneBench
from ..data.loaders import TextBatch, encode_texts
from ..frozen import TowerAndLM
from ..harness import suite
from ..lm import LanguageModel, default_positions, load_language_model, splice_visual
from ..nn import Block, LMOutput
from ..params import SavedConfig, require, require_positive_ints
from ..protocols import caption_loss
from ..unimodal import vision_tower

MAPPERS = ("mlp", "transformer", "linear", "deep", "object", "grid-list", "qformer")


class MLPMapper(nn.Module):
    """ClipCap's MLP mapper: [B, in_dim] -> [B, k, lm_dim]. Introduced in notebook 04."""

    deep = False

    def __init__(self, in_dim: int, lm_dim: int, k: int, hidden: int = 256):
        super().__init__()
        self.k, self.lm_dim = k, lm_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, k * lm_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, in_dim] (the first token, CLS, is read) or [B, in_dim] -> [B, k, lm_dim]."""
        require(features.ndim in (2, 3), "features.shape", tuple(features.shape), "[B, in_dim] or [B, N, in_dim]")
        vector = features[:, 0] if features.ndim == 3 else features  # [B, in_dim]
        return self.net(vector).view(len(vector), self.k, self.lm_dim)


class LinearMapper(nn.Module):
    """Frozen's mapper: each image token mapped linearly to the LM's width, one prefix vector per token.
    [B, N, in_dim] -> [B, N, lm_dim]. Introduced in notebook 04."""

    deep = False

    def __init__(self, in_dim: int, lm_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class TransformerMapper(nn.Module):
    """MAPL's mapper (and ClipCap's transformer mapper, given one vector): k learned queries appended to the
    projected image tokens go through `depth` bidirectional blocks; the outputs at the queries, projected to lm_dim,
    are the prefix. [B, N, in_dim] -> [B, k, lm_dim]. Introduced in notebook 04."""

    deep = False

    def __init__(self, in_dim: int, lm_dim: int, k: int, dim: int = 64, depth: int = 1, n_heads: int = 4):
        super().__init__()
        self.k = k
        self.inp = nn.Linear(in_dim, dim)
        self.queries = nn.Parameter(torch.randn(1, k, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, n_heads) for _ in range(depth))
        self.out = nn.Linear(dim, lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, in_dim], or one vector per image [B, in_dim] (read as one token) -> [B, k, lm_dim]."""
        x = self.inp(features if features.ndim == 3 else features[:, None])  # [B, N, dim]
        x = torch.cat([x, self.queries.expand(len(x), -1, -1)], dim=1)  # [B, N + k, dim]
        for block in self.blocks:
            x = block(x)
        return self.out(x[:, -self.k :])  # [B, k, lm_dim]


class DeepPrefixMapper(nn.Module):
    """Prefix-tuning written by the image: a TransformerMapper with 2 * n_layers * k queries, whose outputs are
    k keys and k values for each of the LM's n_layers attention layers. [B, N, in_dim] -> [B, n_layers, 2, k,
    lm_dim]. Introduced in notebook 04."""

    deep = True

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

    deep = True

    def __init__(self, in_dim: int, lm_dim: int, k: int, n_layers: int):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(n_layers, k, lm_dim) * 0.02)
        self.values = nn.Linear(in_dim, n_layers * k * lm_dim)

    def forward(self, objects: torch.Tensor) -> torch.Tensor:
        B, (L, k, D) = len(objects), self.keys.shape
        values = self.values(objects).view(B, L, k, D)
        return torch.stack([self.keys.expand(B, -1, -1, -1), values], dim=2)  # [B, L, 2, k, D]


class GridListMapper(nn.Module):
    """The object list's deep prefix learned from label-free image tokens: one MLP shared by the tokens reads what
    each holds, a second MLP over all of them writes a list the prefix's values read (which object comes first,
    second, ... is for it to learn from the captions). [B, n_tokens, in_dim] -> [B, n_layers, 2, k, lm_dim].
    Introduced in notebook 04."""

    deep = True

    def __init__(self, in_dim: int, n_tokens: int, lm_dim: int, k: int, n_layers: int, cell_hidden: int, hidden: int,
                 slot: int = 24):
        super().__init__()
        self.cell = nn.Sequential(nn.Linear(in_dim, cell_hidden), nn.GELU(), nn.Linear(cell_hidden, slot))
        self.order = nn.Sequential(nn.Linear(n_tokens * slot, hidden), nn.GELU())
        self.prefix = ObjectPrefixMapper(hidden, lm_dim, k, n_layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        slots = self.cell(tokens)  # [B, n_tokens, slot]: what each token holds
        return self.prefix(self.order(slots.flatten(1)))  # [B, L, 2, k, lm_dim]


class FreePrefix(nn.Module):
    """No image and no mapper: one freely trained prefix per caption, looked up by row number. Fitting it to
    the captions measures how far a prefix of that shape can steer the frozen LM at all (notebook 04's ceiling).
    `shape` is (k, lm_dim) for an input prefix or (n_layers, 2, k, lm_dim) for a deep one.
    rows [B] (long) -> [B, *shape]. Introduced in notebook 04."""

    def __init__(self, n: int, shape: tuple[int, ...], std: float = 0.02):
        super().__init__()
        self.deep = len(shape) == 4
        self.prefixes = nn.Parameter(torch.randn(n, *shape) * std)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.prefixes[rows]


@dataclass
class Config(SavedConfig):
    """How a frozen-LM captioner is built. The LM and the vision tower are pinned by name and sha256."""

    mapper: str | None = "object"  # one of MAPPERS; None: a mapper of your own, given to the constructor
    in_dim: int = 76  # width of the image features the mapper reads (the object list: 4 x 18 + 4)
    k: int = 3  # prefix vectors of an input prefix ("linear": one per image token), or past positions per layer (deep)
    hidden: int = 256  # the MLP mappers' hidden width ("grid-list": its MLP over all the tokens)
    dim: int = 64  # the transformer mappers' width, depth and heads ("grid-list": its MLP on each token)
    depth: int = 1
    n_heads: int = 4
    n_tokens: int = 10  # image tokens the "grid-list" mapper reads (CLIP's CLS and 9 patches)
    restart_positions: bool = True  # the text keeps positions 0, 1, ... after an input prefix (as the tiny LM read it)
    freeze_lm: bool = True  # False: the LM trains too (LLaVA's second stage)
    train_vision: bool = False  # True: the vision tower trains too (Frozen)
    lm: dict = field(default_factory=lambda: {"name": "tiny-lm", "sha256": None})
    vision: dict | None = None  # a `unimodal.vision_tower` spec; None: the features are given
    qformer: dict | None = None  # mapper "qformer": its `blip2.QFormerConfig` as a dict

    def __post_init__(self):
        require(self.mapper in (*MAPPERS, None), "mapper", self.mapper, f"one of {MAPPERS}, or None for a mapper of your own")
        require_positive_ints(self, ("in_dim", "k", "hidden", "dim", "depth", "n_heads", "n_tokens"))
        require(self.mapper != "qformer" or self.qformer is not None, "qformer", self.qformer,
                "a blip2.QFormerConfig as a dict, for mapper 'qformer'")


def build_mapper(config: Config, lm: LanguageModel) -> nn.Module:
    """A fresh mapper of the kind `config.mapper` names, from features [B, in_dim] (or [B, N, in_dim]) to the
    prefix `lm` reads."""
    c = config
    if c.mapper == "mlp":
        return MLPMapper(c.in_dim, lm.dim, c.k, c.hidden)
    if c.mapper == "transformer":
        return TransformerMapper(c.in_dim, lm.dim, c.k, c.dim, c.depth, c.n_heads)
    if c.mapper == "linear":
        return LinearMapper(c.in_dim, lm.dim)
    if c.mapper == "deep":
        return DeepPrefixMapper(c.in_dim, lm.kv_dim, c.k, lm.n_layers, c.dim, c.depth, c.n_heads)
    if c.mapper == "grid-list":
        return GridListMapper(c.in_dim, c.n_tokens, lm.kv_dim, c.k, lm.n_layers, c.dim, c.hidden)
    if c.mapper == "qformer":
        from .blip2 import QFormer, QFormerConfig, QueryPrefix  # here: blip2 builds its stage 2 on this module

        return QueryPrefix(QFormer(QFormerConfig(**c.qformer)), lm.dim)
    return ObjectPrefixMapper(c.in_dim, lm.kv_dim, c.k, lm.n_layers)


def caption_positions(attention_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Positions that restart at the caption: each input's count of real inputs before it, minus the k prefix
    vectors, which all sit at 0 (as does <bos>). [B, S] -> [B, S]. Introduced in notebook 04."""
    return (attention_mask.long().cumsum(dim=-1) - 1 - k).clamp(min=0)


class PrefixCaptioner(TowerAndLM):
    """A language model, a trained mapper and a vision tower, any of them frozen (by default the LM and the vision
    tower; `config.train_vision` trains the tower, Frozen's choice). Introduced in notebook 04.

    The mapper's prefix is an input prefix [B, k, D] in front of the text, or a deep prefix [B, L, 2, k, D] that
    becomes k cached past positions in every layer. Parts given to the constructor are used as they are; parts
    not given are built from `config` (the LM and the vision tower loaded at their pinned hashes)."""

    def __init__(self, config: Config, lm: LanguageModel | None = None, vision: nn.Module | None = None,
                 mapper: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else load_language_model(config.lm)
        require(mapper is not None or config.mapper is not None, "mapper", None, "a mapper, when config.mapper is None")
        self.mapper = mapper if mapper is not None else build_mapper(config, self.lm)  # drawn before any tower loads
        self.vision = vision if vision is not None or config.vision is None else vision_tower(config.vision)
        self.hold(tuple(name for name, frozen in (("lm", config.freeze_lm), ("vision", not config.train_vision)) if frozen))

    @classmethod
    def from_config(cls, config: dict) -> PrefixCaptioner:
        """Rebuilt from the config a checkpoint keeps (`vlmlab.zoo.load_model`)."""
        return cls(Config.from_dict(config))

    @property
    def max_text_len(self) -> int:
        """Text positions: all the LM's after a deep prefix, which holds none; after an input prefix, the rest."""
        return self.lm.max_len - (0 if self.mapper.deep else self.config.k)

    def condition(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prefix": self.mapper(image_features)}  # [B, k, D] or [B, L, 2, k, D]

    def forward(self, *, prefix: torch.Tensor, input_ids=None, inputs_embeds=None, attention_mask: torch.Tensor,
                labels=None, cache=None, use_cache: bool = False) -> LMOutput:
        """The LM's output (with .loss when labels are given). The first call (no cache) puts the prefix in; later
        calls extend the cache with new text. attention_mask and labels cover the text only."""
        text = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        B, T = text.shape[:2]
        k = prefix.size(-2)
        mask = torch.cat([attention_mask.new_ones(B, k), attention_mask], dim=1)  # the prefix is always visible
        if prefix.ndim == 5:  # deep: k past positions in every layer, holding no position; the text counts from 0
            cache = cache if cache is not None else self.lm.prefix_cache(prefix)
            return self.lm(inputs_embeds=text, attention_mask=mask, position_ids=default_positions(attention_mask, T),
                           labels=labels, cache=cache)
        if cache is None:  # the input prefix goes in front of the text
            joined = splice_visual(prefix, text, attention_mask, labels)
            text, labels = joined.inputs_embeds, joined.labels
        positions = caption_positions(mask, k)[:, -text.size(1):] if self.config.restart_positions else None
        return self.lm(inputs_embeds=text, attention_mask=mask, position_ids=positions, labels=labels, cache=cache,
                       use_cache=use_cache)


batch_loss = caption_loss  # the captioning loss, image_features or images in the batch


def encode_captions(tokenizer, captions: list[str], prompt: str = "", max_length: int = 16) -> TextBatch:
    """Captions as training text for a prefix that opens the sequence, right-padded: [prompt] caption <eos>, at most
    max_length tokens, no <bos> (the real track's SmolLM2). Labels are the caption and its <eos>; the prompt gets
    -100. After a prompt the caption starts with a space, as a word after a word does. A sequence longer than
    max_length is cut (it then has no <eos>)."""
    require(len(captions) >= 1 and all(isinstance(c, str) and c.strip() for c in captions), "captions",
            list(captions[:3]), "a non-empty list of non-empty strings")
    require(isinstance(max_length, int) and max_length >= 2, "max_length", max_length, "an int >= 2")
    targets = [(" " if prompt else "") + c.strip() for c in captions]
    return encode_texts(tokenizer, [prompt] * len(captions), targets, max_length=max_length, bos=False, eos=True)


def shot_positions(text_lengths: list[int], k: int) -> torch.Tensor:
    """Positions of an interleaved prompt in which every shot restarts, as each of the LM's documents did: a shot's k
    prefix vectors at 0, its text (<bos> first) at 0, 1, ... . [sum of (k + n) over the shots]. Notebook 04."""
    return torch.cat([torch.cat([torch.zeros(k, dtype=torch.long), torch.arange(n)]) for n in text_lengths])


def interleave(model: PrefixCaptioner, tokenizer, shots: list[tuple[torch.Tensor, str]], query: torch.Tensor,
               query_text: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen's few-shot prompt for an input-prefix captioner: [prefix(img_1)] <bos> text_1 [prefix(img_2)] <bos>
    text_2 ... [prefix(query)] <bos> query_text. Each shot is (image features, text). Returns the embeddings
    [1, S, D] and their positions [1, S] (`shot_positions`: every shot from 0). Introduced in notebook 04."""
    require(not model.mapper.deep, "model", "a deep-prefix captioner",
            "an input-prefix captioner (a deep prefix has no place mid-prompt)")
    device = next(model.parameters()).device
    parts, lengths = [], []
    for features, text in [*shots, (query, query_text)]:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(text)], device=device)
        parts += [model.mapper(features[None].to(device)), model.embed(ids)]
        lengths.append(ids.size(1))
    embeds = torch.cat(parts, dim=1)  # [1, S, D]
    require(embeds.size(1) <= model.lm.max_len, "shots", f"{embeds.size(1)} positions",
            f"at most the LM's max_len={model.lm.max_len}")
    return embeds, shot_positions(lengths, parts[0].size(1)).to(device)[None]


class ShotPrompted(nn.Module):
    """The frozen LM reading an interleaved few-shot prompt whose positions restart at every shot (`interleave`), as
    a model `generation.generate` drives: the prompt's positions [B, S] are its condition, and every token after the
    prompt counts on from the prompt's last position. Introduced in notebook 04."""

    def __init__(self, lm: LanguageModel):
        super().__init__()
        self.lm = lm

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)

    def forward(self, *, positions: torch.Tensor, input_ids=None, inputs_embeds=None, attention_mask: torch.Tensor,
                labels=None, cache=None, use_cache: bool = False) -> LMOutput:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        if cache is None:  # the prompt itself
            position_ids = positions
        else:  # new tokens: after the prompt's last position, counting what was read since
            since = attention_mask.size(1) - x.size(1) - positions.size(1)
            position_ids = positions[:, -1:] + 1 + since + torch.arange(x.size(1), device=x.device)
        return self.lm(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                       cache=cache, use_cache=use_cache)


def measure(model: PrefixCaptioner, tokenizer, bench: SceneBench, novel: list[int] | None = None) -> dict[str, float]:
    """Notebook 04's held-out numbers: greedy captions of the scenes and greedy answers to their questions
    (`harness.suite`, "captioner" and "vqa"), on the `novel` scenes too."""
    return suite(model, tokenizer, "captioner", bench, novel) | suite(model, tokenizer, "vqa", bench, novel)


SAVED = ("frozen-prefix-shapes",)  # what notebook 04 saves: its best light method's captioner
TARGETS = {  # notebook 04's quality targets, on its held-out scenes: the best named method on label-free vision
    "smoke": {"caption_f1": (">=", 0.80), "vqa_acc": (">=", 0.70), "trainable_fraction": ("<", 0.10)},  # shipped, TRAIN=False
    "cpu": {"caption_f1": (">=", 0.80), "vqa_acc": (">=", 0.70), "trainable_fraction": ("<", 0.10)},
    "gpu": {"caption_f1": (">=", 0.80), "vqa_acc": (">=", 0.70), "trainable_fraction": ("<", 0.10)},
}
