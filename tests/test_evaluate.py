"""Metrics on hand-made cases whose answers are worked out by hand."""

import pytest
import torch

from vlmlab.data.language import QA, captions
from vlmlab.data.shapes import COLORS, SPLITS, Obj, Scene, ShapesWorld
from vlmlab.evaluate import (
    absent_replies,
    attribute_f1,
    caption_facts,
    caption_metrics,
    caption_scores,
    group_scores,
    normalize_answer,
    paired_choice_accuracy,
    parse_caption,
    parse_objects,
    retrieval_metrics,
    retrieval_recall,
    scene_f1,
    scene_facts,
    vqa_accuracy,
    zero_shot_accuracy,
    zero_shot_predict,
)

# ---------------------------------------------------------------- retrieval and zero-shot


def test_identity_similarity_recalls_everything_at_1():
    assert retrieval_recall(torch.eye(4)) == {"r1": 1.0, "r5": 1.0, "r10": 1.0}


def test_hand_made_matrix_with_correct_items_at_ranks_0_2_1():
    similarity = torch.tensor([[1.0, 0.5, 0.2], [0.9, 0.1, 0.3], [0.2, 0.8, 0.5]])
    recall = retrieval_recall(similarity, ks=(1, 2, 5))
    assert recall == pytest.approx({"r1": 1 / 3, "r2": 2 / 3, "r5": 1.0})


def test_ties_count_against_the_query():
    assert retrieval_recall(torch.ones(3, 3), ks=(1, 2, 3)) == {"r1": 0.0, "r2": 0.0, "r3": 1.0}


def test_explicit_targets_with_several_correct_candidates():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5]])
    assert retrieval_recall(similarity, ks=(1,), targets=[{1, 2}, 0]) == {"r1": 0.5}
    assert retrieval_recall(similarity, ks=(1,), targets=torch.tensor([0, 0])) == {"r1": 1.0}


def test_retrieval_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="targets"):
        retrieval_recall(torch.eye(2), targets=[0, 5])
    with pytest.raises(ValueError, match="ks"):
        retrieval_recall(torch.eye(2), ks=(0,))


def test_retrieval_metrics_with_two_captions_per_image():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # t0, t1 belong to image 0; t2, t3 to image 1; t1 and t3 look like the other image
    texts = torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0]])
    metrics = retrieval_metrics(images, texts, ks=(1, 2), text_to_image=torch.tensor([0, 0, 1, 1]))
    assert metrics == {"i2t_r1": 0.0, "i2t_r2": 1.0, "t2i_r1": 0.5, "t2i_r2": 1.0}


def test_retrieval_metrics_uses_cosine_not_dot_product():
    images, texts = torch.eye(3), torch.eye(3) * torch.tensor([[1.0], [100.0], [0.01]])
    assert retrieval_metrics(images, texts, ks=(1,)) == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_metrics(torch.eye(2), torch.eye(3)[:, :2])


def test_zero_shot_uses_cosine_similarity():
    classes = torch.tensor([[10.0, 0.0], [1.0, 1.0]])
    images = torch.tensor([[0.5, 1.0], [3.0, 0.1], [0.0, 2.0]])  # dot product would pick class 0 for the first
    assert zero_shot_predict(images, classes).tolist() == [1, 0, 1]
    assert zero_shot_accuracy(images, classes, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("  The Red. ", "red"),
        ("an orange", "orange"),
        ("Two", "two"),
        ("2", "two"),
        ("yes!", "yes"),
        ("there is  no red star.", "there is no red star"),
        ("left of", "left of"),
        ("theatre", "theatre"),
    ],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_overall_and_by_type():
    predictions = ["Red.", "blue", "2", "three", "yes"]
    answers = ["red", "green", "two", "two", "yes"]
    qtypes = ["color", "color", "count", "count", "exists"]
    result = vqa_accuracy(predictions, answers, qtypes)
    assert result["overall"] == pytest.approx(3 / 5)
    assert result["count"] == 5
    assert result["by_type"] == {"color": 0.5, "count": 0.5, "exists": 1.0}
    assert result["counts"] == {"color": 2, "count": 2, "exists": 1}
    assert vqa_accuracy(["no"], ["yes"])["by_type"] == {"all": 0.0}
    with pytest.raises(ValueError, match="predictions"):
        vqa_accuracy(["a"], ["a", "b"])


def test_absent_replies_counts_colour_and_size_questions_answered_as_if_the_object_were_absent():
    qas = [QA("what color is the star?", "red", "color"), QA("what size is the red star?", "small", "size"),
           QA("what color is the hexagon?", "there is no hexagon", "absent"), QA("how many objects are there?", "one", "count")]
    assert absent_replies(["There is no star.", "small", "there is no hexagon", "there is no"], qas) == 0.5
    assert absent_replies(["red", "small", "there is no hexagon", "one"], qas) == 0.0
    with pytest.raises(ValueError, match="one prediction per question"):
        absent_replies(["red"], qas)
    with pytest.raises(ValueError, match="colour or size"):
        absent_replies(["there is no hexagon"], qas[2:3])


