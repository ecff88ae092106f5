"""`python -m vlmlab`: run, run-all, sweep, report, assign, doctor, on tiny notebooks written here with nbformat.

Also vlmlab.runs.record, which is how a notebook hands its numbers to `run`, and runs.check_targets.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from vlmlab import runs
from vlmlab.cli import main
from vlmlab.cli.runner import parse_value
from vlmlab.cli.sweep import sweep_grid

KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}

# Allocates MB mebibytes and records a number that depends on it (total == MB), without importing torch.
WORK = [
    ('PROFILE = "auto"\nSEED = 0\nTRAIN = True\nMB = 0\nLABEL = "x"', {"tags": ["parameters"]}),
    ("import time\nfrom pathlib import Path\nimport numpy as np\nfrom vlmlab import runs\n"
     "block = np.ones(MB * 2**20 // 8)  # float64: 8 bytes each\ntime.sleep(0.3)\n"
     "runs.record(total=float(block.sum()) / 2**17, label=LABEL, folder=Path.cwd().name)", {}),
]
# Checks N the way params.resolve does (without importing torch, to stay fast), so a bad N stops it in the second cell.
CHECKED = [
    ('PROFILE = "auto"\nN = 1', {"tags": ["parameters"]}),
    ('from vlmlab import params\nparams.Param(int, min=1).check("N", N)', {}),
]
CRASH = [('PROFILE = "auto"', {"tags": ["parameters"]}), ("1 / 0", {})]


def write_notebook(path: Path, cells) -> Path:
    nb = new_notebook(metadata=KERNEL)
    nb.cells = [new_code_cell(source, metadata=metadata) for source, metadata in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def vlmlab(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmlab", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def output_lines(result) -> list[str]:
    return (result.stdout + result.stderr).strip().splitlines()


# ---- helpers, in process ----

def test_parse_value_reads_python_literals_and_falls_back_to_text():
    assert parse_value("3") == 3 and parse_value("1e-3") == 1e-3 and parse_value("True") is True
    assert parse_value("None") is None and parse_value("'beam'") == "beam"
    assert parse_value("beam") == "beam" and parse_value("a b") == "a b"


def test_sweep_grid_is_the_cartesian_product():
    grid = sweep_grid([["LR", "0.1,0.2"], ["DECODE", "greedy,beam"], ["SEED", "0"]])
    assert grid == [{"LR": 0.1, "DECODE": "greedy", "SEED": 0}, {"LR": 0.1, "DECODE": "beam", "SEED": 0},
                    {"LR": 0.2, "DECODE": "greedy", "SEED": 0}, {"LR": 0.2, "DECODE": "beam", "SEED": 0}]


def test_record_checks_keeps_and_merges_into_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "_recorded", {})
    monkeypatch.setenv("VLMLAB_RUN_DIR", str(tmp_path))
    (tmp_path / "metrics.json").write_text(json.dumps({"earlier": 1}))
    assert runs.record(acc=0.5, steps=10) == {"acc": 0.5, "steps": 10}
    assert runs.record(acc=0.75, ok=True, decode="beam") == {"acc": 0.75, "steps": 10, "ok": True, "decode": "beam"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"earlier": 1, "acc": 0.75, "steps": 10, "ok": True,
                                                                    "decode": "beam"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind
    for bad, why in [(float("nan"), "not a finite number"), ([1], "must be a finite number, a bool or a short string"),
                     ("x" * 201, "short one-line string")]:
        with pytest.raises(ValueError, match=f"metric loss=.*{why}"):
            runs.record(loss=bad)
    assert "loss" not in runs.recorded()


def test_record_without_a_run_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "_recorded", {})
    monkeypatch.delenv("VLMLAB_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runs.record(acc=1) == runs.recorded() == {"acc": 1}
    assert list(tmp_path.iterdir()) == []


# ---- run ----

def test_bad_profile_stops_before_any_kernel_starts(tmp_path):
    notebook = write_notebook(tmp_path / "work.ipynb", WORK)
    result = vlmlab("run", notebook, "-p", "PROFILE", "nonsense", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert output_lines(result) == ["error: PROFILE='nonsense' is not allowed: choose one of 'auto', 'smoke', 'cpu', 'gpu'"]
    assert not (tmp_path / "out").exists()
    result = vlmlab("run", notebook, "-p", "MEGABYTES", "3", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert output_lines(result) == ["error: unknown parameter MEGABYTES for work.ipynb: its parameters cell has "
                                    "PROFILE, SEED, TRAIN, MB, LABEL"]


def test_bad_profile_is_refused_without_importing_torch_papermill_or_nbgrader(tmp_path):
    notebook = write_notebook(tmp_path / "work.ipynb", WORK)
    code = ("import sys\nfrom vlmlab.cli import main\n"
            f"assert main(['run', '--profile', 'nonsense', {str(notebook)!r}]) == 2\n"
            "print(sorted(m for m in ('torch', 'papermill', 'nbgrader') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_run_writes_the_executed_notebook_and_its_metrics(tmp_path):
    write_notebook(tmp_path / "nbs" / "work.ipynb", WORK)
    out = tmp_path / "out"
    result = vlmlab("run", "nbs/work.ipynb", "--profile", "smoke", "-p", "MB", "300", "-p", "LABEL", "hello", "--out", "out",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    executed = nbformat.read(out / "work.ipynb", as_version=4)
    assert any("MB = 300" in cell.source for cell in executed.cells)  # papermill's injected parameters
    found = json.loads((out / "metrics.json").read_text())
    assert found["notebook"] == "work" and found["profile"] == "smoke" and found["status"] == "ok"
    assert found["parameters"] == {"PROFILE": "smoke", "MB": 300, "LABEL": "hello"}
    assert found["total"] == 300 and found["label"] == "hello"  # recorded inside the kernel
    assert found["folder"] == "nbs"  # the kernel ran in the notebook's folder
    assert found["wall_s"] > 0.3
    assert found["peak_rss_mb"] >= 300  # the kernel held a 300 MiB array


@pytest.mark.slow
def test_failing_notebook_exits_1_with_a_short_message(tmp_path):
    notebook = write_notebook(tmp_path / "checked.ipynb", CHECKED)
    out = tmp_path / "out"
    result = vlmlab("run", notebook, "--profile", "smoke", "-p", "N", "-3", "--out", out)
    assert result.returncode == 1
    lines = output_lines(result)
    assert len(lines) <= 4, lines
    # cell 3: after the parameters cell and the one papermill injects
    assert lines[1].endswith("cell 3 raised ParameterError: N=-3 is out of range: must be an int >= 1")
    assert "Traceback" not in result.stdout + result.stderr
    found = json.loads((out / "metrics.json").read_text())
    assert found["status"] == "failed" and "N=-3 is out of range" in found["error"]


# ---- sweep, report, run-all ----

@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    notebook = write_notebook(root / "work.ipynb", WORK)
    result = vlmlab("sweep", notebook, "--profile", "smoke", "-p", "MB", "0,2", "-p", "LABEL", "a", "--out", root / "out")
    return root / "out", result


@pytest.mark.slow
def test_sweep_makes_one_run_per_value(sweep_out):
    out, result = sweep_out
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["MB=0_LABEL=a", "MB=2_LABEL=a"]
    for name, mb in [("MB=0_LABEL=a", 0), ("MB=2_LABEL=a", 2)]:
        found = json.loads((out / name / "metrics.json").read_text())
        assert found["parameters"] == {"PROFILE": "smoke", "MB": mb, "LABEL": "a"} and found["total"] == mb
        assert 20 < found["peak_rss_mb"] < 250  # a bare kernel: the 300 MB of the run test come from its array
    assert (out / "report.csv").exists() and "2 run(s)" in result.stdout


@pytest.mark.slow
def test_report_prints_one_table_and_writes_csv(sweep_out, tmp_path):
    out, _ = sweep_out
    result = vlmlab("report", out, "--csv", tmp_path / "r.csv")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()[:3]
    assert header.split() == ["run", "notebook", "profile", "status", "wall_s", "peak_rss_mb", "p.LABEL", "p.MB", "p.PROFILE",
                              "folder", "label", "total"]
    folder = out.parent.name
    assert [row.split()[1:4] + row.split()[6:] for row in rows] == [["work", "smoke", "ok", "a", "0", "smoke", folder, "a", "0"],
                                                                     ["work", "smoke", "ok", "a", "2", "smoke", folder, "a", "2"]]
    for column, values in [("status", ["ok", "ok"]), ("p.MB", ["0 ", "2 "]), ("total", ["0", "2"])]:  # aligned columns
        start = header.index(column)
        assert [row[start:start + len(value)] for row, value in zip(rows, values)] == values
    with open(tmp_path / "r.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["p.MB"], r["total"], r["status"]) for r in table] == [("0", "0.0", "ok"), ("2", "2.0", "ok")]
    assert all(float(r["wall_s"]) > 0 and float(r["peak_rss_mb"]) > 0 for r in table)
    assert vlmlab("report", tmp_path / "empty").returncode == 2


@pytest.mark.slow
def test_run_all_runs_every_notebook_past_failures(tmp_path):
    write_notebook(tmp_path / "nbs" / "00_crash.ipynb", CRASH)
    write_notebook(tmp_path / "nbs" / "01_work.ipynb", WORK)
    result = vlmlab("run-all", "--notebooks", tmp_path / "nbs", "--profile", "smoke", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "ZeroDivisionError: division by zero" in result.stdout
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in (tmp_path / "out").rglob("metrics.json")}
    assert statuses == {"00_crash": "failed", "01_work": "ok"}


# ---- assign ----

SOLUTION = {"grade": False, "solution": True, "locked": False, "schema_version": 3, "grade_id": "double", "task": False}
TESTS = {"grade": True, "solution": False, "locked": True, "points": 1, "schema_version": 3, "grade_id": "test_double",
         "task": False}


@pytest.mark.slow
def test_assign_makes_student_copies_that_fail_until_solved(tmp_path):
    nb = new_notebook(metadata=KERNEL)
    nb.cells = [new_markdown_cell("Write `double`."),
                new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                              metadata={"nbgrader": SOLUTION}),
                new_code_cell("assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(-21) == -42\n### END HIDDEN TESTS",
                              metadata={"nbgrader": TESTS})]
    source = tmp_path / "notebooks" / "07_double.ipynb"
    source.parent.mkdir()
    nbformat.write(nb, source)
    write_notebook(tmp_path / "notebooks" / "08_plain.ipynb", CRASH)  # no nbgrader cells: not an assignment

    result = vlmlab("assign", "--out", tmp_path / "assignments", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    released = tmp_path / "assignments" / "release" / "07_double" / "07_double.ipynb"
    assert sorted(p.name for p in (tmp_path / "assignments" / "release").iterdir()) == ["07_double"]
    student = released.read_text()
    assert "raise NotImplementedError()" in student and "return 2 * x" not in student
    assert "double(-21)" not in student and "HIDDEN TESTS" not in student
    assert "return 2 * x" in source.read_text() and "double(-21)" in source.read_text()  # the source is untouched

    pm.execute_notebook(str(source), str(tmp_path / "solved.ipynb"), progress_bar=False, kernel_name="python3")
    with pytest.raises(pm.PapermillExecutionError) as failure:
        pm.execute_notebook(str(released), str(tmp_path / "student.ipynb"), progress_bar=False, kernel_name="python3")
    assert failure.value.ename == "NotImplementedError"


def test_assign_refuses_a_notebook_without_nbgrader_cells(tmp_path):
    result = vlmlab("assign", write_notebook(tmp_path / "plain.ipynb", CRASH), "--out", tmp_path / "assignments")
    assert result.returncode == 2 and "plain.ipynb is not a notebook with nbgrader cells" in result.stderr


# ---- doctor ----

def test_doctor_lists_versions_device_and_every_backbone():
    result = vlmlab("doctor")
    assert result.returncode == 0, result.stderr
    for name in ("python", "torch", "transformers", "tokenizers", "device", "efficientnet-lite0", "minilm-l6", "smollm2-135m"):
        assert any(line.split()[1:2] == [name] for line in result.stdout.splitlines()), name
    for title in ("versions", "device", "backbones", "data", "checkpoints"):
        assert title in result.stdout.splitlines()
    assert all(line.startswith(("  ✓ ", "  ✗ ")) for line in result.stdout.splitlines() if line.startswith(" "))


# ---- zoo ----

def test_zoo_list_and_verify_report_a_corrupted_checkpoint(user_cache, tmp_path, monkeypatch, capsys):
    import torch

    from vlmlab import zoo

    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "none-shipped")
    zoo.save_checkpoint("good", {"w": torch.ones(2)}, {"dim": 2})
    bad = zoo.save_checkpoint("bad", {"w": torch.ones(2)}, {"dim": 2})
    bad.write_bytes(bad.read_bytes()[:-1] + b"\x00")  # one byte changed: the sha256 no longer matches

    assert main(["zoo", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listed] == [["bad", "user"], ["good", "user"]]
    assert "sha256" in listed[0] and "float32" in listed[1]
    assert main(["zoo", "verify"]) == 1
    verified = capsys.readouterr().out.splitlines()
    assert verified[0].startswith("✗ bad") and verified[1].split() == ["✓", "good", "user:", "hash", "ok"]
    assert verified[2] == "1/2 checkpoints verified"


def test_zoo_verify_measures_any_saved_model_again(tiny_zoo, tok, tmp_path, monkeypatch, capsys):
    """Generic: the strategy named in the record measures the model on the evaluation set the record names."""
    from vlmlab import unimodal, zoo
    from vlmlab.data.evalsets import SceneBench

    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "none-shipped")
    gpt, _ = zoo.load_model("tiny-gpt")
    metrics = unimodal.measure(gpt, tok, SceneBench.build(seed=0, n=8))
    zoo.save_model("gpt-measured", gpt, metrics, strategy="unimodal", evalset={"kind": "scenes", "seed": 0, "n": 8},
                   dtype=None)
    assert main(["zoo", "verify"]) == 0
    verified = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[:-1]}
    assert "user: re-measured val_ppl" in verified["gpt-measured"] and verified["tiny-gpt"].endswith("user: hash ok")
    zoo.save_model("gpt-measured", gpt, metrics | {"val_ppl": metrics["val_ppl"] * 2}, strategy="unimodal",
                   evalset={"kind": "scenes", "seed": 0, "n": 8}, dtype=None)
    assert main(["zoo", "verify"]) == 1
    out = capsys.readouterr().out
    assert "✗ gpt-measured" in out and "metrics differ: val_ppl" in out


def test_run_refuses_a_broken_notebook_file_by_name(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [')
    result = subprocess.run([sys.executable, "-m", "vlmlab", "run", str(broken)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "broken.ipynb is not a readable notebook" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_targets_reports_missed_targets_without_raising(capsys, monkeypatch):
    monkeypatch.setattr(runs, "_recorded", {})
    runs.record(demo_f1=0.8, demo_fraction=0.05, demo_ppl=1.2)
    targets = {"cpu": {"demo_f1": (">=", 0.9), "demo_fraction": ("<", 0.1), "demo_ppl": ("<=", 1.2)},
               "smoke": {"demo_f1": (">=", 0.5)}}
    met = runs.check_targets(targets, "cpu")
    assert met == {"demo_f1": False, "demo_fraction": True, "demo_ppl": True} and runs.recorded()["targets_met"] is False
    out = capsys.readouterr().out
    assert "✗ missed demo_f1 = 0.8000 (target >= 0.9)" in out and "✓ met    demo_ppl = 1.2000 (target <= 1.2)" in out
    assert runs.check_targets(targets, "smoke") == {"demo_f1": True} and runs.recorded()["targets_met"] is True
    capsys.readouterr()


def test_check_targets_skips_a_metric_this_run_did_not_measure(capsys, monkeypatch):
    monkeypatch.setattr(runs, "_recorded", {})
    runs.record(demo_f1=0.95)
    met = runs.check_targets({"cpu": {"demo_f1": (">=", 0.9), "real_cider": (">=", 0.5)}}, "cpu")
    assert met == {"demo_f1": True} and runs.recorded()["targets_met"] is True
    assert "- not measured real_cider (target >= 0.5): this run did not record it" in capsys.readouterr().out
    with pytest.raises(ValueError, match="comparison"):
        runs.check_targets({"cpu": {"demo_f1": ("~", 1.0)}}, "cpu")
    with pytest.raises(ValueError, match=r"no targets for profile 'gpu': the strategy's TARGETS has \['cpu'\]"):
        runs.check_targets({"cpu": {"demo_f1": (">=", 0.9)}}, "gpu")
