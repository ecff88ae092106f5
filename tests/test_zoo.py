"""The checkpoint store: exact round trips, hash and config checks, atomic writes, lookup order."""

import json
import os
from datetime import datetime

import pytest
import torch

from vlmlab import zoo
from vlmlab.zoo import (
    CheckpointError,
    CheckpointNotFound,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
    verify_all,
)

CONFIG = {"d_model": 64, "n_layer": 2, "act": "gelu", "sizes": [1, 2]}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private user cache and an empty shipped folder for every test."""
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "shipped")
    return tmp_path / "cache" / "checkpoints"


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
    assert record["name"] == "tiny" and record["format"] == 1
    assert record["config"] == CONFIG and record["metrics"] == {"acc": 0.5}
    assert record["sha256"] == sha256_file(path) and record["dtype"] == "float32"
    assert record["location"] == "user" and record["path"] == str(path)
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert set(on_disk) == {"name", "format", "config", "metrics", "sha256", "created", "dtype"}


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
        load_checkpoint("tiny-vit")
    message = str(err.value)
    assert "'tiny-vit'" in message and str(cache) in message and str(zoo.SHIPPED) in message
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
