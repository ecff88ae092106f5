"""A shipped model built on frozen parts uses exactly the files it was built on.

The bug this guards against: a learner runs notebooks 01 and 02 on the cpu profile, which save a freshly trained
tiny-lm and clip-shapes to the user cache, searched before the shipped checkpoints. Loading notebook 04's shipped
captioner (`zoo verify`, notebook 04 with TRAIN=False) then put its mapper on the learner's LM and CLIP tower, which
it was never trained with. Its config pins each frozen part by sha256: loading finds that file, wherever it is, or
stops and says what it found instead."""

import shutil

import pytest
import torch

from vlmlab import zoo
from vlmlab.frozen import checksum
from vlmlab.nn import CausalLM
from vlmlab.strategies.clip import CLIP

NAME = "frozen-prefix-shapes"
PARTS = ("tiny-lm", "clip-shapes")  # what the shipped captioner is built on


def shipped(name: str):
    """A shipped checkpoint's model and record, by its path: nothing else of that name can stand in."""
    return zoo.load_model(zoo.SHIPPED / f"{name}.safetensors")


def save_other_backbones(names=PARTS) -> dict[str, str]:
    """What notebooks 01 and 02 leave in the user cache: the shipped configs with other (random) weights, saved under
    the shipped names. Returns {name: sha256}."""
    torch.manual_seed(1)
    kinds = {"tiny-lm": (CausalLM, "unimodal"), "clip-shapes": (CLIP, "clip")}
    found = {}
    for name in names:
        cls, strategy = kinds[name]
        model = cls.from_config(shipped(name)[1]["config"])
        found[name] = zoo.read_record(zoo.save_model(name, model, {}, strategy=strategy))["sha256"]
    return found


def test_the_shipped_captioner_loads_on_the_shipped_parts_whatever_the_user_cache_holds(user_cache):
    others = save_other_backbones()
    pins = shipped(NAME)[1]["depends"]
    for name, sha256 in others.items():  # the user cache now answers to the shipped names, with other files
        assert zoo.find_checkpoint(name).parent == user_cache and sha256 != shipped(name)[1]["sha256"]
    assert pins.keys() == set(PARTS)

    model, record = zoo.load_model(NAME)  # as notebook 04 loads it with TRAIN=False
    assert record["location"] == "shipped"
    lm, lm_record = shipped("tiny-lm")
    assert model.lm.ref == {"name": "tiny-lm", "sha256": lm_record["sha256"]} == {"name": "tiny-lm", "sha256": pins["tiny-lm"]}
    assert model.lm.checksum() == checksum(lm) != checksum(zoo.load_model("tiny-lm")[0])
    assert model.vision.spec["sha256"] == pins["clip-shapes"]
    tower = shipped("clip-shapes")[0].image_tower
    image_tower = getattr(model.vision, "image_tower", None) or model.vision.vit  # CLIP's embedding, or its tokens
    assert checksum(image_tower) == checksum(tower) != checksum(zoo.load_model("clip-shapes")[0].image_tower)

    ok, message = zoo.verify(NAME, zoo.SHIPPED)  # `zoo verify`: measured again on the files it was built on
    assert ok, message


@pytest.mark.parametrize("missing", PARTS)
def test_without_a_pinned_file_loading_stops_and_says_what_it_found(missing, user_cache, tmp_path, monkeypatch):
    """The shipped folder moved away, a copy of the captioner elsewhere, and in the user cache only a different file
    of the pinned name (and the right copy of the other part): loading stops with a CheckpointError naming the
    checkpoint, the hash it needs and the hash it found."""
    root = tmp_path / "copy"
    root.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(zoo.SHIPPED / f"{NAME}{suffix}", root)
    needed = zoo.read_record(root / f"{NAME}.safetensors")["depends"][missing]
    user_cache.mkdir(parents=True)
    for name in set(PARTS) - {missing}:
        for suffix in (".safetensors", ".json"):
            shutil.copy(zoo.SHIPPED / f"{name}{suffix}", user_cache)
    found = save_other_backbones((missing,))[missing]
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "empty")
    (tmp_path / "empty").mkdir()

    with pytest.raises(zoo.CheckpointError) as error:
        zoo.load_model(NAME, root)
    message = str(error.value)
    assert f"'{missing}'" in message and needed[:12] in message and found[:12] in message
    assert found != needed
