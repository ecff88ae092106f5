"""Every "experiment to try" that names a parameter runs as written. A suggestion such as `IMAGE_TOKENS="regions"`
must name a parameter the notebook has, and the notebook must run with it: each notebook executes once at smoke size
with all of its suggested values (budget knobs such as `STEPS=1500` keep their smoke value, since they change how
long a run is, not which code runs)."""

import ast
import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SUGGESTION = re.compile(r"`([A-Z][A-Z0-9_]*)\s*=\s*([^`]+)`")  # `NAME=value` in a notebook's Experiments to try
BUDGET = {"STEPS", "LM_STEPS", "BATCH_SIZE", "N_TRAIN"}  # how long, not which code: run at the smoke value


def suggestions(path: Path) -> dict[str, object]:
    """{parameter: value} of the first suggestion of each parameter in the notebook's "Experiments to try"."""
    nb = nbformat.read(path, as_version=4)
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "## Experiments to try" in c.source)
    found = {}
    for name, value in SUGGESTION.findall(text.split("## Experiments to try")[1].split("## References")[0]):
        found.setdefault(name, ast.literal_eval(value.strip()))
    return found


def parameters_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_suggested_parameters_are_parameters_of_the_notebook(notebook):
    cell = parameters_cell(notebook)
    for name in suggestions(notebook):
        assert re.search(rf"^{name}\s*=", cell, re.M), f"{notebook.name}: the experiments suggest {name}, not a parameter"


RUN = [p for p in NOTEBOOKS if set(suggestions(p)) - BUDGET]


@pytest.mark.slow
@pytest.mark.parametrize("notebook", RUN, ids=[p.stem for p in RUN])
def test_the_notebook_runs_with_its_suggested_parameters(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLAB_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    suggested = {name: value for name, value in suggestions(notebook).items() if name not in BUDGET}
    pm.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters={"PROFILE": "smoke", **suggested},
                        cwd=str(notebook.parent), progress_bar=False, kernel_name="python3")
