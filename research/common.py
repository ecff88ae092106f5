"""Shared by the side runs: where their numbers go."""

from __future__ import annotations

import json
from pathlib import Path

from vlmlab.files import write_json_atomic


def save_result(script: str, run: str, result: dict) -> Path:
    """Write `result` to research/results/<script's name>/<run>.json (atomically) and print it on one line."""
    out = Path(script).parent / "results" / Path(script).stem / f"{run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(json.dumps(result))
    return out
