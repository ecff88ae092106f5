"""Running notebooks headless (`run`, `run-all`): check the parameters before any kernel starts, execute each
notebook with papermill into its own folder, and write metrics.json there (what the notebook recorded plus notebook,
profile, parameters, wall_s, peak_rss_mb, status); a failed run is told in a few lines. Introduced in notebook 00.
"""

from __future__ import annotations

import ast
import os
import re
import time
from datetime import datetime
from pathlib import Path

from .. import files, params, runs
from .errors import UsageError
from .memory import PeakRSS
from .report import report


def parse_value(text: str):
    """A -p value as Python reads it (3, 1e-3, True, None, 'x'), or the text itself: `-p DECODE beam`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def check_parameters(notebook: Path, parameters: dict) -> None:
    """Refuse, before any kernel starts, a bad PROFILE/SEED/TRAIN or a name the parameters cell does not have."""
    if not notebook.is_file():
        raise UsageError(f"notebook {notebook} does not exist")
    for name, value in parameters.items():
        if name in params.COMMON:
            try:
                params.COMMON[name].check(name, value)
                if name == "PROFILE":
                    params.resolve_profile(value)  # "gpu" on a machine without CUDA stops here
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
    os.environ["VLMLAB_RUN_DIR"] = str(out_dir)  # the kernel inherits it; vlmlab.runs.record writes there
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
    recorded = runs.read_json(out_dir / "metrics.json")
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
