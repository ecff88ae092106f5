"""`report`: every metrics.json under some folders as one aligned table on stdout and one CSV file, parameters as
p.NAME columns after the fixed ones and recorded metrics after those; `run-all` and `sweep` end with it.
Introduced in notebook 00.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .. import files, runs
from .errors import UsageError

FIXED_COLUMNS = ["run", "notebook", "profile", "status", "wall_s", "peak_rss_mb"]


def report_rows(dirs: list[Path]) -> list[dict]:
    """One flat row per metrics.json under `dirs`: parameters become columns named p.NAME."""
    rows = []
    for directory in dirs:
        for path in sorted(Path(directory).rglob("metrics.json")):
            data = runs.read_json(path)
            row = {"run": str(path.parent)}
            row |= {f"p.{name}": value for name, value in (data.pop("parameters", None) or {}).items()}
            rows.append(row | data)
    return rows


def show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def report(dirs: list[Path], csv_path: Path | None) -> int:
    """Print every run under `dirs` as one aligned table and write it as CSV (default <first dir>/report.csv)."""
    rows = report_rows(dirs)
    if not rows:
        raise UsageError(f"no metrics.json under {', '.join(map(str, dirs))}")
    extra = sorted({key for row in rows for key in row} - set(FIXED_COLUMNS))
    columns = FIXED_COLUMNS + sorted(k for k in extra if k.startswith("p.")) + [k for k in extra if not k.startswith("p.")]
    cells = [columns] + [[show(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = files.write_text_atomic(Path(csv_path) if csv_path else Path(dirs[0]) / "report.csv", buffer.getvalue())
    print(f"{len(rows)} run(s); CSV: {csv_path}")
    return 0


def cmd_report(args) -> int:
    return report([Path(d) for d in args.dirs], args.csv)