# ---------------------------------------------------------------- captions

REFERENCES = [
    ["a large red star left of a small blue circle", "a small blue circle right of a large red star"],
    ["a small green square above a large white hexagon"],
    ["a large orange triangle, a large green circle and a small white cross"],
]


def test_identical_captions_score_perfectly_and_degraded_ones_less(capsys):
    perfect = caption_metrics([refs[0] for refs in REFERENCES], REFERENCES)
    assert perfect["bleu4"] == pytest.approx(1.0)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["cider"] > 0
    degraded = caption_metrics(["a red star", "a small green square", "a large orange triangle"], REFERENCES)
    assert all(degraded[key] < perfect[key] for key in perfect)
    assert capsys.readouterr().out == ""


def test_case_and_punctuation_do_not_matter():
    plain = caption_metrics([refs[0] for refs in REFERENCES], REFERENCES)
    shouted = ["A large red star LEFT of a small blue circle.", REFERENCES[1][0].upper() + "!", REFERENCES[2][0]]
    shouted = caption_metrics(shouted, REFERENCES)
    assert shouted == pytest.approx(plain)


def test_rouge_l_hand_computed():
    # LCS("a red star", "a large red star") = 3: precision 3/3, recall 3/4, beta = 1.2
    p, r, beta2 = 1.0, 0.75, 1.2**2
    rouge_l = caption_metrics(["a red star"], [["a large red star"]])["rouge_l"]
    assert rouge_l == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))


def test_cider_is_zero_on_a_one_image_corpus():
    assert caption_metrics(["a large red star"], [["a large red star"]])["cider"] == 0.0


# ---------------------------------------------------------------- attribute F1


def make_scene(*objs):
    return Scene(tuple(objs), seed=0, split="train", index=0)


STAR = Obj("star", "red", "large", 1, 0, 0.15, 0.5)
CIRCLE = Obj("circle", "blue", "small", 1, 2, 0.85, 0.5)
TWO = make_scene(STAR, CIRCLE)


def test_parse_objects_synonyms_plurals_and_numbers():
    assert parse_objects("A big red star left of a tiny blue circle.") == [("large", "red", "star"), ("small", "blue", "circle")]
    assert parse_objects("two little green crosses") == [("small", "green", "cross")] * 2
    assert parse_objects("a red shiny star") == [(None, None, "star")]  # "shiny" breaks the phrase
    assert parse_objects("there are three shapes") == []


def test_facts_are_multisets():
    assert scene_facts(make_scene(STAR, STAR))[("color", "red", "star")] == 2
    assert caption_facts("a star") == {("shape", "star"): 1}
    half = attribute_f1(["a large red star"], [make_scene(STAR, STAR)])
    assert half == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    assert attribute_f1(["two large red stars"], [make_scene(STAR, STAR)])["f1"] == 1.0


def test_wrong_colour_missing_object_and_empty_caption():
    wrong_colour = attribute_f1(["a large green star left of a small blue circle"], [TWO])
    assert wrong_colour == pytest.approx({"precision": 5 / 6, "recall": 5 / 6, "f1": 5 / 6})
    missing = attribute_f1(["a large red star"], [TWO])
    assert missing == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    assert attribute_f1(["a nice picture"], [TWO]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    hallucinated = attribute_f1(["a large red star, a small blue circle and a large cyan diamond"], [TWO])
    assert hallucinated == pytest.approx({"precision": 6 / 9, "recall": 1.0, "f1": 0.8})


def test_attribute_f1_is_micro_averaged():
    # hits 5 + 3 + 0, predicted 6 + 3 + 0, gold 6 + 6 + 6
    texts = ["a large green star left of a small blue circle", "a large red star", "a nice picture"]
    p, r = 8 / 9, 8 / 18
    assert attribute_f1(texts, [TWO] * 3) == pytest.approx({"precision": p, "recall": r, "f1": 2 * p * r / (p + r)})


def test_every_informative_template_of_many_scenes_scores_f1_one():
    scenes = [scene for split in SPLITS for scene in ShapesWorld(seed=3).scenes(60, split)]
    canonical = [captions(scene)[0] for scene in scenes]
    assert attribute_f1(canonical, scenes)["f1"] == 1.0
    for scene in scenes:
        for text in captions(scene):
            score = attribute_f1([text], [scene])
            if text.startswith("there are"):  # "there are three shapes" names no object
                assert len(scene) >= 3 and score["recall"] == 0.0
            else:
                assert score["f1"] == 1.0, text


# ---------------------------------------------------------------- compositionality probes


def test_paired_choice_ties_are_wrong():
    assert paired_choice_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="score_pos"):
        paired_choice_accuracy(torch.ones(2), torch.ones(3))


