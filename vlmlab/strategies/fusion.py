"""Fusion encoders: image and text read together by one bidirectional transformer, pre-trained with masked language
modelling (MLM) and image-text matching (ITM). Introduced in notebook 06.

    sequence   [ [CLS] caption [SEP] pad | image tokens ]   one transformer, every token sees every other
    embedding  token or image vector + its position + its modality (0 text, 1 image)
    MLM        hide caption words, predict them from the rest of the caption AND the image
    ITM        [CLS] -> pooler -> match / no match, on true pairs and on negatives (random, mined, the world's swaps)

Where the image tokens come from is the field's historical contrast (`Config.image`):
- "regions": a detector's region vectors, projected linearly (VisualBERT, Li et al. 2019; UNITER, Chen et al. 2020).
  Here the detector is notebook 01's supervised one, trained with the world's attribute labels: an arm, named so.
- "patches": ViLT (Kim et al. 2021): raw 16x16 pixel patches through one linear projection, learned with the model
  from the image-caption pairs alone. No detector, no CNN.

Two more designs from the seed papers, on the same parts:
- `streams="two"`: ViLBERT (Lu et al. 2019) / LXMERT (Tan & Bansal 2019): a text stream and an image stream, each
  layer's queries attending to their own stream and, through co-attention, to the other stream's keys;
- `unimodal_depth` + `contrastive`: FLAVA (Singh et al. 2022): each modality first runs alone, a contrastive loss
  (CLIP's, notebook 02) aligns those unimodal outputs, then the fusion layers read both.
A VQA head (ViLT's: an MLP on the pooled [CLS] over the answer vocabulary) learns with them, as LXMERT pre-trains
with question answering. ViLT starts its transformer from an ImageNet ViT; `init_from_vit` starts ours from notebook
01's label-free MAE ViT. `text_to_image_attention` reads where each word looks (the notebook's widget).

Letters in the shape comments: B batch, T text length, N image tokens, D width, V vocabulary, A answers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention_weights, padding_mask, split_heads
from ..data.evalsets import FusionBench
from ..data.language import NEGATIVE_KINDS, Negative, caption, hard_negatives
from ..data.loaders import IGNORE_INDEX, TextBatch, indexed_collate
from ..data.shapes import Scene
from ..encoders import resize
from ..frozen import FrozenParts
from ..harness import suite
from ..hf_convert import load_exactly
from ..mlm import MLMHead, mask_tokens
from ..nn import Block, PatchEmbed, ViT, _init_weights, resized_vit
from ..params import SavedConfig, require, require_positive_ints
from ..protocols import batch_image_features, cosine_score
from ..unimodal import vision_tower
from .clip import clip_loss

IMAGES = ("patches", "regions")
STREAMS = ("single", "two")


@dataclass
class Config(SavedConfig):
    vocab_size: int = 512
    image: str = "patches"  # "patches": ViLT's linear patch projection, learned; "regions": a frozen detector's regions
    image_size: int = 64
    patch_size: int = 16
    region_dim: int = 20  # width of a region vector (notebook 01's detector: 8 shape + 9 colour + 3 size scores)
    n_regions: int = 9  # one region per cell of the 3 x 3 grid
    text_len: int = 32  # [CLS] + caption + [SEP]
    dim: int = 128
    depth: int = 4  # fusion layers
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    streams: str = "single"  # "two": ViLBERT / LXMERT co-attention
    unimodal_depth: int = 0  # FLAVA: layers each modality runs alone before the fusion layers
    contrastive: bool = False  # FLAVA: a CLIP loss on the unimodal outputs (needs unimodal_depth >= 1)
    embed_dim: int = 64  # the contrastive space
    mlm_prob: float = 0.15  # BERT's share of masked tokens
    swap_negatives: float = 0.5  # share of ITM negatives taken from the world's swaps (the rest: other captions)
    answers: list[str] = field(default_factory=list)  # the VQA head's classes (none: no head)
    vision: dict | None = None  # "regions": the frozen detector (`unimodal.vision_tower` spec)
    pad_token_id: int = 0
    mask_token_id: int = 5
    cls_token_id: int = 6
    sep_token_id: int = 7

    def __post_init__(self):
        require_positive_ints(self, ("vocab_size", "image_size", "patch_size", "region_dim", "n_regions", "text_len",
                                     "dim", "depth", "n_heads", "embed_dim"))
        require(self.image in IMAGES, "image", self.image, f"one of {IMAGES}")
        require(self.streams in STREAMS, "streams", self.streams, f"one of {STREAMS}")
        require(self.dim % self.n_heads == 0, "dim", self.dim, f"a multiple of n_heads={self.n_heads}")
        require(isinstance(self.unimodal_depth, int) and self.unimodal_depth >= 0, "unimodal_depth", self.unimodal_depth,
                "an integer >= 0")
        require(not self.contrastive or self.unimodal_depth >= 1, "contrastive", self.contrastive,
                "False unless unimodal_depth >= 1: the contrastive loss compares the unimodal outputs")
        require(self.streams == "single" or self.unimodal_depth == 0, "unimodal_depth", self.unimodal_depth,
                "0 with streams='two' (the two streams are unimodal already)")
        require(0 < self.mlm_prob < 1, "mlm_prob", self.mlm_prob, "a probability in (0, 1)")
        require(0 <= self.swap_negatives <= 1, "swap_negatives", self.swap_negatives, "a probability in [0, 1]")

    @property
    def n_image_tokens(self) -> int:
        """Patches: an image [CLS] + one token per patch (ViLT); regions: one per region."""
        return 1 + (self.image_size // self.patch_size) ** 2 if self.image == "patches" else self.n_regions


@dataclass
class FusionOutput:
    text: torch.Tensor  # [B, T, D] the text positions after the last layer
    image: torch.Tensor  # [B, N, D] the image positions
    pooled: torch.Tensor  # [B, D] pooler(text [CLS]): what ITM and VQA read
    unimodal: tuple[torch.Tensor, torch.Tensor] | None  # (text [CLS], image [CLS]) before fusion, FLAVA only


# ---------------------------------------------------------------- embeddings: one sequence of two modalities


class TextEmbedding(nn.Module):
    """BERT's text embedding: token + position, LayerNorm. [B, T] -> [B, T, D]. Notebook 06."""

    def __init__(self, c: Config):
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.dim)
        self.pos = nn.Embedding(c.text_len, c.dim)
        self.norm = nn.LayerNorm(c.dim, eps=1e-12)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        return self.norm(self.tok(input_ids) + self.pos(positions))


