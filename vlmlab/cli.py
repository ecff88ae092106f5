"""`python -m vlmlab ...`: run notebooks headless, sweep them, report, hand them out, check the setup.
Introduced in notebook 00.

    python -m vlmlab run notebooks/02_contrastive.ipynb --profile smoke -p LR 1e-3
    python -m vlmlab run-all --profile cpu --out runs/cpu
    python -m vlmlab sweep notebooks/02_contrastive.ipynb -p LR 1e-4,3e-4,1e-3
    python -m vlmlab report runs/cpu
    python -m vlmlab assign                  # student copies in assignments/release/
    python -m vlmlab doctor                  # versions, device, backbones, data, checkpoints
    python -m vlmlab zoo list | verify

Each run writes DIR/<notebook>.ipynb (executed, with outputs) and DIR/metrics.json: what the notebook
recorded with `vlmlab.metrics.record` plus notebook, profile, parameters, wall_s, peak_rss_mb, status.
Exit status: 0 ok, 1 a run or check failed, 2 a bad command line or parameter (nothing was started).
papermill, torch and nbgrader are imported inside the commands that use them, so a bad command line is refused at once.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import itertools
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from . import files, metrics, params

FIXED_COLUMNS = ["run", "notebook", "profile", "status", "wall_s", "peak_rss_mb"]


class UsageError(Exception):
    """A bad command line; the message is one line and nothing has been started."""


def parse_value(text: str):
    """A -p value as Python reads it (3, 1e-3, True, None, 'x'), or the text itself: `-p DECODE beam`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


# ---- running one notebook ----

def check_parameters(notebook: Path, parameters: dict) -> None:
    """Refuse, before any kernel starts, a bad PROFILE/SEED/TRAIN or a name the parameters cell does not have."""
    if not notebook.is_file():
        raise UsageError(f"notebook {notebook} does not exist")
    for name, value in parameters.items():
        if name in params.COMMON:
            try:
                params.COMMON[name].check(name, value)
            except params.ParameterError as e:
                raise UsageError(str(e)) from None
    import nbformat
    import papermill

    try:
        known = papermill.inspect_notebook(str(notebook))
    except (nbformat.reader.NotJSONError, nbformat.ValidationError, ValueError) as e:
        raise UsageError(f"{notebook} is not a readable notebook: {str(e).splitlines()[0][:200]}") from None
    unknown = [name for name in parameters if name not in known]
    if unknown:
        raise UsageError(f"unknown parameter {unknown[0]} for {notebook.name}: its parameters cell has "
                         f"{', '.join(known) or 'no parameters'}")


def notebook_profile(notebook: Path, parameters: dict) -> str:
    """The profile a run uses: PROFILE given, else the parameters cell's default; 'auto' resolved to gpu/cpu."""
    import papermill

    default = papermill.inspect_notebook(str(notebook)).get("PROFILE", {}).get("default", "'auto'")
    return params.resolve_profile(parameters.get("PROFILE", parse_value(default)))


class PeakRSS:
    """Peak resident memory (MiB) of this process's children (the kernel and what it starts) while a notebook runs.

    A thread reads each child's high-water mark (VmHWM in /proc/<pid>/status on Linux, current RSS elsewhere)
    every 0.1 s. An exited kernel's peak is also in getrusage(RUSAGE_CHILDREN), which catches a peak in the
    last cell; that counter only ever grows, so it is used only when this run raised it.
    """

    def __init__(self):
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._before = _children_maxrss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        after = _children_maxrss_mb()
        if after > self._before:
            self.peak_mb = max(self.peak_mb, after)

    def _poll(self):
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.1):
            total = 0.0
            for child in me.children(recursive=True):
                try:
                    total += _high_water_mb(child)
                except (psutil.Error, OSError):
                    pass  # it exited between listing and reading
            self.peak_mb = max(self.peak_mb, total)


