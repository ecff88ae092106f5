"""Metrics for every task of the workbook: retrieval, zero-shot, VQA, captions (and two caption baselines), attributes,
compositionality, and `suite`, the one harness that measures any model through the interfaces of `vlmlab.protocols`.

Introduced in notebook 00. Everything here works on tensors, strings and those interfaces and knows no strategy,
so every notebook and the showdown score their models with the same code.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from .data.language import NUMBER_WORDS, captions, plural
from .data.shapes import COLORS, SHAPES, SIZES, Scene
from .data.shapes import relation as relation_of
from .params import require

# ---------------------------------------------------------------- retrieval and zero-shot


def _recall_from_mask(similarity: torch.Tensor, correct: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """R@k from scores [Nq, Nc] and a boolean mask [Nq, Nc] of the correct candidates.

    A query's rank is the number of wrong candidates scoring at least as high as its best correct one,
    so ties count against the query: a collapsed model (all scores equal) gets no free hits.
    """
    if not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ValueError(f"ks={ks!r}: every k must be an int >= 1")
    if not bool(correct.any(dim=1).all()):
        raise ValueError("every query needs at least one correct candidate")
    best = similarity.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)  # [Nq, 1]
    rank = ((similarity >= best) & ~correct).sum(dim=1)  # [Nq]
    n_candidates = similarity.shape[1]
    return {f"r{k}": (rank < min(k, n_candidates)).float().mean().item() for k in ks}


def retrieval_recall(similarity: torch.Tensor, ks: Sequence[int] = (1, 5, 10), targets=None) -> dict[str, float]:
    """Recall@k: the fraction of queries with a correct candidate among the k best scored.

    similarity: [Nq, Nc]; targets[i] is query i's correct candidate (an int) or candidates (a set of ints),
    by default i. k larger than Nc is clipped to Nc (so R@k is then 1). Returns {"r1": ..., "r5": ...}.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be 2-D [queries, candidates], got shape {tuple(similarity.shape)}")
    n_queries, n_candidates = similarity.shape
    if targets is None:
        if n_queries > n_candidates:
            raise ValueError(f"default targets (query i -> candidate i) need Nq <= Nc, got {n_queries} > {n_candidates}")
        targets = range(n_queries)
    if len(targets) != n_queries:
        raise ValueError(f"targets has {len(targets)} entries, similarity has {n_queries} queries")
    correct = torch.zeros(n_queries, n_candidates, dtype=torch.bool)
    for i, target in enumerate(targets):
        for j in target if isinstance(target, (set, frozenset, list, tuple)) else [int(target)]:
            if not 0 <= j < n_candidates:
                raise ValueError(f"targets[{i}] = {j} is outside the {n_candidates} candidates")
            correct[i, j] = True
    return _recall_from_mask(similarity.float().cpu(), correct, ks)


def retrieval_metrics(image_emb, text_emb, ks: Sequence[int] = (1, 5, 10), text_to_image=None) -> dict[str, float]:
    """Image->text and text->image R@k from the cosine similarity of the embeddings.

    image_emb: [Ni, D], text_emb: [Nt, D]. text_to_image: LongTensor [Nt], the image of each text
    (several captions per image); by default text i belongs to image i. Image->text counts a hit
    when any of the image's texts is in the top k. Keys "i2t_r1", ..., "t2i_r1", ...
    """
    image_emb, text_emb = torch.as_tensor(image_emb).float().cpu(), torch.as_tensor(text_emb).float().cpu()
    if image_emb.dim() != 2 or text_emb.dim() != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"need image_emb [Ni, D] and text_emb [Nt, D], got {tuple(image_emb.shape)}, {tuple(text_emb.shape)}")
    n_images, n_texts = len(image_emb), len(text_emb)
    if text_to_image is None:
        if n_images != n_texts:
            raise ValueError(f"{n_images} images and {n_texts} texts: pass text_to_image to pair them")
        text_to_image = torch.arange(n_texts)
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long).cpu()
    if text_to_image.shape != (n_texts,) or not bool(((text_to_image >= 0) & (text_to_image < n_images)).all()):
        raise ValueError(f"text_to_image must be [{n_texts}] image indices in [0, {n_images}), got {text_to_image.tolist()}")
    similarity = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T  # [Ni, Nt]
    correct = text_to_image[None, :] == torch.arange(n_images)[:, None]  # [Ni, Nt]
    i2t = _recall_from_mask(similarity, correct, ks)
    t2i = _recall_from_mask(similarity.T, correct.T, ks)
    return {f"i2t_{k}": v for k, v in i2t.items()} | {f"t2i_{k}": v for k, v in t2i.items()}


