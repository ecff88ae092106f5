"""Every "experiment to try" that names a parameter runs as written. A suggestion such as `IMAGE_TOKENS="regions"`
must name a parameter the notebook has, and the notebook must run with it: each notebook executes once at smoke size
with all of its suggested values (budget knobs such as `STEPS=1500` or `STAGE2_STEPS=900` keep their smoke value,
since they change how long a run is, not which code runs; zero steps, which skips a stage, does run)."""

import ast
import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SUGGESTION = re.compile(r"`([A-Z][A-Z0-9_]*)\s*=\s*([^`]+)`")  # `NAME=value` in a notebook's Experiments to try
BUDGET = {"BATCH_SIZE", "N_TRAIN"}  # how long, not which code: run at the smoke value (as is any ...STEPS but 0)


def is_budget(name: str, value) -> bool:
    """Whether a suggestion only changes how long the run is: then it runs at the smoke value."""
    return name in BUDGET or (name.endswith("STEPS") and value != 0)


def suggestions(path: Path) -> dict[str, object]:
    """{parameter: value} of the first suggestion of each parameter in the notebook's "Experiments to try"."""
    nb = nbformat.read(path, as_version=4)
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "## Experiments to try" in c.source)
    found = {}
    for name, value in SUGGESTION.findall(text.split("## Experiments to try")[1].split("## References")[0]):
        found.setdefault(name, ast.literal_eval(value.strip()))
    return found


def parameters_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_suggested_parameters_are_parameters_of_the_notebook(notebook):
    cell = parameters_cell(notebook)
    for name in suggestions(notebook):
        assert re.search(rf"^{name}\s*=", cell, re.M), f"{notebook.name}: the experiments suggest {name}, not a parameter"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_parameter_reaches_resolve(notebook):
    """A parameter in SPEC but not passed to params.resolve would silently run at its profile default."""
    nb = nbformat.read(notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    spec = re.search(r"^SPEC = \{(.*?)^\}", code, re.M | re.S).group(1)
    call = re.search(r"params\.resolve\(SPEC,(.*?)\)\n", code, re.S).group(1)
    declared = set(re.findall(r'^\s*"([A-Z][A-Z0-9_]*)":', spec, re.M))
    passed = set(re.findall(r"([A-Z][A-Z0-9_]*)=\1\b", call))
    assert declared and declared <= passed, f"{notebook.name}: {sorted(declared - passed)} never reach params.resolve"


RUN = [p for p in NOTEBOOKS if any(not is_budget(name, value) for name, value in suggestions(p).items())]


@pytest.mark.slow
@pytest.mark.parametrize("notebook", RUN, ids=[p.stem for p in RUN])
def test_the_notebook_runs_with_its_suggested_parameters(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLAB_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    suggested = {name: value for name, value in suggestions(notebook).items() if not is_budget(name, value)}
    pm.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters={"PROFILE": "smoke", **suggested},
                        cwd=str(notebook.parent), progress_bar=False, kernel_name="python3")


# Suggestions that are code changes rather than parameters: each one's code path, at smoke size.

def test_notebook_00_a_smaller_vocabulary_makes_longer_captions():
    from vlmlab.data.language import caption
    from vlmlab.data.shapes import ShapesWorld
    from vlmlab.tokenizer import shapes_corpus, train_tokenizer

    corpus = shapes_corpus()
    captions = [caption(s) for s in ShapesWorld(seed=0).scenes(50, "train")]
    tokenizers = {v: train_tokenizer(corpus, v) for v in (300, 512)}
    tokens = {v: sum(len(tok.encode(c)) for c in captions) for v, tok in tokenizers.items()}
    assert tokens[300] > tokens[512]


def test_notebook_01_a_vit_with_patch_size_8_trains_scene_parsing():
    import torch

    from vlmlab import nn as vnn
    from vlmlab import unimodal
    from vlmlab.data.shapes import ShapesWorld, render_array

    vit = vnn.ViT(vnn.ViTConfig(image_size=64, patch_size=8, dim=32, depth=1, n_heads=4))
    probe = unimodal.CellProbe(vit.patch_embed.n_patches, 32)
    scenes = ShapesWorld(seed=0).scenes(4, "train")
    images = torch.stack([torch.as_tensor(render_array(s)).permute(2, 0, 1) for s in scenes])
    loss = unimodal.scene_parsing_loss(vit, probe, images, torch.stack([unimodal.cell_targets(s) for s in scenes]))
    loss.backward()
    assert vit.patch_embed.n_patches == 64 and torch.isfinite(loss)


def test_notebook_03_never_splitting_captions_leaves_every_prompt_empty():
    from vlmlab.data.language import caption
    from vlmlab.data.shapes import ShapesWorld
    from vlmlab.strategies import prefix_lm

    captions = [caption(s) for s in ShapesWorld(seed=0).scenes(20, "train")]
    prompts, targets = prefix_lm.training_texts(captions, [], split_prob=0)
    assert prompts == [""] * len(captions) and targets == captions
    prompts, _ = prefix_lm.training_texts(captions, [], split_prob=1)
    assert sum(map(bool, prompts)) > len(captions) // 2  # the control: split, most captions keep a prompt


def test_notebook_03_a_prefix_of_length_0_is_a_plain_causal_mask():
    import torch

    from vlmlab.attention import causal_mask, prefix_mask

    assert torch.equal(prefix_mask(7, prefix_len=0), causal_mask(7))


def test_notebook_03_the_environment_picks_pytorchs_cpu_kernels():
    import os
    import subprocess
    import sys

    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("an x86 CPU with AVX2 is needed to choose between its kernels")
    ask = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]
    forced = subprocess.run(ask, env=os.environ | {"ATEN_CPU_CAPABILITY": "avx2"}, capture_output=True, text=True,
                            check=True)
    assert forced.stdout.strip() == "AVX2"