class PatchEmbedding(nn.Module):
    """ViLT's image embedding: the pictures resized to `image_size` (48 px: one 16 px patch per cell of the world),
    each raw 16x16 patch through one linear map (a stride-16 convolution), an image [CLS] in front, learned
    positions. pixels [B, 3, H, W] -> [B, 1 + N, D]. Notebook 06."""

    def __init__(self, c: Config):
        super().__init__()
        self.patches = PatchEmbed(c.image_size, c.patch_size, 3, c.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos = nn.Parameter(torch.zeros(1, c.n_image_tokens, c.dim))
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patches(resize(pixels, self.patches.image_size, bounds=(-1.0, 1.0)))  # [B, N - 1, D]
        return torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos  # [B, N, D]


class RegionEmbedding(nn.Module):
    """VisualBERT / UNITER's image embedding: each region vector through a linear map, LayerNorm, plus a learned
    embedding of where the region is (here: its grid cell, where the papers embed the box). [B, N, R] -> [B, N, D].
    Notebook 06."""

    def __init__(self, c: Config):
        super().__init__()
        self.proj = nn.Linear(c.region_dim, c.dim)
        self.norm = nn.LayerNorm(c.dim, eps=1e-12)
        self.pos = nn.Parameter(torch.zeros(1, c.n_regions, c.dim))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(regions)) + self.pos  # [B, N, D]


