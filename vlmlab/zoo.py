"""The checkpoint store: safetensors for the tensors, a JSON record beside them. Introduced in notebook 01.

A checkpoint called NAME is two files in one folder:

    NAME.safetensors   the tensors (never pickle: loading runs no code)
    NAME.json          {"name", "format": 2, "strategy", "model", "config", "depends", "evalset", "metrics",
                        "sha256", "created", "dtype"}

`sha256` is the hash of the .safetensors file, so a corrupted or replaced file is caught on load, and `config` is
how the model was built, so loading it into a different model says what differs. A model built on frozen parts
from other checkpoints (a mapper on notebook 01's GPT, say) saves only what it trained; its config names each such
part with the sha256 of the exact file (`depends` lists them), and loading finds that file again or says what it
found instead. `strategy` and `model` say which class rebuilds it (`vlmlab.strategies.OWNERS`), `evalset` on
which held-out set its `metrics` were measured, so `zoo verify` can measure it again.

Both files are written atomically (temp file in the same folder, fsync, os.replace): an interrupted save leaves
the previous checkpoint whole. Checkpoints shipped with the workbook live in `data/checkpoints/`; the ones you
train go to the user cache (`$VLMLAB_CACHE`, default `~/.cache/vlmlab`), which is searched first.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .files import atomic_write_bytes, sha256_file, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "checkpoints"
FORMAT = 2
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is: corrupted, incomplete, or built with another config."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint of that name or path exists."""


def user_cache() -> Path:
    """`$VLMLAB_CACHE`, or `~/.cache/vlmlab` when it is not set."""
    return Path(os.environ.get("VLMLAB_CACHE") or Path.home() / ".cache" / "vlmlab")


def user_checkpoints() -> Path:
    return user_cache() / "checkpoints"


def _show(path: Path) -> str:
    """A path as messages print it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ---- low-level helpers, also used by vlmlab.train ----


def _check_tensors(tensors: dict) -> None:
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(t).__name__}; a checkpoint holds only torch tensors")


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically. Each tensor is copied to a contiguous CPU tensor of
    its own, so views, transposes and tensors sharing storage (tied weights) are all fine."""
    _check_tensors(tensors)
    tensors = {k: t.detach().cpu().clone(memory_format=torch.contiguous_format) for k, t in tensors.items()}
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata))



def check_sha256(path: str | Path, expected: str) -> None:
    """Raise CheckpointError when the file's sha256 is not `expected`."""
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            f"{_show(path)}: sha256 differs from its record (expected {expected[:12]}…, file has {actual[:12]}…): "
            "the file is corrupted or was replaced; delete it and save it again (shipped checkpoints come from notebook 01)"
        )


# ---- save / find / load ----

def save_checkpoint(name: str, state_dict: dict[str, torch.Tensor], config: dict, metrics: dict | None = None,
                    root: str | Path | None = None, dtype: torch.dtype | str | None = None, *, strategy: str | None = None,
                    model: str | None = None, evalset: dict | None = None) -> Path:
    """Save `state_dict` as `root/NAME.safetensors` + `root/NAME.json` (root: the user cache).

    `dtype` (e.g. torch.float16 or "fp16", used for shipped checkpoints) casts the floating tensors; integer tensors
    are kept as they are. `strategy`, `model` and `evalset` go into the record (see `save_model`); the refs in
    `config` become its `depends`. Returns the path of the .safetensors file.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith((".safetensors", ".json")):
        raise ValueError(f"name={name!r} is not a valid checkpoint name: use letters, digits, '.', '_' and '-' "
                         "(e.g. 'tiny-vit-detector'), without a file extension")
    _check_tensors(state_dict)
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r} is not allowed: use one of {sorted(DTYPES)} or a floating torch.dtype")
    if dtype is not None:
        state_dict = {k: t.to(dtype) if t.is_floating_point() else t for k, t in state_dict.items()}
    record = {"name": name, "format": FORMAT, "strategy": strategy, "model": model, "config": config,
              "depends": refs_in(config), "evalset": evalset, "metrics": metrics or {}}
    try:
        json.dumps(record)  # fail before writing anything
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint {name!r}: config and metrics must be JSON values (numbers, strings, lists, dicts): "
                        f"{e}") from e

    folder = Path(root) if root is not None else user_checkpoints()
    path = write_safetensors_atomic(state_dict, folder / f"{name}.safetensors")
    floating = sorted({str(t.dtype).removeprefix("torch.") for t in state_dict.values() if t.is_floating_point()})
    record |= {"sha256": sha256_file(path), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "dtype": ",".join(floating) or None}
    write_json_atomic(path.with_suffix(".json"), record)
    return path


def find_checkpoint(name_or_path: str | Path, root: str | Path | None = None, sha256: str | None = None) -> Path:
    """The .safetensors file of a checkpoint: an explicit path (with or without extension), or a name looked up in
    `root`, else in the user cache and then in the shipped checkpoints. With `sha256`, the first file of that name
    whose record has exactly that hash, looked up in `root` (if given), the user cache and the shipped ones:
    a pinned dependency."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or os.sep in text or text.endswith((".safetensors", ".json")):
        path = Path(text.removesuffix(".json").removesuffix(".safetensors") + ".safetensors")
        if not path.exists():
            raise CheckpointNotFound(f"checkpoint file {_show(path)} does not exist")
        return path
    folders = _folders(root) if sha256 is None else [*([Path(root)] if root is not None else []), *_folders(None)]
    found = [folder / f"{text}.safetensors" for folder in folders if (folder / f"{text}.safetensors").exists()]
    if sha256 is None and found:
        return found[0]
    hashes = {}
    for path in found:
        hashes[path] = _recorded_sha256(path)
        if hashes[path] == sha256:
            return path
    where = {"user": "user cache, set by $VLMLAB_CACHE", "shipped": "shipped", "root": "the root you gave"}
    searched = " and ".join(f"{_show(f)} ({where[_location(f)]})" for f in folders)
    if sha256 is not None:
        seen = "; ".join(f"{_show(p)} has {h[:12] if h else 'no readable record'}…" for p, h in hashes.items()) or "none"
        raise CheckpointError(f"checkpoint {text!r} with sha256 {sha256[:12]}… is needed (a saved model was built on "
                              f"it) but not found in {searched}; found: {seen}. Put that file back (the shipped ones "
                              "are in git: `git checkout data/checkpoints/`) or train the model that needs it again")
    raise CheckpointNotFound(f"no checkpoint {text!r}: looked for {text}.safetensors in {searched}; "
                             "vlmlab.zoo.list_checkpoints() shows what exists, notebook 01 makes the shipped ones")


