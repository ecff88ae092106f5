"""The checkpoints shipped in data/checkpoints/ load through the generic zoo path, still measure what their records
say, and meet their notebooks' targets."""

import pytest
import torch
from known_misses import KNOWN_MISSES

from vlmlab import backbones, runs, zoo
from vlmlab.strategies import OWNERS

SHIPPED = [name for module in OWNERS.values() for name in module.SAVED]
OWNER = {name: owner for owner, module in OWNERS.items() for name in module.SAVED}


def shipped_record(name: str) -> dict:
    """The record of a shipped checkpoint, its sha256 checked."""
    return zoo.read_record(zoo.SHIPPED / f"{name}.safetensors")


def test_every_shipped_file_is_a_saved_checkpoint_of_some_strategy():
    on_disk = {path.stem for path in zoo.SHIPPED.glob("*.safetensors")} | {path.stem for path in zoo.SHIPPED.glob("*.json")}
    assert on_disk == set(SHIPPED) and len(SHIPPED) == len(OWNER)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_verifies(name, user_cache):
    """Hash, strategy and class; then, when its record names an evaluation set, measured again as recorded. The
    user cache is empty: the frozen parts a checkpoint pins must be found among the shipped files."""
    record = shipped_record(name)
    assert record["strategy"] == OWNER[name] and isinstance(getattr(OWNERS[OWNER[name]], record["model"]), type)
    for dependency, sha256 in record["depends"].items():  # every pin is a shipped file, exactly
        assert dependency in SHIPPED and shipped_record(dependency)["sha256"] == sha256, dependency
    if record["evalset"]:
        ok, message = zoo.verify(name, zoo.SHIPPED)
        assert ok, message
        assert message.removeprefix("re-measured ").strip(), f"{name}: no recorded metric was measured again"
    else:  # nothing to measure: it loads, as the class its record names
        model, loaded = zoo.load_model(name, zoo.SHIPPED)
        assert type(model).__name__ == record["model"] and loaded["sha256"] == record["sha256"]


# ---------------------------------------------------------------- the notebooks' targets, met by what they ship


PROFILE = "cpu"  # the shipped checkpoints were made with the cpu profile (their records say so)
SOURCES = {  # (owner, target metric) -> the shipped checkpoint that holds it, and its record's key or ratio of two keys
    ("unimodal", "vit_attr_acc"): ("tiny-vit-detector-probe", "attr_acc"),
    ("unimodal", "gpt_ppl_ratio"): ("tiny-gpt", ("val_ppl", "ppl_bound")),
    ("clip", "zs_color_acc"): ("negclip-shapes", "zs_color_acc"),  # notebook 02's final model: CLIP + NegCLIP
    ("clip", "zs_shape_acc"): ("negclip-shapes", "zs_shape_acc"),
    ("clip", "t2i_r1"): ("negclip-shapes", "t2i_r1"),
    ("clip", "relation_swap_acc_negclip"): ("negclip-shapes", "relation_swap_acc"),
    ("prefix_lm", "caption_f1"): ("prefixlm-shapes", "caption_f1"),
    ("prefix_lm", "vqa_acc"): ("prefixlm-shapes", "vqa_acc"),
    ("frozen_prefix", "caption_f1"): ("frozen-prefix-shapes", "caption_f1"),
    ("frozen_prefix", "vqa_acc"): ("frozen-prefix-shapes", "vqa_acc"),
    ("frozen_prefix", "trainable_fraction"): ("frozen-prefix-shapes", "trainable_fraction"),
    ("flamingo", "caption_f1"): ("flamingo-shapes", "caption_f1"),
    ("flamingo", "vqa_acc"): ("flamingo-shapes", "vqa_acc"),
    ("flamingo", "init_logits_max_diff"): ("flamingo-shapes", "init_logits_max_diff"),
    ("fusion", "relation_swap_acc"): ("vilt-shapes", "relation_swap_acc"),
    ("fusion", "mlm_acc_image"): ("vilt-shapes", "mlm_acc_image"),
    ("fusion", "vqa_acc"): ("vilt-shapes", "vqa_acc"),
    ("blip2", "caption_f1"): ("blip2-shapes", "caption_f1"),
    ("blip2", "vqa_acc"): ("blip2-shapes", "vqa_acc"),
    ("llava", "vqa_acc"): ("llava-shapes", "vqa_acc"),
    ("llava", "reasoning_acc"): ("llava-shapes", "reasoning_acc"),
    ("llava", "pope_acc"): ("llava-shapes", "pope_acc"),
    ("llava", "description_f1"): ("llava-shapes", "description_f1"),
}
TARGETS = [(owner, metric) for owner, module in OWNERS.items() if module.SAVED for metric in module.TARGETS[PROFILE]]


def value(name: str, key: str | tuple[str, str]) -> float:
    metrics = shipped_record(name)["metrics"]
    return metrics[key] if isinstance(key, str) else metrics[key[0]] / metrics[key[1]]


def test_every_target_of_a_shipping_notebook_has_a_shipped_source():
    assert set(TARGETS) == set(SOURCES) and set(KNOWN_MISSES) <= set(TARGETS)
    assert all(shipped_record(name)["metrics"]["profile"] == PROFILE for name in SHIPPED)


@pytest.mark.parametrize("owner, metric", [
    pytest.param(*target, marks=pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[target])) if target in KNOWN_MISSES
    else target for target in TARGETS])
def test_shipped_checkpoints_meet_their_notebooks_targets(owner, metric):
    op, bound = OWNERS[owner].TARGETS[PROFILE][metric]
    name, key = SOURCES[owner, metric]
    assert OWNER[name] == owner
    assert runs.COMPARISONS[op](value(name, key), bound), f"{name}: {metric} = {value(name, key):.4f}, target {op} {bound}"


def test_shipped_frozen_prefix_mapper_is_under_a_tenth_of_the_captioner(user_cache):
    m = shipped_record("frozen-prefix-shapes")["metrics"]
    model, _ = zoo.load_model("frozen-prefix-shapes", zoo.SHIPPED)
    frozen = [model.vision, model.lm]  # the vision tower is notebook 02's CLIP image side
    total = sum(p.numel() for module in frozen for p in module.parameters())
    n = sum(p.numel() for p in model.mapper.parameters())
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)  # the mapper is all that trains
    assert m["trainable_fraction"] == pytest.approx(n / (n + total), abs=1e-4)
    op, bound = OWNERS["frozen_prefix"].TARGETS[PROFILE]["trainable_fraction"]
    assert runs.COMPARISONS[op](m["trainable_fraction"], bound)


def test_tiny_backbones_load_through_the_registry(user_cache):
    # nothing in the user cache: the shipped files are used
    vit = backbones.load_image_encoder("tiny-vit-detector")
    vector, grid = vit.model(torch.zeros(2, 3, 64, 64))
    assert vector.shape == (2, vit.dims["vector"]) and grid.shape == (2, vit.dims["grid_dim"], *vit.dims["grid"])
    assert not any(p.requires_grad for p in vit.model.parameters())
    gpt = backbones.load_language_model("tiny-gpt")
    logits = gpt.model(**gpt.preprocess(["a large red star"])).logits
    assert logits.shape[-1] == gpt.dims["vocab"]
