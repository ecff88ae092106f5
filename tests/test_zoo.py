"""The checkpoint store: exact round trips, hash and config checks, atomic writes, lookup order, format-2 records,
pinned dependencies, and models saved, rebuilt and measured again."""

import json
import os
from datetime import datetime

import pytest
import torch

from vlmlab import unimodal, zoo
from vlmlab.data.evalsets import SceneBench
from vlmlab.nn import CausalLM
from vlmlab.unimodal import RegionEncoder
from vlmlab.zoo import (
    CheckpointError,
    CheckpointNotFound,
    compare_metrics,
    config_dict,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    ref_of,
    refs_in,
    save_checkpoint,
    save_model,
    sha256_file,
    verify,
    verify_all,
)

CONFIG = {"d_model": 64, "n_layer": 2, "act": "gelu", "sizes": [1, 2]}


@pytest.fixture(autouse=True)
def cache(user_cache, tmp_path, monkeypatch):
    """A private user cache and an empty shipped folder for every test."""
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "shipped")
    return user_cache


def state():
    torch.manual_seed(0)
    w = torch.randn(4, 3)
    return {"w": w, "tied": w, "wt": w.t(), "b": torch.randn(3), "count": torch.tensor([7], dtype=torch.int64)}


def test_roundtrip_fp32_is_exact_and_record_is_complete(cache):
    path = save_checkpoint("tiny", state(), CONFIG, metrics={"acc": 0.5})
    assert path == cache / "tiny.safetensors"
    loaded, record = load_checkpoint("tiny")
    for k, v in state().items():
        assert torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype
    assert record["name"] == "tiny" and record["format"] == 2
    assert record["config"] == CONFIG and record["metrics"] == {"acc": 0.5}
    assert record["strategy"] is None and record["model"] is None and record["evalset"] is None and record["depends"] == {}
    assert record["sha256"] == sha256_file(path) and record["dtype"] == "float32"
    assert record["location"] == "user" and record["path"] == str(path)
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert set(on_disk) == {"name", "format", "strategy", "model", "config", "depends", "evalset", "metrics", "sha256",
                            "created", "dtype"}


def test_fp16_cast_touches_only_floating_tensors():
    save_checkpoint("half", state(), CONFIG, dtype="fp16")
    loaded, record = load_checkpoint("half")
    assert loaded["w"].dtype == torch.float16 and loaded["count"].dtype == torch.int64
    assert torch.equal(loaded["count"], torch.tensor([7]))
    torch.testing.assert_close(loaded["w"].float(), state()["w"], atol=2e-3, rtol=1e-3)
    assert record["dtype"] == "float16"


def test_a_flipped_byte_is_caught_by_the_sha256(cache):
    path = save_checkpoint("tiny", state(), CONFIG)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data, so the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: sha256 differs from its record \(expected [0-9a-f]{12}…"):
        load_checkpoint("tiny")


def test_config_mismatch_names_each_key_and_both_values():
    save_checkpoint("tiny", state(), CONFIG)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("tiny", expected_config={**CONFIG, "d_model": 128, "n_layer": 4})
    message = str(err.value)
    assert "config differs from" in message and "tiny.json" in message
    assert "d_model: checkpoint has 64, you asked for 128" in message
    assert "n_layer: checkpoint has 2, you asked for 4" in message
    assert "act" not in message
    # a tuple where the record has a list is the same config
    loaded, _ = load_checkpoint("tiny", expected_config={**CONFIG, "sizes": (1, 2)})
    assert torch.equal(loaded["b"], state()["b"])


def test_config_key_missing_on_one_side_is_reported():
    save_checkpoint("tiny", state(), {"d_model": 64})
    with pytest.raises(CheckpointError, match=r"dropout: checkpoint has \(absent\), you asked for 0\.1"):
        load_checkpoint("tiny", expected_config={"d_model": 64, "dropout": 0.1})


def test_saves_leave_no_temp_files(cache):
    save_checkpoint("tiny", state(), CONFIG)
    save_checkpoint("tiny", state(), CONFIG, metrics={"acc": 1.0})
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_a_failed_write_keeps_the_old_checkpoint(cache, monkeypatch):
    save_checkpoint("tiny", state(), CONFIG)

    def broken_replace(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m, pytest.raises(OSError, match="disk full"):
        m.setattr(os, "replace", broken_replace)
        save_checkpoint("tiny", {"w": torch.zeros(2)}, CONFIG)
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.json", "tiny.safetensors"]
    loaded, _ = load_checkpoint("tiny")
    assert torch.equal(loaded["w"], state()["w"])


def test_missing_checkpoint_says_where_it_looked(cache):
    with pytest.raises(CheckpointNotFound) as err:
        load_checkpoint("tiny-vit-detector")
    message = str(err.value)
    assert "'tiny-vit-detector'" in message and str(cache) in message and str(zoo.SHIPPED) in message
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(CheckpointNotFound, match="nowhere.safetensors does not exist"):
        load_checkpoint(cache / "nowhere.safetensors")


def test_missing_record_is_an_error(cache):
    path = save_checkpoint("tiny", state(), CONFIG)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="has no record tiny.json"):
        load_checkpoint("tiny")


def test_user_cache_wins_over_shipped_and_paths_work(cache):
    save_checkpoint("tiny", {"x": torch.zeros(1)}, CONFIG, root=zoo.SHIPPED)
    _, record = load_checkpoint("tiny")
    assert record["location"] == "shipped"
    save_checkpoint("tiny", {"x": torch.ones(1)}, CONFIG)
    loaded, record = load_checkpoint("tiny")
    assert record["location"] == "user" and loaded["x"].item() == 1.0
    for ref in (zoo.SHIPPED / "tiny.json", str(zoo.SHIPPED / "tiny.safetensors"), zoo.SHIPPED / "tiny"):
        assert load_checkpoint(ref)[0]["x"].item() == 0.0


def test_list_and_verify(cache):
    save_checkpoint("a", state(), CONFIG)
    save_checkpoint("b", state(), CONFIG)
    save_checkpoint("s", state(), CONFIG, root=zoo.SHIPPED, dtype=torch.float16)
    (cache / "b.safetensors").write_bytes(b"not the same file")
    (cache / "orphan.json").write_text("{}")
    records = list_checkpoints()
    assert [(r["name"], r["location"], "error" in r) for r in records] == [
        ("a", "user", False), ("b", "user", True), ("s", "shipped", False)]
    results = verify_all()
    assert [(name, ok) for name, ok, _ in results] == [("a", True), ("b", False), ("orphan", False), ("s", True)]
    assert "sha256" in results[1][2] and "missing" in results[2][2]
    assert [name for name, _, _ in verify_all(root=zoo.SHIPPED)] == ["s"]


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "x.safetensors"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="not a valid checkpoint name"):
        save_checkpoint(name, state(), CONFIG)


