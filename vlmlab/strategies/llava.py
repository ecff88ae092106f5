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

import copy
import random
import re
from collections import Counter
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..data.evalsets import SceneBench
from ..data.language import IMAGE_TOKEN, NUMBER_WORDS, RELATIONS, Turn, detailed_description, reasoning_questions
from ..data.loaders import IGNORE_INDEX, TextBatch
from ..data.shapes import COLORS, SHAPES, Scene
from ..data.world_text import END_OF_TURN, chat_text
from ..evaluate import normalize_answer
from ..frozen import TowerAndLM
from ..generation import generate, generate_text, prompt_ids
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
    """A LLaVA model: its projector ("linear" or "mlp"), the width and number of the vision features it reads, the
    id of the `<image>` token whose slot the visual tokens fill, whether the LM trains (stage 2), and the frozen parts
    it stands on, pinned by name and sha256: the vision tower (a `unimodal.vision_tower` spec) and the language model."""

    projector: str = "mlp"
    visual_dim: int = 96
    n_visual: int = 16
    image_token_id: int = 4
    train_lm: bool = False
    lm: dict | None = None
    vision: dict | None = None

    def __post_init__(self):
        require(self.projector in PROJECTORS, "projector", self.projector, f"one of {PROJECTORS}")
        require_positive_ints(self, ("visual_dim", "n_visual"))
        require(self.lm is not None, "lm", None, "a language model ref {'name', 'sha256'}")


def build_projector(kind: str, visual_dim: int, lm_dim: int) -> nn.Module:
    """LLaVA's linear map, or LLaVA-1.5's two-layer MLP with a GELU, from the vision width to the LM's."""
    if kind == "linear":
        return nn.Linear(visual_dim, lm_dim)
    return nn.Sequential(nn.Linear(visual_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))


class Llava(TowerAndLM):
    """A vision tower (frozen), a projector (trained) and a language model (frozen in stage 1, trained in stage 2).
    A Captioner: `condition(features)` projects the image into visual tokens; the first forward call splices them in
    at each row's one `<image>` token; later calls (decoding with a cache) read only the new text."""

    prompt_format = PROMPT_FORMAT

    def __init__(self, config: Config, lm: LanguageModel | None = None, vision: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else load_language_model(config.lm)
        self.projector = build_projector(config.projector, config.visual_dim, self.lm.dim)
        self.vision = vision if vision is not None or config.vision is None else vision_tower(config.vision)
        self.hold(("vision",) if config.train_lm else ("vision", "lm"))

    @classmethod
    def from_config(cls, config: dict) -> Llava:
        return cls(Config.from_dict(config))

    @property
    def max_text_len(self) -> int:
        """Text tokens that fit: the LM's positions, less the N - 1 the visual tokens add at the `<image>` slot."""
        return self.lm.max_len - (self.config.n_visual - 1)

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


def instruction_tuning(stage1: Llava) -> Llava:
    """Stage 2 from stage 1: the same vision tower, a copy of the language model (now training) and of the projector;
    `stage1` itself is left as it was."""
    model = Llava(replace(stage1.config, train_lm=True), lm=copy.deepcopy(stage1.lm), vision=stage1.vision)
    model.projector.load_state_dict(stage1.projector.state_dict())
    return model


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


def chat_prompt(history: list[Turn], question: str) -> str:
    """The prompt for the next answer: the conversation so far (its first question carries the `<image>`), each
    answer closed by <eos>, then the new question and "ASSISTANT:". The first question gets the image itself."""
    if not history:
        return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"
    return f"{chat_text(history)}{END_OF_TURN}USER: {question} ASSISTANT:"


@torch.no_grad()
def reply(model: Llava, tokenizer, image_features: torch.Tensor, history: list[Turn], question: str,
          on_text=None, max_new_tokens: int = 48) -> str:
    """The model's answer to `question` about one image (features [1, N, Dv]) after `history`, greedy, ending at
    <eos>. `on_text(answer so far)` is called after every token: the chat widget streams it."""
    model.eval()
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in prompt_ids(tokenizer, [chat_prompt(history, question)]))
    room = model.max_text_len - ids.size(1)
    require(room > 0, "history", f"{ids.size(1)} tokens", f"fewer than the model's max_text_len={model.max_text_len}")
    said: list[int] = []

    def stream(token: torch.Tensor) -> None:
        said.append(int(token[0]))
        if on_text is not None:
            on_text(tokenizer.decode(said, skip_special_tokens=True).strip())

    generate(model, input_ids=ids, attention_mask=mask, condition=model.condition(image_features.to(device)),
             max_new_tokens=min(max_new_tokens, room), eos_token_id=tokenizer.eos_token_id,
             pad_token_id=tokenizer.pad_token_id, on_token=stream)
    return tokenizer.decode(said, skip_special_tokens=True).strip()


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


# ---------------------------------------------------------------- reasoning and detailed descriptions


