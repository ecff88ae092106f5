"""The workbook's own exercises: nbgrader student copies fail where the solutions (the notebooks) pass."""

import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def graded_cells(nb):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") or c.metadata.get("nbgrader", {}).get("solution")]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_three_coded_exercises_with_hidden_tests_and_a_written_one(notebook):
    """At least three exercises whose solution the student copy hides, each with a graded test cell holding hidden
    tests, and one written answer graded by hand (an nbgrader markdown cell with points)."""
    nb = nbformat.read(notebook, as_version=4)
    solutions = [c for c in graded_cells(nb) if c.metadata["nbgrader"].get("solution") and c.cell_type == "code"]
    tests = [c for c in graded_cells(nb) if c.metadata["nbgrader"].get("grade") and c.cell_type == "code"]
    written = [c for c in graded_cells(nb) if c.cell_type == "markdown" and c.metadata["nbgrader"].get("grade")]
    assert len(solutions) >= 3 and len(tests) >= 3 and len(written) >= 1
    assert all("### BEGIN SOLUTION" in c.source for c in solutions)
    assert all("### BEGIN HIDDEN TESTS" in c.source for c in tests)
    assert all(c.metadata["nbgrader"].get("points", 0) > 0 and c.metadata["nbgrader"].get("solution") for c in written)
    ids = [c.metadata["nbgrader"]["grade_id"] for c in graded_cells(nb)]
    assert len(ids) == len(set(ids)), "grade_id values must be unique within a notebook"


@pytest.mark.slow
def test_student_copies_fail_their_exercises(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path / "cache"))  # only the shipped checkpoints exist
    result = subprocess.run([sys.executable, "-m", "vlmlab", "assign", "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for notebook in NOTEBOOKS:
        released = tmp_path / "release" / notebook.stem / notebook.name
        source = released.read_text()
        assert "BEGIN HIDDEN TESTS" not in source and "### BEGIN SOLUTION" not in source
        with pytest.raises(pm.PapermillExecutionError, match="NotImplementedError"):
            pm.execute_notebook(str(released), str(tmp_path / f"run-{notebook.name}"),
                                parameters={"PROFILE": "smoke", "TRAIN": False},  # the shipped models: no training
                                cwd=str(notebook.parent), progress_bar=False, kernel_name="python3")
