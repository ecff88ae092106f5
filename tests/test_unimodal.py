"""Notebook 01's objectives: cell targets, the caption entropy bound, re-measuring shipped backbones."""

import json
import math
from collections import Counter
from dataclasses import asdict

import torch
import torch.nn.functional as F

from vlmlab import zoo
from vlmlab.data.language import caption
from vlmlab.data.loaders import ShapesDataset
from vlmlab.data.shapes import COLORS, SHAPES, SIZES, Obj, Scene, ShapesWorld
from vlmlab.nn import CausalLM, MLMHead, TextConfig, TextTransformer, ViT, ViTConfig
from vlmlab.tokenizer import load_tokenizer
from vlmlab.unimodal import (
    ATTRIBUTES,
    CellProbe,
    RegionEncoder,
    attribute_accuracy,
    caption_log_prob,
    cell_targets,
    grammar_perplexity,
    object_list,
    region_features,
    remeasure,
    scene_parsing_loss,
    verify_tiny,
)

TOK = load_tokenizer()


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


def test_grammar_perplexity_is_a_lower_bound_for_a_uniform_model():
    scenes = ShapesWorld(seed=0).scenes(200, "test")
    bound = grammar_perplexity(TOK, scenes)
    assert 1.5 < bound < len(TOK)  # far below the perplexity of guessing uniformly over the vocabulary


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


def test_region_tokens_are_the_probe_scores_of_each_cell():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=32, patch_size=8, dim=16, depth=1, n_heads=2))
    encoder = RegionEncoder(vit, CellProbe(vit.patch_embed.n_patches, 16))
    images = ShapesDataset(ShapesWorld(seed=0, image_size=32), "train", 5).images
    tokens = region_features(encoder, images, batch_size=2)  # [5, 9, 8 + 9 + 3]
    assert tokens.shape == (5, 9, encoder.dim) and encoder.dim == sum(len(v) + 1 for v in ATTRIBUTES.values())
    shape_scores = encoder.probe(vit(images.float() / 127.5 - 1).patches)["shape"]  # [5, 9, 8]
    torch.testing.assert_close(tokens[..., : shape_scores.size(-1)], shape_scores)


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


def _save_tiny(root):
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=64, patch_size=16, dim=16, depth=1, n_heads=2))
    probe = CellProbe(16, 16)
    gpt_config = TextConfig(vocab_size=len(TOK), max_len=32, dim=16, depth=1, n_heads=2, causal=True)
    bert_config = TextConfig(vocab_size=len(TOK), max_len=48, dim=16, depth=1, n_heads=2)
    gpt, bert, head = CausalLM(gpt_config), TextTransformer(bert_config), MLMHead(16, len(TOK))
    zoo.save_checkpoint("tiny-vit-probe", probe.state_dict(), {"n_patches": 16, "dim": 16}, root=root)
    zoo.save_checkpoint("tiny-bert-head", head.state_dict(), {"dim": 16}, root=root)
    zoo.save_checkpoint("tiny-vit", vit.state_dict(), asdict(vit.config), {"eval_seed": 0}, root=root)
    zoo.save_checkpoint("tiny-gpt", gpt.state_dict(), asdict(gpt.config), {"eval_seed": 0}, root=root)
    zoo.save_checkpoint("tiny-bert", bert.state_dict(), asdict(bert_config), {"eval_seed": 0}, root=root)
    for name in ("tiny-vit", "tiny-gpt", "tiny-bert"):  # record what they measure, as notebook 01 does
        record_path = root / f"{name}.json"
        record = json.loads(record_path.read_text())
        record["metrics"].update(remeasure(name, root))
        record_path.write_text(json.dumps(record))


def test_verify_tiny_remeasures_and_catches_a_wrong_record(tmp_path):
    _save_tiny(tmp_path)
    for name in ("tiny-vit", "tiny-gpt", "tiny-bert"):
        ok, message = verify_tiny(name, tmp_path)
        assert ok, message
    record_path = tmp_path / "tiny-gpt.json"
    record = json.loads(record_path.read_text())
    record["metrics"]["val_ppl"] = 1.01  # a claim the model does not live up to
    record_path.write_text(json.dumps(record))
    ok, message = verify_tiny("tiny-gpt", tmp_path)
    assert not ok and "val_ppl: recorded 1.0100" in message