def test_bad_dtype_and_bad_values_are_refused(cache):
    with pytest.raises(ValueError, match=r"dtype='int8' is not allowed"):
        save_checkpoint("tiny", state(), CONFIG, dtype="int8")
    with pytest.raises(TypeError, match=r"state_dict\['n'\] is a int"):
        save_checkpoint("tiny", {"n": 3}, CONFIG)
    with pytest.raises(TypeError, match="JSON values"):
        save_checkpoint("tiny", state(), {"f": object()})
    assert not cache.exists() or not any(cache.iterdir())


def test_a_format_1_record_is_refused_with_a_message(cache):
    path = save_checkpoint("old", state(), CONFIG)
    record = json.loads(path.with_suffix(".json").read_text())
    old = {k: record[k] for k in ("name", "config", "metrics", "sha256", "created", "dtype")} | {"format": 1}
    path.with_suffix(".json").write_text(json.dumps(old))
    with pytest.raises(CheckpointError, match="old.json has format 1; this vlmlab reads format 2") as err:
        load_checkpoint("old")
    assert "run the notebook that made it again" in str(err.value)
    assert "format 1" in list_checkpoints()[0]["error"]
    assert [(name, ok) for name, ok, _ in verify_all()] == [("old", False)]


# ---- pinned dependencies ----


def test_a_pinned_sha256_finds_exactly_that_file(cache, tmp_path):
    user = save_checkpoint("dep", {"x": torch.ones(1)}, CONFIG)
    shipped = save_checkpoint("dep", {"x": torch.zeros(1)}, CONFIG, root=zoo.SHIPPED)
    user_hash, shipped_hash = sha256_file(user), sha256_file(shipped)
    assert find_checkpoint("dep") == user  # without a hash: the user cache first
    assert find_checkpoint("dep", sha256=shipped_hash) == shipped
    assert find_checkpoint("dep", sha256=user_hash) == user
    loaded, record = load_checkpoint("dep", sha256=shipped_hash)
    assert loaded["x"].item() == 0.0 and record["location"] == "shipped"
    other = save_checkpoint("dep", {"x": torch.full((1,), 2.0)}, CONFIG, root=tmp_path / "elsewhere")
    assert find_checkpoint("dep", root=tmp_path / "elsewhere", sha256=shipped_hash) == shipped  # root, then the rest
    assert find_checkpoint("dep", root=tmp_path / "elsewhere", sha256=sha256_file(other)) == other
    with pytest.raises(CheckpointError, match=r"checkpoint 'dep' with sha256 0{12}… is needed") as err:
        find_checkpoint("dep", sha256="0" * 64)
    message = str(err.value)
    assert f"has {user_hash[:12]}" in message and f"has {shipped_hash[:12]}" in message and "git checkout" in message
    assert not isinstance(err.value, CheckpointNotFound)


def test_refs_in_a_config_become_the_records_depends():
    config = {"lm": {"name": "tiny-gpt", "sha256": "a" * 64}, "towers": [{"tower": "regions", "name": "tiny-vit-detector-probe",
                                                                          "sha256": "b" * 64}],
              "text": {"name": "smollm2-135m", "sha256": None}, "dim": 4}
    assert refs_in(config) == {"tiny-gpt": "a" * 64, "tiny-vit-detector-probe": "b" * 64}  # a pretrained package is not pinned
    path = save_checkpoint("mapper", state(), config)
    assert json.loads(path.with_suffix(".json").read_text())["depends"] == refs_in(config)
    assert ref_of({"name": "x", "sha256": "c" * 64, "metrics": {}}) == {"name": "x", "sha256": "c" * 64}


