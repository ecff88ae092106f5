"""PrefixLM (SimVLM, Wang et al. 2022): image tokens and a text prefix go into ONE transformer that reads the
prefix both ways and writes the continuation one token at a time. Introduced in notebook 03.

    sequence   [ image tokens (N) | <bos> prefix text | continuation <eos> | pad ]
    attention  bidirectional over the first N + len(prefix) positions, causal after them
    loss       next-token cross-entropy on the continuation only

One model does several tasks by choosing the prefix: an empty prefix is captioning, a question is VQA, "a
large red" is caption completion. SimVLM trains with a random split point: any first part of a caption can be
the prefix. The image tokens come either from pixels, through a small convolutional stem trained with the whole
model (`config.stem="conv"`, `PixelStem`: SimVLM's way, notebook 03's main run; it reads the scenes at
`config.image_size`, 48 px by default, one token per cell of the world), or from a frozen vision tower
(`config.vision`, a `unimodal.vision_tower` spec), e.g. notebook 01's detector regions, computed once (the
VisualBERT-era comparison arm). A linear layer maps them to the language model's width.

Both models are captioners (`vlmlab.protocols.Captioner`): `vlmlab.generation.generate_text` writes with them,
`vlmlab.protocols.caption_loss` trains them, `vlmlab.harness.suite` measures them.

VirTex (Desai & Johnson 2021), the contrast drawn in notebook 03, keeps the image OUT of the sequence: a
causal text decoder cross-attends to the image features in every block, and the text never sees itself
bidirectionally. `VirTex` below is that design with the same parts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from ..attention import padding_mask, prefix_mask
from ..data.evalsets import SceneBench
from ..data.language import QA
from ..data.loaders import IGNORE_INDEX
from ..encoders import resize
from ..frozen import FrozenParts
from ..harness import suite
from ..lm import default_positions, splice_visual
from ..nn import CausalLM, LMOutput, TextConfig
from ..params import SavedConfig, require, require_positive_ints
from ..protocols import caption_loss
from ..unimodal import vision_tower


@dataclass
class Config(SavedConfig):
    vocab_size: int = 512
    vision_dim: int = 20  # width of the image tokens (region tokens: 8 shape + 9 colour + 3 size scores)
    n_image_tokens: int = 9  # one per cell of the 3 x 3 grid
    text_len: int = 32  # the longest text (prefix + continuation) in tokens
    dim: int = 128
    depth: int = 4
    n_heads: int = 4
    dropout: float = 0.0
    vision: dict | None = None  # the frozen vision tower (`unimodal.vision_tower` spec); None: features are given
    stem: str | None = None  # "conv": image tokens learned from pixels by a PixelStem trained with the model
    image_size: int = 48  # the stem reads the scenes resized to this: 48 px gives one 16 px token per cell

    def __post_init__(self):
        require_positive_ints(self, ("vocab_size", "vision_dim", "n_image_tokens", "text_len", "dim", "depth", "n_heads",
                                     "image_size"))
        require(self.stem in (None, "conv"), "stem", self.stem, "None or 'conv'")
        require(self.stem is None or self.vision is None, "stem", self.stem,
                "None when a frozen vision tower is given: the image tokens come from one or the other")
        if self.stem == "conv":
            require(self.image_size % PixelStem.PATCH == 0, "image_size", self.image_size,
                    f"a multiple of the stem's {PixelStem.PATCH} px patch")
            grid = self.image_size // PixelStem.PATCH
            require(self.n_image_tokens == grid * grid, "n_image_tokens", self.n_image_tokens,
                    f"{grid * grid}: the stem's {grid} x {grid} patches at image_size={self.image_size}")

    def text_config(self, **changes) -> TextConfig:
        """The transformer's TextConfig: one position table for image tokens and text together."""
        return TextConfig(vocab_size=self.vocab_size, max_len=self.n_image_tokens + self.text_len, dim=self.dim,
                          depth=self.depth, n_heads=self.n_heads, dropout=self.dropout, causal=True, **changes)


