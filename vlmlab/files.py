"""Atomic file writes, file hashes, and where installed packages keep their files: the small I/O rules every
saved file follows. Introduced in notebook 00.

A reader (or a crash) never sees half a file: we write a temporary file in the same folder, flush it to disk,
then rename it over the target in one step. No heavy imports, so the CLI can use it without loading torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    return atomic_write_bytes(path, text.encode())


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """`data` as indented JSON with a final newline, written atomically: every JSON record vlmlab keeps."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def package_folder(module: str) -> Path | None:
    """Where an installed top-level package lives, found without importing it (find_spec runs no package code);
    None when it is not installed."""
    spec = importlib.util.find_spec(module)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
