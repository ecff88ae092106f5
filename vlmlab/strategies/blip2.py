"""BLIP-2's Querying Transformer (Li et al., 2023): the bridge between a frozen image encoder and a frozen language
model. Introduced in notebook 08.

    frozen image features [B, N, Dv] --cross-attention (every other layer, queries only)--+
    n learned query embeddings [Q, D] --+                                                 |
                                        +-- shared self-attention layers (BERT, post-norm) --> query outputs [B, Q, D]
    text tokens ([CLS] caption [SEP]) --+                                                 --> text outputs [B, T, D]

Queries and text share each layer's self-attention; each has its own feed-forward. What they may see of each other
is set by the attention mask, one per stage-1 objective (`self_attention_mask`):

    "unimodal"  ITC: queries see queries, text sees text (image-text contrastive, max over queries)
    "bidirectional"  ITM: everything sees everything (image-text matching)
    "causal"    ITG: queries see queries only; text sees every query and the text before it (image-grounded
                text generation: the queries must carry everything the text needs)

The layout is Hugging Face's `Blip2QFormerModel`'s (`from_hf_qformer` copies one in), so the same code runs
Salesforce's weights wherever the hub is reachable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import harness
from ..attention import MultiHeadAttention, attention_weights, split_heads
from ..data.evalsets import DualEncoderBench, SceneBench
from ..data.language import caption
from ..data.loaders import IGNORE_INDEX
from ..evaluate import retrieval_recall
from ..frozen import FrozenParts
from ..nn import MLP, LMOutput
from ..params import SavedConfig, require, require_positive_ints
from ..protocols import batch_image_features, encode_for
from ..unimodal import vision_tower
from .clip import clip_loss
from .frozen_prefix import PrefixCaptioner
from .frozen_prefix import measure as measure_captioner
from .fusion import mined_partners

MASKS = ("unimodal", "bidirectional", "causal")


@dataclass
class QFormerConfig(SavedConfig):
    """The Q-Former's sizes: `n_queries` learned queries of width `dim`; `depth` BERT layers, every `cross_every`-th
    one (starting with the first) with a cross-attention from the queries to the image features (width
    `visual_dim`); a text side of `vocab_size` tokens and `text_len` positions."""

    vocab_size: int = 512
    visual_dim: int = 96
    n_queries: int = 8
    dim: int = 96
    depth: int = 4
    n_heads: int = 4
    mlp_dim: int = 384
    cross_every: int = 2
    text_len: int = 32
    norm_eps: float = 1e-12
    dropout: float = 0.0

    def __post_init__(self):
        require_positive_ints(self, ("vocab_size", "visual_dim", "n_queries", "dim", "depth", "n_heads", "mlp_dim",
                                     "cross_every", "text_len"))
        require(self.dim % self.n_heads == 0, "dim", self.dim, f"a multiple of n_heads={self.n_heads}")


class PostNorm(nn.Module):
    """BERT's residual, normalised after the sum: LayerNorm(x + sublayer(x, ...)). The Q-Former's attention and
    feed-forward sub-layers are the workbook's own (`attention.MultiHeadAttention`, `nn.MLP`) inside it."""

    def __init__(self, sublayer: nn.Module, dim: int, eps: float):
        super().__init__()
        self.sublayer, self.norm = sublayer, nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.norm(x + self.sublayer(x, **kwargs))