class PixelStem(nn.Module):
    """SimVLM's learned image stem, at this world's size: the scenes resized to `image_size`, two stride-2 3x3
    convolutions (the early layers that find edges and corners) and a 4 x 4 patchify, one token per 16 px patch:
    [B, 3, 64, 64] -> [B, 9, width] at image_size 48, where each patch is one cell of the 3 x 3 grid. Trained with
    the whole model. Introduced in notebook 03."""

    PATCH = 16  # pixels per token side: 2 x 2 x 4

    def __init__(self, width: int, image_size: int = 48, channels: tuple[int, int] = (32, 64)):
        super().__init__()
        a, b = channels
        self.image_size = image_size
        self.net = nn.Sequential(nn.Conv2d(3, a, 3, 2, 1), nn.GELU(),  # [B, a, S/2, S/2]
                                 nn.Conv2d(a, b, 3, 2, 1), nn.GELU(),  # [B, b, S/4, S/4]
                                 nn.Conv2d(b, width, 4, 4))  # [B, width, S/16, S/16]: one vector per 16 px patch
        self.norm = nn.LayerNorm(width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = resize(pixels, self.image_size, bounds=(-1.0, 1.0))  # [B, 3, S, S], S = image_size
        return self.norm(self.net(x).flatten(2).transpose(1, 2))  # [B, (S/16)^2, width]


class ImageConditionedLM(FrozenParts):
    """What PrefixLM and VirTex share: image tokens (a learned stem or a frozen tower), a linear map to the model's width,
    and a causal LM (`self.lm`, built by each subclass after the map). Introduced in notebook 03."""

    FROZEN = ("vision",)

    def __init__(self, config: Config, vision: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.stem = PixelStem(config.vision_dim, config.image_size) if config.stem == "conv" else None  # learns too
        self.visual = nn.Linear(config.vision_dim, config.dim)  # image features -> the LM's width
        self.vision = vision

    @classmethod
    def from_config(cls, config: dict) -> ImageConditionedLM:
        """Rebuilt from the config a checkpoint keeps, its vision tower loaded at the pinned hash."""
        c = Config.from_dict(config)
        return cls(c, vision=vision_tower(c.vision) if c.vision is not None else None)

    @property
    def max_text_len(self) -> int:
        return self.config.text_len

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)  # [B, T, D]

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] -> the image tokens [B, N, vision_dim]: the learned stem's, or the frozen tower's."""
        if self.stem is not None:
            return self.stem(pixels)
        require(self.vision is not None, "vision", None, "a stem or a vision tower (config.vision), or pass image_features")
        return self.vision(pixels)

    def project(self, image_features: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] -> [B, N, D]."""
        n, width = self.config.n_image_tokens, self.config.vision_dim
        require(image_features.ndim == 3 and image_features.shape[1:] == (n, width), "image_features.shape",
                tuple(image_features.shape), f"[B, {n}, {width}]")
        return self.visual(image_features)


