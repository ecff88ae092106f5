"""Text from scene graphs: captions, VQA pairs, hard negatives, few-shot sequences, instructions.

Introduced in notebook 00. Everything here is a pure function of a `Scene`, so every
caption, answer and negative is exactly right, and the same scene always gives the same text.
Captions list objects left to right, so the first caption of a scene (`caption(scene)`)
is its canonical description; the other templates are paraphrases of it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from ..params import require
from .shapes import COLORS, HELDOUT_COMBOS, SHAPES, SIZES, Obj, Scene, relation

IMAGE_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATIONS = tuple(INVERSE)
QUESTION_TYPES = ("color", "shape", "size", "count", "position", "exists", "absent")
NEGATIVE_KINDS = ("attribute_swap", "relation_swap", "object_replacement")
SWAP_KINDS = ("attribute_swap", "relation_swap")  # the two that keep every word of the caption
NEGATIVE_SETS = {"swaps": SWAP_KINDS, "all": NEGATIVE_KINDS}  # the negatives notebooks 02 (NegCLIP) and 06 (ITM) train on


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def a(phrase: str) -> str:
    """Indefinite article: 'a large red star', 'an orange star'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def listing(phrases: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


# ---------------------------------------------------------------- captions


def captions(scene: Scene) -> list[str]:
    """All caption templates of `scene`; the first is the canonical one."""
    objs = scene.objects
    phrases = [a(o.phrase) for o in objs]
    if len(objs) == 1:
        (p,) = phrases
        return [p, f"there is {p}", f"a picture of {p}", f"an image with {p} in it"]
    if len(objs) == 2:
        (p, q), rel = phrases, relation(*objs)
        return [f"{p} {rel} {q}", f"there is {p} {rel} {q}", f"{q} {INVERSE[rel]} {p}", f"a picture of {p} and {q}"]
    n = NUMBER_WORDS[len(objs)]
    return [listing(phrases), f"{n} objects: {listing(phrases)}", f"a picture of {listing(phrases)}", f"there are {n} shapes"]


def caption(scene: Scene, variant: int = 0) -> str:
    """Caption template number `variant` (wrapping around); 0 is canonical."""
    options = captions(scene)
    return options[variant % len(options)]


def leaving_out(scene: Scene, text: str, rate: float, rng: random.Random) -> str:
    """`text`, a caption of `scene`, with each object's size and its colour each left out with probability `rate`
    ('a large red star' -> 'a red star', 'a star'), as people's alt-text names an object without describing it
    fully. The shape noun always stays. Introduced in notebook 02 (the second caption of its main run)."""
    require(0 <= rate <= 1, "rate", rate, "a probability in [0, 1]")
    for obj in scene.objects:
        kept = [word for word in (obj.size, obj.color) if rng.random() >= rate]
        text = text.replace(a(obj.phrase), a(" ".join([*kept, obj.shape])))
    return text


# ---------------------------------------------------------------- visual question answering


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    qtype: str  # one of QUESTION_TYPES


def _unique(objs: tuple[Obj, ...], obj: Obj, fields: tuple[str, ...]) -> bool:
    key = tuple(getattr(obj, f) for f in fields)
    return sum(tuple(getattr(o, f) for f in fields) == key for o in objs) == 1


def _name(objs: tuple[Obj, ...], obj: Obj, without: str) -> str | None:
    """The shortest description of `obj` that singles it out and does not use `without`.

    Size questions name the object by colour and shape first, the same form the absent-object size
    questions use, so the wording of a question never gives away whether its object exists."""
    options = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")]
    if without == "size":
        options = [("color", "shape"), ("shape",)]
    if without == "shape":
        options = [("color",), ("size", "color")]
    for fields in options:
        if without not in fields and _unique(objs, obj, fields):
            words = " ".join(getattr(obj, f) for f in fields)
            return words + (" object" if "shape" not in fields else "")
    return None


def vqa_pairs(scene: Scene) -> list[QA]:
    """Every question the scene can answer exactly, including ones about absent objects."""
    objs, out = scene.objects, []
    for o in objs:
        if (n := _name(objs, o, "color")) is not None:
            out.append(QA(f"what color is the {n}?", o.color, "color"))
        if (n := _name(objs, o, "shape")) is not None:
            out.append(QA(f"what shape is the {n}?", o.shape, "shape"))
        if (n := _name(objs, o, "size")) is not None:
            out.append(QA(f"what size is the {n}?", o.size, "size"))
    out.append(QA("how many objects are there?", NUMBER_WORDS[len(objs)], "count"))
    colors, shapes = Counter(o.color for o in objs), Counter(o.shape for o in objs)
    for color, k in sorted(colors.items()):
        out.append(QA(f"how many {color} objects are there?", NUMBER_WORDS[k], "count"))
    for shape, k in sorted(shapes.items()):
        out.append(QA(f"how many {plural(shape)} are there?", NUMBER_WORDS[k], "count"))
    for i, p in enumerate(objs):
        for q in objs[i + 1 :]:
            np_, nq = _name(objs, p, ""), _name(objs, q, "")
            if np_ and nq:
                out.append(QA(f"where is the {np_} relative to the {nq}?", relation(p, q), "position"))
    # existence and absence: present and absent objects are asked about in the same words
    present = {(o.color, o.shape) for o in objs}
    for s in SHAPES:
        out.append(QA(f"is there a {s}?", "yes" if s in shapes else "no", "exists"))
        if s not in shapes:
            out.append(QA(f"what color is the {s}?", f"there is no {s}", "absent"))
    for c in COLORS:
        for s in SHAPES:
            if (c, s) in present:
                out.append(QA(f"is there a {c} {s}?", "yes", "exists"))
            elif s in shapes:  # the shape is here, in another colour: a binding test
                out.append(QA(f"is there a {c} {s}?", "no", "exists"))
                out.append(QA(f"what size is the {c} {s}?", f"there is no {c} {s}", "absent"))
    return out


def sample_vqa(scene: Scene, k: int = 1, salt: str = "") -> list[QA]:
    """`k` questions of distinct types where possible, chosen deterministically per scene.

    Within a type the answer is drawn first, then a question with that answer, so yes and no are
    equally likely and no answer is favoured just because more questions lead to it."""
    rng = random.Random(f"vqa:{scene.seed}:{scene.split}:{scene.index}:{salt}")
    by_type: dict[str, list[QA]] = {}
    for qa in vqa_pairs(scene):
        by_type.setdefault(qa.qtype, []).append(qa)
    types = list(by_type)
    rng.shuffle(types)
    picked = []
    for i in range(k):
        qas = by_type[types[i % len(types)]]
        answer = rng.choice(sorted({qa.answer for qa in qas}))
        picked.append(rng.choice([qa for qa in qas if qa.answer == answer]))
    return picked


def answer_vocabulary() -> list[str]:
    """Every answer a Shapes World question can have (for classifier heads)."""
    words = list(COLORS) + list(SHAPES) + list(SIZES) + list(NUMBER_WORDS[:5]) + list(RELATIONS) + ["yes", "no"]
    words += [f"there is no {s}" for s in SHAPES] + [f"there is no {c} {s}" for c in COLORS for s in SHAPES]
    return words


# ---------------------------------------------------------------- hard negatives


@dataclass(frozen=True)
class Negative:
    kind: str  # one of NEGATIVE_KINDS ("random" where `fusion.world_negatives` falls back on another scene's caption)
    text: str
    objects: tuple[Obj, ...]  # the objects the text describes, in the scene's order (edited where the kind edits them)


def _describe(objs: list[Obj]) -> str:
    """Canonical caption of an edited object list (same grammar as `captions()[0]`)."""
    phrases = [a(o.phrase) for o in objs]
    if len(objs) == 2:
        return f"{phrases[0]} {relation(*objs)} {phrases[1]}"
    return listing(phrases)


def hard_negatives(scene: Scene, kinds: tuple[str, ...] = NEGATIVE_KINDS) -> list[Negative]:
    """Captions that reuse the scene's words but are false (ARO / Winoground style), those of `kinds`.

    attribute_swap: two objects exchange their colours (or sizes);
    relation_swap: the two objects of a relation change places;
    object_replacement: one object's shape becomes a shape absent from the scene.
    Outside the heldout split no negative names a held-out colour-shape pair: training text never mentions one.
    """
    unknown = set(kinds) - set(NEGATIVE_KINDS)
    require(bool(kinds) and not unknown, "kinds", kinds, f"a non-empty tuple of {NEGATIVE_KINDS}")
    objs, out = list(scene.objects), []
    true_caption = caption(scene)
    allowed = lambda o: scene.split == "heldout" or (o.shape, o.color) not in HELDOUT_COMBOS
    if len(objs) >= 2:
        p, q = objs[0], objs[1]
        for field in ("color", "size"):
            swapped = [_replace(p, **{field: getattr(q, field)}), _replace(q, **{field: getattr(p, field)})] + objs[2:]
            if getattr(p, field) != getattr(q, field) and all(map(allowed, swapped)):
                out.append(Negative("attribute_swap", _describe(swapped), tuple(swapped)))
                break
    if len(objs) == 2 and objs[0].phrase != objs[1].phrase:
        p, q = objs
        out.append(Negative("relation_swap", f"{a(q.phrase)} {relation(p, q)} {a(p.phrase)}", (p, q)))
    rng = random.Random(f"neg:{scene.seed}:{scene.split}:{scene.index}")
    k = rng.randrange(len(objs))
    absent = [s for s in SHAPES if s not in {o.shape for o in objs} and allowed(_replace(objs[k], shape=s))]
    if absent:
        replaced = list(objs)
        replaced[k] = _replace(objs[k], shape=rng.choice(absent))
        out.append(Negative("object_replacement", _describe(replaced), tuple(replaced)))
    return [n for n in out if n.text != true_caption and n.kind in kinds]


def _replace(o: Obj, **changes) -> Obj:
    return Obj(**{**o.__dict__, **changes})


# ---------------------------------------------------------------- interleaved few-shot sequences


def shot(scene: Scene, task: str = "caption", qa: QA | None = None) -> tuple[str, str]:
    """One chunk of an interleaved sequence as (prompt, target): `<image>Output:` and the caption, or
    `<image>Question: ... Answer:` and the answer of `qa` (by default the scene's first sampled question)."""
    if task not in ("caption", "vqa"):
        raise ValueError(f"task={task!r}: choose 'caption' or 'vqa'")
    if task == "caption":
        return f"{IMAGE_TOKEN}Output:", caption(scene)
    qa = qa or sample_vqa(scene)[0]
    return f"{IMAGE_TOKEN}Question: {qa.question} Answer:", qa.answer


def fewshot_sequence(support: list[Scene], query: Scene, task: str = "caption") -> tuple[str, str]:
    """Flamingo-style interleaved prompt: (prompt, target).

    Each support scene becomes `<image>Output: caption<|endofchunk|>` (or a question and its
    answer for task='vqa'); the query ends with the open slot the model must fill.
    """
    shots = "".join(f"{p} {t}{END_OF_CHUNK}" for p, t in (shot(s, task) for s in support))
    prompt, target = shot(query, task)
    return shots + prompt, target


# ---------------------------------------------------------------- LLaVA-style instructions

Turn = dict[str, str]  # {"from": "human" | "gpt", "value": text}


def _conversation(scene: Scene) -> list[Turn]:
    qas = sample_vqa(scene, k=3, salt="conv")
    turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\nWhat do you see in this image?"},
             {"from": "gpt", "value": _sentence(caption(scene))}]
    for qa in qas:
        turns += [{"from": "human", "value": _sentence(qa.question, "?")}, {"from": "gpt", "value": _sentence(qa.answer)}]
    return turns