def zero_shot_predict(image_emb, class_emb) -> torch.Tensor:
    """The class whose embedding is most cosine-similar to each image: [N, D], [C, D] -> LongTensor [N]."""
    image_emb, class_emb = torch.as_tensor(image_emb).float(), torch.as_tensor(class_emb).float()
    if image_emb.dim() != 2 or class_emb.dim() != 2 or image_emb.shape[1] != class_emb.shape[1]:
        raise ValueError(f"need image_emb [N, D] and class_emb [C, D], got {tuple(image_emb.shape)}, {tuple(class_emb.shape)}")
    return (F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).T).argmax(dim=1).cpu()


def zero_shot_accuracy(image_emb, class_emb, labels) -> float:
    """Fraction of images whose nearest class embedding is their label (labels: [N] class indices)."""
    predictions = zero_shot_predict(image_emb, class_emb)
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if labels.shape != predictions.shape:
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(predictions.shape)}")
    return (predictions == labels).float().mean().item()


# ---------------------------------------------------------------- visual question answering


def normalize_answer(text: str) -> str:
    """Lowercase, trim, drop trailing punctuation, collapse spaces, drop one leading article (a/an/the),
    and spell a lone digit as its word ('2' -> 'two', as the world's answers are written)."""
    text = " ".join(text.lower().strip().rstrip(".?!,;:").split())
    text = re.sub(r"^(a|an|the) ", "", text)
    return NUMBER_WORDS[int(text)] if text.isdigit() and len(text) == 1 else text


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str], qtypes: Sequence[str] | None = None) -> dict:
    """Exact-match accuracy after `normalize_answer` (one true answer per question, so no VQAv2 voting).

    Returns {"overall", "count", "by_type": {qtype: accuracy}, "counts": {qtype: n}}.
    """
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"need as many predictions as answers (at least one), got {len(predictions)} and {len(answers)}")
    qtypes = ["all"] * len(answers) if qtypes is None else qtypes
    if len(qtypes) != len(answers):
        raise ValueError(f"qtypes has {len(qtypes)} entries, answers has {len(answers)}")
    right = [normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)]
    counts, hits = Counter(qtypes), Counter(t for t, r in zip(qtypes, right) if r)
    by_type = {t: hits[t] / n for t, n in sorted(counts.items())}
    return {"overall": sum(right) / len(right), "count": len(right), "by_type": by_type, "counts": dict(sorted(counts.items()))}


def absent_replies(predictions: Sequence[str], qas: Sequence) -> float:
    """The share of the colour and size questions among `qas` (`language.QA`), each about an object that is in the
    picture, answered "there is no ...": how often a model treats an object that is there as absent. Each of these
    questions names its object by its shape, so a model that cannot find the shape answers so. Notebook 04."""
    if len(predictions) != len(qas):
        raise ValueError(f"need one prediction per question, got {len(predictions)} and {len(qas)}")
    present = [p for p, qa in zip(predictions, qas) if qa.qtype in ("color", "size")]
    if not present:
        raise ValueError("none of the questions is a colour or size question")
    return sum(normalize_answer(p).startswith("there is no") for p in present) / len(present)


def blind_answerer(qas: Sequence) -> Callable:
    """Notebook 00's blind baseline, fitted on training `qas` (`language.QA`): a function QA -> answer giving the
    most common training answer to the same question text, else to the same question type, else "yes"."""
    by_question, by_type = {}, {}
    for qa in qas:
        by_question.setdefault(qa.question, Counter())[qa.answer] += 1
        by_type.setdefault(qa.qtype, Counter())[qa.answer] += 1
    best_q = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
    best_t = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    return lambda qa: best_q.get(qa.question, best_t.get(qa.qtype, "yes"))


# ---------------------------------------------------------------- captions


def tokenize(text: str) -> list[str]:
    """Lowercase words (runs of letters and digits); punctuation is dropped, as COCO's PTB tokenizer drops it."""
    return re.findall(r"\w+", text.lower())


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4, ROUGE-L and CIDEr (pycocoevalcap's scorers, our `tokenize` instead of the Java PTB one).

    references[i] holds one or more reference captions for predictions[i]. CIDEr weighs n-grams by an
    IDF computed from the references of this corpus: n-grams found in every image's references weigh
    nothing, and a corpus of one image scores CIDEr 0. CIDEr here is CIDEr-D, scaled by 10 as in COCO.
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need one list of references per prediction (at least one), got {len(predictions)}, {len(references)}")
    if not all(isinstance(refs, (list, tuple)) and refs for refs in references):
        raise ValueError("every entry of references must be a non-empty list of strings")
    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(predictions)}
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: no prints
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider)}


