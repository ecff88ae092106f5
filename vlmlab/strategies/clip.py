"""CLIP: a dual encoder trained with the symmetric contrastive (InfoNCE) loss. Introduced in notebook 02.

Radford et al. 2021. An image tower (ViT, CLS vector) and a text tower (transformer, the vector at the
end-of-text token) are each projected linearly into one shared space and L2-normalised. For a batch of
B matching pairs the B x B matrix of cosine similarities, times a learned scale exp(logit_scale) = 1 / T,
is read as B classification problems per direction: image i must pick caption i among the B captions,
and caption i must pick image i. The scale is stored as log(1 / T) and clamped at 100, as CLIP does.

SigLIP (Zhai et al. 2023) is the same dual encoder with another loss: every one of the B x B pairs is its own
binary question (match or not), scored by sigmoid(scale * cos + bias) with a learned bias, so no softmax couples
the batch (`Config.loss="sigmoid"`, `sigmoid_loss`).

Also here: NegCLIP's hard negatives (Yuksekgonul et al. 2023) and `from_hf_clip`, which copies a Hugging Face
`CLIPModel` into `CLIP` so the parity tests can show that the same weights give the same numbers. Zero-shot
classifiers, retrieval and the swap probes are measured by `vlmlab.harness.suite(model, tok, "dual_encoder", ...)`,
which works on any dual encoder.

Letters in the shape comments: B batch, T text length, D tower width, E shared embedding width, C classes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..data.evalsets import DualEncoderBench
from ..data.language import NEGATIVE_KINDS, caption, hard_negatives, leaving_out
from ..data.loaders import to_float
from ..data.shapes import Scene
from ..encoders import resize
from ..harness import suite
from ..hf_convert import hf_block_state, load_exactly
from ..nn import TextConfig, TextTransformer, ViT, ViTConfig
from ..params import SavedConfig, require
from ..protocols import cosine_score

IMAGE_POOLS = ("cls", "grid")
LOSSES = ("softmax", "sigmoid")  # CLIP's InfoNCE, SigLIP's pairwise sigmoid


@dataclass
class Config(SavedConfig):
    vision: ViTConfig
    text: TextConfig
    embed_dim: int = 64  # E, the shared space both towers project into
    init_temperature: float = 0.07  # CLIP starts at T = 0.07, a scale of 1 / 0.07 ~ 14.3
    max_logit_scale: float = 100.0  # exp(logit_scale) is clamped here (T >= 0.01), as in CLIP
    learn_temperature: bool = True  # False: T stays at init_temperature (a buffer, not a parameter)
    vision_pre_norm: bool = False  # a LayerNorm before the first ViT block (OpenAI CLIP's ln_pre)
    quick_gelu: bool = False  # x * sigmoid(1.702 x) in every MLP of both towers (OpenAI CLIP's activation)
    image_pool: str = "cls"  # what the image projection reads: the CLS vector (CLIP) or the whole patch grid
    loss: str = "softmax"  # "sigmoid": SigLIP, which also learns a bias added to every logit
    init_bias: float = -10.0  # SigLIP starts its bias at -10 (and its temperature at 0.1): most pairs do not match

    def __post_init__(self):
        require(isinstance(self.vision, ViTConfig), "vision", type(self.vision).__name__, "a vlmlab.nn.ViTConfig")
        require(isinstance(self.text, TextConfig), "text", type(self.text).__name__, "a vlmlab.nn.TextConfig")
        require(isinstance(self.embed_dim, int) and self.embed_dim >= 1, "embed_dim", self.embed_dim, "an integer >= 1")
        require(self.max_logit_scale > 0, "max_logit_scale", self.max_logit_scale, "a number > 0")
        require(self.image_pool in IMAGE_POOLS, "image_pool", self.image_pool, f"one of {IMAGE_POOLS}")
        require(self.loss in LOSSES, "loss", self.loss, f"one of {LOSSES}")
        require(self.init_temperature * self.max_logit_scale >= 1 - 1e-6, "init_temperature", self.init_temperature,
               f"a number >= 1 / max_logit_scale = {1 / self.max_logit_scale:g}")

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return cls(**(d | {"vision": ViTConfig(**d["vision"]), "text": TextConfig(**d["text"])}))


class QuickGELU(nn.Module):
    """OpenAI CLIP's cheap GELU: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ImageTower(ViT):
    """vlmlab.nn.ViT with a LayerNorm between the embeddings and the first block when `pre_norm` (CLIP's ln_pre).
    Without it (the default) it has exactly the ViT's weights, so a notebook-01 tiny ViT loads into it.

    Images of another size are resized to the tower's `image_size` first, as CLIP's image processor resizes every
    input: notebook 02's tower reads the world's 64 px scenes at 48 px, where each of its 3 x 3 cells is one patch."""

    def __init__(self, config: ViTConfig, pre_norm: bool = False):
        super().__init__(config)
        if pre_norm:
            self.pre_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 3, H, W] in [-1, 1], any H = W -> [B, 1 + N, D], read at `image_size`."""
        return super().tokens(resize(images, self.config.image_size, bounds=(-1.0, 1.0)))


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] with 1 on real tokens -> [B], the index of each row's last real token (where <eos> sits)."""
    require(bool(attention_mask.bool().any(dim=1).all()), "attention_mask", "a row with no real token",
           "at least one 1 in every row")
    T = attention_mask.size(1)
    return (attention_mask.long() * torch.arange(T, device=attention_mask.device)).argmax(dim=1)  # [B]


