"""The fixed Shapes World evaluation sets: deterministic, disjoint from training, and what they claim."""

import pytest
import torch

from vlmlab.data import evalsets, language, shapes


def test_distinct_caption_scenes_have_all_different_captions_from_the_test_split():
    scenes = evalsets.distinct_caption_scenes(seed=0, n=300)
    texts = [language.caption(s) for s in scenes]
    assert len(scenes) == 300 and len(set(texts)) == 300 and {s.split for s in scenes} == {"test"}
    assert evalsets.distinct_caption_scenes(seed=0, n=300) == scenes
    assert evalsets.distinct_caption_scenes(seed=1, n=300) != scenes


def test_single_and_heldout_objects():
    single = evalsets.single_objects(n=200)
    assert all(len(s.objects) == 1 for s in single) and {s.split for s in single} == {"test"}
    held = evalsets.heldout_objects(n=100)
    assert all((s.objects[0].shape, s.objects[0].color) in shapes.HELDOUT_COMBOS for s in held)


@pytest.mark.parametrize("kind", ["relation_swap", "attribute_swap"])
def test_swap_pairs_are_true_captions_and_their_negatives(kind):
    pairs = evalsets.swap_pairs(kind, n=50)
    assert len(pairs.scenes) == len(pairs.positives) == len(pairs.negatives) == 50
    for scene, pos, neg in zip(pairs.scenes, pairs.positives, pairs.negatives):
        assert pos == language.caption(scene) and pos != neg
        assert sorted(pos.split()) == sorted(neg.split())  # same words, different meaning: bag-of-words cannot tell
    with pytest.raises(ValueError, match="kind='rotation'"):
        evalsets.swap_pairs("rotation", n=5)


def test_images_of_renders_uint8():
    scenes = evalsets.single_objects(n=3)
    images = evalsets.images_of(scenes, image_size=32)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[1].permute(1, 2, 0), torch.from_numpy(shapes.render_array(scenes[1], 32)))


def test_vocabulary_templates_cover_the_other_words():
    colour = evalsets.prompt_templates("color", "vocabulary")
    assert len(colour) == len(shapes.SIZES) * len(shapes.SHAPES) and "a small {} circle" in colour
    assert "a large red {}" in evalsets.prompt_templates("shape", "vocabulary")
    with pytest.raises(ValueError, match="attribute='size'"):
        evalsets.prompt_templates("size")
    with pytest.raises(ValueError, match="kind='world'"):
        evalsets.prompt_templates("shape", "world")


def test_generic_templates_name_no_other_attribute():
    """CLIP's kind of prompt: the frame around the class name carries no colour, shape or size word."""
    world_words = set(shapes.COLORS) | set(shapes.SHAPES) | set(shapes.SIZES)
    for attribute in ("color", "shape", "pair"):
        templates = evalsets.prompt_templates(attribute)
        assert templates and all(t.count("{}") == 1 for t in templates)
        assert not world_words & {w for t in templates for w in t.replace("{}", " ").split()}, attribute


def test_vqa_questions_ask_about_their_scene_k_times():
    scenes = evalsets.generation_scenes(seed=0, n=20)
    index, qas = evalsets.vqa_questions(scenes, k=3)
    assert len(qas) == 60 and index == [i for i in range(20) for _ in range(3)]
    assert all(qa in language.vqa_pairs(scenes[i]) for i, qa in zip(index, qas))
    assert all(s.split == "test" for s in scenes) and evalsets.generation_scenes(seed=0, n=20) == scenes


def test_dual_encoder_bench_renders_every_set_once():
    bench = evalsets.DualEncoderBench.build(seed=0, n=12, image_size=32)
    assert bench.retrieval == evalsets.distinct_caption_scenes(0, 12) and bench.single == evalsets.single_objects(0, 12)
    assert bench.heldout == evalsets.heldout_objects(0, 6) and set(bench.swaps) == {"relation_swap", "attribute_swap"}
    assert set(bench.images) == {"retrieval", "single", "heldout", "relation_swap", "attribute_swap"}
    assert torch.equal(bench.images["single"], evalsets.images_of(bench.single, 32))
    assert torch.equal(bench.images["relation_swap"], evalsets.images_of(bench.swaps["relation_swap"].scenes, 32))


def test_scene_bench_has_its_scenes_images_and_questions():
    bench = evalsets.SceneBench.build(seed=1, n=10, image_size=32, questions_per_scene=2)
    assert bench.scenes == evalsets.generation_scenes(1, 10) and bench.images.shape == (10, 3, 32, 32)
    index, qas = evalsets.vqa_questions(bench.scenes, k=2)
    assert bench.question_scene == index and bench.questions == qas and len(qas) == 20


def test_build_from_a_spec_gives_the_same_bench_again():
    spec = {"kind": "scenes", "seed": 0, "n": 5, "image_size": 32}
    a, b = evalsets.build(spec), evalsets.SceneBench.build(seed=0, n=5, image_size=32)
    assert isinstance(a, evalsets.SceneBench) and a.scenes == b.scenes and torch.equal(a.images, b.images)
    assert isinstance(evalsets.build({"kind": "dual_encoder", "seed": 0, "n": 4, "image_size": 32}), evalsets.DualEncoderBench)
    both = evalsets.build({"kind": "fusion", "seed": 0, "n": 4, "image_size": 32})
    assert both.scenes.scenes == evalsets.SceneBench.build(seed=0, n=4).scenes and len(both.pairs.retrieval) == 4
    with pytest.raises(ValueError, match=r"kind='shapes' is not one of \['dual_encoder', 'fusion', 'scenes', 'world_text'\]"):
        evalsets.build({"kind": "shapes", "n": 5})


def test_novel_scenes_are_the_ones_whose_graph_training_never_showed():
    from vlmlab.data.evalsets import generation_scenes, graph_key, novel

    train = shapes.ShapesWorld(seed=0).scenes(3000, "train")
    test = generation_scenes(0, 400)
    picked = novel(test, train)
    seen = {graph_key(s) for s in train}
    assert picked == [i for i, s in enumerate(test) if graph_key(s) not in seen]
    assert 0 < len(picked) < len(test)  # one-object scenes repeat in training, four-object ones almost never do
    assert novel(test, test) == [] and novel(test, []) == list(range(len(test)))
    a, b = test[picked[0]], test[picked[0]]
    assert graph_key(a) == graph_key(b) and graph_key(a) == tuple(sorted(graph_key(a)))
