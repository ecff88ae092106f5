"""`sweep`: one headless run of a notebook per combination of -p values (cartesian product over several -p), each in
its own folder named after its values, then one report of them all. Introduced in notebook 00.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from .report import report
from .runner import check_parameters, parse_value, run_notebook, stamp


def sweep_grid(pairs: list[list[str]]) -> list[dict]:
    """[["LR", "0.1,0.2"], ["DECODE", "greedy,beam"]] -> one dict per combination (values split on commas)."""
    swept = {name: [parse_value(value) for value in values.split(",")] for name, values in pairs}
    return [dict(zip(swept, combo)) for combo in itertools.product(*swept.values())]


def cmd_sweep(args) -> int:
    notebook, grid = Path(args.notebook), sweep_grid(args.p)
    base = {"PROFILE": args.profile} if args.profile else {}
    for combo in grid:
        check_parameters(notebook, base | combo)
    out = Path(args.out) if args.out else Path("runs") / f"{notebook.stem}-sweep-{stamp()}"
    results = []
    for combo in grid:
        name = "_".join(f"{k}={v}" for k, v in combo.items())
        results.append(run_notebook(notebook, out / re.sub(r"[^\w.=+-]", "_", name), base | combo, args.timeout))
    report([out], None)
    return 0 if all(r["status"] == "ok" for r in results) else 1