class CLIP(nn.Module):
    """The dual encoder: image tower + text tower, linear projections (no bias) into E, L2 normalisation,
    and the learned temperature. Introduced in notebook 02.

    image_pool='grid' projects the whole patch grid instead of the CLS vector: a linear read-out of what is
    where, the representation notebook 01's ViT was pre-trained to produce (its CLS was never trained)."""

    def __init__(self, config: Config):
        super().__init__()
        c = self.config = config
        self.image_tower = ImageTower(c.vision, pre_norm=c.vision_pre_norm)
        self.text_tower = TextTransformer(c.text)
        if c.quick_gelu:
            for block in [*self.image_tower.blocks, *self.text_tower.blocks]:
                block.mlp.act = QuickGELU()
        image_features = c.vision.dim if c.image_pool == "cls" else self.image_tower.patch_embed.n_patches * c.vision.dim
        self.image_proj = nn.Linear(image_features, c.embed_dim, bias=False)
        self.text_proj = nn.Linear(c.text.dim, c.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=image_features**-0.5)  # CLIP's init: unit-variance outputs
        nn.init.normal_(self.text_proj.weight, std=c.text.dim**-0.5)
        logit_scale = torch.tensor(math.log(1 / c.init_temperature))  # log(1 / T)
        if c.learn_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)
        if c.loss == "sigmoid":
            self.logit_bias = nn.Parameter(torch.tensor(c.init_bias))

    @classmethod
    def from_config(cls, config: dict) -> CLIP:
        """Rebuilt from the config a checkpoint keeps (`vlmlab.zoo.load_model`)."""
        return cls(Config.from_dict(config))

    @property
    def max_text_len(self) -> int:
        return self.config.text.max_len

    @property
    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at max_logit_scale: what the cosine similarities are multiplied by.
        Above the clamp the scale gets no gradient, so it stays there (CLIP clamps the same way)."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    @property
    def temperature(self) -> float:
        """T = 1 / scale, the softmax temperature."""
        return 1.0 / self.scale.item()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 3, H, W] (in [-1, 1], as `to_float` makes them) -> what `image_proj` reads:
        the CLS vector [B, D] with image_pool='cls', the flattened patch grid [B, N * D] with 'grid'."""
        out = self.image_tower(images)
        return out.cls if self.config.image_pool == "cls" else out.patches.flatten(1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 3, H, W] -> unit vectors [B, E]."""
        return F.normalize(self.image_proj(self.image_features(images)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] (1 = real token) -> unit vectors [B, E].

        The text is summarised by the hidden state of its last real token, the <eos> that ends every caption
        (CLIP pools at its end-of-text token). In a causal tower that is the one position that has seen the
        whole text. Without a mask the last position is used."""
        hidden = self.text_tower(input_ids=input_ids, attention_mask=attention_mask)  # [B, T, D]
        if attention_mask is None:
            pooled = hidden[:, -1]  # [B, D]
        else:
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last_token_positions(attention_mask)]
        return F.normalize(self.text_proj(pooled), dim=-1)

    def score(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The cosine of each image with its own text [B]: CLIP as a pair scorer."""
        return cosine_score(self, images, input_ids, attention_mask)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """B images and their B captions -> (logits_per_image [B, B], logits_per_text [B, B] = its transpose).
        Entry [i, j] of logits_per_image is scale * cos(image i, text j), plus the bias with loss="sigmoid"."""
        image_emb, text_emb = self.encode_image(images), self.encode_text(input_ids, attention_mask)  # [B, E] each
        logits_per_image = self.scale * image_emb @ text_emb.T  # [B, B]
        if self.config.loss == "sigmoid":
            logits_per_image = logits_per_image + self.logit_bias
        return logits_per_image, logits_per_image.T


# ----------------------------------------------------------------------------------------------
# The loss


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the [B, B] logits: the matching pair of row i is column i.
    Mean of the image->text loss (rows) and the text->image loss (columns). Introduced in notebook 02."""
    require(logits_per_image.ndim == 2 and logits_per_image.size(0) == logits_per_image.size(1),
           "logits_per_image.shape", tuple(logits_per_image.shape), "a square [B, B] matrix")
    targets = torch.arange(logits_per_image.size(0), device=logits_per_image.device)  # [B]
    logits = logits_per_image.float()
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def sigmoid_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss over the [B, B] logits (scale * cos + bias): each entry is a binary match / no-match question,
    label +1 on the diagonal and -1 elsewhere; -log sigmoid(label * logit) summed over the B candidates of each
    image, averaged over images. No softmax ties the batch together. Introduced in notebook 02."""
    require(logits_per_image.ndim == 2 and logits_per_image.size(0) == logits_per_image.size(1),
           "logits_per_image.shape", tuple(logits_per_image.shape), "a square [B, B] matrix")
    labels = 2 * torch.eye(logits_per_image.size(0), device=logits_per_image.device) - 1  # +1 diagonal, -1 elsewhere
    return -F.logsigmoid(labels * logits_per_image.float()).sum(dim=1).mean()


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
                     negative_text_emb: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's loss from unit embeddings image_emb [B, E] and text_emb [B, E]; `logit_scale` is the multiplier
    exp(logit_scale) = 1 / T (what `CLIP.scale` returns). Introduced in notebook 02.

    negative_text_emb [B, E], one hard negative caption per image (NegCLIP): each image then picks its caption
    among the B captions AND the B negatives (2B columns), so a caption with swapped words must score lower
    than the true one. The text->image direction is unchanged: negatives belong to no image.
    """
    require(image_emb.ndim == 2 and image_emb.shape == text_emb.shape, "image_emb/text_emb shapes",
           (tuple(image_emb.shape), tuple(text_emb.shape)), "two equal [B, E] shapes")
    if negative_text_emb is None:
        return clip_loss(logit_scale * image_emb @ text_emb.T)
    require(negative_text_emb.shape == text_emb.shape, "negative_text_emb.shape", tuple(negative_text_emb.shape),
           f"{tuple(text_emb.shape)}, one negative per image")
    targets = torch.arange(image_emb.size(0), device=image_emb.device)  # [B]
    image_to_text = logit_scale * image_emb @ torch.cat([text_emb, negative_text_emb]).T  # [B, 2B]
    text_to_image = logit_scale * text_emb @ image_emb.T  # [B, B]
    return (F.cross_entropy(image_to_text.float(), targets) + F.cross_entropy(text_to_image.float(), targets)) / 2


def batch_loss(model: CLIP, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one `caption_collate` batch (uint8 images, captions), in the form `vlmlab.train.fit` takes:
    (loss, {"temperature": T}); CLIP's softmax loss, or SigLIP's sigmoid loss with loss="sigmoid"."""
    logits_per_image, _ = model(to_float(batch["images"]), batch["input_ids"], batch["attention_mask"])
    if model.config.loss == "sigmoid":
        return sigmoid_loss(logits_per_image), {"temperature": model.temperature, "bias": model.logit_bias.item()}
    return clip_loss(logits_per_image), {"temperature": model.temperature}


def both_captions_loss(model: CLIP, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """CLIP's loss of the images against their whole captions and, as a second set of B texts, against captions
    that leave words out (batch["left_out"], `language.leaving_out`), averaged: each image has two true captions and
    both are read at every step, as each COCO image has five. Notebook 02's main run."""
    image_emb = model.encode_image(to_float(batch["images"]))  # [B, E]
    losses = [contrastive_loss(image_emb, model.encode_text(b["input_ids"], b["attention_mask"]), model.scale)
              for b in (batch, batch["left_out"])]  # each over [B, B] logits
    return sum(losses) / 2, {"temperature": model.temperature}


def negclip_negatives(scene: Scene, kinds: tuple[str, ...] = NEGATIVE_KINDS) -> list[str]:
    """The hard negative captions NegCLIP fine-tunes a scene against (notebook 02, section 8): its negatives of
    `kinds` (`language.NEGATIVE_SETS`), or all of them where it has none (a one-object scene has no swap, only its
    replaced shape)."""
    return [n.text for n in hard_negatives(scene, kinds) or hard_negatives(scene)]


def left_out_with_negatives(scene: Scene, rate: float, key: str,
                            kinds: tuple[str, ...] = NEGATIVE_KINDS) -> tuple[str, list[str]]:
    """The scene's canonical caption with words left out (`language.leaving_out`, its random state seeded by `key`)
    and its NegCLIP negatives with the same words of the same objects left out ("a star left of a red circle"
    against "a circle left of a red star"). A negative that the leaving out makes equal to the caption is dropped;
    where none is left, the scene's negatives of every kind stand in (a replaced shape always differs). Notebook 02,
    section 8."""

    def leave_out(objects: tuple, text: str) -> str:  # the same draws, so the same words go
        return leaving_out(replace(scene, objects=objects), text, rate, random.Random(key))

    text = leave_out(scene.objects, caption(scene))
    for kinds_tried in (kinds, NEGATIVE_KINDS):
        negatives = [t for n in hard_negatives(scene, kinds_tried) if (t := leave_out(n.objects, n.text)) != text]
        if negatives:
            return text, negatives
    raise ValueError(f"scene {scene.index} of split {scene.split!r} has no hard negative once words are left out")


def negclip_batch_loss(model: CLIP, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """`batch_loss` with one hard negative caption per image (a `negatives_collate` batch): NegCLIP's text
    negatives. (NegCLIP also adds nearest-neighbour images as negatives; we keep to the text side.)"""
    image_emb = model.encode_image(to_float(batch["images"]))  # [B, E]
    return _with_negatives(model, image_emb, batch), {"temperature": model.temperature}


def negclip_left_out_loss(model: CLIP, batch: dict, left_out_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """NegCLIP's loss on the whole captions and, weighted `left_out_weight` (the whole ones 1 - it), on captions of
    the same images that leave words out, each against its own negatives (batch["left_out"], a `negatives_collate`
    batch of `left_out_with_negatives`); the images are encoded once. Notebook 02, section 8: the fine-tune keeps
    reading the main run's second captions."""
    require(0 <= left_out_weight <= 1, "left_out_weight", left_out_weight, "a share of the loss in [0, 1]")
    image_emb = model.encode_image(to_float(batch["images"]))  # [B, E]
    whole, left_out = (_with_negatives(model, image_emb, texts) for texts in (batch, batch["left_out"]))
    return (1 - left_out_weight) * whole + left_out_weight * left_out, {"temperature": model.temperature}


def _with_negatives(model: CLIP, image_emb: torch.Tensor, texts: dict) -> torch.Tensor:
    text_emb = model.encode_text(texts["input_ids"], texts["attention_mask"])  # [B, E]
    negative_emb = model.encode_text(texts["negative_input_ids"], texts["negative_attention_mask"])  # [B, E]
    return contrastive_loss(image_emb, text_emb, model.scale, negative_emb)  # over [B, 2B] and [B, B] logits


# ----------------------------------------------------------------------------------------------
# Measured, saved, targets


def measure(model: CLIP, tokenizer, bench: DualEncoderBench, novel: list[int] | None = None) -> dict[str, float]:
    """Every notebook-02 number of a dual encoder (`harness.suite`, "dual_encoder"): retrieval R@1/5/10 both ways
    (and on the `novel` retrieval scenes), zero-shot colour and shape, zero-shot colour-shape pairs on the held-out
    combinations, and paired choice against relation and attribute swaps."""
    return suite(model, tokenizer, "dual_encoder", bench, novel)


SAVED = ("clip-shapes", "negclip-shapes")  # what notebook 02 saves: after section 4, after NegCLIP
TARGETS = {  # notebook 02's quality targets, on its held-out sets (the final model: CLIP + NegCLIP, both towers
    # learned from image-caption pairs, zero-shot with generic prompts)
    "smoke": {"zs_color_acc": (">=", 0.95), "t2i_r1": (">=", 0.70), "relation_swap_acc_negclip": (">=", 0.85)},
    "cpu": {"zs_color_acc": (">=", 0.95), "zs_shape_acc": (">=", 0.90), "t2i_r1": (">=", 0.70),
            "relation_swap_acc_negclip": (">=", 0.90)},
    "gpu": {"zs_color_acc": (">=", 0.95), "zs_shape_acc": (">=", 0.90), "t2i_r1": (">=", 0.70),
            "relation_swap_acc_negclip": (">=", 0.90)},
}


# ----------------------------------------------------------------------------------------------
# Hugging Face CLIPModel -> CLIP (the same code loads openai/clip-vit-* when online)


def _hf_blocks(hf: dict[str, torch.Tensor], source: str, target: str, depth: int) -> dict[str, torch.Tensor]:
    """Rename one tower's encoder layers into our blocks (see vlmlab.nn.hf_block_state)."""
    state = {}
    for i in range(depth):
        state |= hf_block_state(hf, f"{source}.encoder.layers.{i}.", f"{target}.blocks.{i}.", ln1="layer_norm1",
                                ln2="layer_norm2", attn="self_attn", out="out_proj")
    return state


def from_hf_clip(hf_model) -> CLIP:
    """Copy a `transformers.CLIPModel` into a CLIP that gives the same embeddings and logits. Introduced in notebook 02.

    HF's vision tower has a LayerNorm before the blocks (`pre_layrnorm`, our `vision_pre_norm`) and normalises
    only the CLS vector at the end (`post_layernorm`, our final norm: same CLS). Its patch convolution has no
    bias (ours is set to zero). Its text tower is causal and pools at the first <eos> id; ours pools at the
    last real token, which is where a tokenizer puts <eos>, so the two agree on tokenised text. (One exception:
    HF reads `eos_token_id == 2` as a pre-2023 OpenAI config and pools at the largest token id instead, so a
    CLIPModel built around our tokenizer, whose <eos> is 2, would pool elsewhere.) Our single
    dropout takes HF's attention_dropout. The logit scale is copied as it is (HF does not clamp it).
    """
    from transformers import CLIPModel

    require(isinstance(hf_model, CLIPModel), "hf_model", type(hf_model).__name__, "a transformers.CLIPModel")
    cv, ct = hf_model.config.vision_config, hf_model.config.text_config
    activations = {cv.hidden_act, ct.hidden_act}
    require(activations in ({"quick_gelu"}, {"gelu"}), "config hidden_act (vision, text)", (cv.hidden_act, ct.hidden_act),
           "'quick_gelu' in both towers or 'gelu' in both")
    require(isinstance(cv.image_size, int) and isinstance(cv.patch_size, int), "vision_config.image_size/patch_size",
           (cv.image_size, cv.patch_size), "integers (square images and patches)")
    vision = ViTConfig(image_size=cv.image_size, patch_size=cv.patch_size, in_channels=cv.num_channels, dim=cv.hidden_size,
                       depth=cv.num_hidden_layers, n_heads=cv.num_attention_heads,
                       mlp_ratio=cv.intermediate_size / cv.hidden_size, dropout=cv.attention_dropout, norm_eps=cv.layer_norm_eps)
    text = TextConfig(vocab_size=ct.vocab_size, max_len=ct.max_position_embeddings, dim=ct.hidden_size,
                      depth=ct.num_hidden_layers, n_heads=ct.num_attention_heads, mlp_ratio=ct.intermediate_size / ct.hidden_size,
                      dropout=ct.attention_dropout, causal=True, norm_eps=ct.layer_norm_eps,
                      pad_token_id=ct.pad_token_id if ct.pad_token_id is not None else 0)
    logit_scale = hf_model.logit_scale.item()
    config = Config(vision=vision, text=text, embed_dim=hf_model.config.projection_dim,
                        init_temperature=math.exp(-logit_scale), max_logit_scale=max(100.0, math.exp(logit_scale)),
                        vision_pre_norm=True, quick_gelu=activations == {"quick_gelu"})
    hf = hf_model.state_dict()
    v, t = "vision_model.", "text_model."
    state = {
        "image_tower.cls_token": hf[v + "embeddings.class_embedding"].view(1, 1, -1),
        "image_tower.pos_embed": hf[v + "embeddings.position_embedding.weight"][None],
        "image_tower.patch_embed.proj.weight": hf[v + "embeddings.patch_embedding.weight"],
        "image_tower.patch_embed.proj.bias": torch.zeros(cv.hidden_size),
        "image_tower.pre_norm.weight": hf[v + "pre_layrnorm.weight"], "image_tower.pre_norm.bias": hf[v + "pre_layrnorm.bias"],
        "image_tower.norm.weight": hf[v + "post_layernorm.weight"], "image_tower.norm.bias": hf[v + "post_layernorm.bias"],
        "text_tower.tok_emb.weight": hf[t + "embeddings.token_embedding.weight"],
        "text_tower.pos_emb.weight": hf[t + "embeddings.position_embedding.weight"],
        "text_tower.norm.weight": hf[t + "final_layer_norm.weight"], "text_tower.norm.bias": hf[t + "final_layer_norm.bias"],
        "image_proj.weight": hf["visual_projection.weight"], "text_proj.weight": hf["text_projection.weight"],
        "logit_scale": hf["logit_scale"],
    }
    state |= _hf_blocks(hf, "vision_model", "image_tower", cv.num_hidden_layers)
    state |= _hf_blocks(hf, "text_model", "text_tower", ct.num_hidden_layers)
    return load_exactly(CLIP(config), state, "from_hf_clip")