class QFormerLayer(nn.Module):
    """One Q-Former layer: self-attention over queries and text together (under the objective's mask), then, for
    the queries only, cross-attention to the image (in the layers that have it), then a feed-forward for the queries
    and another for the text."""

    def __init__(self, c: QFormerConfig, cross: bool):
        super().__init__()
        self.self_attention = PostNorm(MultiHeadAttention(c.dim, c.n_heads, c.dropout), c.dim, c.norm_eps)
        self.cross_attention = (PostNorm(MultiHeadAttention(c.dim, c.n_heads, c.dropout, kv_dim=c.visual_dim), c.dim,
                                         c.norm_eps) if cross else None)
        self.query_ffn = PostNorm(MLP(c.dim, c.mlp_dim, c.dropout), c.dim, c.norm_eps)
        self.text_ffn = PostNorm(MLP(c.dim, c.mlp_dim, c.dropout), c.dim, c.norm_eps)

    def forward(self, x: torch.Tensor, n_queries: int, image: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, Q + T, D] (queries first), image [B, N, Dv], mask bool broadcastable to [B, H, Q + T, Q + T]."""
        x = self.self_attention(x, mask=mask)
        queries, text = x[:, :n_queries], x[:, n_queries:]
        if self.cross_attention is not None and n_queries > 0:
            queries = self.cross_attention(queries, context=image)  # [B, Q, D]: only the queries look at the image
        parts = ([self.query_ffn(queries)] if n_queries > 0 else []) + ([self.text_ffn(text)] if text.size(1) else [])
        return torch.cat(parts, dim=1)


def self_attention_mask(kind: str, n_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """The stage-1 objective's mask over [queries; text]: bool [B, 1, Q + T, Q + T], True = may attend ([B, 1, 1,
    Q + T] for "bidirectional", where only the padding is hidden). text_mask [B, T] (1 = a real token; padding is
    never attended to)."""
    require(kind in MASKS, "kind", kind, f"one of {MASKS}")
    B, T = text_mask.shape
    Q, device = n_queries, text_mask.device
    keys = torch.cat([text_mask.new_ones(B, Q), text_mask], dim=1).bool()  # [B, Q + T] padding hidden
    if kind == "bidirectional":
        return keys[:, None, None, :]
    is_query = torch.arange(Q + T, device=device) < Q  # [Q + T]
    if kind == "unimodal":
        allowed = is_query[:, None] == is_query[None, :]  # each side sees only itself
    else:  # causal: queries see queries; text sees every query and the text up to itself
        position = torch.arange(Q + T, device=device)
        allowed = torch.where(is_query[:, None], is_query[None, :], is_query[None, :] | (position[None, :] <= position[:, None]))
    return allowed[None, None] & keys[:, None, None, :]


class QFormer(nn.Module):
    """The Q-Former: learned queries, BERT's text embeddings, `depth` QFormerLayers. `forward(image, input_ids,
    attention_mask, kind)` -> (query outputs [B, Q, D], text outputs [B, T, D]); without text, the queries alone;
    without an image, the text alone (ITC's text side)."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        c = self.config = config
        self.queries = nn.Parameter(torch.randn(1, c.n_queries, c.dim) * 0.02)
        self.word_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.position_embeddings = nn.Embedding(c.text_len, c.dim)
        self.norm, self.drop = nn.LayerNorm(c.dim, eps=c.norm_eps), nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(QFormerLayer(c, cross=i % c.cross_every == 0) for i in range(c.depth))

    def forward(self, image: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kind: str = "bidirectional") -> tuple[torch.Tensor, torch.Tensor]:
        require(image is not None or input_ids is not None, "image/input_ids", None, "at least one of them")
        parts = []
        B = len(image) if image is not None else len(input_ids)
        if image is not None:
            parts.append(self.queries.expand(B, -1, -1))  # [B, Q, D]
        if input_ids is not None:
            positions = torch.arange(input_ids.size(1), device=input_ids.device)
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(positions))  # [B, T, D]
        x = self.drop(self.norm(torch.cat(parts, dim=1)))
        Q = self.config.n_queries if image is not None else 0
        text_mask = attention_mask if attention_mask is not None else x.new_ones(B, x.size(1) - Q, dtype=torch.long)
        mask = self_attention_mask(kind, Q, text_mask)
        for layer in self.layers:
            x = layer(x, Q, image, mask)
        return x[:, :Q], x[:, Q:]


# ---------------------------------------------------------------- stage 1: representation learning


@dataclass
class Config(SavedConfig):
    """A BLIP-2 model: its Q-Former, the ITC space (`embed_dim`, the temperature it starts at), the token ids its text
    side needs ([CLS] opens ITC/ITM texts, <bos> replaces it for ITG as BLIP-2's [DEC]), and the frozen parts it
    stands on: the vision tower (a `unimodal.vision_tower` spec) and, for stage 2, the language model."""

    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    embed_dim: int = 64
    init_temperature: float = 0.07
    pad_token_id: int = 0
    bos_token_id: int = 1
    vision: dict | None = None
    lm: dict | None = None

    def __post_init__(self):
        require(isinstance(self.qformer, QFormerConfig), "qformer", type(self.qformer).__name__, "a QFormerConfig")
        require_positive_ints(self, ("embed_dim",))

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return cls(**(d | {"qformer": QFormerConfig(**d["qformer"])}))


class Blip2(FrozenParts):
    """Stage 1: a Q-Former over a frozen vision tower, with BLIP-2's three heads. Introduced in notebook 08.

    - ITC: each query output projected into the shared space; a text is its [CLS] output, projected; an image-text
      similarity is the best match over the queries (`itc_similarity`);
    - ITM: a linear classifier on every query output (queries and text under the bidirectional mask), its two
      logits averaged over the queries; `score` (a PairScorer) is match minus no-match;
    - ITG: BERT's prediction head on the text outputs under the causal mask, tied to the word embeddings.
    A batch holds `images` (uint8) or `image_features` (the frozen tower's output, computed once)."""

    FROZEN = ("vision",)
    text_ends = ("[CLS]", "[SEP]")
    stop_tokens = ("[SEP]",)  # the ITG head learned to end a caption where [SEP] closes it

    def __init__(self, config: Config, vision: nn.Module | None = None):
        super().__init__()
        c, q = config, config.qformer
        self.config = config
        self.qformer = QFormer(q)
        self.vision_proj, self.text_proj = nn.Linear(q.dim, c.embed_dim), nn.Linear(q.dim, c.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))
        self.itm_head = nn.Linear(q.dim, 2)
        self.itg_transform = nn.Sequential(nn.Linear(q.dim, q.dim), nn.GELU(), nn.LayerNorm(q.dim, eps=q.norm_eps))
        self.itg_bias = nn.Parameter(torch.zeros(q.vocab_size))
        self.vision = vision if vision is not None or c.vision is None else vision_tower(c.vision)
        if self.vision is not None:
            self.vision.requires_grad_(False).eval()

    @classmethod
    def from_config(cls, config: dict) -> Blip2:
        return cls(Config.from_dict(config))

    @property
    def max_text_len(self) -> int:
        return self.config.qformer.text_len

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        require(self.vision is not None, "vision", None, "a vision tower (config.vision), or pass image_features")
        return self.vision(pixels)  # [B, N, Dv]

    # ---- ITC

    def image_embeddings(self, image_features: torch.Tensor) -> torch.Tensor:
        """[B, N, Dv] -> one unit vector per query [B, Q, E] (the queries alone: ITC's unimodal mask)."""
        return F.normalize(self.vision_proj(self.qformer(image_features)[0]), dim=-1)

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] -> the [CLS] output, projected, unit length [B, E] (the text alone)."""
        return F.normalize(self.text_proj(self.qformer(None, input_ids, attention_mask)[1][:, 0]), dim=-1)

    @staticmethod
    def itc_similarity(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[N, Q, E] and [M, E] -> [N, M]: for each image and text, the cosine of the query that matches it best."""
        return torch.einsum("nqe,me->nmq", image_embeddings, text_embeddings).max(dim=-1).values

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()

    # ---- ITM

    def itm_logits(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, 2] (no match, match), averaged over the query outputs of the bidirectional pass."""
        queries, _ = self.qformer(image_features, input_ids, attention_mask, kind="bidirectional")
        return self.itm_head(queries).mean(dim=1)

    def score(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.itm_logits(self.image_features(pixels), input_ids, attention_mask)
        return logits[:, 1] - logits[:, 0]  # [B] the log-odds of a match

    # ---- ITG

    def itg_logits(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, T, V] of the text under the causal mask, its first token replaced by <bos> (BLIP-2's
        [DEC]): the text can read the image only through what the queries took from it."""
        ids = input_ids.clone()
        ids[:, 0] = self.config.bos_token_id
        _, text = self.qformer(image_features, ids, attention_mask, kind="causal")
        return F.linear(self.itg_transform(text), self.qformer.word_embeddings.weight, self.itg_bias)


    # ---- ITG as a captioner: the contract's decoding loop writes with the ITG head (CapFilt's captioner)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.qformer.word_embeddings(input_ids)

    def condition(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_features": image_features}

    def forward(self, *, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                cache: TextSoFar | None = None, use_cache: bool = False) -> LMOutput:
        """The ITG head's next-token logits for the new `input_ids` [B, t] (after the text in `cache`): [B, t, V].
        Every call reruns the Q-Former on the whole text, so the 'cache' is the text so far."""
        cache = cache if cache is not None else TextSoFar()
        ids = cache.extend(input_ids)  # [B, T]
        logits = self.itg_logits(image_features, ids, attention_mask)[:, -input_ids.size(1):]
        return LMOutput(logits, None, cache if use_cache else None)


class TextSoFar:
    """What the ITG decoder keeps between calls of the decoding loop: the token ids so far, [B, T]."""

    def __init__(self):
        self.ids: torch.Tensor | None = None

    def extend(self, new: torch.Tensor) -> torch.Tensor:
        self.ids = new if self.ids is None else torch.cat([self.ids, new], dim=1)
        return self.ids

    def select(self, rows: torch.Tensor) -> None:
        self.ids = self.ids[rows]


@torch.no_grad()
def query_image_attention(qformer: QFormer, image_features: torch.Tensor) -> torch.Tensor:
    """Where each query looks: the first layer's cross-attention weights from the queries (alone, as after stage 1
    and in stage 2) to the image tokens, averaged over heads: [B, Q, N]. Notebook 08 draws them over the picture."""
    x = qformer.norm(qformer.queries.expand(len(image_features), -1, -1))
    x = qformer.layers[0].self_attention(x)  # [B, Q, D]: the queries after their own self-attention
    cross = qformer.layers[0].cross_attention.sublayer
    keys = split_heads(cross.kv(image_features).chunk(2, dim=-1)[0], cross.n_heads)  # [B, H, N, hd]
    return attention_weights(split_heads(cross.q(x), cross.n_heads), keys).mean(dim=1)  # [B, Q, N]


@torch.no_grad()
def itm_keep(model: Blip2, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             threshold: float = 0.5) -> torch.Tensor:
    """BLIP's filter (CapFilt): keep a pair when the ITM head's probability of a match exceeds `threshold`.
    -> bool [B]. Notebook 08 filters the web-like noisy captions and the captioner's synthetic ones with it."""
    return model.itm_logits(image_features, input_ids, attention_mask).softmax(dim=-1)[:, 1] > threshold


def stage1_losses(model: Blip2, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """BLIP-2's three stage-1 losses on a caption batch ([CLS] caption [SEP]):

    itc  CLIP's symmetric loss over the [B, B] similarities (max over queries) times the learned scale
    itm  cross-entropy over B true pairs, B images with a mined wrong caption and B captions with a mined wrong image
         (drawn in proportion to softmax of the ITC similarity, never an identical caption: BLIP's hard negatives)
    itg  next-token cross-entropy of the caption under the causal mask"""
    features, ids, mask = batch_image_features(model, batch), batch["input_ids"], batch["attention_mask"]
    image_emb, text_emb = model.image_embeddings(features), model.text_embeddings(ids, mask)  # [B, Q, E], [B, E]
    similarity = model.itc_similarity(image_emb, text_emb)  # [B, B]
    itc = clip_loss(model.scale * similarity)
    with torch.no_grad():
        wrong_text = mined_partners(ids, similarity, generator)  # [B] for each image, a caption it is confused with
        wrong_image = mined_partners(ids, similarity.T, generator)  # [B] for each caption, an image
    B = len(ids)
    logits = model.itm_logits(torch.cat([features, features, features[wrong_image]]),
                              torch.cat([ids, ids[wrong_text], ids]), torch.cat([mask, mask[wrong_text], mask]))
    targets = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(ids.device)
    itm = F.cross_entropy(logits, targets)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    next_logits = model.itg_logits(features, ids, mask)[:, :-1]  # position t predicts token t + 1
    itg = F.cross_entropy(next_logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    return {"itc": itc, "itm": itm, "itg": itg}


def stage1_loss(model: Blip2, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The sum of the three stage-1 losses, for `vlmlab.train.fit`."""
    losses = stage1_losses(model, batch)
    return sum(losses.values()), {name: value.item() for name, value in losses.items()}


batch_loss = stage1_loss  # the contract's name: stage 1 trains the Q-Former and its heads; stage 2 is a PrefixCaptioner


@torch.no_grad()
def measure(model: Blip2 | PrefixCaptioner, tokenizer, bench: DualEncoderBench | SceneBench) -> dict[str, float]:
    """Stage 1 (a Blip2, on a DualEncoderBench): ITC retrieval (each image-text similarity the best over the queries)
    on the bench's retrieval scenes, and the ITM head as a pair scorer on notebook 02's swap probes. Stage 2 (the
    PrefixCaptioner whose mapper is the Q-Former, on a SceneBench): captions and VQA through the frozen LM."""
    if isinstance(model, PrefixCaptioner):
        return measure_captioner(model, tokenizer, bench)
    model.eval()
    features = harness.image_features(model, bench.images["retrieval"])  # [N, Ntok, Dv], the frozen tower's
    text = encode_for(model, tokenizer, [caption(s) for s in bench.retrieval])
    device = features.device
    similarity = model.itc_similarity(model.image_embeddings(features),
                                      model.text_embeddings(text.input_ids.to(device), text.attention_mask.to(device)))
    out = {f"itc_t2i_{k}": v for k, v in retrieval_recall(similarity.T).items()}
    out |= {f"itc_i2t_{k}": v for k, v in retrieval_recall(similarity).items()}
    return out | {f"itm_{k}": v for k, v in harness.suite(model, tokenizer, "pair_scorer", bench).items()}


TARGETS = {  # notebook 08's quality targets: captions and VQA through the frozen LM after stage 2, on held-out scenes
    "smoke": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80)},  # the shipped stage-2 model, TRAIN=False
    "cpu": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80)},
    "gpu": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80)},
}
SAVED = ("blip2-stage1-shapes", "blip2-shapes")  # what notebook 08 saves: the stage-1 model, the stage-2 captioner


# ---------------------------------------------------------------- stage 2: generative learning


class QueryPrefix(nn.Module):
    """Stage 2's bridge into the frozen LM: the Q-Former's query outputs (the queries alone, as after stage 1), one
    linear projection to the LM's width: a soft visual prompt. features [B, N, Dv] -> [B, Q, D_lm]. It is the
    `mapper` of a `frozen_prefix.PrefixCaptioner` (mapper "qformer"), which puts it in front of the text."""

    deep = False

    def __init__(self, qformer: QFormer, lm_dim: int):
        super().__init__()
        self.qformer, self.proj = qformer, nn.Linear(qformer.config.dim, lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.qformer(features)[0])


# ---------------------------------------------------------------- parity with Hugging Face


def hf_qformer_config(c: QFormerConfig):
    """The same sizes as a Hugging Face `Blip2QFormerConfig` (with text input, BERT's GELU)."""
    from transformers import Blip2QFormerConfig

    return Blip2QFormerConfig(vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.depth,
                              num_attention_heads=c.n_heads, intermediate_size=c.mlp_dim, hidden_act="gelu",
                              max_position_embeddings=c.text_len, layer_norm_eps=c.norm_eps,
                              cross_attention_frequency=c.cross_every, encoder_hidden_size=c.visual_dim,
                              use_qformer_text_input=True, hidden_dropout_prob=c.dropout,
                              attention_probs_dropout_prob=c.dropout)


def _bert_attention(hf: dict[str, torch.Tensor], prefix: str, ours: str) -> dict[str, torch.Tensor]:
    """HF's query / key / value / output.dense / output.LayerNorm -> our q / kv (keys and values in one) / proj / norm."""
    state = {f"{ours}.norm.{p}": hf[f"{prefix}.output.LayerNorm.{p}"] for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        state[f"{ours}.sublayer.q.{p}"] = hf[f"{prefix}.attention.query.{p}"]
        state[f"{ours}.sublayer.kv.{p}"] = torch.cat([hf[f"{prefix}.attention.key.{p}"], hf[f"{prefix}.attention.value.{p}"]])
        state[f"{ours}.sublayer.proj.{p}"] = hf[f"{prefix}.output.dense.{p}"]
    return state


def _bert_ffn(hf: dict[str, torch.Tensor], intermediate: str, output: str, ours: str) -> dict[str, torch.Tensor]:
    pairs = {"sublayer.fc": f"{intermediate}.dense", "sublayer.proj": f"{output}.dense", "norm": f"{output}.LayerNorm"}
    return {f"{ours}.{o}.{p}": hf[f"{h}.{p}"] for o, h in pairs.items() for p in ("weight", "bias")}


def from_hf_qformer(qformer, embeddings, query_tokens: torch.Tensor, config: QFormerConfig) -> QFormer:
    """Our QFormer with the weights of Hugging Face's `Blip2QFormerModel` (`qformer`), its `Blip2TextEmbeddings`
    (`embeddings`: word and position embeddings) and its query tokens [1, Q, D]."""
    hf = qformer.state_dict()
    state = {"queries": query_tokens.detach(), "word_embeddings.weight": embeddings.word_embeddings.weight,
             "position_embeddings.weight": embeddings.position_embeddings.weight[: config.text_len],
             "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    for i in range(config.depth):
        h = f"encoder.layer.{i}"
        state |= _bert_attention(hf, f"{h}.attention", f"layers.{i}.self_attention")
        if i % config.cross_every == 0:
            state |= _bert_attention(hf, f"{h}.crossattention", f"layers.{i}.cross_attention")
        state |= _bert_ffn(hf, f"{h}.intermediate_query", f"{h}.output_query", f"layers.{i}.query_ffn")
        state |= _bert_ffn(hf, f"{h}.intermediate", f"{h}.output", f"layers.{i}.text_ffn")
    model = QFormer(config)
    model.load_state_dict(state)
    return model