class PrefixLM(ImageConditionedLM):
    """A causal LM whose input starts with image tokens, read both ways together with the text prompt.
    Introduced in notebook 03."""

    def __init__(self, config: Config, vision: nn.Module | None = None):
        super().__init__(config, vision)
        self.lm = CausalLM(config.text_config())

    def condition(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": self.project(image_features)}  # [B, N, D]

    def forward(self, *, image: torch.Tensor, input_ids=None, inputs_embeds=None, attention_mask: torch.Tensor,
                labels=None, cache=None, use_cache: bool = False) -> LMOutput:
        """The first call (no cache) reads [image tokens | text]: bidirectionally over the image and the prompt,
        the prompt being the text before the first label (all of the given text when there are no labels), causally
        after it. Later calls extend the cache with new text, causally. attention_mask covers the text only."""
        text = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        B, N = image.shape[:2]
        mask = torch.cat([attention_mask.new_ones(B, N), attention_mask], dim=1)  # [B, N + past + T]
        if cache is not None:  # image and prompt are in the cache: the new tokens read it causally
            return self.lm(inputs_embeds=text, attention_mask=mask, cache=cache)
        joined = splice_visual(image, text, attention_mask, labels)  # [B, N + T, D]
        prompt = N + (prefix_lengths(labels) if labels is not None else text.size(1))  # [B] or an int
        attend = prefix_mask(mask.size(1), prefix_len=prompt, device=mask.device) & padding_mask(mask)  # [B, 1, S, S]
        positions = default_positions(mask, mask.size(1))  # one table for image and text: the image at 0 .. N - 1
        return self.lm(inputs_embeds=joined.inputs_embeds, attention_mask=attend, position_ids=positions, labels=joined.labels,
                       use_cache=use_cache)


def prefix_lengths(labels: torch.Tensor) -> torch.Tensor:
    """[B] the text prefix of each row: the tokens that take no loss before the first target token (<bos> and the
    prompt). Introduced in notebook 03."""
    has_target = labels != IGNORE_INDEX  # [B, T]
    require(bool(has_target.any(dim=1).all()), "labels", "a row with no target token", "at least one target per row")
    return has_target.int().argmax(dim=1)


def from_text_lm(config: Config, text_lm: CausalLM, vision: nn.Module | None = None) -> PrefixLM:
    """A PrefixLM that starts from a language model trained on text alone (SimVLM's text-only first stage):
    token embeddings, blocks and final norm are copied, and the text model's position table is copied to
    the positions the text takes after the image tokens. The image projection and the image positions
    start fresh. Introduced in notebook 03."""
    src = text_lm.config
    shape = (src.vocab_size, src.dim, src.depth, src.n_heads)
    require(shape == (config.vocab_size, config.dim, config.depth, config.n_heads), "text_lm.config", shape,
            "the PrefixLM's (vocab_size, dim, depth, n_heads)")
    model = PrefixLM(config, vision)
    state = {k: v for k, v in text_lm.state_dict().items() if k != "transformer.pos_emb.weight"}
    missing, unexpected = model.lm.load_state_dict(state, strict=False)
    require(missing == ["transformer.pos_emb.weight"] and not unexpected, "text_lm", "a CausalLM with other weights",
            "a vlmlab.nn.CausalLM of the same shape")
    n, length = config.n_image_tokens, min(src.max_len, config.text_len)
    with torch.no_grad():
        model.lm.transformer.pos_emb.weight[n : n + length] = text_lm.transformer.pos_emb.weight[:length]
    return model


# ---------------------------------------------------------------- data: what the prefix is


def split_caption(caption: str, rng: random.Random) -> tuple[str, str]:
    """SimVLM's random split at a word boundary: (prefix, continuation). The prefix may be empty (plain
    captioning); the continuation always keeps at least one word. Introduced in notebook 03."""
    words = caption.split(" ")
    k = rng.randrange(len(words))  # words in the prefix: 0 .. len - 1
    return " ".join(words[:k]), (" " if k else "") + " ".join(words[k:])


def training_texts(captions: list[str], qas: list[QA], seed: int = 0, split_prob: float = 0.5) -> tuple[list[str], list[str]]:
    """(prompts, targets) for a PrefixLM: each caption, with probability split_prob split at a random word
    (caption completion) and otherwise whole (captioning), followed by each question as a VQA prefix: the
    question itself, ending in "?", is all the model needs to know it must answer."""
    rng = random.Random(seed)
    prompts, targets = [], []
    for text in captions:
        prompt, target = split_caption(text, rng) if rng.random() < split_prob else ("", text)
        prompts.append(prompt)
        targets.append(target)
    prompts += [qa.question for qa in qas]
    targets += [" " + qa.answer for qa in qas]
    return prompts, targets


batch_loss = caption_loss  # next-token loss on the continuation, image_features or images in the batch


# ---------------------------------------------------------------- VirTex: the image outside the sequence


class VirTex(ImageConditionedLM):
    """A causal text decoder that cross-attends to the image features in every block (VirTex). The text is
    the whole sequence: no image tokens, no bidirectional prefix. Introduced in notebook 03."""

    def __init__(self, config: Config, vision: nn.Module | None = None):
        super().__init__(config, vision)
        c = config
        self.lm = CausalLM(TextConfig(vocab_size=c.vocab_size, max_len=c.text_len, dim=c.dim, depth=c.depth, n_heads=c.n_heads,
                                      dropout=c.dropout, causal=True, cross_attention_dim=c.dim))

    def condition(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"context": self.project(image_features)}  # [B, N, D]: the context, not part of the sequence

    def forward(self, *, context: torch.Tensor, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None,
                cache=None, use_cache: bool = False) -> LMOutput:
        return self.lm(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                       cache=cache, use_cache=use_cache, context=context)


# ---------------------------------------------------------------- measured, saved, targets


def measure(model: ImageConditionedLM, tokenizer, bench: SceneBench, novel: list[int] | None = None) -> dict[str, float]:
    """Notebook 03's held-out numbers: greedy captions (scene F1, exact scenes, attribute F1, BLEU-4, ROUGE-L, CIDEr)
    and greedy answers to three questions per scene (accuracy, overall and by type); on the `novel` scenes too."""
    return suite(model, tokenizer, "captioner", bench, novel) | suite(model, tokenizer, "vqa", bench, novel)


SAVED = ("prefixlm-shapes",)  # what notebook 03 saves
TARGETS = {  # notebook 03's quality targets, on its held-out scenes
    # image tokens learned from pixels; scene F1 counts relations too (notebook 03's evaluation)
    "smoke": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80)},  # the shipped model, TRAIN=False
    "cpu": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80)},
    "gpu": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80)},
}