def reasoning_key(kind: str, answer: str) -> str | None:
    """The short answer a complex-reasoning answer commits to (`language.reasoning_questions`): its first yes/no
    ("same_size"), its last colour ("leftmost_color"), its last number word ("remaining"); None when it has none."""
    words = re.findall(r"[a-z]+", answer.lower())
    vocabulary = {"same_size": ("yes", "no"), "leftmost_color": COLORS, "remaining": NUMBER_WORDS}[kind]
    found = [w for w in words if w in vocabulary]
    return None if not found else found[0] if kind == "same_size" else found[-1]


@torch.no_grad()
def reasoning_accuracy(model: Llava, tokenizer, images: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Every reasoning question of every scene (comparison, relation, counting), asked in the chat format; right when
    the answer's short answer (`reasoning_key`) is the true one's. Overall and by kind."""
    asked = [(i, kind, q, a) for i, s in enumerate(scenes) for kind, q, a in reasoning_questions(s)]
    features = image_features(model, images)
    said = generate_text(model, tokenizer, features[[i for i, *_ in asked]],
                         [model.prompt_format["vqa"].format(q) for _, _, q, _ in asked], max_new_tokens=40)
    right = [(kind, reasoning_key(kind, s) == reasoning_key(kind, a)) for (_, kind, _, a), s in zip(asked, said)]
    kinds = sorted({k for k, _ in right})
    return {"reasoning_acc": sum(r for _, r in right) / len(right)} | {
        f"reasoning_{k}_acc": sum(r for kk, r in right if kk == k) / sum(kk == k for kk, _ in right) for k in kinds}


_OBJECT = re.compile(r"there is an? (small|large) (\w+) (\w+) in the (centre|(?:top|middle|bottom) (?:left|centre|right))")
_RELATION = re.compile(rf"the (\w+) (\w+) is ({'|'.join(RELATIONS)}) the (\w+) (\w+)")
_COUNT = re.compile(rf"the image shows ({'|'.join(NUMBER_WORDS)}) object")


def description_facts(text: str) -> Counter:
    """The facts a detailed description states (`language.detailed_description`'s sentences): the count, each
    object with its size, colour, shape and place, each relation between two objects. A multiset."""
    text = text.lower()
    return Counter([("count", m) for m in _COUNT.findall(text)] + [("object", *m) for m in _OBJECT.findall(text)]
                   + [("relation", *m) for m in _RELATION.findall(text)])


def description_f1(descriptions: list[str], scenes: list[Scene]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 of the facts in generated descriptions against the scenes' own."""
    hit = said = true = 0
    for text, scene in zip(descriptions, scenes, strict=True):
        got, want = description_facts(text), description_facts(detailed_description(scene))
        hit, said, true = hit + sum((got & want).values()), said + sum(got.values()), true + sum(want.values())
    precision, recall = hit / max(said, 1), hit / max(true, 1)
    return {"description_precision": precision, "description_recall": recall,
            "description_f1": 2 * precision * recall / max(precision + recall, 1e-12)}


@torch.no_grad()
def describe(model: Llava, tokenizer, images: torch.Tensor) -> list[str]:
    """The model's detailed description of each image, asked as LLaVA's instruction data asks it."""
    prompt = model.prompt_format["vqa"].format("Describe the image in detail.")
    return generate_text(model, tokenizer, image_features(model, images), prompt, max_new_tokens=model.max_text_len // 2)


def measure(model: Llava, tokenizer, bench: SceneBench, novel: list[int] | None = None) -> dict[str, float]:
    """Notebook 09's held-out numbers: captions and VQA in the chat format (`harness.suite`), reasoning, detailed
    descriptions and POPE."""
    scores = suite(model, tokenizer, "captioner", bench, novel) | suite(model, tokenizer, "vqa", bench, novel)
    scores |= reasoning_accuracy(model, tokenizer, bench.images, bench.scenes)
    scores |= description_f1(describe(model, tokenizer, bench.images), bench.scenes)
    return scores | pope_accuracy(model, tokenizer, bench.images, pope_probes(bench.scenes))


TARGETS = {  # notebook 09's quality targets: visual instruction tuning's numbers on held-out scenes
    "smoke": {"vqa_acc": (">=", 0.85), "reasoning_acc": (">=", 0.75), "pope_acc": (">=", 0.85),
              "description_f1": (">=", 0.85)},  # the shipped model, TRAIN=False
    "cpu": {"vqa_acc": (">=", 0.85), "reasoning_acc": (">=", 0.75), "pope_acc": (">=", 0.85),
            "description_f1": (">=", 0.85)},
    "gpu": {"vqa_acc": (">=", 0.85), "reasoning_acc": (">=", 0.75), "pope_acc": (">=", 0.85),
            "description_f1": (">=", 0.85)},
}
SAVED = ("llava-shapes",)  # what notebook 09 saves: the instruction-tuned model (its projector and its LM)
