"""The checkpoints shipped in data/checkpoints/ load, and still measure what their records say."""

import pytest
import torch

from vlmlab import backbones, zoo
from vlmlab.strategies import frozen_prefix, prefix_lm
from vlmlab.strategies.clip import SAVED_CLIPS, verify_clip
from vlmlab.unimodal import TINY_BACKBONES, build_tiny, region_encoder, verify_tiny


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_shipped_tiny_backbone_remeasures_as_recorded(name):
    ok, message = verify_tiny(name, zoo.SHIPPED)
    assert ok, message


@pytest.mark.parametrize("name", SAVED_CLIPS)
def test_shipped_clip_remeasures_as_recorded(name):
    ok, message = verify_clip(name, zoo.SHIPPED)
    assert ok, message


@pytest.mark.parametrize("name, verify", [*[(n, prefix_lm.verify) for n in prefix_lm.SAVED],
                                           *[(n, frozen_prefix.verify) for n in frozen_prefix.SAVED]])
def test_shipped_captioners_remeasure_as_recorded(name, verify):
    ok, message = verify(name, zoo.SHIPPED)
    assert ok, message


def test_shipped_frozen_prefix_mapper_is_under_a_tenth_of_the_captioner():
    m = zoo.load_checkpoint(zoo.SHIPPED / "frozen-prefix-shapes.safetensors")[1]["metrics"]
    mapper = frozen_prefix.load_mapper("frozen-prefix-shapes", zoo.SHIPPED)
    frozen = [region_encoder(), build_tiny("tiny-gpt")]  # the vision tower is the ViT and its cell probe
    total = sum(p.numel() for module in frozen for p in module.parameters())
    n = sum(p.numel() for p in mapper.parameters())
    assert m["trainable_fraction"] == pytest.approx(n / (n + total), abs=1e-4) and m["trainable_fraction"] < 0.10


def test_shipped_negclip_meets_notebook_02_targets():
    _, record = zoo.load_checkpoint(zoo.SHIPPED / "negclip-shapes.safetensors")
    m = record["metrics"]
    assert m["zs_color_acc"] >= 0.95 and m["zs_shape_acc"] >= 0.95 and m["t2i_r1"] >= 0.70
    assert m["relation_swap_acc"] >= 0.90


def test_shipped_vit_meets_notebook_01_target():
    _, record = zoo.load_checkpoint(zoo.SHIPPED / "tiny-vit.safetensors")
    assert record["metrics"]["attr_acc"] >= 0.98
    _, record = zoo.load_checkpoint(zoo.SHIPPED / "tiny-gpt.safetensors")
    assert record["metrics"]["val_ppl"] <= 1.10 * record["metrics"]["ppl_bound"]


def test_tiny_backbones_load_through_the_registry(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path))  # nothing in the user cache: the shipped files are used
    vit = backbones.load_image_encoder("tiny-vit")
    vector, grid = vit.model(torch.zeros(2, 3, 64, 64))
    assert vector.shape == (2, vit.dims["vector"]) and grid.shape == (2, vit.dims["grid_dim"], *vit.dims["grid"])
    assert not any(p.requires_grad for p in vit.model.parameters())
    gpt = backbones.load_language_model("tiny-gpt")
    logits = gpt.model(**gpt.preprocess(["a large red star"])).logits
    assert logits.shape[-1] == gpt.dims["vocab"]