def _high_water_mb(process) -> float:
    status = Path(f"/proc/{process.pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return process.memory_info().rss / 2**20


def _children_maxrss_mb() -> float:
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, kB on Linux


ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def raising_line(traceback: list[str]) -> str | None:
    """Where the error was raised, from IPython's traceback: 'Cell In[21], line 5: assert x > 0'."""
    frames = [ANSI_COLOUR.sub("", frame).strip().splitlines() for frame in traceback]
    frames = [lines for lines in frames if any(line.startswith("---->") for line in lines)]
    if not frames:
        return None
    code = next(line for line in frames[-1] if line.startswith("---->"))
    return f"{frames[-1][0]}: {code.removeprefix('---->').strip().partition(' ')[2].strip()}"


def failure_lines(error: Exception) -> list[str]:
    """A failed run in a few lines: the cell, `ename: evalue` and the line that raised, never the whole traceback."""
    import papermill

    if isinstance(error, papermill.PapermillExecutionError):
        evalue = error.evalue.strip().splitlines()
        lines = [f"cell {error.exec_count} raised {error.ename}" + (f": {evalue[0]}" if evalue else "")] + evalue[1:3]
        where = raising_line(error.traceback)
        if where and error.ename != "ParameterError":  # a ParameterError's one line says it all
            lines.append(where)
    else:
        first = (str(error).strip().splitlines() or [""])[0]
        lines = [f"{type(error).__name__}: {first}"]
    return [line[:300] for line in lines]


def run_notebook(notebook: Path, out_dir: Path, parameters: dict, timeout: float | None = None) -> dict:
    """Execute `notebook` with papermill into `out_dir`; write and return out_dir/metrics.json."""
    import papermill

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # a previous run's numbers must not leak into this one
    os.environ["VLMLAB_RUN_DIR"] = str(out_dir)  # the kernel inherits it; vlmlab.metrics.record writes there
    profile = notebook_profile(notebook, parameters)
    executed = out_dir / notebook.name
    print(f"▶ {notebook} (profile {profile}) -> {executed}", flush=True)
    error, start = None, time.perf_counter()
    with PeakRSS() as memory:
        try:
            papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(notebook.parent.resolve()),
                                       log_output=False, progress_bar=False, execution_timeout=timeout,
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no kernel start-up chatter
        except Exception as e:  # a failing cell, a timeout, a dead kernel: all reported the same way
            error = e
    info = {"notebook": notebook.stem, "profile": profile, "parameters": parameters,
            "wall_s": round(time.perf_counter() - start, 2), "peak_rss_mb": round(memory.peak_mb, 1),
            "status": "failed" if error else "ok"}
    if error:
        lines = failure_lines(error)
        info["error"] = lines[0]
        print(f"✗ {notebook.stem} failed after {info['wall_s']} s: " + "\n  ".join(lines))
        print(f"  full traceback: {executed}")
    else:
        print(f"✓ {notebook.stem} ok in {info['wall_s']} s, peak RSS {info['peak_rss_mb']:.0f} MB")
    recorded = metrics.read_json(out_dir / "metrics.json")
    result = info | {key: value for key, value in recorded.items() if key not in info}
    files.write_json_atomic(out_dir / "metrics.json", result)
    return result


def given_parameters(args) -> dict:
    """--profile and every -p NAME VALUE as one dict (-p PROFILE wins over --profile)."""
    parameters = {"PROFILE": args.profile} if args.profile else {}
    for name, value in args.p or []:
        parameters[name] = parse_value(value)
    return parameters


def cmd_run(args) -> int:
    notebook, parameters = Path(args.notebook), given_parameters(args)
    check_parameters(notebook, parameters)
    out_dir = Path(args.out) if args.out else Path("runs") / f"{notebook.stem}-{stamp()}"
    return 0 if run_notebook(notebook, out_dir, parameters, args.timeout)["status"] == "ok" else 1


def cmd_run_all(args) -> int:
    notebooks = sorted(Path(args.notebooks).glob("*.ipynb"))
    if not notebooks:
        raise UsageError(f"no notebooks in {args.notebooks}")
    parameters = given_parameters(args)
    for notebook in notebooks:
        check_parameters(notebook, parameters)
    out = Path(args.out) if args.out else Path("runs") / f"all-{stamp()}"
    results = [run_notebook(nb, out / nb.stem, parameters, args.timeout) for nb in notebooks]
    report([out], None)
    return 0 if all(r["status"] == "ok" for r in results) else 1


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


# ---- report ----

def report_rows(dirs: list[Path]) -> list[dict]:
    """One flat row per metrics.json under `dirs`: parameters become columns named p.NAME."""
    rows = []
    for directory in dirs:
        for path in sorted(Path(directory).rglob("metrics.json")):
            data = metrics.read_json(path)
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


# ---- assign, doctor, zoo ----

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


# Distribution names whose versions `doctor` prints (read from package metadata, nothing imported).
VERSIONS = ("torch", "numpy", "transformers", "tokenizers", "safetensors", "accelerate", "pillow", "papermill",
            "nbformat", "nbgrader", "ipywidgets", "jupyterlab", "pycocoevalcap", "psutil")


def cmd_doctor(args) -> int:
    """Print a checklist of the setup; always exits 0 (a missing optional piece says how to install it)."""
    sections = {"versions": version_checks(), "device": [device_check()], "backbones": backbone_checks(),
                "data": data_checks(), "checkpoints": checkpoint_checks()}
    width = max(len(name) for checks in sections.values() for _, name, _ in checks)
    for title, checks in sections.items():
        print(title)
        for ok, name, detail in checks:
            print(f"  {'✓' if ok else '✗'} {name.ljust(width)}  {detail}")
    return 0


def version_checks() -> list[tuple[bool, str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    checks = [(True, "python", platform.python_version())]
    for dist in VERSIONS:
        try:
            checks.append((True, dist, version(dist)))
        except PackageNotFoundError:
            checks.append((False, dist, "not installed"))
    return checks


def device_check() -> tuple[bool, str, str]:
    import torch

    if torch.cuda.is_available():
        name = f"cuda ({torch.cuda.get_device_name(0)})"
    elif torch.backends.mps.is_available():
        name = "mps"
    else:
        name = "cpu"
    return True, "device", f"{name}, {torch.get_num_threads()} torch threads, PROFILE auto -> {params.resolve_profile('auto')}"


def backbone_checks() -> list[tuple[bool, str, str]]:
    """Each registry backbone: ready, or what to do to get it (`backbones.available`, which finds packages
    without importing them and tiny-* checkpoints in the zoo)."""
    try:
        from . import backbones
    except Exception as e:
        return [(False, "backbones", f"not available ({type(e).__name__}: {e})")]
    return [(status == "ok", name, "ready" if status == "ok" else status) for name, status in backbones.available().items()]


def data_checks() -> list[tuple[bool, str, str]]:
    """The offline real-data sources of vlmlab.data.real: where they are, or the command that installs them."""
    try:
        from .data import real
    except Exception as e:
        return [(False, "vlmlab.data.real", f"not available ({type(e).__name__}: {e})")]
    fashion = real.fashion_mnist_files()
    found = {"tuxpaint_stamps": real.tuxpaint_root(), "fashion_mnist": fashion and fashion["train"]["images"].parent,
             "imagenet_classnames": real.imagenet_classnames_path()}
    for package in ("skimage", "matplotlib", "sklearn"):  # their sample photos
        found[package] = files.package_folder(package)
    return [(bool(where), key, str(where) if where else f"not found: {real.INSTALL_HINTS[key]}") for key, where in found.items()]


def checkpoint_checks() -> list[tuple[bool, str, str]]:
    try:
        from . import zoo
    except Exception as e:
        return [(False, "vlmlab.zoo", f"not available ({type(e).__name__}: {e})")]
    checks = [(ok, name, message) for name, ok, message in zoo.verify_all()]
    return checks or [(False, "checkpoints", "none yet: the training notebooks save them (vlmlab.zoo)")]


def cmd_zoo(args) -> int:
    from . import zoo

    if args.action == "list":
        records = zoo.list_checkpoints()
        if not records:
            print("no checkpoints yet: the training notebooks save them")
        for record in records:
            detail = record.get("error") or f"{record.get('dtype', '?')}, created {record.get('created', '?')}"
            print(f"{record['name']:<20} {record['location']:<8} {detail}  ({record['path']})")
        return 0
    from .strategies import clip, frozen_prefix, prefix_lm
    from .unimodal import TINY_BACKBONES, verify_tiny

    verifiers = {name: verify_tiny for name in TINY_BACKBONES} | {name: clip.verify_clip for name in clip.SAVED_CLIPS}
    verifiers |= {name: prefix_lm.verify for name in prefix_lm.SAVED}
    verifiers |= {name: frozen_prefix.verify for name in frozen_prefix.SAVED}

    def remeasure(name, folder):  # hashes match: re-measure the model on its evaluation sets
        return verifiers[name](name, folder) if name in verifiers else (True, "ok")

    results = zoo.verify_all(deep=remeasure)
    for name, ok, message in results:
        print(f"{'✓' if ok else '✗'} {name:<20} {message}")
    print(f"{sum(ok for _, ok, _ in results)}/{len(results)} checkpoints verified")
    return 0 if all(ok for _, ok, _ in results) else 1


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
