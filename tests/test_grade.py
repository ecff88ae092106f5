"""`python -m vlmlab grade`: nbgrader's autograder over a class. The solution scores full marks, the student copy
`assign` releases scores zero on the auto-graded parts, and a broken submission gets its own row, not a crash."""

import csv
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cell(kind, source, grade_id, **nbgrader):
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    c = make(source)
    c.metadata["nbgrader"] = {"grade_id": grade_id, "schema_version": 3, "locked": False, "solution": False,
                              "grade": False} | nbgrader
    return c


def solution_notebook() -> nbformat.NotebookNode:
    """A two-exercise assignment the way the workbook's notebooks mark theirs: a solution cell and its hidden
    tests (2 points), and a written answer graded by hand (1 point)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        cell("code", "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", "double", solution=True),
        cell("code", "assert double(1) == 2\n### BEGIN HIDDEN TESTS\nassert double(21) == 42\n### END HIDDEN TESTS",
             "double_tests", grade=True, points=2, locked=True),
        cell("markdown", "YOUR ANSWER HERE", "explain", solution=True, grade=True, points=1),
    ]
    return nb


def grade_class(tmp_path, students: dict[str, str | nbformat.NotebookNode]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    source = tmp_path / "notebooks"
    source.mkdir()
    nbformat.write(solution_notebook(), source / "hw.ipynb")
    release = subprocess.run([sys.executable, "-m", "vlmlab", "assign", str(source / "hw.ipynb"), "--out", str(tmp_path / "out")],
                             cwd=ROOT, capture_output=True, text=True)
    assert release.returncode == 0, release.stderr
    released = nbformat.read(tmp_path / "out" / "release" / "hw" / "hw.ipynb", as_version=4)
    for student, work in students.items():
        folder = tmp_path / "course" / "submitted" / student / "hw"
        folder.mkdir(parents=True)
        if isinstance(work, str):
            work = {"solution": solution_notebook(), "released": released}.get(work, work)
        if isinstance(work, str):
            (folder / "hw.ipynb").write_text(work)
        else:
            nbformat.write(work, folder / "hw.ipynb")
    result = subprocess.run([sys.executable, "-m", "vlmlab", "grade", str(tmp_path / "course" / "submitted"),
                             "--source", str(source)], cwd=ROOT, capture_output=True, text=True)
    path = tmp_path / "course" / "grades.csv"
    return result, list(csv.DictReader(path.open())) if path.exists() else []


@pytest.mark.slow
def test_solution_full_marks_student_copy_zero_broken_submission_its_own_row(tmp_path):
    answered, raising = solution_notebook(), solution_notebook()
    answered.cells[2].source = "Twice the input, because the test says so."
    raising.cells[0].source = "def double(x):\n    return 1 / 0"
    result, rows = grade_class(tmp_path, {"ada": answered, "bo": "released", "cy": "{ not a notebook", "di": raising})
    assert result.returncode == 1 and "not graded: cy" in result.stdout, result.stdout + result.stderr
    by = {(r["student"], r["exercise"]): r for r in rows}
    assert float(by["ada", "double_tests"]["score"]) == 2.0 and by["ada", "double_tests"]["status"] == "ok"
    assert by["ada", "explain"]["status"] == "needs manual grading" and float(by["ada", "explain"]["max_score"]) == 1.0
    assert float(by["bo", "double_tests"]["score"]) == 0.0 and "NotImplementedError" in by["bo", "double_tests"]["status"]
    assert float(by["bo", "explain"]["score"]) == 0.0  # an unanswered written question: nbgrader scores it 0 at once
    assert float(by["di", "double_tests"]["score"]) == 0.0 and "ZeroDivisionError" in by["di", "double_tests"]["status"]
    assert by["cy", ""]["status"].startswith("not graded:") and by["cy", ""]["score"] == ""
    assert (tmp_path / "course" / "gradebook.db").exists()  # nbgrader's database stays, for manual grading


def test_grade_refuses_a_folder_without_submissions_and_an_unknown_assignment(tmp_path):
    empty = tmp_path / "submitted"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "vlmlab", "grade", str(empty)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "holds no <student>/<assignment>/<notebook>.ipynb" in result.stderr
    (empty / "ada" / "nope").mkdir(parents=True)
    nbformat.write(solution_notebook(), empty / "ada" / "nope" / "nope.ipynb")
    result = subprocess.run([sys.executable, "-m", "vlmlab", "grade", str(empty), "--source", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "assignment 'nope': no solution notebook" in result.stderr