def detailed_description(scene: Scene) -> str:
    """A paragraph naming every object, its size, colour, place and relations."""
    objs = scene.objects
    n = len(objs)
    parts = [f"The image shows {NUMBER_WORDS[n]} object{'s' if n > 1 else ''} on a dark background."]
    rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
    for o in objs:
        place = "the centre" if (o.row, o.col) == (1, 1) else f"the {rows[o.row]} {cols[o.col]}"
        parts.append(f"There is {a(o.phrase)} in {place}.")
    for p, q in zip(objs, objs[1:]):
        parts.append(f"The {p.color} {p.shape} is {relation(p, q)} the {q.color} {q.shape}.")
    return " ".join(parts)


def _reasoning_rng(scene: Scene) -> random.Random:
    return random.Random(f"reason:{scene.seed}:{scene.split}:{scene.index}")


def reasoning_questions(scene: Scene, rng: random.Random | None = None) -> list[tuple[str, str, str]]:
    """(kind, question, answer) of every complex-reasoning question the scene allows: "same_size" (a comparison),
    "leftmost_color" (a relation: only when the first-listed object is furthest left) and "remaining" (counting,
    two objects or more; `rng` draws the object removed, by default the scene's own draw)."""
    rng = rng or _reasoning_rng(scene)
    objs = scene.objects
    sizes = {o.size for o in objs}
    out = [("same_size", "Are all the objects the same size? Explain.",
            f"{'Yes' if len(sizes) == 1 else 'No'}: " + listing([f"the {o.color} {o.shape} is {o.size}" for o in objs]) + ".")]
    if len(objs) == 1 or objs[0].col < objs[1].col:
        out.append(("leftmost_color", "Which object is furthest to the left, and what color is it?",
                    f"The leftmost object is {a(objs[0].phrase)}, so its color is {objs[0].color}."))
    if len(objs) >= 2:
        gone = objs[rng.randrange(len(objs))]
        out.append(("remaining", f"If the {gone.color} {gone.shape} were removed, how many objects would remain?",
                    f"There are {NUMBER_WORDS[len(objs)]} objects; removing the {gone.color} {gone.shape} "
                    f"leaves {NUMBER_WORDS[len(objs) - 1]}."))
    return out


def _complex_reasoning(scene: Scene) -> tuple[str, str]:
    rng = _reasoning_rng(scene)
    _, question, answer = rng.choice(reasoning_questions(scene, rng))  # one draw for the removed object, then this one
    return question, answer


def _sentence(text: str, end: str = ".") -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + end


def instructions(scene: Scene) -> dict[str, list[Turn]]:
    """LLaVA's three kinds of instruction data, generated from the scene graph:
    a multi-turn conversation, a detailed description and a complex-reasoning question."""
    question, answer = _complex_reasoning(scene)
    return {
        "conversation": _conversation(scene),
        "detailed_description": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\nDescribe the image in detail."},
            {"from": "gpt", "value": detailed_description(scene)},
        ],
        "complex_reasoning": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


# ---------------------------------------------------------------- all text of a scene


def scene_texts(scene: Scene) -> list[str]:
    """Every piece of text the world produces for `scene` (tokenizer corpus, round-trip tests)."""
    texts = list(captions(scene))
    texts += [f"{qa.question} {qa.answer}" for qa in vqa_pairs(scene)]
    texts += [n.text for n in hard_negatives(scene)]
    for turns in instructions(scene).values():
        texts += [t["value"] for t in turns]
    return texts
