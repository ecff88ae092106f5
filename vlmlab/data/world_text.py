"""All the text the Shapes World writes, as documents for a language model. Introduced in notebook 01.

A blind reader of this corpus learns the world's language and its priors (which answers questions tend to have,
how a conversation goes, where an image sits in a few-shot prompt), never what is in a particular picture: every
`<image>` here is a placeholder. That is the kind of language model Frozen, ClipCap, Flamingo, BLIP-2 and LLaVA
freeze: one that already reads questions and chats before any image reaches it. Four kinds of document:

    caption      "there is a small red star left of a large blue circle"   (any of a scene's paraphrases)
    qa           "what color is the star? red"                              (the question is the VQA prompt)
    instruction  "USER: <image>\\nWhat do you see in this image? ASSISTANT: A small red star.<eos>USER: ..."
    interleaved  "<image>Output: a red star<|endofchunk|><image>Output: a blue circle"   (1-4 images)

Documents carry no trailing <eos>: `encode_texts` adds it, so each document ends the way a caption does.
"""

from __future__ import annotations

import random

from .language import QA, captions, fewshot_sequence, instructions, sample_vqa
from .shapes import Scene

KINDS = ("caption", "qa", "instruction", "interleaved")
END_OF_TURN = "<eos>"  # the tokenizer's <eos>: an assistant turn ends the way a caption does (LLaVA's </s>)
QA_PER_SCENE = 3  # question-answer documents per scene: half the corpus, where the prior is learned
MAX_IMAGES = 4  # images in an interleaved document: 1 to this many


def chat_text(turns: list[dict[str, str]]) -> str:
    """A conversation in the chat format of the tiny LM (LLaVA's Vicuna style): "USER: ... ASSISTANT: ..." with
    each assistant turn but the last closed by END_OF_TURN (the last one gets its <eos> from the encoder).
    `turns` alternate {"from": "human", "value"} and {"from": "gpt", "value"}, as `language.instructions` writes them."""
    if len(turns) % 2 or any(t["from"] != who for t, who in zip(turns, ("human", "gpt") * len(turns))):
        raise ValueError("turns must alternate human, gpt, human, gpt, ... and end with a gpt turn")
    return END_OF_TURN.join(f"USER: {h['value']} ASSISTANT: {g['value']}" for h, g in zip(turns[::2], turns[1::2]))


def questions(scene: Scene) -> list[QA]:
    """The QA_PER_SCENE question-answer pairs of `scene` that its "qa" documents say."""
    return sample_vqa(scene, QA_PER_SCENE, salt="text")


def documents(scenes: list[Scene], seed: int = 0) -> list[tuple[str, str]]:
    """(kind, text) for every document the scenes give: per scene one caption (a paraphrase drawn at random), QA_PER_SCENE
    question-answer texts, one instruction conversation (one of LLaVA's three kinds, drawn at random) and one interleaved
    few-shot sequence whose other images are the following scenes of the list. Deterministic in (scenes, seed)."""
    rng = random.Random(f"world-text:{seed}")
    out = []
    for i, scene in enumerate(scenes):
        out.append(("caption", rng.choice(captions(scene))))
        out += [("qa", f"{qa.question} {qa.answer}") for qa in questions(scene)]
        out.append(("instruction", chat_text(rng.choice(list(instructions(scene).values())))))
        shots = [scenes[(i + k) % len(scenes)] for k in range(1, rng.randint(1, MAX_IMAGES))]
        prompt, target = fewshot_sequence(shots, scene, rng.choice(("caption", "vqa")))
        out.append(("interleaved", f"{prompt} {target}"))
    return out