# ---------------------------------------------------------------- caption facts against the scene graph

SYNONYMS = {"big": "large", "little": "small", "tiny": "small"}
_SHAPE_WORDS = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}
ARTICLES = ("a", "an", "the")
_CANONICAL = {"left of": ("left of", False), "right of": ("left of", True), "above": ("above", False),
              "below": ("above", True)}  # relation -> (the form facts use, whether its two objects swap)


def parse_caption(caption: str) -> tuple[list[tuple], list[tuple]]:
    """The objects a caption names, read left to right, as (size, colour, shape), and the relations it states
    between them, as (object, "left of" | "above", object). Introduced in notebook 03.

    A size or colour word describes the next shape word if only sizes, colours or a number word come between
    them; any other word forgets them. Shape words may be plural ("stars"); a number word before the phrase ("two
    red stars") repeats the object. A relation word ("left of", "right of", "above", "below") relates the object
    named just before it to the one named next (articles may stand between); "right of" and "below" are stated as
    their inverses, so "a circle right of a star" and "a star left of a circle" state the same fact. Synonyms:
    big -> large, little/tiny -> small.
    """
    objects, relations, size, color, count, pending = [], [], None, None, 1, None
    words = [SYNONYMS.get(w, w) for w in tokenize(caption)]
    for i, word in enumerate(words):
        phrase = f"{word} of" if word in ("left", "right") and words[i + 1 : i + 2] == ["of"] else word
        if word in SIZES:
            size = word
        elif word in COLORS:
            color = word
        elif word in NUMBER_WORDS:
            count = NUMBER_WORDS.index(word)
        elif word in _SHAPE_WORDS:
            new = (size, color, _SHAPE_WORDS[word])
            if pending is not None:
                relation, swap = _CANONICAL[pending]
                relations.append((new, relation, objects[-1]) if swap else (objects[-1], relation, new))
            objects += [new] * count
            size, color, count, pending = None, None, 1, None
        elif phrase in _CANONICAL:
            size, color, count, pending = None, None, 1, phrase if objects else None
        elif word in ARTICLES or (word == "of" and i and words[i - 1] in ("left", "right")):
            size, color, count = None, None, 1  # "left of a ...": the relation waits for its object
        else:
            size, color, count, pending = None, None, 1, None
    return objects, relations


def parse_objects(caption: str) -> list[tuple[str | None, str | None, str]]:
    """The (size, colour, shape) of each object a caption names, read left to right (`parse_caption`)."""
    return parse_caption(caption)[0]


def _facts(objects, relations=()) -> Counter:
    """A multiset of facts: ("shape", s), ("color", c, s), ("size", z, s) per object; duplicates count. And one
    ("relation", a, r, b) per stated relation, a and b each an object's (size, colour, shape)."""
    facts = Counter()
    for size, color, shape in objects:
        facts[("shape", shape)] += 1
        if color is not None:
            facts[("color", color, shape)] += 1
        if size is not None:
            facts[("size", size, shape)] += 1
    for a_, relation, b in relations:
        facts[("relation", a_, relation, b)] += 1
    return facts


def caption_facts(caption: str, relations: bool = True) -> Counter:
    """The facts a caption states, as a Counter (see `parse_caption`); `relations=False`: attributes only."""
    objects, stated = parse_caption(caption)
    return _facts(objects, stated if relations else ())


def scene_facts(scene: Scene, relations: bool = True) -> Counter:
    """The facts of a scene graph: three per object, and for a scene of two objects the relation between them,
    which is what its captions state (a scene of three or four objects is captioned as a list, without relations)."""
    objects = [(o.size, o.color, o.shape) for o in scene.objects]
    stated = []
    if relations and len(objects) == 2:
        relation, swap = _CANONICAL[relation_of(*scene.objects)]
        stated = [(objects[1], relation, objects[0]) if swap else (objects[0], relation, objects[1])]
    return _facts(objects, stated)