def test_group_scores_follow_winoground_definitions():
    s = torch.tensor(
        [
            [[2.0, 1.0], [1.0, 2.0]],  # both right
            [[3.0, 2.0], [4.0, 5.0]],  # each image prefers its caption; caption 0 prefers image 1
            [[3.0, 4.0], [1.0, 5.0]],  # each caption prefers its image; image 0 prefers caption 1
        ]
    )
    assert group_scores(s) == pytest.approx({"text": 2 / 3, "image": 2 / 3, "group": 1 / 3})
    assert group_scores(torch.ones(4, 2, 2)) == {"text": 0.0, "image": 0.0, "group": 0.0}
    with pytest.raises(ValueError, match=r"\[N, 2, 2\]"):
        group_scores(torch.ones(2, 2))


def test_caption_scores_reward_the_true_caption_and_punish_a_wrong_colour():
    from vlmlab.data.language import caption

    scenes = ShapesWorld(seed=0, min_objects=1, max_objects=1).scenes(20, "test")
    right = caption_scores([caption(s) for s in scenes], scenes)
    assert right["attr_f1"] == 1.0 and right["bleu4"] > 0.99 and right["cider"] > 5
    other = {c: COLORS[(i + 1) % len(COLORS)] for i, c in enumerate(COLORS)}
    wrong = [caption(s).replace(s.objects[0].color, other[s.objects[0].color]) for s in scenes]  # size and shape still right
    scores = caption_scores(wrong, scenes)
    assert scores["attr_f1"] == pytest.approx(2 / 3) and scores["cider"] < right["cider"]


# ---------------------------------------------------------------- relations, exact scenes


def two_objects(rel_left=True):
    """A large red star and a small blue circle: side by side (star left) or stacked (star above)."""
    star = Obj("star", "red", "large", 0, 0, 0.15, 0.15)
    circle = Obj("circle", "blue", "small", 0, 2, 0.85, 0.15) if rel_left else Obj("circle", "blue", "small", 2, 0, 0.15, 0.85)
    return make_scene(star, circle)


def test_a_relation_and_its_inverse_state_the_same_fact():
    objects, relations = parse_caption("a small blue circle right of a large red star")
    assert objects == [("small", "blue", "circle"), ("large", "red", "star")]
    assert relations == [(("large", "red", "star"), "left of", ("small", "blue", "circle"))]
    assert parse_caption("the big red star left of a tiny blue circle")[1] == relations  # synonyms, articles
    assert parse_caption("a blue circle below a red star")[1] == [((None, "red", "star"), "above", (None, "blue", "circle"))]
    assert parse_caption("left of a red star")[1] == []  # nothing named before the relation: no fact
    assert parse_caption("a red star left of the picture")[1] == []  # no object after it: no fact


def test_scene_f1_counts_relations_and_exact_scenes():
    side, stacked = two_objects(), two_objects(rel_left=False)
    true = "a large red star left of a small blue circle"
    assert scene_f1([true, "a large red star above a small blue circle"], [side, stacked]) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "exact": 1.0}
    swapped = scene_f1(["a small blue circle left of a large red star"], [side])  # every attribute right, the relation wrong
    assert swapped["precision"] == pytest.approx(6 / 7) and swapped["recall"] == pytest.approx(6 / 7)
    assert swapped["exact"] == 0.0 and attribute_f1(["a small blue circle left of a large red star"], [side])["f1"] == 1.0
    no_relation = scene_f1(["a picture of a large red star and a small blue circle"], [side])  # says less, nothing false
    assert no_relation["precision"] == 1.0 and no_relation["recall"] == pytest.approx(6 / 7) and no_relation["exact"] == 0.0
    one = make_scene(Obj("star", "red", "large", 1, 1, 0.5, 0.5))
    assert scene_f1(["a large red star"], [one]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "exact": 1.0}


def test_every_caption_template_states_its_scene_exactly_except_the_ones_that_say_less():
    scenes = ShapesWorld(seed=0).scenes(300, "test")
    for variant in range(3):  # canonical, "there is ...", the inverse relation / "N objects: ..."
        said = [captions(s)[variant] for s in scenes]
        assert scene_f1(said, scenes) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "exact": 1.0}, variant
    said = [captions(s)[3] for s in scenes]  # "a picture of p and q" (no relation), "there are N shapes" (no object)
    result = scene_f1(said, scenes)
    assert result["precision"] == 1.0 and result["recall"] < 1.0 and result["exact"] == sum(len(s) == 1 for s in scenes) / 300


def test_caption_scores_report_scene_f1_exact_and_attribute_f1():
    scores = caption_scores(["a small blue circle left of a large red star"], [two_objects()])
    assert scores["f1"] == pytest.approx(6 / 7) and scores["attr_f1"] == 1.0 and scores["exact"] == 0.0
    assert {"bleu4", "rouge_l", "cider", "precision", "recall", "attr_precision", "attr_recall"} <= set(scores)
