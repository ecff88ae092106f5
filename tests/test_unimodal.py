"""Notebook 01's objectives: cell targets, the caption entropy bound, region tokens and object lists, the frozen
vision towers a config pins, and re-measuring saved backbones through the zoo."""

import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from vlmlab import zoo
from vlmlab.data import evalsets
from vlmlab.data.language import caption
from vlmlab.data.loaders import ShapesDataset, to_float
from vlmlab.data.shapes import COLORS, SHAPES, SIZES, Obj, Scene, ShapesWorld
from vlmlab.nn import CausalLM, TextTransformer, ViT, ViTConfig
from vlmlab.unimodal import (
    ATTRIBUTES,
    CellProbe,
    MaskedLM,
    ObjectLister,
    RegionEncoder,
    ViTFeatures,
    attribute_accuracy,
    caption_log_prob,
    cell_accuracy,
    cell_targets,
    grammar_perplexity,
    measure,
    object_list,
    probe_accuracy,
    probe_set,
    region_features,
    scene_parsing_loss,
    vision_tower,
)


def test_cell_targets_of_a_hand_made_scene():
    scene = Scene((Obj("star", "red", "large", 1, 0, 0.15, 0.5),), 0, "train", 0)
    t = cell_targets(scene)
    assert t.shape == (9, 3)
    assert t[3].tolist() == [ATTRIBUTES["shape"].index("star") + 1, ATTRIBUTES["color"].index("red") + 1, 2]
    assert t.sum() == t[3].sum()  # every other cell is empty (0)


def test_caption_probability_matches_the_sampler():
    world = ShapesWorld(seed=3)
    scenes = world.scenes(20000)
    # one object: every caption has probability 1/4 (count) * 1/98 (combination and size)
    one = next(s for s in scenes if len(s) == 1)
    assert math.isclose(caption_log_prob(one), math.log(1 / 4 / 98))
    # two objects: "above" (same column) should occur with the probability the bound uses
    pairs = [s for s in scenes if len(s) == 2]
    above = sum(s.objects[0].col == s.objects[1].col for s in pairs) / len(pairs)
    assert abs(above - 0.25) < 0.02
    # the empirical caption distribution of one-object scenes is uniform over 98 captions
    counts = Counter(caption(s) for s in scenes if len(s) == 1)
    assert len(counts) == 98


def test_grammar_perplexity_is_a_lower_bound_for_a_uniform_model(tok):
    scenes = ShapesWorld(seed=0).scenes(200, "test")
    bound = grammar_perplexity(tok, scenes)
    assert 1.5 < bound < len(tok)  # far below the perplexity of guessing uniformly over the vocabulary


def test_cell_probe_shapes_and_loss_falls_on_a_small_batch():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, n_heads=4))
    probe = CellProbe(vit.patch_embed.n_patches, 32)
    data = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", 16)
    images, targets = data.images, torch.stack([cell_targets(s) for s in data.scenes])
    opt = torch.optim.AdamW([*vit.parameters(), *probe.parameters()], lr=3e-3)
    first = scene_parsing_loss(vit, probe, images, targets).item()
    for _ in range(40):
        loss = scene_parsing_loss(vit, probe, images, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    acc = attribute_accuracy(vit, probe, images, targets)
    assert set(acc) == {"shape_acc", "color_acc", "size_acc", "attr_acc", "occupancy_acc"}


def test_cell_accuracy_counts_occupied_cells_only():
    targets = torch.tensor([[[1, 2, 1]] + [[0, 0, 0]] * 8])  # one object in cell 0
    logits = {name: torch.zeros(1, 9, n) for name, n in zip(ATTRIBUTES, (8, 9, 3))}
    logits["shape"][0, 0, 1] = logits["color"][0, 0, 5] = logits["size"][0, 0, 1] = 1.0  # right shape/size, wrong colour
    acc = cell_accuracy(logits, targets)
    assert (acc["shape_acc"], acc["color_acc"], acc["size_acc"]) == (1.0, 0.0, 1.0)
    assert acc["attr_acc"] == pytest.approx(2 / 3) and acc["occupancy_acc"] == 1.0  # empty cells predicted empty


def test_linear_probe_reads_a_frozen_vit_and_never_trains_it():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=64, patch_size=16, dim=16, depth=1, n_heads=2))
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    bench = evalsets.SceneBench.build(0, 50)
    images, targets = probe_set(500)
    assert images.shape == (500, 3, 64, 64) and targets.shape == (500, 9, 3)
    acc = probe_accuracy(vit, bench, (images, targets), steps=200)
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())
    empty = (torch.stack([cell_targets(sc) for sc in bench.scenes])[..., 0] == 0).float().mean().item()
    assert acc["occupancy_acc"] > empty + 0.03 and acc["color_acc"] > 1 / 8  # better than "all empty" and than chance
    assert {f"probe_{k}" for k in acc} == set(measure(vit, None, bench))  # measure(ViT): the default probe budget