# ---------------------------------------------------------------- the model


def blocks(c: Config, n: int, cross: bool = False) -> nn.ModuleList:
    """n pre-norm transformer blocks of the config's width (with cross-attention: one stream of a two-stream model)."""
    return nn.ModuleList(Block(c.dim, c.n_heads, c.mlp_ratio, c.dropout, cross_attention=cross, norm_eps=1e-12)
                         for _ in range(n))


class Fusion(FrozenParts):
    """A fusion encoder with its heads: MLM (tied to the token embedding), ITM, and optionally VQA and FLAVA's
    contrastive projections. A pair scorer (`score`, the ITM log-odds) and an answer classifier (`answer_logits`).
    Notebook 06."""

    FROZEN = ("vision",)
    text_ends = ("[CLS]", "[SEP]")  # how it wants its texts: BERT's [CLS] caption [SEP]

    def __init__(self, config: Config, vision: nn.Module | None = None):
        super().__init__()
        c = self.config = config
        require(c.image == "patches" or vision is not None or c.vision is None, "vision", None,
                "the detector named in config.vision (Fusion.from_config loads it)")
        self.text_embed = TextEmbedding(c)
        self.image_embed = PatchEmbedding(c) if c.image == "patches" else RegionEmbedding(c)
        self.modality = nn.Embedding(2, c.dim)  # 0: text, 1: image
        self.text_alone, self.image_alone = blocks(c, c.unimodal_depth), blocks(c, c.unimodal_depth)  # FLAVA
        if c.streams == "single":
            self.layers = blocks(c, c.depth)
        else:  # each stream's layer: self-attention, co-attention to the other stream, MLP
            self.text_layers, self.image_layers = blocks(c, c.depth, cross=True), blocks(c, c.depth, cross=True)
        self.norm = nn.LayerNorm(c.dim, eps=1e-12)
        self.pooler = nn.Linear(c.dim, c.dim)  # BERT's pooler: dense + tanh on [CLS]
        self.mlm = MLMHead(c.dim, c.vocab_size, tied_embedding=self.text_embed.tok, norm_eps=1e-12)
        self.itm = nn.Linear(c.dim, 2)
        self.vqa = nn.Sequential(nn.Linear(c.dim, 2 * c.dim), nn.LayerNorm(2 * c.dim), nn.GELU(),
                                 nn.Linear(2 * c.dim, len(c.answers))) if c.answers else None  # ViLT's VQA head
        if c.contrastive:
            self.text_proj, self.image_proj = nn.Linear(c.dim, c.embed_dim, bias=False), nn.Linear(c.dim, c.embed_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.apply(_init_weights)
        self.vision = vision  # the frozen detector, after the init above: it keeps the weights it was loaded with

    @classmethod
    def from_config(cls, config: dict) -> Fusion:
        """Rebuilt from the config a checkpoint keeps, its detector (regions) loaded at the pinned hash."""
        c = Config.from_dict(config)
        return cls(c, vision=vision_tower(c.vision) if c.vision is not None else None)

    @property
    def max_text_len(self) -> int:
        return self.config.text_len

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the image embedding reads: the pixels themselves (patches) or the frozen detector's regions."""
        return pixels if self.config.image == "patches" else self.vision(pixels)

    def embed(self, image_features: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two halves of the sequence before any layer: text [B, T, D] and image [B, N, D], each with its
        modality embedding."""
        return (self.text_embed(input_ids) + self.modality.weight[0],
                self.image_embed(image_features) + self.modality.weight[1])

    def unimodal(self, text: torch.Tensor | None, image: torch.Tensor | None,
                 attention_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """FLAVA's unimodal encoders: each modality through its own `unimodal_depth` layers, alone (either may be None)."""
        for text_block, image_block in zip(self.text_alone, self.image_alone):
            text = None if text is None else text_block(text, mask=padding_mask(attention_mask))
            image = None if image is None else image_block(image)
        return text, image

    def image_summary(self, image: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, D]: the image [CLS] (patches) or the mean of the regions."""
        return image[:, 0] if self.config.image == "patches" else image.mean(dim=1)

    def encode(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> FusionOutput:
        """image_features (pixels [B, 3, H, W] or regions [B, N, R]), input_ids and attention_mask [B, T] -> FusionOutput."""
        c = self.config
        text, image = self.unimodal(*self.embed(image_features, input_ids), attention_mask)  # [B, T, D], [B, N, D]
        unimodal = (text[:, 0], self.image_summary(image)) if c.unimodal_depth else None
        text_keys = padding_mask(attention_mask)  # [B, 1, 1, T]
        if c.streams == "single":
            T = text.size(1)
            x = torch.cat([text, image], dim=1)  # [B, T + N, D]: one sequence
            keys = padding_mask(torch.cat([attention_mask, attention_mask.new_ones(image.shape[:2])], dim=1))
            for block in self.layers:
                x = block(x, mask=keys)
            x = self.norm(x)
            text, image = x[:, :T], x[:, T:]
        else:
            for text_block, image_block in zip(self.text_layers, self.image_layers):
                text, image = (text_block(text, mask=text_keys, context=image),
                               image_block(image, context=text, context_mask=text_keys))
            text, image = self.norm(text), self.norm(image)
        return FusionOutput(text, image, torch.tanh(self.pooler(text[:, 0])), unimodal)

    # -- what the heads say, from float pixels (the harness's protocols)

    def itm_logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.itm(self.encode(self.image_features(pixels), input_ids, attention_mask).pooled)  # [B, 2]

    def score(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The ITM head as a pair scorer: log-odds of "match" [B]."""
        logits = self.itm_logits(pixels, input_ids, attention_mask)
        return logits[:, 1] - logits[:, 0]

    def mlm_logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.mlm(self.encode(self.image_features(pixels), input_ids, attention_mask).text)  # [B, T, V]

    def answer_logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        require(self.vqa is not None, "config.answers", [], "an answer vocabulary: this model has no VQA head")
        return self.vqa(self.encode(self.image_features(pixels), input_ids, attention_mask).pooled)  # [B, A]

    @property
    def answers(self) -> list[str]:
        return self.config.answers

    def contrastive_logits(self, out: FusionOutput) -> torch.Tensor:
        """FLAVA's image-text logits [B, B] from the unimodal outputs, CLIP's way (scale clamped at 100)."""
        text, image = out.unimodal
        text, image = F.normalize(self.text_proj(text), dim=-1), F.normalize(self.image_proj(image), dim=-1)
        return self.logit_scale.clamp(max=math.log(100)).exp() * image @ text.T


class UnimodalEncoders(nn.Module):
    """A FLAVA model's unimodal encoders and contrastive projections as a dual encoder (`protocols.DualEncoder`), for
    retrieval without the fusion layers. Notebook 06."""

    def __init__(self, model: Fusion):
        super().__init__()
        require(model.config.contrastive, "model.config.contrastive", False, "True: a FLAVA model with its projections")
        self.model = model

    @property
    def max_text_len(self) -> int:
        return self.model.max_text_len

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = self.model
        text = m.unimodal(m.text_embed(input_ids) + m.modality.weight[0], None, attention_mask)[0]  # [B, T, D]
        return F.normalize(m.text_proj(text[:, 0]), dim=-1)  # [B, E]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        image = m.unimodal(None, m.image_embed(m.image_features(pixels)) + m.modality.weight[1], None)[1]  # [B, N, D]
        return F.normalize(m.image_proj(m.image_summary(image)), dim=-1)  # [B, E]

    def score(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return cosine_score(self, pixels, input_ids, attention_mask)


@torch.no_grad()
def text_to_image_attention(model: Fusion, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            layer: int = -1) -> torch.Tensor:
    """Where each text token looks in the image, in one single-stream layer: its attention weights over the image
    tokens, averaged over heads, [B, T, N]. Read from the layer's own query and key projections. Notebook 06."""
    require(model.config.streams == "single", "config.streams", model.config.streams, "'single'")
    block, seen = model.layers[layer], {}
    handle = block.register_forward_pre_hook(lambda module, args, kwargs: seen.update(x=args[0], mask=kwargs["mask"]),
                                             with_kwargs=True)
    try:
        out = model.encode(model.image_features(pixels), input_ids, attention_mask)
    finally:
        handle.remove()
    x, H, T = block.ln1(seen["x"]), block.attn.n_heads, out.text.size(1)
    q, k = split_heads(block.attn.q(x), H), split_heads(block.attn.kv(x).chunk(2, dim=-1)[0], H)
    return attention_weights(q, k, seen["mask"]).mean(dim=1)[:, :T, T:]  # [B, T, N]


# ---------------------------------------------------------------- data: captions, their swaps, questions


def world_negatives(scenes: list[Scene], seed: int = 0, kinds: tuple[str, ...] = NEGATIVE_KINDS) -> list[Negative]:
    """One hard negative caption per scene among `kinds` (`language.hard_negatives`: an attribute swap, a relation
    swap or an object replaced), drawn once per scene; a scene that has none of them gets the next scene's caption
    (kind "random")."""
    out = []
    for i, scene in enumerate(scenes):
        options = hard_negatives(scene, kinds)
        rng = random.Random(f"{seed}:fusion-negative:{i}")
        other = scenes[(i + 1) % len(scenes)]
        out.append(rng.choice(options) if options else Negative("random", caption(other), other.objects))
    return out


def pretraining_collate(inputs: torch.Tensor, captions: TextBatch, negatives: TextBatch, key: str = "images",
                        miner: tuple[torch.Tensor, torch.Tensor] | None = None) -> Callable[[list[int]], dict]:
    """Collate scene indices into images (or detector regions under `image_features`), each scene's caption and its
    world negative (`negative_input_ids`, `negative_attention_mask`), as `pretraining_loss` reads them. With `miner`
    = (image vectors [N, E], text vectors [N, E]) of a dual encoder, the batch also carries their `similarity`
    [B, B], from which `itm_negatives` mines the captions each image is most easily confused with."""
    own, swapped = indexed_collate(inputs, captions, key), indexed_collate(inputs, negatives, key)

    def collate(indices: list[int]) -> dict:
        batch, negative = own(indices), swapped(indices)
        batch |= {"negative_input_ids": negative["input_ids"], "negative_attention_mask": negative["attention_mask"]}
        if miner is not None:
            idx = torch.tensor(indices)
            batch["similarity"] = miner[0][idx] @ miner[1][idx].T  # [B, B]
        return batch

    return collate


def answer_collate(inputs: torch.Tensor, questions: TextBatch, rows: torch.Tensor, answers: torch.Tensor,
                   key: str = "images") -> Callable[[list[int]], dict]:
    """Collate question indices into their scenes' images (`rows[i]`: question i's scene), the questions and the
    answers as indices into the head's vocabulary [B], for `vqa_loss`."""
    base = indexed_collate(inputs, questions, key, rows)
    return lambda indices: base(indices) | {"answers": answers[torch.tensor(indices)]}


# ---------------------------------------------------------------- the losses


def masked_tokens(model: Fusion, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the captions (`vlmlab.mlm.mask_tokens`), never of [CLS], [SEP] or padding."""
    c = model.config
    return mask_tokens(input_ids, c.mask_token_id, c.vocab_size, (c.pad_token_id, c.cls_token_id, c.sep_token_id), c.mlm_prob)


def pad_to(ids: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(ids, (0, width - ids.size(1)), value=value)


def mined_partners(ids: torch.Tensor, similarity: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row i of a batch of captions ids [B, T], another row drawn in proportion to softmax(similarity[i])
    (uniformly without a similarity [B, B]), never one whose caption reads exactly like row i's (two scenes can share
    a caption: that pair would be true). -> indices [B]. ALBEF's in-batch hard negatives; notebooks 06 and 08."""
    B = len(ids)
    same = (ids[:, None] == ids[None]).all(dim=-1)  # [B, B]: its own caption, and any other scene's that is identical
    scores = torch.zeros(B, B, device=ids.device) if similarity is None else similarity.float()
    weights = scores.masked_fill(same, float("-inf")).softmax(dim=1).nan_to_num(0.0)  # a row of -inf gives NaN
    lonely = weights.sum(dim=1) == 0  # every caption of the batch reads the same: take any other row
    weights[lonely] = (~torch.eye(B, dtype=torch.bool, device=ids.device))[lonely].float()
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_negatives(batch: dict, swap_negatives: float, similarity: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One wrong caption per image: (input_ids, attention_mask) [B, T']. Notebook 06.

    With probability `swap_negatives` it is the world's hard negative of that scene (`negative_input_ids`: an
    attribute swap, a relation swap or an object replaced); otherwise another caption of the batch, drawn in
    proportion to softmax(similarity[i]) over the other captions when a similarity [B, B] is given (ALBEF's
    in-batch hard negatives: the captions the image is most easily confused with), uniformly when not. A caption
    that reads exactly like the image's own (two scenes can share one) is never drawn: it would be a true pair."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    other = mined_partners(ids, similarity, generator)  # [B]
    neg_ids, neg_mask = ids[other], mask[other]
    if "negative_input_ids" in batch and swap_negatives > 0:
        use = torch.rand(len(ids), generator=generator, device=ids.device) < swap_negatives  # [B]
        width = max(ids.size(1), batch["negative_input_ids"].size(1))
        neg_ids = torch.where(use[:, None], pad_to(batch["negative_input_ids"], width, 0), pad_to(neg_ids, width, 0))
        neg_mask = torch.where(use[:, None], pad_to(batch["negative_attention_mask"], width, 0), pad_to(neg_mask, width, 0))
    return neg_ids, neg_mask


def pretraining_loss(model: Fusion, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """MLM + ITM (+ FLAVA's contrastive loss). Two passes, as ViLT: the masked captions with their images (MLM, and
    the unimodal outputs for the contrastive loss), then the ITM rows: the first half of the batch with its own
    captions, the second half with negatives (`itm_negatives`), unmasked. The negatives are mined from the model's
    own contrastive similarity when it has one (ALBEF), else from the batch's `similarity` when it carries one. The
    contrastive loss reads the unimodal outputs of the masked captions, which saves a third pass (ALBEF's ITC reads
    unmasked ones). Notebook 06."""
    c = model.config
    images, ids, mask = batch_image_features(model, batch), batch["input_ids"], batch["attention_mask"]
    inputs, labels = masked_tokens(model, ids)
    out = model.encode(images, inputs, mask)
    logits = model.mlm(out.text)  # [B, T, V]
    n_masked = int((labels != IGNORE_INDEX).sum())
    mlm = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum") / max(1, n_masked)
    similarity, logs, loss = batch.get("similarity"), {}, mlm
    if c.contrastive:
        contrastive = model.contrastive_logits(out)  # [B, B]
        itc = clip_loss(contrastive)
        loss, similarity, logs = loss + itc, contrastive.detach(), {"itc": itc.item()}
    neg_ids, neg_mask = itm_negatives(batch, c.swap_negatives, similarity)
    half = len(ids) // 2
    width = max(ids.size(1), neg_ids.size(1))
    itm_ids = torch.cat([pad_to(ids[:half], width, c.pad_token_id), pad_to(neg_ids[half:], width, c.pad_token_id)])
    itm_mask = torch.cat([pad_to(mask[:half], width, 0), pad_to(neg_mask[half:], width, 0)])
    targets = torch.cat([torch.ones(half), torch.zeros(len(ids) - half)]).long().to(ids.device)
    itm = F.cross_entropy(model.itm(model.encode(images, itm_ids, itm_mask).pooled), targets)
    return loss + itm, logs | {"mlm": mlm.item(), "itm": itm.item()}


def vqa_loss(model: Fusion, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the VQA head over the answer vocabulary; batch["answers"] [B] holds answer indices."""
    out = model.encode(batch_image_features(model, batch), batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(model.vqa(out.pooled), batch["answers"]), {}


def batch_loss(model: Fusion, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """MLM + ITM (+ ITC) on a caption batch, plus the VQA loss on the question batch it carries under "vqa" (LXMERT
    pre-trains with question answering among its tasks); a batch of questions alone (`answers`) is VQA fine-tuning."""
    if "answers" in batch:
        return vqa_loss(model, batch)
    loss, logs = pretraining_loss(model, batch)
    if "vqa" in batch:
        vqa = vqa_loss(model, batch["vqa"])[0]
        loss, logs = loss + vqa, logs | {"vqa": vqa.item()}
    return loss, logs


@torch.no_grad()
def init_from_vit(model: Fusion, vit: ViT) -> list[str]:
    """Start a fusion model from a pre-trained ViT where the shapes allow, as ViLT starts from an ImageNet ViT: the
    patch projection, image [CLS] and positions (patch models), then each block that reads the image takes the ViT
    block at its depth (single stream: the image's unimodal blocks, then the fusion layers; two streams: the image
    stream), tensor by tensor where the shapes match. Everything else keeps its fresh weights: the text embedding, the
    modality embeddings, cross-attention, pooler and heads. A ViT trained at another image size is first moved to the
    model's (`vlmlab.nn.resized_vit`: its grid of positions resized). Returns the names of the tensors copied. Notebook 06."""
    c = model.config
    if c.image == "patches" and vit.config.image_size != c.image_size:
        vit = resized_vit(vit, c.image_size)
    pairs = [] if c.image == "regions" else [("image_embed.patches.proj.weight", "patch_embed.proj.weight"),
                                             ("image_embed.patches.proj.bias", "patch_embed.proj.bias"),
                                             ("image_embed.cls", "cls_token"), ("image_embed.pos", "pos_embed")]
    image_blocks = [*model.image_alone, *(model.layers if c.streams == "single" else model.image_layers)]
    names = {id(m): name for name, m in model.named_modules()}
    for ours, (i, theirs) in zip(image_blocks, enumerate(vit.blocks)):
        pairs += [(f"{names[id(ours)]}.{key}", f"blocks.{i}.{key}") for key in theirs.state_dict()]
    mine, source = model.state_dict(), vit.state_dict()
    copied = [ours for ours, theirs in pairs if ours in mine and mine[ours].shape == source[theirs].shape]
    model.load_state_dict({name: source[theirs] for name, theirs in pairs if name in copied}, strict=False)
    return copied


# ---------------------------------------------------------------- parity with Hugging Face's ViLT


def from_hf_vilt(hf_model, config: Config) -> Fusion:
    """Copy a `transformers.ViltModel` (embeddings, layers, final norm, pooler) into a single-stream patch Fusion of
    the same size; the heads keep their fresh weights. BERT's segment embedding (always segment 0 in ViLT's text) is
    folded into our text positions. Notebook 06's parity test."""
    from transformers import ViltModel

    require(isinstance(hf_model, ViltModel), "hf_model", type(hf_model).__name__, "a transformers.ViltModel")
    h = hf_model.config
    require(h.hidden_act == "gelu" and h.qkv_bias, "config", (h.hidden_act, h.qkv_bias), "exact GELU, q/k/v biases")
    require((config.dim, config.depth, config.image_size, config.patch_size) ==
            (h.hidden_size, h.num_hidden_layers, h.image_size, h.patch_size) and config.image == "patches"
            and config.streams == "single" and config.unimodal_depth == 0, "config", config, "ViltModel's sizes")
    hf = hf_model.state_dict()
    e = "embeddings.text_embeddings."
    model = Fusion(config)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("mlm.", "itm.", "vqa."))}
    state |= {
        "text_embed.tok.weight": hf[e + "word_embeddings.weight"],
        "text_embed.pos.weight": hf[e + "position_embeddings.weight"][: config.text_len]
                                 + hf[e + "token_type_embeddings.weight"][0],  # ViLT's text is always segment 0
        "text_embed.norm.weight": hf[e + "LayerNorm.weight"], "text_embed.norm.bias": hf[e + "LayerNorm.bias"],
        "image_embed.cls": hf["embeddings.cls_token"], "image_embed.pos": hf["embeddings.position_embeddings"],
        "image_embed.patches.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "image_embed.patches.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "modality.weight": hf["embeddings.token_type_embeddings.weight"][:2],
        "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"],
        "pooler.weight": hf["pooler.dense.weight"], "pooler.bias": hf["pooler.dense.bias"],
    }
    for i in range(config.depth):
        state |= hf_vilt_layer(hf, f"encoder.layer.{i}.", f"layers.{i}.")
    state["mlm.decoder.weight"] = state["text_embed.tok.weight"]
    return load_exactly(model, state, "from_hf_vilt")


def hf_vilt_layer(hf: dict[str, torch.Tensor], h: str, ours: str) -> dict[str, torch.Tensor]:
    """One `ViltLayer` (BERT-style names) as a vlmlab Block."""
    renamed = {
        "ln1.weight": "layernorm_before.weight", "ln1.bias": "layernorm_before.bias",
        "ln2.weight": "layernorm_after.weight", "ln2.bias": "layernorm_after.bias",
        "attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias",
        "attn.q.weight": "attention.attention.query.weight", "attn.q.bias": "attention.attention.query.bias",
        "mlp.fc.weight": "intermediate.dense.weight", "mlp.fc.bias": "intermediate.dense.bias",
        "mlp.proj.weight": "output.dense.weight", "mlp.proj.bias": "output.dense.bias",
    }
    a = h + "attention.attention."
    return {ours + k: hf[h + v] for k, v in renamed.items()} | {
        ours + "attn.kv.weight": torch.cat([hf[a + "key.weight"], hf[a + "value.weight"]]),
        ours + "attn.kv.bias": torch.cat([hf[a + "key.bias"], hf[a + "value.bias"]]),
    }


# ---------------------------------------------------------------- measured, saved, targets


def measure(model: Fusion, tokenizer, bench: FusionBench, novel: list[int] | None = None) -> dict[str, float]:
    """Notebook 06's held-out numbers: the ITM head on the swap probes (pair by pair), ITM accuracy on true and
    random pairs, MLM on colour and shape words with the image and with an empty picture, and VQA with the answer
    head (overall, by type, and on the `novel` scenes)."""
    out = suite(model, tokenizer, "pair_scorer", bench.pairs) | suite(model, tokenizer, "itm", bench.pairs)
    out |= suite(model, tokenizer, "masked_words", bench.scenes, novel)
    if model.vqa is not None:
        out |= suite(model, tokenizer, "answer_classifier", bench.scenes, novel)
    return out


SAVED = ("vilt-shapes",)  # what notebook 06 saves: the patch (ViLT) model with its VQA head
TARGETS = {  # notebook 06's quality targets, on its held-out scenes: the patch path, learned from pixels
    "smoke": {"relation_swap_acc": (">=", 0.95), "mlm_acc_image": (">=", 0.95), "vqa_acc": (">=", 0.85)},
    "cpu": {"relation_swap_acc": (">=", 0.95), "mlm_acc_image": (">=", 0.95), "vqa_acc": (">=", 0.85)},
    "gpu": {"relation_swap_acc": (">=", 0.95), "mlm_acc_image": (">=", 0.95), "vqa_acc": (">=", 0.85)},
}
