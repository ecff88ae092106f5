"""`grade`: nbgrader's autograder over a class's submissions, one CSV row per student and exercise. Introduced in
notebook 00 (the instructors' section of the README walks through assign -> hand out -> collect -> grade).

    python -m vlmlab grade course/submitted            # course/submitted/<student>/<assignment>/<notebook>.ipynb

The layout is nbgrader's own: an assignment is named after its notebook (`assign` makes them so), and the
solution notebook it was made from is found in `--source` (default notebooks/). The course folder (default: the
folder that holds SUBMITTED) keeps nbgrader's database, `gradebook.db`, so the grades stay there for manual grading
in nbgrader's formgrader. Everything runs offline. Notebooks execute with VLMLAB_PROFILE (default smoke), so a
class's submissions grade in seconds each, on the shipped models.

A submission that cannot be graded (not a notebook, graded cells deleted, a kernel that dies) gets a row saying
why instead of stopping the others; a cell that raises is reported on its exercise's row.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

from .errors import UsageError

COLUMNS = ("student", "assignment", "exercise", "score", "max_score", "status")


def _submissions(submitted: Path) -> list[tuple[str, str]]:
    """(student, assignment) for every <student>/<assignment>/ folder that holds a notebook."""
    if not submitted.is_dir():
        raise UsageError(f"{submitted} is not a folder of submissions (<student>/<assignment>/<notebook>.ipynb)")
    found = [(folder.parent.name, folder.name) for folder in sorted(submitted.glob("*/*"))
             if folder.is_dir() and any(folder.glob("*.ipynb"))]
    if not found:
        raise UsageError(f"{submitted} holds no <student>/<assignment>/<notebook>.ipynb")
    return found


def _prepare_course(course: Path, submitted: Path, source: Path, assignments: set[str]) -> None:
    """Put each assignment's solution notebook in course/source/ and the submissions in course/submitted/."""
    for name in sorted(assignments):
        solution = source / f"{name}.ipynb"
        if not solution.is_file():
            raise UsageError(f"assignment {name!r}: no solution notebook {solution} (assignments are named after "
                             "their notebook; --source says where the notebooks are)")
        (course / "source" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(solution, course / "source" / name / solution.name)
    if submitted.resolve() != (course / "submitted").resolve():
        shutil.copytree(submitted, course / "submitted", dirs_exist_ok=True)


def _nbgrader(app_class, course: Path, *argv: str) -> str | None:
    """Run one nbgrader app in `course`; None when it succeeded, else why not."""
    app = app_class()
    try:
        app.initialize([*argv, f"--CourseDirectory.root={course}", "--log-level=ERROR"])
        app.start()
    except SystemExit as e:  # nbgrader logs the reason and exits
        return f"nbgrader stopped (exit {e.code}): see the messages above"
    except Exception as e:  # a notebook nbgrader cannot read, a kernel that dies
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def _errors_by_cell(notebook: Path) -> dict[str, str]:
    """grade_id -> the first line of the error a graded cell raised, in an autograded notebook."""
    import nbformat

    out = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if grade_id and errors:
            out[grade_id] = f"{errors[0]['ename']}: {errors[0]['evalue']}".splitlines()[0][:200]
    return out


def grade(submitted: Path, course: Path, source: Path, profile: str = "smoke") -> list[dict]:
    """Autograde every submission in `submitted` within the nbgrader course folder `course`; one dict per student
    and graded cell (COLUMNS), or one per submission that could not be graded."""
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.apps.autogradeapp import AutogradeApp
    from nbgrader.apps.generateassignmentapp import GenerateAssignmentApp

    found = _submissions(submitted)
    _prepare_course(course, submitted, source, {a for _, a in found})
    os.environ["VLMLAB_PROFILE"] = profile  # the kernels nbgrader starts inherit it: PROFILE="auto" -> profile
    # nbgrader runs its database migrations with the `alembic` script installed beside this Python
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    rows = []
    for name in sorted({a for _, a in found}):
        why = _nbgrader(GenerateAssignmentApp, course, name, "--force")  # records the graded cells in gradebook.db
        if why:
            raise UsageError(f"assignment {name!r}: nbgrader could not read its solution notebook: {why}")
    db = f"sqlite:///{(course / 'gradebook.db').resolve()}"
    for student, name in found:
        why = _nbgrader(AutogradeApp, course, name, f"--student={student}", "--force", "--create")
        if why:
            rows.append({"student": student, "assignment": name, "exercise": "", "score": "", "max_score": "",
                         "status": f"not graded: {why}"})
            continue
        with Gradebook(db) as gradebook:
            for notebook in gradebook.find_assignment(name).notebooks:
                graded = course / "autograded" / student / name / f"{notebook.name}.ipynb"
                errors = _errors_by_cell(graded) if graded.is_file() else {}
                try:
                    grades = gradebook.find_submission_notebook(notebook.name, name, student).grades
                except MissingEntry:
                    grades = []
                for g in sorted(grades, key=lambda g: g.name):
                    status = ("needs manual grading" if g.needs_manual_grade and g.manual_score is None
                              else f"error: {errors[g.name]}" if g.name in errors else "ok")
                    rows.append({"student": student, "assignment": name, "exercise": g.name, "score": g.score,
                                 "max_score": g.max_score, "status": status})
    return rows


def cmd_grade(args) -> int:
    """Autograde a folder of submissions and write one CSV of scores per exercise."""
    submitted = Path(args.submissions)
    course = Path(args.course) if args.course else submitted.resolve().parent
    rows = grade(submitted, course, Path(args.source), args.profile)
    out = Path(args.csv) if args.csv else course / "grades.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    not_graded = sorted({r["student"] for r in rows if r["status"].startswith("not graded")})
    print(f"{len(rows)} rows -> {out}" + (f"; not graded: {', '.join(not_graded)}" if not_graded else ""))
    return 1 if not_graded else 0