def _recorded_sha256(path: Path) -> str | None:
    """The sha256 a checkpoint's record claims (not checked here), None when the record is unreadable."""
    try:
        return json.loads(path.with_suffix(".json").read_text()).get("sha256")
    except (OSError, json.JSONDecodeError):
        return None


def _folders(root: str | Path | None) -> list[Path]:
    """Where names are looked up: `root` alone when given, else the user cache, then the shipped ones."""
    return [Path(root)] if root is not None else [user_checkpoints(), SHIPPED]


def _location(folder: Path) -> str:
    """'user', 'shipped' or 'root' (a folder given by the caller)."""
    folder = Path(folder).resolve()
    return "shipped" if folder == SHIPPED.resolve() else "user" if folder == user_checkpoints().resolve() else "root"


def read_record(path: str | Path) -> dict:
    """The JSON record beside a .safetensors file, plus 'path' and 'location'; checks the sha256."""
    path = Path(path)
    json_path = path.with_suffix(".json")
    if not json_path.exists():
        raise CheckpointError(f"{_show(path)} has no record {json_path.name} beside it: the save was interrupted or "
                              "the file was not made by save_checkpoint; save it again")
    try:
        record = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{_show(json_path)} is not valid JSON ({e}); delete the checkpoint and save it again") from e
    if record.get("format") != FORMAT:
        raise CheckpointError(f"{_show(json_path)} has format {record.get('format')!r}; this vlmlab reads format {FORMAT}: "
                              "it was saved by an older vlmlab, so run the notebook that made it again (or delete it)")
    check_sha256(path, record["sha256"])
    return record | {"path": str(path), "location": _location(path.parent)}


