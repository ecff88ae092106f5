"""vlmlab.params: every check, its one-line message, profile defaults, PROFILE=auto, PROFILE=gpu refused on a
machine without CUDA, and seeding."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmlab import params
from vlmlab.params import Param, ParameterError

SPEC = {
    "N_TRAIN": Param(int, min=1, profiles={"smoke": 64, "cpu": 4000, "gpu": 40000}),
    "LR": Param(float, min=0.0, max=1.0, exclusive_min=True),
    "DECODE": Param(str, choices=("greedy", "beam"), default="greedy"),
}
GOOD = {"PROFILE": "smoke", "SEED": 0, "TRAIN": True, "N_TRAIN": None, "LR": 3e-4}


def resolve(**changes):
    return params.resolve(SPEC, **(GOOD | changes))


def error(**changes) -> str:
    with pytest.raises(ParameterError) as info:
        resolve(**changes)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_resolve_fills_profile_defaults_and_keeps_given_values():
    cfg = resolve()
    assert cfg.N_TRAIN == 64 and cfg.LR == 3e-4 and cfg.DECODE == "greedy"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert (cfg.profile, cfg.seed, cfg.train, cfg.device) == ("smoke", 0, True, device)
    assert resolve(PROFILE="cpu").N_TRAIN == 4000
    assert resolve(N_TRAIN=7).N_TRAIN == 7
    assert dict(cfg) == cfg.as_dict() == {"PROFILE": "smoke", "SEED": 0, "TRAIN": True, "DEVICE": cfg.device,
                                          "N_TRAIN": 64, "LR": 3e-4, "DECODE": "greedy"}


def test_gpu_profile_defaults_where_there_is_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = resolve(PROFILE="gpu")
    assert cfg.N_TRAIN == 40000 and cfg.profile == "gpu" and cfg.device == "cuda"


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: PROFILE='gpu' is allowed here")
GPU_REFUSED = "PROFILE='gpu' needs a CUDA GPU and torch sees none on this machine"


@NO_CUDA
def test_gpu_profile_is_refused_without_cuda():
    message = error(PROFILE="gpu")
    assert message.startswith(GPU_REFUSED) and "'cpu'" in message
    with pytest.raises(ParameterError, match="PROFILE='gpu'"):
        params.resolve_profile("gpu")


@NO_CUDA
def test_vlmlab_profile_gpu_is_refused_without_cuda(monkeypatch):
    monkeypatch.setenv("VLMLAB_PROFILE", "gpu")
    with pytest.raises(ParameterError, match="PROFILE='gpu'"):
        params.resolve_profile("auto")
    assert error(PROFILE="auto").startswith(GPU_REFUSED)
    assert resolve(PROFILE="cpu").profile == "cpu"  # an explicit profile still wins


@NO_CUDA
def test_run_with_profile_gpu_is_refused_before_a_kernel_starts(tmp_path):
    """Exit 2 and one line naming PROFILE, and no run folder: nothing was started."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "vlmlab", "run", "--profile", "gpu", "notebooks/00_shapes_world.ipynb",
                             "--out", str(out)], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {GPU_REFUSED}")
    assert not out.exists()


def test_common_parameters_take_their_defaults_when_not_passed():
    cfg = params.resolve({"LR": SPEC["LR"]}, LR=0.5)
    assert cfg.SEED == 0 and cfg.TRAIN is True and cfg.PROFILE in ("cpu", "gpu")


def test_auto_profile_follows_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve(PROFILE="auto").profile == "cpu" and resolve(PROFILE="auto").N_TRAIN == 4000
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert params.resolve_profile("auto") == "gpu"
    assert params.resolve_profile("smoke") == "smoke"


def test_profile_must_be_a_known_name():
    assert error(PROFILE="nonsense") == "PROFILE='nonsense' is not allowed: choose one of 'auto', 'smoke', 'cpu', 'gpu'"


def test_range_errors_name_the_parameter_value_and_bound():
    assert error(N_TRAIN=-3).startswith("N_TRAIN=-3 is out of range: must be an int >= 1")
    assert error(N_TRAIN=0).startswith("N_TRAIN=0 is out of range")
    assert error(LR=0) == "LR=0 is out of range: must be a float > 0.0 and <= 1.0"
    assert error(LR=1.5) == "LR=1.5 is out of range: must be a float > 0.0 and <= 1.0"
    assert resolve(LR=1.0).LR == 1.0  # the max is inclusive
    assert error(SEED=-1) == "SEED=-1 is out of range: must be an int >= 0"
    assert error(LR=float("inf")).startswith("LR=inf is not a finite number")


