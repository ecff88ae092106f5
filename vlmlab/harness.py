"""One evaluation harness: what a model of any strategy is measured with, through the interfaces of
`vlmlab.protocols`. Introduced in notebook 02 (embedding helpers, zero-shot) and notebook 03 (`suite`).

    suite(model, tokenizer, "dual_encoder", DualEncoderBench)   retrieval, zero-shot, held-out pairs, swap probes
    suite(model, tokenizer, "pair_scorer", DualEncoderBench)    the swap probes, scored pair by pair
    suite(model, tokenizer, "captioner", SceneBench)            scene F1, exact scenes, attribute F1, BLEU, CIDEr
    suite(model, tokenizer, "vqa", SceneBench)                  VQA accuracy, overall and by question type
    suite(model, tokenizer, "itm", DualEncoderBench)            a pair scorer on true and random pairs (notebook 06)
    suite(model, tokenizer, "masked_words", SceneBench)         colour and shape words filled in, with and without the image
    suite(model, tokenizer, "answer_classifier", SceneBench)    VQA accuracy of an answer head (notebook 06)

It batches, moves to the model's device, puts the model in eval mode and turns uint8 images into the float pixels
models read; the numbers themselves come from `vlmlab.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .data.evalsets import ATTRIBUTE_NAMES, DualEncoderBench, SceneBench, blank_images, prompt_templates
from .data.language import caption
from .data.loaders import to_float
from .data.shapes import COLORS, SHAPES, Scene
from .evaluate import (
    absent_replies,
    caption_scores,
    paired_choice_accuracy,
    retrieval_metrics,
    retrieval_recall,
    vqa_accuracy,
    zero_shot_accuracy,
)
from .generation import asked, generate_text
from .params import require
from .protocols import encode_for


@torch.no_grad()
def embed_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """A dual encoder's unit vectors [N, E] for uint8 images [N, 3, H, W], in batches, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(to_float(chunk).to(device)) for chunk in images.split(batch_size)])


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """A dual encoder's unit vectors [N, E] for texts (each <bos> text <eos>), in batches, in eval mode."""
    model.eval()
    device, out = next(model.parameters()).device, []
    for start in range(0, len(texts), batch_size):
        batch = encode_for(model, tokenizer, texts[start : start + batch_size])
        out.append(model.encode_text(batch.input_ids.to(device), batch.attention_mask.to(device)))
    return torch.cat(out)


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """One unit vector per class, [C, E]: each template filled with the class name ("a picture of a {}"),
    encoded, L2-normalised, averaged over the templates and normalised again (CLIP's prompt ensembling).
    An image's class is then the row with the highest cosine similarity. Introduced in notebook 02."""
    require(len(classnames) >= 1, "classnames", classnames, "at least one class name")
    require(len(templates) >= 1 and all("{}" in t for t in templates), "templates", templates,
            "at least one template, each with a '{}' where the class name goes")
    texts = [template.format(name) for name in classnames for template in templates]  # class-major, C * K texts
    emb = embed_texts(model, tokenizer, texts).view(len(classnames), len(templates), -1).mean(dim=1)  # [C, E]
    return F.normalize(emb, dim=-1)


def zero_shot_attribute(model, tokenizer, image_emb: torch.Tensor, scenes: list[Scene], attribute: str,
                        templates: Sequence[str] | None = None) -> float:
    """Zero-shot accuracy on one-object scenes: which colour (or shape) is it? Each class is the prompt ensemble
    over `templates`, by default CLIP-style generic frames ('a picture of a {}', `evalsets.prompt_templates`)."""
    names = ATTRIBUTE_NAMES[attribute]
    classes = zero_shot_classifier(model, tokenizer, names, templates or prompt_templates(attribute))
    labels = torch.tensor([names.index(getattr(s.objects[0], attribute)) for s in scenes])
    return zero_shot_accuracy(image_emb, classes, labels)


