"""ipywidgets apps. Introduced in notebook 00 with the scene explorer.

Each app is a function returning a widget; the notebook displays it. The work each control
triggers is a plain function (`describe_scene`), so it is tested without a browser.
"""

from __future__ import annotations

import html
import io

import ipywidgets as W

from .data.language import captions, hard_negatives, instructions, vqa_pairs
from .data.shapes import SPLITS, Scene, ShapesWorld, render


def describe_scene(scene: Scene) -> str:
    """Every annotation of `scene` as an HTML fragment (what the explorer shows beside the image)."""

    def items(lines: list[str]) -> str:
        return "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"

    graph = [f"{o.size} {o.color} {o.shape} at cell (row {o.row}, col {o.col})" for o in scene.objects]
    qa = [f"[{q.qtype}] {q.question} → {q.answer}" for q in vqa_pairs(scene)]
    negs = [f"[{n.kind}] {n.text}" for n in hard_negatives(scene)]
    conv = instructions(scene)
    chats = "".join(
        f"<b>{kind.replace('_', ' ')}</b>" + items([f"{t['from']}: {t['value']}" for t in turns]) for kind, turns in conv.items()
    )
    return (
        f"<b>scene graph</b>{items(graph)}<b>captions</b>{items(captions(scene))}"
        f"<b>hard negatives</b>{items(negs)}<b>questions ({len(qa)})</b>{items(qa[:12])}"
        f"{'<i>…</i>' if len(qa) > 12 else ''}{chats}"
    )


def scene_explorer(seed: int = 0) -> W.Widget:
    """Pick seed, split, index, number of objects and resolution; see the image and all its text."""
    wide = W.Layout(width="300px")
    controls = {
        "seed": W.IntText(value=seed, description="seed", layout=wide),
        "split": W.Dropdown(options=SPLITS, value="train", description="split", layout=wide),
        "index": W.IntSlider(value=0, min=0, max=99, description="index", layout=wide),
        "objects": W.IntSlider(value=2, min=1, max=4, description="objects", layout=wide),
        "resolution": W.Dropdown(options=[32, 48, 64, 128, 224], value=64, description="pixels", layout=wide),
    }
    image = W.Image(format="png", width=256, height=256)
    text = W.HTML()

    def update(_=None) -> None:
        c = {k: w.value for k, w in controls.items()}
        world = ShapesWorld(seed=c["seed"], image_size=c["resolution"], min_objects=c["objects"], max_objects=c["objects"])
        scene = world.scene(c["index"], c["split"])
        buffer = io.BytesIO()
        render(scene, c["resolution"]).resize((256, 256), 0).save(buffer, format="png")  # 0 = nearest
        image.value = buffer.getvalue()
        text.value = describe_scene(scene)

    for w in controls.values():
        w.observe(update, names="value")
    update()
    return W.HBox([W.VBox([*controls.values(), image], layout=W.Layout(min_width="320px")), text])
