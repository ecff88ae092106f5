"""The world's text as a language model's corpus (notebook 01's tiny LM): every kind of document, in the formats the
later notebooks prompt with, deterministic, and measured on held-out scenes."""

import pytest
import torch

from vlmlab import unimodal
from vlmlab.data import evalsets, world_text
from vlmlab.data.language import END_OF_CHUNK, IMAGE_TOKEN, QA, instructions
from vlmlab.data.shapes import ShapesWorld
from vlmlab.evaluate import blind_answerer
from vlmlab.nn import CausalLM, TextConfig


def test_every_scene_gives_one_document_of_each_kind_and_its_questions():
    scenes = ShapesWorld(seed=0).scenes(30, "train")
    docs = world_text.documents(scenes, seed=0)
    kinds = [k for k, _ in docs]
    assert len(docs) == 30 * (3 + world_text.QA_PER_SCENE)
    assert {k: kinds.count(k) for k in world_text.KINDS} == {"caption": 30, "qa": 30 * world_text.QA_PER_SCENE,
                                                              "instruction": 30, "interleaved": 30}
    qa_texts = [t for k, t in docs if k == "qa"]
    assert qa_texts == [f"{qa.question} {qa.answer}" for s in scenes for qa in world_text.questions(s)]
    assert docs == world_text.documents(scenes, seed=0) and docs != world_text.documents(scenes, seed=1)


def test_images_are_placeholders_in_the_formats_later_notebooks_prompt_with():
    docs = world_text.documents(ShapesWorld(seed=0).scenes(200, "train"), seed=0)
    images = {k: [t.count(IMAGE_TOKEN) for kk, t in docs if kk == k] for k in world_text.KINDS}
    assert set(images["caption"]) == set(images["qa"]) == {0}
    assert set(images["instruction"]) == {1}
    assert set(images["interleaved"]) == set(range(1, world_text.MAX_IMAGES + 1))  # 1 to 4 images, all occur
    for text in (t for k, t in docs if k == "interleaved"):
        assert text.count(END_OF_CHUNK) == text.count(IMAGE_TOKEN) - 1 and text.startswith(IMAGE_TOKEN)
    for text in (t for k, t in docs if k == "instruction"):
        assert text.startswith(f"USER: {IMAGE_TOKEN}\n") and not text.endswith(world_text.END_OF_TURN)


def test_chat_text_closes_every_assistant_turn_but_the_last_and_rejects_bad_turns():
    turns = instructions(ShapesWorld(seed=0).scene(3, "train"))["conversation"]
    text = world_text.chat_text(turns)
    assert text.count("USER: ") == text.count(" ASSISTANT: ") == len(turns) // 2
    assert text.count(world_text.END_OF_TURN) == len(turns) // 2 - 1
    assert text.split(world_text.END_OF_TURN)[1] == f"USER: {turns[2]['value']} ASSISTANT: {turns[3]['value']}"
    with pytest.raises(ValueError, match="alternate"):
        world_text.chat_text(turns[:3])
    with pytest.raises(ValueError, match="alternate"):
        world_text.chat_text(turns[1:3])


def test_blind_answerer_backs_off_from_question_to_type():
    train = [QA("is there a star?", "yes", "exists"), QA("is there a star?", "yes", "exists"),
             QA("is there a star?", "no", "exists"), QA("is there a cross?", "no", "exists"),
             QA("is there a circle?", "no", "exists")]
    answer = blind_answerer(train)
    assert answer(QA("is there a star?", "?", "exists")) == "yes"  # its own question's majority
    assert answer(QA("is there a square?", "?", "exists")) == "no"  # never seen: the type's majority
    assert answer(QA("how many?", "?", "count")) == "yes"  # an unseen type


def test_the_tiny_lm_is_measured_per_kind_of_text_and_by_blind_answers(tok):
    bench = evalsets.build({"kind": "world_text", "seed": 0, "n": 12})
    assert isinstance(bench, evalsets.WorldTextBench) and len(bench.questions) == 36
    torch.manual_seed(0)
    lm = CausalLM(TextConfig(vocab_size=len(tok), max_len=160, dim=32, depth=1, n_heads=2))
    metrics = unimodal.measure(lm, tok, bench)
    assert {f"lm_ppl_{k}" for k in world_text.KINDS} | {"lm_blind_vqa_acc"} <= set(metrics)
    assert all(metrics[f"lm_ppl_{k}"] > 50 for k in world_text.KINDS)  # random weights: near the vocabulary's 512
    assert metrics["lm_blind_vqa_acc"] == 0.0  # and nothing right
    qtypes = {qa.qtype for qa in bench.questions}
    assert {f"lm_blind_vqa_{t}_acc" for t in qtypes} <= set(metrics)


def test_the_tiny_lm_loads_frozen_through_the_language_model_interface(tiny_zoo):
    """Notebooks 04, 05, 08 and 09 reach the tiny LM through `lm.load_language_model`, pinned by its hash."""
    from vlmlab.lm import TinyLanguageModel, load_language_model

    lm = load_language_model(tiny_zoo["tiny-lm"])
    assert isinstance(lm, TinyLanguageModel) and lm.ref == tiny_zoo["tiny-lm"] and lm.max_len == 160
    assert not any(p.requires_grad for p in lm.parameters())
