"""LLaVA (Liu et al., 2023) and LLaVA-1.5 (Liu et al., 2024): a projector from a frozen vision encoder into a
language model's embeddings, then visual instruction tuning. Introduced in notebook 09.

    pixels --vision (frozen: the patches after its second-to-last block)--> [B, N, Dv]
           --projector (linear: LLaVA; Linear-GELU-Linear: LLaVA-1.5)--> N visual tokens [B, N, D]
    "USER: <image>\\nWhat is left of the star? ASSISTANT: A red circle.<eos>USER: ..."
           the <image> token's embedding is replaced by the N visual tokens --> the LM --> next tokens

Stage 1 (feature alignment): the projector trains on captions, the LM frozen (`Config.train_lm` False). Stage 2
(visual instruction tuning): the projector and the LM train on conversations (`train_lm` True), the loss on the
assistant's tokens only (`encode_chats` writes the labels).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from ..data.evalsets import SceneBench
from ..data.language import IMAGE_TOKEN, Turn
from ..data.loaders import IGNORE_INDEX, TextBatch
from ..data.shapes import COLORS, SHAPES, Scene
from ..data.world_text import END_OF_TURN
from ..evaluate import normalize_answer
from ..frozen import FrozenParts
from ..generation import generate_text
from ..harness import image_features, suite
from ..lm import LanguageModel, load_language_model, splice_visual
from ..nn import LMOutput
from ..params import SavedConfig, require, require_positive_ints
from ..protocols import caption_loss
from ..unimodal import vision_tower

PROJECTORS = ("linear", "mlp")
PROMPT_FORMAT = {"caption": f"USER: {IMAGE_TOKEN}\nWhat do you see in this image? ASSISTANT:",
                 "vqa": f"USER: {IMAGE_TOKEN}\n{{}} ASSISTANT:"}  # the tiny LM's chat format (`world_text.chat_text`)


@dataclass
class Config(SavedConfig):
    """A LLaVA model: its projector ("linear" or "mlp"), the width of the vision features it reads, the id of the
    `<image>` token whose slot the visual tokens fill, whether the LM trains (stage 2), and the frozen parts it stands
    on, pinned by name and sha256: the vision tower (a `unimodal.vision_tower` spec) and the language model."""

    projector: str = "mlp"
    visual_dim: int = 96
    image_token_id: int = 4
    train_lm: bool = False
    lm: dict | None = None
    vision: dict | None = None

    def __post_init__(self):
        require(self.projector in PROJECTORS, "projector", self.projector, f"one of {PROJECTORS}")
        require_positive_ints(self, ("visual_dim",))
        require(self.lm is not None, "lm", None, "a language model ref {'name', 'sha256'}")


def build_projector(kind: str, visual_dim: int, lm_dim: int) -> nn.Module:
    """LLaVA's linear map, or LLaVA-1.5's two-layer MLP with a GELU, from the vision width to the LM's."""
    if kind == "linear":
        return nn.Linear(visual_dim, lm_dim)
    return nn.Sequential(nn.Linear(visual_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))


