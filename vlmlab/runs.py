"""The numbers of a notebook run: what it records, and whether they meet its strategy's targets. Introduced in
notebook 00. (Task metrics themselves, R@k, CIDEr, VQA accuracy, are computed in `vlmlab.evaluate`.)

    runs.record(zero_shot_acc=0.83, recall_at_5=0.97, decode="greedy")
    runs.check_targets(clip.TARGETS, cfg.profile)

keeps the values in this process and, when the notebook runs headless (`python -m vlmlab run` sets
`VLMLAB_RUN_DIR`), merges them into `$VLMLAB_RUN_DIR/metrics.json`, written atomically.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
from pathlib import Path

import numpy as np

from .files import write_json_atomic

MAX_TEXT = 200  # a metric string is a label ("greedy", "tiny-vit-detector"), not a report
_recorded: dict = {}


def _check(name: str, value):
    """`value` as a plain JSON value (bool, int, float or short str), or ValueError naming the metric."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"metric {name}={value!r} is not a finite number")
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_TEXT or "\n" in value:
            raise ValueError(f"metric {name}={value[:40]!r}... is not a short one-line string (at most {MAX_TEXT} characters)")
        return value
    hint = " (use .item())" if hasattr(value, "item") else ""
    raise ValueError(f"metric {name}={value!r:.60} must be a finite number, a bool or a short string, "
                     f"not {type(value).__name__}{hint}")


def _peak_gpu_mb() -> float | None:
    """torch.cuda.max_memory_allocated in MiB when this process uses CUDA (torch is never imported just for this)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)



def read_json(path: str | Path) -> dict:
    """The JSON object in `path`, {} when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object of metrics")
    return data


def record(**metrics) -> dict:
    """Check and keep `metrics`; merge them into $VLMLAB_RUN_DIR/metrics.json when that is set. Returns all so far."""
    checked = {name: _check(name, value) for name, value in metrics.items()}
    _recorded.update(checked)
    peak = _peak_gpu_mb()
    if peak is not None:
        _recorded["peak_gpu_mb"] = peak
    run_dir = os.environ.get("VLMLAB_RUN_DIR")
    if run_dir:
        path = Path(run_dir) / "metrics.json"
        write_json_atomic(path, {**read_json(path), **_recorded})
    return dict(_recorded)


def recorded() -> dict:
    """Every metric recorded in this process so far."""
    return dict(_recorded)


COMPARISONS = {">=": lambda value, bound: value >= bound, "<=": lambda value, bound: value <= bound,
               "<": lambda value, bound: value < bound, ">": lambda value, bound: value > bound}


def check_targets(targets: dict[str, dict[str, tuple[str, float]]], profile: str) -> dict[str, bool]:
    """Compare the recorded metrics with a strategy's `TARGETS[profile]` ({metric: (">=" | "<=" | "<" | ">", bound)}):
    print one line per target, record `targets_met` (all measured targets met) and return {metric: met}. A target
    whose metric this run did not measure (a real track that was switched off) is reported and left out. A missed
    target is reported, not raised, so a learner's run still finishes. Introduced in notebook 03."""
    if profile not in targets:
        raise ValueError(f"no targets for profile {profile!r}: the strategy's TARGETS has {sorted(targets)}")
    met = {}
    for name, (op, bound) in targets[profile].items():
        if op not in COMPARISONS:
            raise ValueError(f"target {name}: comparison {op!r} is not one of {tuple(COMPARISONS)}")
        if name not in _recorded:
            print(f"- not measured {name} (target {op} {bound}): this run did not record it")
            continue
        met[name] = COMPARISONS[op](_recorded[name], bound)
        print(f"{'✓ met   ' if met[name] else '✗ missed'} {name} = {_recorded[name]:.4f} (target {op} {bound})")
    record(targets_met=all(met.values()))
    return met
