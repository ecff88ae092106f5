"""Every notebook runs top to bottom with PROFILE="smoke" (papermill, into a temp dir, never over the source).

A notebook that trains something runs with TRAIN=False here: it loads the shipped checkpoints and measures them on
small held-out sets, which must meet the smoke targets of its strategies. The TRAIN=True path of every notebook runs
cell by cell under nbval (`make test`), so each path is executed once.
"""

import json
import re
from pathlib import Path

import papermill as pm
import pytest
from known_misses import KNOWN_MISSES

from vlmlab import runs, unimodal
from vlmlab.strategies import asif, blip2, clip, flamingo, frozen_prefix, fusion, lit, llava, magic, prefix_lm

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OWNERS = {  # each notebook's targets live in its strategy modules: notebook -> {owner: module}
    "01_backbones": {"unimodal": unimodal},
    "02_contrastive_clip": {"clip": clip, "lit": lit},
    "03_prefix_lm": {"prefix_lm": prefix_lm},
    "04_frozen_prefix": {"frozen_prefix": frozen_prefix},
    "05_flamingo": {"flamingo": flamingo},
    "06_mlm_itm": {"fusion": fusion},
    "07_no_training": {"asif": asif, "magic": magic},
    "08_blip2": {"blip2": blip2},
    "09_llava": {"llava": llava},
}
TARGETS = {stem: [module.TARGETS for module in owners.values()] for stem, owners in OWNERS.items()}


def test_every_notebook_that_trains_has_targets():
    assert set(TARGETS) == {p.stem for p in NOTEBOOKS if p.stem != "00_shapes_world"}


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke_profile_and_meets_its_targets(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLAB_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path / "cache"))  # only the shipped checkpoints exist
    monkeypatch.setenv("MPLBACKEND", "Agg")
    trains = notebook.stem in TARGETS
    parameters = {"PROFILE": "smoke"} | ({"TRAIN": False} if trains else {})
    pm.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters=parameters, cwd=str(notebook.parent),
                        progress_bar=False, kernel_name="python3")
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the headline metrics are recorded
    if trains:
        wanted = {name for targets in TARGETS[notebook.stem] for name in targets["smoke"]}
        assert wanted, f"{notebook.stem} has no smoke targets"
        assert wanted <= set(metrics), f"not measured: {wanted - set(metrics)}"
        missed = {(owner, name) for owner, module in OWNERS[notebook.stem].items()
                  for name, (op, bound) in module.TARGETS["smoke"].items() if not runs.COMPARISONS[op](metrics[name], bound)}
        known = {(owner, name) for owner, module in OWNERS[notebook.stem].items() for name in module.TARGETS["smoke"]
                 if (owner, name) in KNOWN_MISSES}
        assert missed == known, {name: metrics[name] for name in wanted}  # the known misses, and only those
        assert metrics["targets_met"] is (not missed)


def test_every_notebook_has_a_parameters_cell_with_the_common_knobs():
    import nbformat

    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, path.name
        for name in ("PROFILE", "SEED", "TRAIN"):
            assert f"{name} =" in cells[0].source, f"{path.name}: parameters cell lacks {name}"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


def test_notebook_prose_stands_on_its_own():
    """A learner reads the notebook, not the repository around it: its markdown never sends them to the README for
    a number (a second seed or an arm is a parameter to set and run)."""
    import nbformat

    for path in NOTEBOOKS:
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "markdown":
                assert "README" not in cell.source, f"{path.name} cell {i} refers the learner to the README"


COMPARISON = {"≥": ">=", "≤": "<=", "<": "<", ">": ">"}


def test_readme_results_table_states_the_targets_the_strategies_hold():
    """The README's results table and the strategies' TARGETS say the same: every threshold in a notebook's target
    cells is one of its cpu TARGETS, and every cpu target appears there."""
    readme = (NOTEBOOKS[0].parents[1] / "README.md").read_text()
    for stem, targets_by_profile in TARGETS.items():
        rows = [line.split("|") for line in readme.splitlines() if line.startswith(f"| {stem[:2]} |")]
        cells = " ".join(row[4] for row in rows if len(row) == 7)  # | nb | metric | value | target | meaning |
        stated = {(COMPARISON[op], float(bound)) for op, bound in re.findall(r"([≥≤<>])\s*([0-9]+\.[0-9]+)", cells)}
        held = {(op, bound) for targets in targets_by_profile for op, bound in targets["cpu"].values()}
        assert stated == held, f"{stem}: README states {sorted(stated)}, the strategies hold {sorted(held)}"
