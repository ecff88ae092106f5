"""`assign`: student copies of the notebooks that carry nbgrader markup (solutions replaced, hidden tests removed),
made with nbgrader's own generate_assignment in a throwaway course folder, no database. Introduced in notebook 00.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .errors import UsageError


def has_nbgrader_cells(notebook: Path) -> bool:
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    return any(cell.metadata.get("nbgrader", {}).get(kind) for cell in cells for kind in ("solution", "grade", "task"))


def cmd_assign(args) -> int:
    """Student copies with nbgrader's own generate_assignment, in a throwaway course folder (no database)."""
    if args.notebooks:
        notebooks = [Path(n) for n in args.notebooks]
        for notebook in notebooks:
            if not notebook.is_file() or not has_nbgrader_cells(notebook):
                raise UsageError(f"{notebook} is not a notebook with nbgrader cells (solution or graded tests)")
    else:
        notebooks = [nb for nb in sorted(Path("notebooks").glob("*.ipynb")) if has_nbgrader_cells(nb)]
    if not notebooks:
        print("no notebooks with nbgrader cells in notebooks/: nothing to assign")
        return 0
    from nbgrader.apps.generateassignmentapp import GenerateAssignmentApp

    failed = 0
    with tempfile.TemporaryDirectory() as course:
        for notebook in notebooks:
            name = notebook.stem  # the assignment is named after its notebook
            (Path(course) / "source" / name).mkdir(parents=True)
            shutil.copy(notebook, Path(course) / "source" / name / notebook.name)
            app = GenerateAssignmentApp()
            app.initialize([name, "--no-db", "--force", f"--CourseDirectory.root={course}", "--log-level=ERROR"])
            try:
                app.start()
            except SystemExit:  # nbgrader has logged why
                print(f"✗ {notebook}: nbgrader could not make the student copy")
                failed += 1
                continue
            released = Path(args.out) / "release" / name
            shutil.copytree(Path(course) / "release" / name, released, dirs_exist_ok=True)
            print(f"✓ {notebook} -> {released / notebook.name}")
    return 1 if failed else 0