def test_exclusive_max():
    param = Param(float, max=1.0, exclusive_max=True)
    assert param.check("P", 0.5) == 0.5
    with pytest.raises(ParameterError, match=r"P=1.0 is out of range: must be a float < 1.0"):
        param.check("P", 1.0)


def test_type_errors_name_the_type_given_and_the_type_wanted():
    assert error(N_TRAIN=2.5) == "N_TRAIN=2.5 has the wrong type (float): must be an int >= 1, or None for the profile's default"
    assert error(N_TRAIN="64").startswith("N_TRAIN='64' has the wrong type (str)")
    assert error(LR="fast").startswith("LR='fast' has the wrong type (str): must be a float")
    assert error(DECODE=1).startswith("DECODE=1 has the wrong type (int)")
    assert error(TRAIN=1) == "TRAIN=1 has the wrong type (int): must be a bool (True or False)"
    assert error(TRAIN="yes").startswith("TRAIN='yes' has the wrong type (str)")


def test_bool_is_not_an_int_but_an_int_is_a_float():
    assert error(SEED=True) == "SEED=True has the wrong type (bool): must be an int >= 0"
    assert error(N_TRAIN=False).startswith("N_TRAIN=False has the wrong type (bool)")
    assert error(LR=True).startswith("LR=True has the wrong type (bool)")
    cfg = resolve(LR=1, SEED=np.int64(3))
    assert cfg.LR == 1.0 and type(cfg.LR) is float
    assert cfg.SEED == 3 and type(cfg.SEED) is int


def test_choices():
    assert resolve(DECODE="beam").DECODE == "beam"
    assert error(DECODE="sample") == "DECODE='sample' is not allowed: choose one of 'greedy', 'beam'"


def test_none_means_the_profile_default_only_where_there_is_one():
    assert resolve(N_TRAIN=None, PROFILE="cpu").N_TRAIN == 4000
    assert error(LR=None) == "LR=None has the wrong type (NoneType): must be a float > 0.0 and <= 1.0"
    assert error(SEED=None).startswith("SEED=None has the wrong type")


def test_unknown_and_missing_parameters():
    assert error(N_TRIAN=5) == ("unknown parameter N_TRIAN=5: this notebook's parameters are "
                                "PROFILE, SEED, TRAIN, N_TRAIN, LR, DECODE")
    with pytest.raises(ParameterError, match=r"^LR is missing: pass LR=\.\.\. to resolve\(\) \(must be a float"):
        params.resolve(SPEC, PROFILE="smoke")


def test_bad_specs_are_refused_when_written():
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        Param(int, profiles={"smoke": 1, "cpu": 2})
    with pytest.raises(TypeError, match="not supported"):
        Param(list)
    with pytest.raises(TypeError, match="min/max"):
        Param(str, min=1)
    with pytest.raises(ValueError, match="must not redefine SEED"):
        params.resolve({"SEED": Param(int)}, SEED=1)


def test_config_is_read_only_and_readable():
    cfg = resolve(PROFILE="auto")
    with pytest.raises(AttributeError, match="read-only"):
        cfg.LR = 1.0
    with pytest.raises(AttributeError, match="no parameter 'BATCH'"):
        _ = cfg.BATCH
    with pytest.raises(TypeError):
        cfg["LR"] = 1.0
    lines = repr(cfg).splitlines()
    assert lines[0].split() == ["parameter", "value", "from"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["N_TRAIN"] == [str(cfg.N_TRAIN), cfg.profile, "profile"]
    assert rows["PROFILE"] == [repr(cfg.profile), "auto"]
    assert rows["LR"] == ["0.0003", "given"] and rows["DECODE"] == ["'greedy'", "default"]
    assert len({line.index(" " + line.split()[1]) for line in lines[1:]}) == 1  # values start in one column


def test_resolve_seeds_random_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    resolve(SEED=123)
    first = draw()
    resolve(SEED=123)
    assert draw() == first
    resolve(SEED=124)
    assert draw() != first
    params.seed_everything(123)
    assert draw() == first


def test_auto_profile_follows_vlmlab_profile_env(monkeypatch):
    monkeypatch.setenv("VLMLAB_PROFILE", "smoke")
    assert params.resolve_profile("auto") == "smoke"
    assert params.resolve_profile("cpu") == "cpu"  # an explicit profile wins
    monkeypatch.setenv("VLMLAB_PROFILE", "fast")
    with pytest.raises(params.ParameterError, match="VLMLAB_PROFILE='fast'"):
        params.resolve_profile("auto")