def load_checkpoint(name_or_path: str | Path, expected_config: dict | None = None, root: str | Path | None = None,
                    sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint after checking its sha256 and, when given, that its config is `expected_config`;
    `sha256` pins which file of that name (see `find_checkpoint`).

    Returns (state_dict, record). Raises CheckpointNotFound / CheckpointError with what to do.
    """
    path = find_checkpoint(name_or_path, root, sha256)
    record = read_record(path)
    if expected_config is not None:
        expected = json.loads(json.dumps(expected_config))  # tuples become lists, as they are in the record
        saved = record["config"]
        show = lambda d, k: repr(d[k]) if k in d else "(absent)"
        absent = object()
        differs = [k for k in sorted(saved.keys() | expected.keys()) if saved.get(k, absent) != expected.get(k, absent)]
        diffs = [f"{k}: checkpoint has {show(saved, k)}, you asked for {show(expected, k)}" for k in differs]
        if diffs:
            raise CheckpointError(f"config differs from {_show(path.with_suffix('.json'))}: " + "; ".join(diffs))
    return load_file(path), record


# ---- inventory ----

def list_checkpoints(root: str | Path | None = None) -> list[dict]:
    """Records of every checkpoint (user cache first, then shipped), each with 'path' and 'location'.
    A checkpoint that fails its checks is listed with an 'error' instead of its record."""
    records = []
    for folder in _folders(root):
        for path in sorted(folder.glob("*.safetensors")):
            try:
                records.append(read_record(path))
            except CheckpointError as e:
                records.append({"name": path.stem, "path": str(path), "location": _location(folder), "error": str(e)})
    return records


def verify_all(root: str | Path | None = None, measure: bool = True) -> list[tuple[str, bool, str]]:
    """(name, ok, message) for every checkpoint, including records whose .safetensors is missing. With `measure`,
    a checkpoint whose hash checks out and whose record names an evaluation set is measured again (`verify`)."""
    results = []
    for folder in _folders(root):
        names = sorted({p.stem for p in folder.glob("*.safetensors")} | {p.stem for p in folder.glob("*.json")})
        for name in names:
            path = folder / f"{name}.safetensors"
            if not path.exists():
                results.append((name, False, f"{_show(path)} is missing but its record {name}.json exists"))
                continue
            try:
                record = read_record(path)
                ok, message = verify(name, folder) if measure and record.get("evalset") else (True, "hash ok")
            except CheckpointError as e:
                ok, message = False, str(e)
            results.append((name, ok, f"{_location(folder)}: {message}"))
    return results


# ---- models: save, load, measure again ----


def ref_of(record: dict) -> dict:
    """{"name", "sha256"} of a loaded checkpoint's record: how a config pins it."""
    return {"name": record["name"], "sha256": record["sha256"]}


def refs_in(config) -> dict[str, str]:
    """Every checkpoint a config pins, {name: sha256}: the {"name", "sha256"} dicts anywhere inside it (a pretrained
    package's backbone has sha256 None and is not listed)."""
    if isinstance(config, dict):
        if set(config) >= {"name", "sha256"} and config["sha256"]:
            return {config["name"]: config["sha256"]}
        return {k: v for value in config.values() for k, v in refs_in(value).items()}
    if isinstance(config, list | tuple):
        return {k: v for value in config for k, v in refs_in(value).items()}
    return {}


def config_dict(model: torch.nn.Module) -> dict:
    """A model's config as plain JSON values: `config.to_dict()`, a dataclass, or a dict."""
    config = model.config
    return config.to_dict() if hasattr(config, "to_dict") else asdict(config) if not isinstance(config, dict) else config


def save_model(name: str, model: torch.nn.Module, metrics: dict, *, strategy: str, evalset: dict | None = None,
               root: str | Path | None = None, dtype: str | None = "fp16") -> Path:
    """Save a model of `strategy` (a key of `vlmlab.strategies.OWNERS`) so `load_model` can rebuild it: its config,
    the tensors it trains (`model.saved_state()` when it has frozen parts), and the held-out set (`evalset`, a spec
    `vlmlab.data.evalsets.build` takes) its `metrics` were measured on. Returns the .safetensors path."""
    state = model.saved_state() if hasattr(model, "saved_state") else model.state_dict()
    return save_checkpoint(name, state, config_dict(model), metrics, root=root, dtype=dtype, strategy=strategy,
                           model=type(model).__name__, evalset=evalset)


def load_model(name: str | Path, root: str | Path | None = None, sha256: str | None = None) -> tuple[torch.nn.Module, dict]:
    """A model saved with `save_model`, rebuilt in fp32: the class its record names, `from_config` (which loads the
    frozen parts at the hashes the config pins), then its own tensors. Returns (model, record)."""
    from .strategies import OWNERS  # the registry knows every class a checkpoint can hold

    state, record = load_checkpoint(name, root=root, sha256=sha256)
    owner = OWNERS.get(record.get("strategy"))
    model_class = getattr(owner, record.get("model") or "", None)
    if model_class is None:
        raise CheckpointError(f"{record['path']}: its record names strategy {record.get('strategy')!r} and model "
                              f"{record.get('model')!r}, which this vlmlab does not have ({sorted(OWNERS)})")
    model = model_class.from_config(record["config"])
    if hasattr(model, "load_saved"):
        model.load_saved(state)
    else:
        model.load_state_dict(state)
    return model.float(), record


def compare_metrics(recorded: dict, measured: dict[str, float], tolerance: float = 0.01) -> tuple[bool, str]:
    """(ok, message) for a re-measurement: every measured metric that the record holds must agree within
    `tolerance` (relative above 1, absolute below). `message` lists the numbers or what differs."""
    differ = [f"{k}: recorded {recorded[k]:.4f}, measured {v:.4f}" for k, v in measured.items()
              if k in recorded and abs(v - recorded[k]) > tolerance * max(1.0, abs(v))]
    if differ:
        return False, "metrics differ: " + "; ".join(differ)
    return True, "re-measured " + ", ".join(f"{k} {v:.4f}" for k, v in measured.items() if k in recorded)


def verify(name: str | Path, root: str | Path | None = None, tolerance: float = 0.01) -> tuple[bool, str]:
    """Load a saved model and measure it again, with its strategy's `measure`, on the evaluation set its record
    names; compare with the metrics it was saved with (`python -m vlmlab zoo verify`)."""
    from .data import evalsets
    from .strategies import OWNERS
    from .tokenizer import load_tokenizer

    model, record = load_model(name, root)
    measured = OWNERS[record["strategy"]].measure(model, load_tokenizer(), evalsets.build(record["evalset"]))
    return compare_metrics(record["metrics"], measured, tolerance)