def test_region_tokens_are_the_probe_scores_of_each_cell():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=32, patch_size=8, dim=16, depth=1, n_heads=2))
    encoder = RegionEncoder(vit, CellProbe(vit.patch_embed.n_patches, 16))
    images = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", 5).images
    tokens = region_features(encoder, images, batch_size=2)  # [5, 9, 8 + 9 + 3]
    assert tokens.shape == (5, 9, encoder.dim) and encoder.dim == sum(len(v) + 1 for v in ATTRIBUTES.values())
    shape_scores = encoder.probe(vit(images.float() / 127.5 - 1).patches)["shape"]  # [5, 9, 8]
    torch.testing.assert_close(tokens[..., : shape_scores.size(-1)], shape_scores)
    with torch.no_grad():  # the encoder itself reads float pixels in [-1, 1], the form every model takes
        torch.testing.assert_close(encoder(to_float(images)), tokens)


def test_the_object_list_names_the_objects_in_the_captions_order():
    """Region scores that are sure of every cell (the scene's own cell targets, as logits) give back the scene's
    objects in its caption's order, then empty rows, then the count."""
    scene = next(s for s in ShapesWorld(seed=0).scenes(40, "train") if len(s.objects) == 3)
    sizes = [len(v) + 1 for v in ATTRIBUTES.values()]
    regions = torch.cat([F.one_hot(t, n) * 50.0 for t, n in zip(cell_targets(scene).unbind(-1), sizes)], dim=-1)
    listed = object_list(regions[None])  # [1, 4 * 18 + 4]
    objects, count = listed[0, :72].view(4, 18), listed[0, 72:]
    for row, obj in zip(objects, scene.objects):
        assert (row[:7].argmax().item(), row[7:15].argmax().item(), row[15:17].argmax().item(), row[17].item()) == (
            SHAPES.index(obj.shape), COLORS.index(obj.color), SIZES.index(obj.size), 1.0)
    assert objects[3].abs().sum() == 0 and count.tolist() == [0, 0, 1, 0]


def test_vision_towers_load_the_pinned_files_and_carry_their_spec(tiny_zoo):
    pixels = to_float(ShapesDataset(ShapesWorld(seed=0), "train", 2).images)
    expected = {"vit": (ViTFeatures, (2, 17, 16)), "regions": (RegionEncoder, (2, 9, 20)), "objects": (ObjectLister, (2, 76))}
    for tower, (kind, shape) in expected.items():
        name = "tiny-vit-detector" if tower == "vit" else "tiny-vit-detector-probe"
        model = vision_tower({"tower": tower, **tiny_zoo[name]})
        assert isinstance(model, kind) and model.spec == {"tower": tower, **tiny_zoo[name]}
        assert not any(p.requires_grad for p in model.parameters()) and not model.training  # frozen
        with torch.no_grad():
            assert model(pixels).shape == shape
    unpinned = vision_tower({"tower": "regions", "name": "tiny-vit-detector-probe"})  # no hash: any file of that name
    assert unpinned.spec["sha256"] == tiny_zoo["tiny-vit-detector-probe"]["sha256"]
    with pytest.raises(ValueError, match="'patches'"):
        vision_tower({"tower": "patches", **tiny_zoo["tiny-vit-detector"]})


