"""Plots return figures with the right content; the scene explorer shows every annotation."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vlmlab import viz  # noqa: E402
from vlmlab.data.language import caption, hard_negatives  # noqa: E402
from vlmlab.data.shapes import ShapesWorld, render_array  # noqa: E402
from vlmlab.widgets import describe_scene, scene_explorer  # noqa: E402


def test_as_image_accepts_uint8_and_float_tensors():
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    assert np.array_equal(viz.as_image(img), img.permute(1, 2, 0).numpy())
    assert np.array_equal(viz.as_image(img.float() / 127.5 - 1), img.permute(1, 2, 0).numpy())


def test_image_grid_has_one_titled_axis_per_image():
    world = ShapesWorld(seed=0)
    scenes = world.scenes(5)
    fig = viz.image_grid([render_array(s) for s in scenes], [caption(s) for s in scenes], ncols=3)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == 6 and len(titled) == 5


def test_heatmap_and_curves():
    fig = viz.similarity_heatmap(torch.eye(3), ["a", "b", "c"], ["x", "y", "z"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["x", "y", "z"]
    history = {"steps": list(range(30)), "loss": list(np.linspace(2, 1, 30)), "evals": [(10, {"acc": 0.5}), (29, {"acc": 0.9})]}
    fig = viz.training_curves(history)
    assert len(fig.axes) == 2
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.5, 0.9]


def test_describe_scene_lists_graph_captions_negatives_and_questions():
    scene = next(s for s in ShapesWorld(seed=1).scenes(50) if len(s) == 2)
    text = describe_scene(scene)
    assert caption(scene) in text
    for neg in hard_negatives(scene):
        assert neg.text in text
    assert "complex reasoning" in text


def test_scene_explorer_updates_when_a_control_changes():
    app = scene_explorer(seed=0)
    controls, html = app.children[0].children, app.children[1]
    before = html.value
    index = next(c for c in controls if getattr(c, "description", "") == "index")
    index.value = 5
    assert html.value != before and html.value == describe_scene(ShapesWorld(seed=0, min_objects=2, max_objects=2).scene(5))