@torch.no_grad()
def score_pairs(model, tokenizer, images: torch.Tensor, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """A pair scorer's score [N] of each uint8 image [N, 3, H, W] with its own text, in batches, in eval mode."""
    model.eval()
    device, out = next(model.parameters()).device, []
    for start in range(0, len(texts), batch_size):
        text = encode_for(model, tokenizer, texts[start : start + batch_size])
        pixels = to_float(images[start : start + batch_size]).to(device)
        out.append(model.score(pixels, text.input_ids.to(device), text.attention_mask.to(device)))
    return torch.cat(out)


def rank_by_scorer(model, tokenizer, images: torch.Tensor, texts: Sequence[str], candidates: torch.Tensor) -> torch.Tensor:
    """Text-to-image retrieval by a pair scorer: for each text, its best-scored image among its candidates.
    candidates [Nt, k] image indices (all N images: exhaustive ranking; a dual encoder's top k: ALBEF's and BLIP's
    retrieve-then-rerank) -> the chosen image of each text [Nt]. Costs Nt * k pair scores. Notebook 06."""
    Nt, k = candidates.shape
    scores = score_pairs(model, tokenizer, images[candidates.flatten()], [t for t in texts for _ in range(k)])
    return candidates.gather(1, scores.view(Nt, k).argmax(dim=1, keepdim=True).to(candidates.device)).squeeze(1)


@torch.no_grad()
def image_features(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """A captioner's image features for uint8 images [N, 3, H, W], in batches, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.image_features(to_float(chunk).to(device)) for chunk in images.split(batch_size)])


@torch.no_grad()
def zero_shot_in_caption(model, tokenizer, image_emb: torch.Tensor, scenes: list[Scene], attribute: str) -> float:
    """A diagnostic beside zero-shot (notebook 02): each one-object scene's own canonical caption against its twins
    with `attribute` replaced ('a large white {}' over the shapes when the object is a large white star). The
    other words come from the scene's labels, so this is not zero-shot: it asks whether the two towers agree on
    the attribute inside a caption like those they trained on, where a generic prompt names it alone."""
    require(attribute in ATTRIBUTE_NAMES, "attribute", attribute, f"one of {tuple(ATTRIBUTE_NAMES)}")
    names = ATTRIBUTE_NAMES[attribute]
    frame = "a {size} {{}} {shape}" if attribute == "color" else "a {size} {color} {{}}"
    own = [frame.format(size=s.objects[0].size, color=s.objects[0].color, shape=s.objects[0].shape) for s in scenes]
    frames = sorted(set(own))
    texts = embed_texts(model, tokenizer, [f.format(name) for f in frames for name in names])
    classes = F.normalize(texts.view(len(frames), len(names), -1), dim=-1)                # [F, C, E]
    which = torch.tensor([frames.index(f) for f in own], device=classes.device)
    scores = torch.einsum("ne,nce->nc", F.normalize(image_emb.to(classes), dim=-1), classes[which])  # [N, C]
    labels = torch.tensor([names.index(getattr(s.objects[0], attribute)) for s in scenes])
    return (scores.argmax(dim=-1).cpu() == labels).float().mean().item()


def _subset(metrics: dict[str, float], suffix: str = "_novel") -> dict[str, float]:
    return {f"{name}{suffix}": value for name, value in metrics.items()}


def _dual_encoder(model, tokenizer, bench: DualEncoderBench, novel: Sequence[int] | None) -> dict[str, float]:
    """Retrieval R@1/5/10 both ways, zero-shot colour and shape (generic prompts; `_vocab`: the ensemble that
    enumerates the world's other words), zero-shot colour-shape pairs on the held-out
    combinations, and the swap probes (the true caption must score higher than its swap for the same image).
    `novel`: retrieval again for the queries of those retrieval scenes (the whole gallery still competes)."""
    emb = {name: embed_images(model, images) for name, images in bench.images.items()}
    texts = embed_texts(model, tokenizer, [caption(s) for s in bench.retrieval])
    out = retrieval_metrics(emb["retrieval"], texts)
    if novel:
        similarity = F.normalize(emb["retrieval"].float(), dim=-1) @ F.normalize(texts.float(), dim=-1).T  # [N, N]
        out |= _subset({f"i2t_{k}": v for k, v in retrieval_recall(similarity[novel], targets=novel).items()})
        out |= _subset({f"t2i_{k}": v for k, v in retrieval_recall(similarity.T[novel], targets=novel).items()})
    for attribute in ("color", "shape"):
        out[f"zs_{attribute}_acc"] = zero_shot_attribute(model, tokenizer, emb["single"], bench.single, attribute)
        out[f"zs_{attribute}_acc_vocab"] = zero_shot_attribute(model, tokenizer, emb["single"], bench.single, attribute,
                                                               prompt_templates(attribute, "vocabulary"))
    pairs = [f"{color} {shape}" for shape in SHAPES for color in COLORS]
    classes = zero_shot_classifier(model, tokenizer, pairs, prompt_templates("pair"))  # 56 classes
    labels = torch.tensor([pairs.index(f"{s.objects[0].color} {s.objects[0].shape}") for s in bench.heldout])
    out["heldout_combo_acc"] = zero_shot_accuracy(emb["heldout"], classes, labels)
    for kind, swap in bench.swaps.items():
        positive, negative = embed_texts(model, tokenizer, swap.positives), embed_texts(model, tokenizer, swap.negatives)
        out[f"{kind}_acc"] = paired_choice_accuracy((emb[kind] * positive).sum(-1), (emb[kind] * negative).sum(-1))
    return out


def _pair_scorer(model, tokenizer, bench: DualEncoderBench, novel: Sequence[int] | None) -> dict[str, float]:
    """The swap probes scored pair by pair: the true caption must score higher than its swap for the same image."""
    return {f"{kind}_acc": paired_choice_accuracy(score_pairs(model, tokenizer, bench.images[kind], swap.positives),
                                                  score_pairs(model, tokenizer, bench.images[kind], swap.negatives))
            for kind, swap in bench.swaps.items()}


def _captioner(model, tokenizer, bench: SceneBench, novel: Sequence[int] | None) -> dict[str, float]:
    """Greedy captions of the scenes: scene F1 (with relations), exact scenes, attribute F1, BLEU-4, ROUGE-L,
    CIDEr; with `novel`, the same on those scenes alone."""
    said = generate_text(model, tokenizer, image_features(model, bench.images))
    out = {f"caption_{k}": v for k, v in caption_scores(said, bench.scenes).items()}
    if novel:
        out |= _subset({f"caption_{k}": v for k, v in caption_scores([said[i] for i in novel],
                                                                    [bench.scenes[i] for i in novel]).items()})
    return out


def vqa_answers(model, tokenizer, bench: SceneBench, keep: Sequence[int] | None = None) -> list[str]:
    """Greedy answers to the questions of `bench` (all of them, or those at the indices `keep`), each asked about
    its scene in the model's VQA prompt format (the question is the prompt): what the "vqa" suite scores."""
    keep = range(len(bench.questions)) if keep is None else keep
    features = image_features(model, bench.images)[[bench.question_scene[j] for j in keep]]
    prompts = asked(model, "vqa", [bench.questions[j].question for j in keep])
    return generate_text(model, tokenizer, features, prompts, max_new_tokens=8)


def _vqa(model, tokenizer, bench: SceneBench, novel: Sequence[int] | None) -> dict[str, float]:
    """Greedy answers to the questions: accuracy overall and by type; with `novel`, the accuracy on the questions
    about those scenes."""
    return _vqa_scores(vqa_answers(model, tokenizer, bench), bench, novel)


def absent_object_replies(model, tokenizer, bench: SceneBench) -> float:
    """How often a VQA model answers "there is no ..." about an object that is in the picture: its greedy answers to
    the colour and size questions of `bench` (`vqa_answers`), scored by `evaluate.absent_replies`. Each of these
    questions names its object by its shape. Notebooks 05 and 09."""
    keep = [j for j, qa in enumerate(bench.questions) if qa.qtype in ("color", "size")]
    return absent_replies(vqa_answers(model, tokenizer, bench, keep), [bench.questions[j] for j in keep])


@torch.no_grad()
def _answer_classifier(model, tokenizer, bench: SceneBench, novel: Sequence[int] | None,
                       batch_size: int = 256) -> dict[str, float]:
    """An answer head's most likely answer to each question: the same accuracies as "vqa"."""
    model.eval()
    device, answers = next(model.parameters()).device, []
    questions = [qa.question for qa in bench.questions]
    for start in range(0, len(questions), batch_size):
        text = encode_for(model, tokenizer, questions[start : start + batch_size])
        pixels = to_float(bench.images[bench.question_scene[start : start + batch_size]]).to(device)
        best = model.answer_logits(pixels, text.input_ids.to(device), text.attention_mask.to(device)).argmax(dim=1)
        answers += [model.answers[i] for i in best.tolist()]
    return _vqa_scores(answers, bench, novel)


def _vqa_scores(answers: list[str], bench: SceneBench, novel: Sequence[int] | None) -> dict[str, float]:
    truth = [qa.answer for qa in bench.questions]
    result = vqa_accuracy(answers, truth, [qa.qtype for qa in bench.questions])
    out = {"vqa_acc": result["overall"]} | {f"vqa_{t}_acc": v for t, v in result["by_type"].items()}
    if novel:
        keep = [j for j, i in enumerate(bench.question_scene) if i in set(novel)]
        out["vqa_acc_novel"] = vqa_accuracy([answers[j] for j in keep], [truth[j] for j in keep])["overall"]
    return out


def _itm(model, tokenizer, bench: DualEncoderBench, novel: Sequence[int] | None) -> dict[str, float]:
    """A pair scorer as a match / no-match classifier (score > 0 = match) on the retrieval scenes, each with its own
    caption and with the next scene's (a random negative: the captions are all different)."""
    texts = [caption(s) for s in bench.retrieval]
    own = score_pairs(model, tokenizer, bench.images["retrieval"], texts)
    other = score_pairs(model, tokenizer, bench.images["retrieval"], texts[1:] + texts[:1])
    return {"itm_acc": float(torch.cat([own > 0, other <= 0]).float().mean())}


MASKED_KINDS = {"color": COLORS, "shape": SHAPES}


@torch.no_grad()
def masked_word_accuracy(model, tokenizer, images: torch.Tensor, texts: Sequence[str],
                         batch_size: int = 256) -> dict[str, float]:
    """Each colour and each shape word of each text masked alone ([MASK], one copy of the text per word) and predicted
    by a masked LM that reads the image (`mlm_logits`): the fraction predicted exactly, per kind and overall.
    images uint8 [N, 3, H, W], one per text. Introduced in notebook 06."""
    model.eval()
    device = next(model.parameters()).device
    batch = encode_for(model, tokenizer, texts)
    kind_of = {tokenizer.convert_tokens_to_ids("Ġ" + word): kind for kind, words in MASKED_KINDS.items() for word in words}
    where = [(i, t, kind_of[token]) for i, row in enumerate(batch.input_ids.tolist()) for t, token in enumerate(row)
             if token in kind_of]
    require(len(where) > 0, "texts", texts[:3], "texts with colour or shape words")
    rows, positions = torch.tensor([w[0] for w in where]), torch.tensor([w[1] for w in where])
    inputs, truth = batch.input_ids[rows].clone(), batch.input_ids[rows, positions]
    inputs[torch.arange(len(rows)), positions] = tokenizer.mask_token_id
    right = []
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        logits = model.mlm_logits(to_float(images[rows[part]]).to(device), inputs[part].to(device),
                                  batch.attention_mask[rows[part]].to(device))  # [b, T, V]
        right.append(logits[torch.arange(len(logits)), positions[part].to(device)].argmax(-1).cpu() == truth[part])
    right = torch.cat(right).float()
    kinds = [w[2] for w in where]
    by_kind = {f"{kind}_acc": right[[k == kind for k in kinds]].mean().item() for kind in MASKED_KINDS}
    return {"acc": right.mean().item()} | by_kind


def _masked_words(model, tokenizer, bench: SceneBench, novel: Sequence[int] | None) -> dict[str, float]:
    """Masked colour and shape words of the held-out captions, with the scene's image (`mlm_*_image`) and with an empty
    picture (`mlm_*_blank`: what the words around them give away); with `novel`, with the image on those scenes."""
    texts = [caption(s) for s in bench.scenes]
    out = {}
    for name, images in (("image", bench.images), ("blank", blank_images(bench.images))):
        out |= {f"mlm_{key}_{name}": v for key, v in masked_word_accuracy(model, tokenizer, images, texts).items()}
    if novel:
        result = masked_word_accuracy(model, tokenizer, bench.images[novel], [texts[i] for i in novel])
        out["mlm_acc_image_novel"] = result["acc"]
    return out


SUITES = {"dual_encoder": _dual_encoder, "pair_scorer": _pair_scorer, "captioner": _captioner, "vqa": _vqa,
          "itm": _itm, "masked_words": _masked_words, "answer_classifier": _answer_classifier}


def suite(model, tokenizer, kind: str, bench, novel: Sequence[int] | None = None) -> dict[str, float]:
    """The fixed metric set of one kind of model on a benchmark (`vlmlab.data.evalsets`): "dual_encoder" and
    "pair_scorer" and "itm" on a DualEncoderBench, "captioner", "vqa", "masked_words" and "answer_classifier" on a
    SceneBench. The same call measures every
    strategy, so the showdown compares them with one line each. `novel` (`evalsets.novel`: the scenes whose graph
    the model never trained on) adds the retrieval, caption and VQA numbers on those scenes alone, keys ending in
    `_novel`. Introduced in notebook 03."""
    if kind not in SUITES:
        raise ValueError(f"kind={kind!r} is not one of {sorted(SUITES)}")
    return SUITES[kind](model, tokenizer, bench, novel)
