"""A shipped model built on frozen parts uses exactly the files it was built on.

The bug this guards against: a learner runs notebook 01 on the cpu profile, which saves freshly trained tiny-gpt,
tiny-vit-detector and tiny-vit-detector-probe to the user cache, searched before the shipped checkpoints. Loading
notebook 04's shipped mapper (`zoo verify`, notebook 04 with TRAIN=False) then put it on the learner's GPT and
detector, which it was never trained with. Its config pins each frozen part by sha256: loading finds that file,
wherever it is, or stops and says what it found instead."""

import shutil

import pytest
import torch

from vlmlab import zoo
from vlmlab.frozen import checksum
from vlmlab.nn import CausalLM, ViT
from vlmlab.unimodal import CellProbe, RegionEncoder

NAME = "frozen-prefix-shapes"


def shipped(name: str):
    """A shipped checkpoint's model and record, by its path: nothing else of that name can stand in."""
    return zoo.load_model(zoo.SHIPPED / f"{name}.safetensors")


def save_other_backbones(names=("tiny-gpt", "tiny-vit-detector", "tiny-vit-detector-probe")) -> dict[str, str]:
    """What notebook 01 leaves in the user cache: the shipped configs with other (random) weights, saved under the
    shipped names. Returns {name: sha256}."""
    torch.manual_seed(1)
    found = {}

    def save(name, model):
        found[name] = zoo.read_record(zoo.save_model(name, model, {}, strategy="unimodal"))["sha256"]

    if "tiny-gpt" in names:
        save("tiny-gpt", CausalLM.from_config(shipped("tiny-gpt")[1]["config"]))
    if "tiny-vit-detector" in names:
        vit = ViT.from_config(shipped("tiny-vit-detector")[1]["config"])
        save("tiny-vit-detector", vit)
        probe = shipped("tiny-vit-detector-probe")[1]["config"]
        save("tiny-vit-detector-probe", RegionEncoder(vit, CellProbe(probe["n_patches"], probe["dim"]),
                                             {"name": "tiny-vit-detector", "sha256": found["tiny-vit-detector"]}))
    return found


def test_the_shipped_mapper_loads_on_the_shipped_backbones_whatever_the_user_cache_holds(user_cache):
    others = save_other_backbones()
    pins = shipped(NAME)[1]["depends"]
    for name, sha256 in others.items():  # the user cache now answers to the shipped names, with other files
        assert zoo.find_checkpoint(name).parent == user_cache and sha256 != shipped(name)[1]["sha256"]
    assert pins.keys() <= others.keys()

    model, record = zoo.load_model(NAME)  # as notebook 04 loads it with TRAIN=False
    assert record["location"] == "shipped"
    gpt, gpt_record = shipped("tiny-gpt")
    assert model.lm.ref == {"name": "tiny-gpt", "sha256": gpt_record["sha256"]} == {"name": "tiny-gpt",
                                                                                    "sha256": pins["tiny-gpt"]}
    assert model.lm.checksum() == checksum(gpt) != checksum(zoo.load_model("tiny-gpt")[0])
    detector = model.vision.regions  # the object lister reads notebook 01's ViT through its cell probe
    assert model.vision.spec["sha256"] == pins["tiny-vit-detector-probe"]
    regions, _ = shipped("tiny-vit-detector-probe")
    assert checksum(detector.probe) == checksum(regions.probe) and checksum(detector.vit) == checksum(regions.vit)
    assert checksum(detector.vit) == checksum(shipped("tiny-vit-detector")[0]) != checksum(zoo.load_model("tiny-vit-detector")[0])

    ok, message = zoo.verify(NAME, zoo.SHIPPED)  # `zoo verify`: measured again on the files it was built on
    assert ok, message


RIGHT_COPIES = {"tiny-gpt": ("tiny-vit-detector", "tiny-vit-detector-probe"),  # the other parts, as shipped
                "tiny-vit-detector-probe": ("tiny-gpt",)}


@pytest.mark.parametrize("missing", sorted(RIGHT_COPIES))
def test_without_a_pinned_file_loading_stops_and_says_what_it_found(missing, user_cache, tmp_path, monkeypatch):
    """The shipped folder moved away, a copy of the mapper elsewhere, and in the user cache only a different file of
    the pinned name (and the right copies of the other parts): loading stops with a CheckpointError naming the
    checkpoint, the hash it needs and the hash it found."""
    root = tmp_path / "copy"
    root.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(zoo.SHIPPED / f"{NAME}{suffix}", root)
    needed = zoo.read_record(root / f"{NAME}.safetensors")["depends"][missing]
    user_cache.mkdir(parents=True)
    for name in RIGHT_COPIES[missing]:
        for suffix in (".safetensors", ".json"):
            shutil.copy(zoo.SHIPPED / f"{name}{suffix}", user_cache)
    found = save_other_backbones(("tiny-gpt",) if missing == "tiny-gpt" else ("tiny-vit-detector",))[missing]
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "empty")
    (tmp_path / "empty").mkdir()

    with pytest.raises(zoo.CheckpointError) as error:
        zoo.load_model(NAME, root)
    message = str(error.value)
    assert f"'{missing}'" in message and needed[:12] in message and found[:12] in message
    assert found != needed