def test_config_dict_reads_every_kind_of_config():
    from vlmlab.nn import TextConfig
    from vlmlab.strategies.prefix_lm import Config

    class WithDict(torch.nn.Module):
        config = {"a": 1}

    lm = CausalLM(TextConfig(vocab_size=10, max_len=8, dim=8, depth=1, n_heads=2))
    assert config_dict(lm)["vocab_size"] == 10 and config_dict(lm)["causal"] is True  # a dataclass
    prefix_lm = type("P", (), {"config": Config(vocab_size=10)})()
    assert config_dict(prefix_lm) == Config(vocab_size=10).to_dict()  # to_dict()
    assert config_dict(WithDict()) == {"a": 1}


def test_compare_metrics_within_tolerance():
    ok, message = compare_metrics({"acc": 0.90, "ppl": 3.00, "other": 1.0}, {"acc": 0.905, "ppl": 3.02})
    assert ok and message == "re-measured acc 0.9050, ppl 3.0200"
    ok, message = compare_metrics({"acc": 0.90, "ppl": 3.00}, {"acc": 0.92, "ppl": 3.05})
    assert not ok and message == "metrics differ: acc: recorded 0.9000, measured 0.9200; ppl: recorded 3.0000, measured 3.0500"
    assert compare_metrics({"ppl": 300.0}, {"ppl": 302.0})[0]  # relative above 1


# ---- models: save_model, load_model, verify ----


def test_save_model_and_load_model_rebuild_a_tiny_backbone(tiny_zoo, tok):
    gpt, record = load_model("tiny-gpt")
    assert isinstance(gpt, CausalLM) and record["strategy"] == "unimodal" and record["model"] == "CausalLM"
    assert ref_of(record) == tiny_zoo["tiny-gpt"] and record["depends"] == {}
    path = save_model("gpt-half", gpt, {"val_ppl": 1.0}, strategy="unimodal")  # fp16 by default
    again, half = load_model("gpt-half")
    assert half["dtype"] == "float16" and half["metrics"] == {"val_ppl": 1.0} and path.name == "gpt-half.safetensors"
    assert all(p.dtype == torch.float32 for p in again.parameters())  # rebuilt in fp32
    for (name, a), (_, b) in zip(gpt.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(b, a.half().float(), msg=name)


def test_a_model_on_frozen_parts_saves_what_it_trains_and_pins_the_rest(tiny_zoo):
    probe, record = load_model("tiny-vit-detector-probe")
    assert isinstance(probe, RegionEncoder)
    assert record["depends"] == {"tiny-vit-detector": tiny_zoo["tiny-vit-detector"]["sha256"]}
    saved, _ = load_checkpoint("tiny-vit-detector-probe")
    assert saved and not any(k.startswith("vit.") for k in saved)  # the ViT is pinned, not copied
    vit, _ = load_model("tiny-vit-detector")
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(probe.vit(pixels).hidden, vit(pixels).hidden)
    torch.manual_seed(1)
    save_model("tiny-vit-detector", type(vit).from_config(config_dict(vit)), {}, strategy="unimodal", dtype=None)  # replaced
    with pytest.raises(CheckpointError, match=r"checkpoint 'tiny-vit-detector' with sha256 [0-9a-f]{12}… is needed"):
        load_model("tiny-vit-detector-probe")


def test_load_model_refuses_a_record_it_cannot_rebuild():
    save_checkpoint("stranger", state(), CONFIG, strategy="nonsense", model="Thing")
    with pytest.raises(CheckpointError, match="names strategy 'nonsense' and model 'Thing', which this vlmlab does not have"):
        load_model("stranger")


def test_verify_measures_a_saved_model_again(tiny_zoo, tok):
    spec = {"kind": "scenes", "seed": 0, "n": 8, "image_size": 64}
    gpt, _ = load_model("tiny-gpt")
    metrics = unimodal.measure(gpt, tok, SceneBench.build(seed=0, n=8, image_size=64))
    save_model("measured", gpt, metrics, strategy="unimodal", evalset=spec, dtype=None)
    save_model("misrecorded", gpt, metrics | {"val_ppl": metrics["val_ppl"] * 2}, strategy="unimodal", evalset=spec,
               dtype=None)
    ok, message = verify("measured")
    assert ok and message.startswith("re-measured ") and "val_ppl" in message
    ok, message = verify("misrecorded")
    assert not ok and message.startswith("metrics differ: val_ppl: recorded")
    results = {name: (ok, message) for name, ok, message in verify_all()}
    assert results["measured"][0] and not results["misrecorded"][0] and results["tiny-gpt"] == (True, "user: hash ok")
    assert all(message.endswith("hash ok") for _, _, message in verify_all(measure=False))