class Llava(FrozenParts):
    """A vision tower (frozen), a projector (trained) and a language model (frozen in stage 1, trained in stage 2).
    A Captioner: `condition(features)` projects the image into visual tokens; the first forward call splices them in
    at each row's one `<image>` token; later calls (decoding with a cache) read only the new text."""

    prompt_format = PROMPT_FORMAT

    def __init__(self, config: Config, lm: LanguageModel | None = None, vision: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.FROZEN = ("vision",) if config.train_lm else ("vision", "lm")
        self.lm = lm if lm is not None else load_language_model(config.lm)
        self.projector = build_projector(config.projector, config.visual_dim, self.lm.dim)
        self.vision = vision if vision is not None or config.vision is None else vision_tower(config.vision)
        for name in ("lm", "vision"):  # the frozen parts get no gradient and stay in eval mode; a training LM trains
            if getattr(self, name) is not None:
                getattr(self, name).requires_grad_(name not in self.FROZEN).train(name not in self.FROZEN)

    @classmethod
    def from_config(cls, config: dict) -> Llava:
        return cls(Config.from_dict(config))

    @property
    def max_text_len(self) -> int:
        return self.lm.max_len

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        require(self.vision is not None, "vision", None, "a vision tower (config.vision), or pass image_features")
        return self.vision(pixels)  # [B, N, Dv]

    def condition(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"visual": self.projector(image_features)}  # [B, N, D]

    def forward(self, *, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, cache=None, use_cache: bool = False) -> LMOutput:
        """The LM's output on the text with the visual tokens at its `<image>` slot (.loss when labels are given;
        -100 on the visual positions). attention_mask and labels cover the text as given, with one `<image>` token
        per row; prompts for decoding are left-padded, so after the splice the padding still comes first."""
        if cache is None:
            joined = splice_visual(visual, self.embed(input_ids), attention_mask, labels, input_ids=input_ids,
                                   image_token_id=self.config.image_token_id)
            return self.lm(inputs_embeds=joined.inputs_embeds, attention_mask=joined.attention_mask, labels=joined.labels,
                           use_cache=use_cache)
        extra = attention_mask.new_ones(len(attention_mask), visual.size(1) - 1)  # the slot grew by N - 1 positions
        return self.lm(inputs_embeds=self.embed(input_ids), attention_mask=torch.cat([attention_mask, extra], dim=1),
                       cache=cache, use_cache=use_cache)


batch_loss = caption_loss  # the LM's loss on the labels the batch carries: captions (stage 1) or assistant turns (2)


# ---------------------------------------------------------------- chats and their labels


def encode_chats(tokenizer, conversations: list[list[Turn]], max_length: int) -> TextBatch:
    """Conversations in the tiny LM's chat format, right-padded: <bos>USER: {human} ASSISTANT: {gpt}<eos>USER: ...
    Labels are the assistant's tokens and the <eos> that closes each of its turns; -100 on <bos>, every "USER: ...
    ASSISTANT:" part (the image token included) and the padding. A conversation longer than max_length is cut."""
    require(max_length >= 2, "max_length", max_length, "an int >= 2")
    rows, label_rows = [], []
    for turns in conversations:
        require(len(turns) >= 2 and len(turns) % 2 == 0 and
                all(t["from"] == who for t, who in zip(turns, ("human", "gpt") * len(turns))),
                "conversations", [t["from"] for t in turns], "turns alternating human, gpt, ..., ending with gpt")
        ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
        for human, gpt in zip(turns[::2], turns[1::2]):
            asked = tokenizer.encode(f"USER: {human['value']} ASSISTANT:", add_special_tokens=False)
            said = tokenizer.encode(f" {gpt['value']}{END_OF_TURN}", add_special_tokens=False)
            ids += asked + said
            labels += [IGNORE_INDEX] * len(asked) + said
        rows.append(ids[:max_length])
        label_rows.append(labels[:max_length])
    width = max(map(len, rows))
    pad = lambda row, value: row + [value] * (width - len(row))  # noqa: E731
    return TextBatch(torch.tensor([pad(r, tokenizer.pad_token_id) for r in rows]),
                     torch.tensor([pad([1] * len(r), 0) for r in rows]),
                     torch.tensor([pad(r, IGNORE_INDEX) for r in label_rows]))


# ---------------------------------------------------------------- POPE: does it see what is not there?


@dataclass
class Probe:
    scene_index: int
    question: str
    answer: str  # "yes" | "no"


def pope_probes(scenes: list[Scene], seed: int = 0) -> list[Probe]:
    """POPE (Li et al., 2023), on the world: for every scene one object that is in it ("is there a red star in the
    image?" -> yes) and one colour-shape pair that is not (-> no), drawn at random: balanced, so always answering
    "yes" scores 0.5."""
    rng = random.Random(f"pope:{seed}")
    out = []
    for i, scene in enumerate(scenes):
        present = rng.choice(scene.objects)
        there = {(o.color, o.shape) for o in scene.objects}
        absent = rng.choice([(c, s) for c in COLORS for s in SHAPES if (c, s) not in there])
        out += [Probe(i, f"is there a {present.color} {present.shape} in the image?", "yes"),
                Probe(i, f"is there a {absent[0]} {absent[1]} in the image?", "no")]
    return out


@torch.no_grad()
def pope_accuracy(model: Llava, tokenizer, images: torch.Tensor, probes: list[Probe]) -> dict[str, float]:
    """Accuracy on the probes, and the share of "yes" said to absent objects (the hallucination rate)."""
    features = image_features(model, images)
    said = generate_text(model, tokenizer, features[[p.scene_index for p in probes]],
                         [model.prompt_format["vqa"].format(p.question) for p in probes], max_new_tokens=4)
    yes = [normalize_answer(s).startswith("yes") for s in said]
    right = [y == (p.answer == "yes") for y, p in zip(yes, probes)]
    absent = [y for y, p in zip(yes, probes) if p.answer == "no"]
    return {"pope_acc": sum(right) / len(right), "pope_yes_to_absent": sum(absent) / max(len(absent), 1)}


def measure(model: Llava, tokenizer, bench: SceneBench, novel: list[int] | None = None) -> dict[str, float]:
    """Notebook 09's held-out numbers: captions and VQA in the chat format (`harness.suite`) and POPE."""
    scores = suite(model, tokenizer, "captioner", bench, novel) | suite(model, tokenizer, "vqa", bench, novel)
    return scores | pope_accuracy(model, tokenizer, bench.images, pope_probes(bench.scenes))


TARGETS = {  # notebook 09 (not built yet): the VQA and POPE targets; reasoning and description F1 come with it
    "smoke": {},
    "cpu": {"vqa_acc": (">=", 0.85), "pope_acc": (">=", 0.85)},
    "gpu": {"vqa_acc": (">=", 0.85), "pope_acc": (">=", 0.85)},
}
SAVED: tuple[str, ...] = ()  # notebook 09 will ship its stage-2 model
