"""Text from scene graphs: every caption, answer and negative must be exactly right."""

import random
from collections import Counter

import pytest

from vlmlab.data.language import (
    END_OF_CHUNK,
    IMAGE_TOKEN,
    NEGATIVE_KINDS,
    NUMBER_WORDS,
    QUESTION_TYPES,
    SWAP_KINDS,
    a,
    answer_vocabulary,
    caption,
    captions,
    fewshot_sequence,
    hard_negatives,
    instructions,
    leaving_out,
    sample_vqa,
    vqa_pairs,
)
from vlmlab.data.shapes import HELDOUT_COMBOS, SHAPES, TRAIN_COMBOS, Obj, Scene, ShapesWorld


def make_scene(*objs):
    return Scene(tuple(objs), seed=0, split="train", index=0)


STAR = Obj("star", "red", "large", 1, 0, 0.15, 0.5)
CIRCLE = Obj("circle", "blue", "small", 1, 2, 0.85, 0.5)
SQUARE = Obj("square", "blue", "small", 0, 2, 0.85, 0.15)


def test_captions_of_a_hand_made_scene():
    scene = make_scene(STAR, CIRCLE)
    assert caption(scene) == "a large red star left of a small blue circle"
    assert "a small blue circle right of a large red star" in captions(scene)
    assert caption(make_scene(STAR)) == "a large red star"
    assert caption(make_scene(STAR, SQUARE, CIRCLE)) == "a large red star, a small blue square and a small blue circle"


def test_leaving_out_drops_only_size_and_colour_words_at_the_rate():
    scene = make_scene(STAR, CIRCLE)
    whole = caption(scene)  # 'a large red star left of a small blue circle'
    assert leaving_out(scene, whole, 0.0, random.Random(0)) == whole
    assert leaving_out(scene, whole, 1.0, random.Random(0)) == "a star left of a circle"
    drawn = [leaving_out(scene, whole, 0.5, random.Random(i)) for i in range(400)]
    assert all(text.count("star") == text.count("circle") == 1 and " left of " in text for text in drawn)
    kept = sum(text.count(word) for text in drawn for word in ("large", "red", "small", "blue")) / (4 * len(drawn))
    assert abs(kept - 0.5) < 0.05  # each of the four words kept half the time
    orange = make_scene(Obj("star", "orange", "large", 1, 0, 0.15, 0.5))
    drawn = {leaving_out(orange, "there is a large orange star", 0.5, random.Random(i)) for i in range(100)}
    assert drawn == {"there is a large orange star", "there is a large star", "there is an orange star",
                     "there is a star"}  # the article follows the first word kept
    with pytest.raises(ValueError, match="rate"):
        leaving_out(scene, whole, 1.5, random.Random(0))


def test_vertical_relation_when_objects_share_a_column():
    assert caption(make_scene(SQUARE, CIRCLE)) == "a small blue square above a small blue circle"


def test_vqa_answers_are_correct_for_a_hand_made_scene():
    qa = {q.question: (q.answer, q.qtype) for q in vqa_pairs(make_scene(STAR, CIRCLE))}
    assert qa["what color is the star?"] == ("red", "color")
    assert qa["what shape is the blue object?"] == ("circle", "shape")
    assert qa["what size is the blue circle?"] == ("small", "size")
    assert qa["how many objects are there?"] == ("two", "count")
    assert qa["where is the star relative to the circle?"] == ("left of", "position")
    assert qa["is there a red star?"] == ("yes", "exists")
    assert qa["is there a hexagon?"] == ("no", "exists")
    assert qa["what color is the hexagon?"] == ("there is no hexagon", "absent")
    assert qa["what size is the green star?"] == ("there is no green star", "absent")


def test_question_wording_never_gives_away_that_an_object_is_absent():
    answers_by_question = {}
    for scene in ShapesWorld(seed=6).scenes(1500):
        for qa in vqa_pairs(scene):
            answers_by_question.setdefault(qa.question, set()).add(qa.answer.startswith("there is no"))
    # held-out colour-shape pairs never occur in training scenes, so only they may always be absent
    heldout = {f"what size is the {c} {s}?" for s, c in HELDOUT_COMBOS}
    absent_questions = [q for q, kinds in answers_by_question.items() if True in kinds and q not in heldout]
    assert len(absent_questions) == len(SHAPES) + len(TRAIN_COMBOS)  # "what color is the {s}?", "what size is the {c} {s}?"
    assert all(answers_by_question[q] == {True, False} for q in absent_questions)


def test_sampled_existence_questions_are_balanced():
    world = ShapesWorld(seed=8)
    answers = [qa.answer for s in world.scenes(2000) for qa in sample_vqa(s, 7) if qa.qtype == "exists"]
    assert 0.45 < answers.count("yes") / len(answers) < 0.55


