"""Profiles and validated notebook parameters. Introduced in notebook 00.

Every notebook has a parameters cell (tagged `parameters`, the one papermill replaces) and, right after it,

    SPEC = {"N_TRAIN": params.Param(int, min=1, profiles={"smoke": 64, "cpu": 4000, "gpu": 40000}),
            "LR": params.Param(float, min=0.0, max=1.0, exclusive_min=True)}
    cfg = params.resolve(SPEC, PROFILE=PROFILE, SEED=SEED, TRAIN=TRAIN, N_TRAIN=N_TRAIN, LR=LR)

`resolve` checks every value (type, range, allowed choices, known name), fills `None` with the profile's
default, seeds random/numpy/torch and returns a frozen `Config` (cfg.N_TRAIN, cfg.profile, cfg.device, ...).
A bad value stops the notebook with a one-line `ParameterError` naming the parameter, the value and what
is allowed. Profiles: `smoke` (tests, seconds), `cpu` (a laptop, minutes), `gpu`; `auto` picks gpu or cpu.
"""

from __future__ import annotations

import math
import numbers
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np

PROFILES = ("smoke", "cpu", "gpu")
TYPE_NAMES = {int: "an int", float: "a float", str: "a str", bool: "a bool (True or False)"}


def require(ok: bool, name: str, value, allowed: str, where: str = "") -> None:
    """Raise a ValueError that names the argument, its value and what is allowed, unless `ok`.
    `where` ('fit()') prefixes the message with the function the argument was given to."""
    if not ok:
        raise ValueError(f"{where + ': ' if where else ''}{name}={value!r} is not allowed; expected {allowed}")


def is_int(x) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def require_positive_ints(config, names: tuple[str, ...]) -> None:
    """Every one of `names` on `config` must be an int >= 1 (a model config's sizes)."""
    for name in names:
        value = getattr(config, name)
        require(is_int(value) and value >= 1, name, value, "an integer >= 1")


class SavedConfig:
    """A dataclass config that a checkpoint record keeps as plain JSON values: `to_dict()` and `from_dict()`. The
    strategies' `Config` classes are such dataclasses (a nested config overrides `from_dict`)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**d)


class ParameterError(ValueError):
    """A notebook parameter with a value that is not allowed; the message is one line."""


@dataclass(frozen=True)
class Param:
    """What one parameter may be: its type, an optional range or list of choices, and per-profile defaults.

    Param(int, min=1, profiles={"smoke": 64, "cpu": 4000, "gpu": 40000})   None -> the profile's value
    Param(float, min=0.0, max=1.0, exclusive_min=True)                     0 < value <= 1
    Param(str, choices=("greedy", "beam"), default="greedy")               used when resolve() is not given it
    """

    type: type
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    choices: tuple | None = None
    profiles: dict | None = None
    default: object = None

    def __post_init__(self):
        if self.type not in TYPE_NAMES:
            raise TypeError(f"Param type {self.type!r} is not supported: use one of int, float, str, bool")
        if (self.min is not None or self.max is not None) and self.type not in (int, float):
            raise TypeError(f"Param min/max need an int or float type, not {self.type.__name__}")
        if self.profiles is not None and set(self.profiles) != set(PROFILES):
            raise ValueError(f"Param profiles {sorted(self.profiles)} must give a value for each of {', '.join(PROFILES)}")

    def allowed(self) -> str:
        """What the parameter accepts, in words: 'an int >= 1', 'a float > 0.0 and <= 1.0', ..."""
        if self.choices is not None:
            return "choose one of " + ", ".join(repr(c) for c in self.choices)
        bounds = []
        if self.min is not None:
            bounds.append(f"{'>' if self.exclusive_min else '>='} {self.min}")
        if self.max is not None:
            bounds.append(f"{'<' if self.exclusive_max else '<='} {self.max}")
        text = TYPE_NAMES[self.type] + (" " + " and ".join(bounds) if bounds else "")
        return "must be " + text + (", or None for the profile's default" if self.profiles else "")

    def check(self, name: str, value):
        """`value` converted to the parameter's type, or ParameterError saying what is allowed."""
        given = value
        wrong_type = ParameterError(f"{name}={given!r} has the wrong type ({type(given).__name__}): {self.allowed()}")
        if self.type is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise wrong_type
            value = bool(value)
        elif isinstance(value, (bool, np.bool_)):  # True is an int in Python, never a count or a rate here
            raise wrong_type
        elif self.type is int:
            if not isinstance(value, numbers.Integral):
                raise wrong_type
            value = int(value)
        elif self.type is float:
            if not isinstance(value, numbers.Real):
                raise wrong_type
            value = float(value)
            if not math.isfinite(value):
                raise ParameterError(f"{name}={given!r} is not a finite number: {self.allowed()}")
        elif not isinstance(value, str):
            raise wrong_type
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"{name}={given!r} is not allowed: {self.allowed()}")
        too_low = self.min is not None and (value <= self.min if self.exclusive_min else value < self.min)
        too_high = self.max is not None and (value >= self.max if self.exclusive_max else value > self.max)
        if too_low or too_high:
            raise ParameterError(f"{name}={given!r} is out of range: {self.allowed()}")
        return value