def test_the_clip_towers_are_notebook_02s_image_tower_and_embedding(user_cache):
    pixels = to_float(ShapesDataset(ShapesWorld(seed=0), "train", 2).images)
    clip, record = zoo.load_model("clip-shapes")  # the shipped one: the user cache is empty
    tokens = vision_tower({"tower": "clip", "name": "clip-shapes"})
    embedding = vision_tower({"tower": "clip-embedding", "name": "clip-shapes", "sha256": record["sha256"]})
    for model in (tokens, embedding):
        assert model.spec["sha256"] == record["sha256"] and not any(p.requires_grad for p in model.parameters())
    assert "text_tower" not in dict(embedding.named_children())  # a captioner keeps the image side only
    with torch.no_grad():
        torch.testing.assert_close(tokens(pixels), clip.image_tower(pixels).hidden)  # [2, 10, D]: the tower reads 48 px
        torch.testing.assert_close(embedding(pixels), clip.encode_image(pixels))  # [2, E], unit vectors
    penultimate = vision_tower({"tower": "clip-penultimate", "name": "clip-shapes"})  # LLaVA's features (notebook 09)
    vit = clip.image_tower
    with torch.no_grad():
        x = vit.tokens(pixels)
        for block in vit.blocks[:-1]:
            x = block(x)
        torch.testing.assert_close(penultimate(pixels), x[:, 1:])  # [2, 9, D]: patches only, before the last block
        assert not torch.allclose(penultimate(pixels), tokens(pixels)[:, 1:])


EVALSET = {"kind": "scenes", "seed": 0, "n": 40}


def test_saved_backbones_remeasure_and_a_wrong_record_is_caught(tiny_zoo, tok, tmp_path):
    """Notebook 01's measured models (the detector, the GPT, the BERT with its head) saved with what they measure
    on an evaluation set: `zoo.verify` measures them again; a record claiming more than the model does fails."""
    bench, root = evalsets.build(EVALSET), tmp_path / "zoo"
    for name in ("tiny-vit-detector-probe", "tiny-gpt", "tiny-bert-head"):
        model, _ = zoo.load_model(name)
        metrics = measure(model, tok, bench)
        assert set(metrics) == {"tiny-vit-detector-probe": {"shape_acc", "color_acc", "size_acc", "attr_acc", "occupancy_acc"},
                                "tiny-gpt": {"val_ppl", "ppl_bound"}, "tiny-bert-head": {"mlm_acc"}}[name]
        zoo.save_model(name, model, metrics, strategy="unimodal", evalset=EVALSET, root=root)
        ok, message = zoo.verify(name, root)
        assert ok, message
    record_path = root / "tiny-gpt.json"
    record = json.loads(record_path.read_text())
    record["metrics"]["val_ppl"] = 1.01  # a claim the model does not live up to
    record_path.write_text(json.dumps(record))
    ok, message = zoo.verify("tiny-gpt", root)
    assert not ok and "val_ppl: recorded 1.0100" in message
    with pytest.raises(TypeError, match="Linear is not one of notebook 01's measured models"):
        measure(torch.nn.Linear(2, 2), tok, bench)


def test_saved_heads_hold_only_what_they_trained_and_pin_their_backbone(tiny_zoo):
    """tiny-vit-detector-probe holds the probe and tiny-bert-head the MLM head; each pins the backbone it was trained on."""
    for name, part, backbone, kind in (("tiny-vit-detector-probe", "probe.", "tiny-vit-detector", ViT),
                                        ("tiny-bert-head", "head.", "tiny-bert", TextTransformer)):
        state, record = zoo.load_checkpoint(name)
        assert state and all(key.startswith(part) for key in state)
        assert record["depends"] == {backbone: tiny_zoo[backbone]["sha256"]}
        model, _ = zoo.load_model(name)
        assert isinstance(model, RegionEncoder | MaskedLM) and isinstance(next(iter(model.frozen_parts().values())), kind)
    gpt, record = zoo.load_model("tiny-gpt")
    assert isinstance(gpt, CausalLM) and record["depends"] == {}
