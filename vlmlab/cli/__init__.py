"""`python -m vlmlab ...`: run notebooks headless, sweep them, report, hand them out, check the setup.
Introduced in notebook 00.

    python -m vlmlab run notebooks/02_contrastive.ipynb --profile smoke -p LR 1e-3
    python -m vlmlab run-all --profile cpu --out runs/cpu
    python -m vlmlab sweep notebooks/02_contrastive.ipynb -p LR 1e-4,3e-4,1e-3
    python -m vlmlab report runs/cpu
    python -m vlmlab assign                  # student copies in assignments/release/
    python -m vlmlab grade course/submitted  # nbgrader's autograder over a class: grades.csv
    python -m vlmlab doctor                  # versions, device, backbones, data, checkpoints
    python -m vlmlab zoo list | verify

Each run writes DIR/<notebook>.ipynb (executed, with outputs) and DIR/metrics.json: what the notebook
recorded with `vlmlab.runs.record` plus notebook, profile, parameters, wall_s, peak_rss_mb, status.
Exit status: 0 ok, 1 a run or check failed, 2 a bad command line or parameter (nothing was started).
papermill, torch and nbgrader are imported inside the commands that use them, so a bad command line is refused at once.

This module is the command line itself; each command lives in its own module: runner (run, run-all, with the
peak-RSS meter in memory), sweep, report, assign, grade, doctor, zoo; errors holds UsageError.
"""

from __future__ import annotations

import argparse
import sys

from .assign import cmd_assign
from .doctor import cmd_doctor
from .errors import UsageError
from .grade import cmd_grade
from .report import cmd_report
from .runner import cmd_run, cmd_run_all
from .sweep import cmd_sweep
from .zoo import cmd_zoo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlmlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def run_options(p, sweep=False):
        p.add_argument("--profile", help="smoke | cpu | gpu | auto (default: the notebook's PROFILE)")
        p.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE" if not sweep else "V1,V2,..."),
                       required=sweep, help="set a parameter; the value is read as Python (3, 1e-3, True) or else text")
        p.add_argument("--out", help="output folder (default: runs/<name>-<date>-<time>/)")
        p.add_argument("--timeout", type=float, help="seconds any one cell may run (default: no limit)")

    p = sub.add_parser("run", help="execute one notebook headless")
    p.add_argument("notebook")
    run_options(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("run-all", help="execute every notebook in order, then report")
    p.add_argument("--notebooks", default="notebooks", help="folder of notebooks (default: notebooks/)")
    run_options(p)
    p.set_defaults(func=cmd_run_all)
    p = sub.add_parser("sweep", help="one run per value (cartesian product over several -p), then report")
    p.add_argument("notebook")
    run_options(p, sweep=True)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("report", help="one table (and a CSV) of every metrics.json under the folders")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--csv", help="where to write the CSV (default: <first DIR>/report.csv)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("assign", help="student copies of the notebooks with nbgrader markup")
    p.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="default: every notebooks/*.ipynb with nbgrader cells")
    p.add_argument("--out", default="assignments", help="course folder; copies go to <out>/release/<name>/")
    p.set_defaults(func=cmd_assign)
    p = sub.add_parser("grade", help="autograde a class's submissions with nbgrader; one CSV of scores per exercise")
    p.add_argument("submissions", metavar="SUBMITTED", help="<student>/<assignment>/<notebook>.ipynb folders")
    p.add_argument("--course", help="nbgrader course folder that keeps gradebook.db (default: SUBMITTED's parent)")
    p.add_argument("--source", default="notebooks", help="folder of the solution notebooks (default: notebooks/)")
    p.add_argument("--profile", default="smoke", help="VLMLAB_PROFILE the notebooks run with (default: smoke)")
    p.add_argument("--csv", help="where to write the scores (default: <course>/grades.csv)")
    p.set_defaults(func=cmd_grade)
    p = sub.add_parser("doctor", help="versions, device, backbones, data sources and checkpoints")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("zoo", help="the checkpoint store")
    p.add_argument("action", choices=("list", "verify"))
    p.set_defaults(func=cmd_zoo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