def scene_f1(captions: Sequence[str], scenes: Sequence[Scene], relations: bool = True) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 of the facts in generated captions (one caption per scene), with
    the relations they state (`relations=False`: attributes only), and the share of captions that state exactly
    their scene's facts (`exact`).

    Facts are matched as multisets over the whole corpus. A caption that names no object adds no predicted facts
    (it cannot hurt precision) but all of its scene's facts count as missed (recall). Precision is 0 when the
    corpus states no fact at all. Of `captions(scene)`, every template carries all facts except "there are N
    shapes" (scenes of 3-4 objects), which names none, and "a picture of p and q", which states no relation.
    """
    if len(captions) != len(scenes) or not scenes:
        raise ValueError(f"need one caption per scene (at least one), got {len(captions)} and {len(scenes)}")
    hits = predicted = gold = exact = 0
    for text, scene in zip(captions, scenes):
        said, true = caption_facts(text, relations), scene_facts(scene, relations)
        hits += sum((said & true).values())
        predicted += sum(said.values())
        gold += sum(true.values())
        exact += said == true
    precision = hits / predicted if predicted else 0.0
    recall = hits / gold
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "exact": exact / len(scenes)}


def attribute_f1(captions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """Precision, recall and F1 of `scene_f1` over attribute facts only (shape, colour and size of every object).
    Introduced in notebook 00."""
    scores = scene_f1(captions, scenes, relations=False)
    return {name: scores[name] for name in ("precision", "recall", "f1")}


def caption_scores(predictions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """Generated captions against their scenes: scene F1 with relations (`f1`, its precision and recall), the share
    stating exactly their scene (`exact`), attribute-only F1 (`attr_f1`, ...), and BLEU-4, ROUGE-L, CIDEr against
    every paraphrase in `language.captions`. Introduced in notebook 03."""
    scene = scene_f1(predictions, scenes)
    facts = attribute_f1(predictions, scenes)
    text = caption_metrics(predictions, [captions(scene) for scene in scenes])
    return ({"f1": scene["f1"], "precision": scene["precision"], "recall": scene["recall"], "exact": scene["exact"],
             "attr_f1": facts["f1"], "attr_precision": facts["precision"], "attr_recall": facts["recall"]} | text)


# ---------------------------------------------------------------- caption baselines


def most_common_caption(train_captions: Sequence[str], n: int) -> list[str]:
    """The baseline that looks at no image: the most frequent training caption, n times. Introduced in notebook 04."""
    return [Counter(train_captions).most_common(1)[0][0]] * n


def nearest_neighbour_captions(train_features: torch.Tensor, train_captions: Sequence[str],
                               features: torch.Tensor) -> list[str]:
    """The retrieval baseline: each image gets the caption of the training image with the most similar feature
    vector (cosine). train_features [Ntrain, Dv], features [N, Dv]. Introduced in notebook 04."""
    require(train_features.ndim == 2 and features.ndim == 2 and train_features.shape[1] == features.shape[1]
            and len(train_features) == len(train_captions), "train_features/features shapes",
            (tuple(train_features.shape), tuple(features.shape)), f"[Ntrain={len(train_captions)}, Dv] and [N, Dv]")
    similarity = F.normalize(features, dim=-1) @ F.normalize(train_features, dim=-1).T  # [N, Ntrain]
    return [train_captions[j] for j in similarity.argmax(dim=1).tolist()]


# ---------------------------------------------------------------- compositionality probes


def paired_choice_accuracy(score_pos, score_neg) -> float:
    """Fraction of pairs where the true caption scores strictly higher than its hard negative (ties are wrong)."""
    score_pos, score_neg = torch.as_tensor(score_pos).float(), torch.as_tensor(score_neg).float()
    if score_pos.shape != score_neg.shape or score_pos.numel() == 0:
        shapes = f"{tuple(score_pos.shape)}, {tuple(score_neg.shape)}"
        raise ValueError(f"score_pos and score_neg need the same non-empty shape, got {shapes}")
    return (score_pos > score_neg).float().mean().item()


def group_scores(s) -> dict[str, float]:
    """Winoground's text, image and group scores (Thrush et al. 2022).

    s: [N, 2, 2], s[n, i, j] = score(image_i, caption_j), matched pairs on the diagonal.
    text: each image prefers its own caption; image: each caption prefers its own image; group: both.
    """
    s = torch.as_tensor(s).float()
    if s.dim() != 3 or s.shape[1:] != (2, 2):
        raise ValueError(f"s must have shape [N, 2, 2], got {tuple(s.shape)}")
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    mean = lambda hits: hits.float().mean().item()
    return {"text": mean(text), "image": mean(image), "group": mean(text & image)}
