"""`doctor`: a checklist of the setup (package versions, the device torch sees, each registry backbone, the offline
data sources, the saved checkpoints), each line ✓ or ✗ with what to do about it. Introduced in notebook 00.
"""

from __future__ import annotations

import platform

from .. import files, params

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
        from .. import backbones
    except Exception as e:
        return [(False, "backbones", f"not available ({type(e).__name__}: {e})")]
    return [(status == "ok", name, "ready" if status == "ok" else status) for name, status in backbones.available().items()]


def data_checks() -> list[tuple[bool, str, str]]:
    """The offline real-data sources of vlmlab.data.real: where they are, or the command that installs them."""
    try:
        from ..data import real
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
        from .. import zoo
    except Exception as e:
        return [(False, "vlmlab.zoo", f"not available ({type(e).__name__}: {e})")]
    checks = [(ok, name, message) for name, ok, message in zoo.verify_all(measure=False)]
    return checks or [(False, "checkpoints", "none yet: the training notebooks save them (vlmlab.zoo)")]