# The parameters every notebook has, with their defaults.
COMMON = {
    "PROFILE": Param(str, choices=("auto",) + PROFILES, default="auto"),
    "SEED": Param(int, min=0, default=0),
    "TRAIN": Param(bool, default=True),
}


class Config(Mapping):
    """The resolved parameters of one notebook run: read-only, by attribute (cfg.N_TRAIN) or as a dict (dict(cfg)).

    Keys are the parameter names (PROFILE resolved to smoke/cpu/gpu) plus DEVICE;
    cfg.profile, cfg.device, cfg.seed and cfg.train are short names for the common ones.
    """

    def __init__(self, values: dict, sources: dict):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources))  # name -> "given" / "default" / "<profile> default"

    def __getitem__(self, name: str):
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str):
        values = self.__dict__.get("_values", {})
        if name not in values:
            raise AttributeError(f"the config has no parameter {name!r}; it has {', '.join(values)}")
        return values[name]

    def __setattr__(self, name: str, value):
        raise AttributeError(f"a Config is read-only: change {name} in the parameters cell and run resolve() again")

    profile = property(lambda self: self._values["PROFILE"])
    device = property(lambda self: self._values["DEVICE"])
    seed = property(lambda self: self._values["SEED"])
    train = property(lambda self: self._values["TRAIN"])

    def as_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self) -> str:
        width = max(len(name) for name in [*self._values, "parameter"])
        shown = {name: repr(value) for name, value in self._values.items()}
        value_width = max(len(text) for text in [*shown.values(), "value"])
        lines = [f"{'parameter'.ljust(width)}  {'value'.ljust(value_width)}  from"]
        for name, text in shown.items():
            lines.append(f"{name.ljust(width)}  {text.ljust(value_width)}  {self._sources[name]}")
        return "\n".join(lines)


def resolve_profile(profile: str) -> str:
    """'auto' -> $VLMLAB_PROFILE if set (the test suite runs cell-level checks on `smoke` this way), else
    'gpu' when CUDA is available, else 'cpu'. 'gpu' on a machine without CUDA is refused at once: its runs are
    sized for a GPU and would take hours on a CPU. Any other profile is returned as it is."""
    if profile == "auto":
        profile = os.environ.get("VLMLAB_PROFILE") or ("gpu" if _cuda() else "cpu")
        if profile not in PROFILES:
            raise ParameterError(f"VLMLAB_PROFILE={profile!r} is not allowed: choose one of {', '.join(map(repr, PROFILES))}")
    if profile == "gpu" and not _cuda():
        raise ParameterError("PROFILE='gpu' needs a CUDA GPU and torch sees none on this machine: use 'cpu' "
                             "(a laptop's minutes) or 'auto' (picks gpu where there is one)")
    return profile


def _cuda() -> bool:
    import torch  # imported here so that `python -m vlmlab` can check a PROFILE without loading torch

    return torch.cuda.is_available()


def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and torch (CPU and every GPU). Deterministic algorithms are not forced."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve(spec: dict[str, Param], **values) -> Config:
    """Validate the notebook's parameters against `spec` (plus PROFILE, SEED, TRAIN), seed everything, return a Config."""
    import torch

    clash = set(spec) & set(COMMON)
    if clash:
        raise ValueError(f"SPEC must not redefine {', '.join(sorted(clash))}: resolve() always checks them")
    known = {**COMMON, **spec}
    for name, value in values.items():
        if name not in known:
            raise ParameterError(f"unknown parameter {name}={value!r}: this notebook's parameters are {', '.join(known)}")

    resolved, sources = {}, {}
    for name, param in COMMON.items():
        resolved[name] = param.check(name, values.get(name, param.default))
        sources[name] = "given" if name in values else "default"
    if resolved["PROFILE"] == "auto":
        sources["PROFILE"] = "auto"
    profile = resolved["PROFILE"] = resolve_profile(resolved["PROFILE"])
    resolved["DEVICE"] = "cuda" if torch.cuda.is_available() else "cpu"
    sources["DEVICE"] = "this machine"

    for name, param in spec.items():
        value, source = values.get(name, param.default), "given" if name in values else "default"
        if name not in values and value is None and param.profiles is None:
            raise ParameterError(f"{name} is missing: pass {name}=... to resolve() ({param.allowed()})")
        if value is None and param.profiles is not None:
            value, source = param.profiles[profile], f"{profile} profile"
        resolved[name], sources[name] = param.check(name, value), source

    seed_everything(resolved["SEED"])
    return Config(resolved, sources)