def test_ambiguous_references_are_never_asked():
    # two small blue objects: "the blue object" is ambiguous, so no shape question may use it
    questions = [q.question for q in vqa_pairs(make_scene(SQUARE, CIRCLE))]
    assert "what shape is the blue object?" not in questions
    assert "what shape is the small blue object?" not in questions


def test_every_question_type_occurs_and_answers_are_in_the_vocabulary():
    world, vocab, seen = ShapesWorld(seed=1), set(answer_vocabulary()), set()
    for scene in world.scenes(300):
        for qa in vqa_pairs(scene):
            assert qa.answer in vocab, qa
            seen.add(qa.qtype)
        # the count answer matches the scene graph
        assert {q.answer for q in vqa_pairs(scene) if q.question == "how many objects are there?"} == {
            NUMBER_WORDS[len(scene)]}
    assert seen == set(QUESTION_TYPES)


def test_sample_vqa_is_deterministic_and_varied():
    scene = ShapesWorld(seed=2).scene(5)
    assert sample_vqa(scene, 4) == sample_vqa(scene, 4)
    assert len({q.qtype for q in sample_vqa(scene, 4)}) == 4


def test_hard_negatives_are_false_and_reuse_the_words():
    scene = make_scene(STAR, CIRCLE)
    negs = {n.kind: n.text for n in hard_negatives(scene)}
    assert negs["attribute_swap"] == "a large blue star left of a small red circle"
    assert negs["relation_swap"] == "a small blue circle left of a large red star"
    assert negs["object_replacement"] != caption(scene)
    world = ShapesWorld(seed=3)
    for s in world.scenes(300):
        for n in hard_negatives(s):
            assert n.kind in NEGATIVE_KINDS and n.text not in captions(s)
            assert len(n.objects) == len(s.objects) and all(a(o.phrase) in n.text for o in n.objects)  # what it says
            if n.kind != "object_replacement":
                assert sorted(n.text.split()) == sorted(caption(s).split())


def test_hard_negatives_of_some_kinds_are_those_of_all_kinds_filtered():
    for s in ShapesWorld(seed=3).scenes(100):
        every = hard_negatives(s)
        assert hard_negatives(s, SWAP_KINDS) == [n for n in every if n.kind in SWAP_KINDS]
        assert hard_negatives(s, ("object_replacement",)) == [n for n in every if n.kind == "object_replacement"]
    for bad in ((), ("colour_swap",), "swaps"):
        with pytest.raises(ValueError, match="kinds"):
            hard_negatives(make_scene(STAR, CIRCLE), bad)


def test_hard_negatives_outside_heldout_never_name_a_heldout_pair():
    heldout_pairs = [f"{color} {shape}" for shape, color in HELDOUT_COMBOS]
    for split in ("train", "test"):
        texts = [n.text for s in ShapesWorld(seed=0).scenes(2000, split) for n in hard_negatives(s)]
        assert not [t for t in texts if any(pair in t for pair in heldout_pairs)]
        kinds = Counter(n.kind for s in ShapesWorld(seed=0).scenes(500, split) for n in hard_negatives(s))
        assert kinds["object_replacement"] > 450 and kinds["attribute_swap"] > 200  # the filter keeps most


def test_fewshot_sequence_interleaves_images_and_chunks():
    world = ShapesWorld(seed=4)
    support, query = world.scenes(3), world.scene(10)
    prompt, target = fewshot_sequence(support, query)
    assert prompt.count(IMAGE_TOKEN) == 4 and prompt.count(END_OF_CHUNK) == 3
    assert prompt.endswith(f"{IMAGE_TOKEN}Output:") and target == caption(query)
    prompt, target = fewshot_sequence(support, query, "vqa")
    assert prompt.endswith("Answer:") and target == sample_vqa(query)[0].answer


def test_instructions_have_the_three_llava_kinds():
    conv = instructions(ShapesWorld(seed=5).scene(1))
    assert set(conv) == {"conversation", "detailed_description", "complex_reasoning"}
    for turns in conv.values():
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith(IMAGE_TOKEN)
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)


def test_the_complex_reasoning_instruction_is_one_of_the_scenes_reasoning_questions():
    from vlmlab.data.language import instructions, reasoning_questions

    for scene in ShapesWorld(seed=0).scenes(200, "test"):
        asked = instructions(scene)["complex_reasoning"]
        kinds = {kind for kind, *_ in reasoning_questions(scene)}
        assert (asked[0]["value"].split("\n", 1)[1], asked[1]["value"]) in {(q, a) for _, q, a in reasoning_questions(scene)}
        assert "same_size" in kinds and ("remaining" in kinds) == (len(scene.objects) >= 2)
