"""ipywidgets apps. Introduced in notebook 00 with the scene explorer.

Each app is a function returning a widget; the notebook displays it. The work each control
triggers is a plain function (`describe_scene`, `zero_shot_probabilities`, `retrieve`), so it is
tested without a browser.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable

import ipywidgets as W
import numpy as np
import torch
from PIL import Image

from .data.language import captions, hard_negatives, instructions, sample_vqa, vqa_pairs
from .data.shapes import SPLITS, Scene, ShapesWorld, render_array
from .evaluate import attribute_f1
from .harness import embed_images, embed_texts, zero_shot_classifier


def truth_html(scene: Scene) -> str:
    """HTML: the scene's objects, as the apps show the truth beside a model's output."""
    return f"<b>truth</b>: {html.escape('; '.join(o.phrase for o in scene.objects))}"


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
        image.value = _png(render_array(scene, c["resolution"]), 256)
        text.value = describe_scene(scene)

    for w in controls.values():
        w.observe(update, names="value")
    update()
    return W.HBox([W.VBox([*controls.values(), image], layout=W.Layout(min_width="320px")), text])


def _png(pixels: np.ndarray, size: int) -> bytes:
    """HWC uint8 -> PNG bytes, scaled to `size` px with nearest-neighbour (pixels stay crisp)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), 0).save(buffer, format="png")
    return buffer.getvalue()


def split_list(text: str, sep: str) -> list[str]:
    """'red, green,, blue' -> ['red', 'green', 'blue']."""
    return [x.strip() for x in text.split(sep) if x.strip()]


@torch.no_grad()
def zero_shot_probabilities(model, tokenizer, image: torch.Tensor, labels: list[str], templates: list[str],
                            temperature: float) -> dict[str, float]:
    """CLIP zero-shot on one uint8 image [3, H, W]: each label's prompt-ensembled text vector (see
    `evaluate.zero_shot_classifier`), cosine similarities divided by `temperature`, softmax."""
    if not labels:
        return {}
    classes = zero_shot_classifier(model, tokenizer, labels, templates)  # [C, E]
    image_emb = embed_images(model, image[None])  # [1, E]
    probs = (image_emb @ classes.T / temperature).softmax(dim=-1)[0]
    return dict(zip(labels, probs.tolist()))


def zero_shot_playground(model, tokenizer, seed: int = 0) -> W.Widget:
    """Notebook 02. Pick a scene, type class labels and prompt templates, move the temperature: see CLIP's
    zero-shot probabilities. The image size follows the model's image tower."""
    model.eval()
    size = model.config.vision.image_size
    wide = W.Layout(width="420px")
    controls = {
        "split": W.Dropdown(options=SPLITS, value="test", description="split", layout=wide),
        "index": W.IntSlider(value=0, min=0, max=199, description="scene", layout=wide),
        "objects": W.IntSlider(value=1, min=1, max=4, description="objects", layout=wide),
        "labels": W.Text(value="circle, square, triangle, star, diamond, cross, hexagon", description="labels",
                         layout=wide),
        "templates": W.Text(value="a small red {}; a large blue {}; a large green {}", description="templates",
                            layout=wide),
        "temperature": W.FloatLogSlider(value=max(model.temperature, 0.01), base=10, min=-2.3, max=0.5, step=0.05,
                                        description="temperature", readout_format=".3f", layout=wide),
    }
    image, bars = W.Image(format="png", width=192, height=192), W.HTML()

    def update(_=None) -> None:
        c = {k: w.value for k, w in controls.items()}
        scene = ShapesWorld(seed=seed, image_size=size, min_objects=c["objects"], max_objects=c["objects"]).scene(
            c["index"], c["split"])
        pixels = render_array(scene, size)
        image.value = _png(pixels, 192)
        templates = [t for t in split_list(c["templates"], ";") if "{}" in t] or ["{}"]
        probs = zero_shot_probabilities(model, tokenizer, torch.from_numpy(pixels).permute(2, 0, 1),
                                        split_list(c["labels"], ","), templates, c["temperature"])
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td><td><div style='background:#4c72b0;height:12px;width:{240 * p:.0f}px'>"
            f"</div></td><td>{p:.3f}</td></tr>" for label, p in sorted(probs.items(), key=lambda kv: -kv[1]))
        bars.value = (f"{truth_html(scene)}<br>"
                      f"<b>prompts</b>: {html.escape(' | '.join(templates))}<table>{rows}</table>")

    for w in controls.values():
        w.observe(update, names="value")
    update()
    return W.VBox([*controls.values(), W.HBox([image, bars])])


@torch.no_grad()
def retrieve(model, tokenizer, query: str, image_emb: torch.Tensor, k: int = 8) -> tuple[list[int], list[float]]:
    """Text -> image retrieval: the indices and cosine similarities of the `k` images (rows of the unit
    vectors `image_emb` [N, E]) closest to `query`."""
    text_emb = embed_texts(model, tokenizer, [query])  # [1, E]
    top = (image_emb.to(text_emb.device) @ text_emb[0]).topk(min(k, len(image_emb)))
    return top.indices.tolist(), top.values.tolist()


def retrieval_gallery(model, tokenizer, images: torch.Tensor, k: int = 8) -> W.Widget:
    """Notebook 02. Type a caption, see the `k` closest of `images` (uint8 [N, 3, H, W]) with their cosine."""
    image_emb = embed_images(model, images)  # [N, E]
    query = W.Text(value="a large red star left of a small blue circle", description="caption",
                   layout=W.Layout(width="500px"))
    shown = W.HBox()

    def update(_=None) -> None:
        indices, scores = retrieve(model, tokenizer, query.value, image_emb, k)
        shown.children = [W.VBox([W.Image(value=_png(images[i].permute(1, 2, 0).numpy(), 96), width=96, height=96),
                                  W.HTML(f"<center>{s:.3f}</center>")]) for i, s in zip(indices, scores)]

    query.observe(update, names="value")
    update()
    return W.VBox([query, shown])


def _scene_controls(n_objects: int = 2) -> dict[str, W.Widget]:
    """Split, scene index and object count: the scene pickers of the generation apps (notebooks 03-04)."""
    wide = W.Layout(width="360px")
    return {"split": W.Dropdown(options=SPLITS, value="test", description="split", layout=wide),
            "index": W.IntSlider(value=0, min=0, max=199, description="scene", layout=wide),
            "objects": W.IntSlider(value=n_objects, min=1, max=4, description="objects", layout=wide)}


def _picked_scene(controls: dict[str, W.Widget], seed: int) -> Scene:
    n = controls["objects"].value
    return ShapesWorld(seed=seed, min_objects=n, max_objects=n).scene(controls["index"].value, controls["split"].value)


def caption_table(scene: Scene, captioned: list[tuple[str, float]]) -> str:
    """HTML: the scene's true objects, then each (caption, log-probability) with the attribute F1 of that
    caption against the scene graph."""
    rows = "".join(f"<tr><td>{html.escape(text)}</td><td>{logp:.2f}</td><td>{attribute_f1([text], [scene])['f1']:.2f}</td></tr>"
                   for text, logp in captioned)
    return (f"{truth_html(scene)}"
            f"<table><tr><th>caption</th><th>log p</th><th>attribute F1</th></tr>{rows}</table>")


def caption_explorer(caption_fn: Callable[[Scene, str, int], list[tuple[str, float]]], seed: int = 0) -> W.Widget:
    """Notebooks 03-04. Pick a scene and a decoding strategy; see the model's captions with their
    log-probabilities. `caption_fn(scene, strategy, num_beams)` -> [(caption, log p), ...]."""
    controls = _scene_controls() | {
        "strategy": W.ToggleButtons(options=["greedy", "beam"], value="greedy", description="decoding"),
        "beams": W.IntSlider(value=4, min=1, max=8, description="beams", layout=W.Layout(width="360px")),
    }
    image, table = W.Image(format="png", width=192, height=192), W.HTML()

    def update(_=None) -> None:
        scene = _picked_scene(controls, seed)
        image.value = _png(render_array(scene, 64), 192)
        table.value = caption_table(scene, caption_fn(scene, controls["strategy"].value, controls["beams"].value))

    for w in controls.values():
        w.observe(update, names="value")
    update()
    return W.VBox([*controls.values(), W.HBox([image, table])])


def vqa_table(scene: Scene, question: str, answer: str) -> str:
    """HTML: the model's answer and, when `question` is one the world can ask of this scene, the true answer."""
    truth = {qa.question: qa.answer for qa in vqa_pairs(scene)}.get(question.strip().lower())
    verdict = "" if truth is None else f" — truth: <b>{html.escape(truth)}</b> {'✓' if truth == answer.strip() else '✗'}"
    return f"<b>answer</b>: {html.escape(answer)}{verdict}"


def vqa_box(answer_fn: Callable[[Scene, str], str], seed: int = 0) -> W.Widget:
    """Notebooks 03-04. Pick a scene, type a question (or pick one the world asks); see the model's answer
    and, for the world's questions, the truth. `answer_fn(scene, question)` -> answer."""
    controls = _scene_controls()
    suggested = W.Dropdown(description="examples", layout=W.Layout(width="460px"))
    question = W.Text(value="how many objects are there?", description="question", layout=W.Layout(width="460px"))
    image, shown = W.Image(format="png", width=192, height=192), W.HTML()

    def new_scene(_=None) -> None:
        scene = _picked_scene(controls, seed)
        image.value = _png(render_array(scene, 64), 192)
        suggested.options = [qa.question for qa in sample_vqa(scene, k=7, salt="widget")]
        ask()

    def ask(_=None) -> None:
        scene = _picked_scene(controls, seed)
        shown.value = vqa_table(scene, question.value, answer_fn(scene, question.value))

    for w in controls.values():
        w.observe(new_scene, names="value")
    suggested.observe(lambda change: setattr(question, "value", change["new"] or question.value), names="value")
    question.observe(ask, names="value")
    new_scene()
    return W.VBox([*controls.values(), suggested, question, W.HBox([image, shown])])


def fewshot_table(prompt: str, continuation: str, gates: list[tuple[float, float]]) -> str:
    """HTML: an interleaved prompt, what the model wrote after it, and each gated layer's tanh gates."""
    rows = "".join(f"<tr><td>{i}</td><td>{a:+.3f}</td><td>{f:+.3f}</td></tr>" for i, (a, f) in enumerate(gates))
    return (f"<b>prompt</b>: <code>{html.escape(prompt)}</code><br><b>continuation</b>: {html.escape(continuation)}"
            f"<table><tr><th>layer</th><th>tanh(α) attention</th><th>tanh(α) dense</th></tr>{rows}</table>")


def fewshot_builder(continue_fn: Callable[[list[Scene], Scene, str, str], tuple[str, str, list[tuple[float, float]]]],
                    seed: int = 0) -> W.Widget:
    """Notebook 05. Pick support scenes (training-split numbers, comma-separated), a held-out query scene, the task
    and, for VQA, a question; see the images, the interleaved prompt, the model's continuation and its gates.
    `continue_fn(support, query, task, question)` -> (prompt, continuation, [(gate_attn, gate_ff) per layer])."""
    world, wide = ShapesWorld(seed=seed), W.Layout(width="460px")
    support = W.Text(value="0, 1", description="supports", layout=wide)
    query = W.IntSlider(value=0, min=0, max=199, description="query", layout=wide)
    task = W.ToggleButtons(options=["caption", "vqa"], value="caption", description="task")
    question = W.Text(value="how many objects are there?", description="question", layout=wide)
    images, shown = W.HBox(), W.HTML()

    def update(_=None) -> None:
        picked = [world.scene(int(i), "train") for i in split_list(support.value, ",") if i.isdigit()][:4]
        scene = world.scene(query.value, "test")
        images.children = [W.Image(value=_png(render_array(s, 64), 96), format="png", width=96, height=96)
                           for s in [*picked, scene]]
        shown.value = fewshot_table(*continue_fn(picked, scene, task.value, question.value))

    for w in (support, query, task, question):
        w.observe(update, names="value")
    update()
    return W.VBox([support, query, task, question, images, shown])


def changed_word(before: str, after: str) -> int | None:
    """The index of the first word that differs between two texts (None when they are the same words)."""
    a, b = before.split(), after.split()
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def attention_overlay(pixels: np.ndarray, weights: np.ndarray, size: int = 192) -> bytes:
    """An image HWC uint8 with attention weights [h, w] over its patches laid on top (brighter = more attention)."""
    (h, w), (H, W_) = weights.shape, pixels.shape[:2]
    heat = (weights / max(weights.max(), 1e-9))[np.arange(H) * h // H][:, np.arange(W_) * w // W_]  # [H, W]: each pixel's patch
    blended = pixels * (0.35 + 0.65 * heat[..., None])
    return _png(blended.clip(0, 255).astype(np.uint8), size)


def itm_editor(score_fn: Callable[[Scene, str, int | None], tuple[float, np.ndarray | None]], seed: int = 0) -> W.Widget:
    """Notebook 06. Pick a held-out scene; its caption and a copy to edit (a hard negative to start with). For each
    text: the ITM head's match probability and, for the edited one, where the first changed word looks in the image.
    `score_fn(scene, text, word)` -> (P(match), that word's attention over the patches [h, w], or None)."""
    world, wide = ShapesWorld(seed=seed), W.Layout(width="520px")
    index = W.IntSlider(value=0, min=0, max=199, description="test scene", layout=wide)
    original, edited = W.Text(description="caption", layout=wide), W.Text(description="edited", layout=wide)
    image, shown = W.Image(format="png", width=192, height=192), W.HTML()

    def new_scene(_=None) -> None:
        scene = world.scene(index.value, "test")
        negatives = hard_negatives(scene)
        original.value = captions(scene)[0]
        edited.value = negatives[0].text if negatives else original.value
        score()

    def score(_=None) -> None:
        scene = world.scene(index.value, "test")
        word = changed_word(original.value, edited.value)
        if word is not None and word >= len(edited.value.split()):
            word = None  # words were only deleted: there is no changed word to follow
        p_true, _ = score_fn(scene, original.value, None)
        p_edit, weights = score_fn(scene, edited.value, word)
        pixels = render_array(scene, 64)
        image.value = _png(pixels, 192) if weights is None else attention_overlay(pixels, weights)
        looked = "" if word is None else f" — the image shows where <b>{html.escape(edited.value.split()[word])}</b> looks"
        shown.value = (f"P(match) caption: <b>{p_true:.3f}</b><br>P(match) edited: <b>{p_edit:.3f}</b>{looked}")

    index.observe(new_scene, names="value")
    for w in (original, edited):
        w.observe(score, names="value")
    new_scene()
    return W.VBox([index, original, edited, W.HBox([image, shown])])


def prediction_table(predicted: list[tuple[str, float]], truth: str) -> str:
    """HTML: zero-shot class scores, best first, the true class marked."""
    rows = "".join(f"<tr><td>{'<b>' if name == truth else ''}{html.escape(name)}{'</b> ✓' if name == truth else ''}</td>"
                   f"<td>{score:.3f}</td></tr>" for name, score in sorted(predicted, key=lambda x: -x[1]))
    return f"<table><tr><th>class</th><th>score</th></tr>{rows}</table>"


def anchor_picker(predict_fn: Callable[[Scene, list[str]], list[tuple[str, float]]], concepts: list[str],
                  attribute: str = "shape", seed: int = 0) -> W.Widget:
    """Notebook 07. Untick a concept and ASIF loses every anchor whose caption names it; the zero-shot scores of a
    held-out one-object scene change at once, with no training. `predict_fn(scene, removed concepts)` -> [(class,
    score), ...]; the scene's true `attribute` is marked."""
    world = ShapesWorld(seed=seed, min_objects=1, max_objects=1)
    index = W.IntSlider(value=0, min=0, max=199, description="test scene", layout=W.Layout(width="420px"))
    keep = {c: W.Checkbox(value=True, description=c, indent=False, layout=W.Layout(width="110px")) for c in concepts}
    image, shown = W.Image(format="png", width=160, height=160), W.HTML()

    def update(_=None) -> None:
        scene = world.scene(index.value, "test")
        image.value = _png(render_array(scene, 64), 160)
        removed = [c for c, box in keep.items() if not box.value]
        shown.value = (f"anchors removed: {html.escape(', '.join(removed) or 'none')}<br>"
                       + prediction_table(predict_fn(scene, removed), getattr(scene.objects[0], attribute)))

    for w in (index, *keep.values()):
        w.observe(update, names="value")
    update()
    return W.VBox([index, W.HBox(list(keep.values()), layout=W.Layout(flex_flow="row wrap", width="900px")),
                   W.HBox([image, shown], layout=W.Layout(align_items="flex-start"))])  # the image keeps its shape


def beta_slider(caption_fn: Callable[[Scene, float], str], seed: int = 0, beta: float = 1.0) -> W.Widget:
    """Notebook 07. MaGiC's image weight beta: 0 is the language model alone; slide it up and the caption turns
    to the picture. `caption_fn(scene, beta)` -> caption; its attribute F1 against the scene is shown."""
    controls = _scene_controls() | {
        "beta": W.FloatSlider(value=beta, min=0.0, max=4.0, step=0.25, description="beta", layout=W.Layout(width="360px"))}
    image, shown = W.Image(format="png", width=192, height=192), W.HTML()

    def update(_=None) -> None:
        scene = _picked_scene(controls, seed)
        image.value = _png(render_array(scene, 64), 192)
        said = caption_fn(scene, controls["beta"].value)
        shown.value = (f"{truth_html(scene)}<br><b>caption</b>: "
                       f"{html.escape(said)}<br>attribute F1 {attribute_f1([said], [scene])['f1']:.2f}")

    for w in controls.values():
        w.observe(update, names="value")
    update()
    return W.VBox([*controls.values(), W.HBox([image, shown])])


def token_shading(tokens: list[tuple[str, float]]) -> str:
    """HTML: each token on a background as dark as its value's share of the largest (values <= 0 stay white), the
    value in a tooltip."""
    top = max([value for _, value in tokens] + [1e-9])
    spans = "".join(f"<span title='{value:+.2f}' style='background: rgba(214, 39, 40, {max(value, 0) / top:.2f}); "
                    f"padding: 1px 2px'>{html.escape(token)}</span>" for token, value in tokens)
    return f"<div style='font-family: monospace; line-height: 1.8'>{spans}</div>"


def query_explorer(explain_fn: Callable[[Scene, int], tuple[np.ndarray, list[tuple[str, float]]]], n_queries: int,
                   seed: int = 0) -> W.Widget:
    """Notebook 08. Pick a held-out scene and one of the Q-Former's queries: the picture shows where that query looks,
    and each token of the caption is shaded by how much that query helps to write it. `explain_fn(scene, query)` ->
    (attention over the patches [h, w], [(token, log-probability lost without the query), ...])."""
    controls = _scene_controls() | {"query": W.IntSlider(value=0, min=0, max=n_queries - 1, description="query",
                                                         layout=W.Layout(width="360px"))}
    image, shown = W.Image(format="png", width=192, height=192), W.HTML()

    def update(_=None) -> None:
        scene = _picked_scene(controls, seed)
        weights, tokens = explain_fn(scene, controls["query"].value)
        image.value = attention_overlay(render_array(scene, 64), weights)
        shown.value = (f"{truth_html(scene)}<br>"
                       f"<b>caption</b>, darker = the query helps more:{token_shading(tokens)}")

    for w in controls.values():
        w.observe(update, names="value")
    update()
    return W.VBox([*controls.values(), W.HBox([image, shown], layout=W.Layout(align_items="flex-start"))])


def chat_transcript(history: list[dict[str, str]], answering: str | None = None) -> str:
    """HTML: a conversation's turns (`language.Turn`s), the `<image>` marker dropped; `answering` is the answer being
    written (streamed), shown after them."""
    rows = [(t["from"], t["value"].replace("<image>\n", "").replace("<image>", "")) for t in history]
    if answering is not None:
        rows.append(("gpt", answering + " ▌"))
    who = {"human": "you", "gpt": "model"}
    return "".join(f"<p><b>{who[speaker]}</b>: {html.escape(text)}</p>" for speaker, text in rows)


def uploaded_image(content: bytes) -> np.ndarray:
    """An uploaded image file as RGB HWC uint8 (any format PIL reads)."""
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def chat_box(reply_fn: Callable[[np.ndarray, list[dict[str, str]], str, Callable[[str], None]], str],
             images: dict[str, np.ndarray]) -> W.Widget:
    """Notebook 09. Pick an image (or upload your own), ask a question, watch the answer stream in; ask again and the
    conversation continues; a new image starts a new one. `reply_fn(pixels HWC uint8, history, question, on_text)`
    -> the answer, calling on_text(answer so far) as it writes."""
    pictures = dict(images)
    picked = W.Dropdown(options=list(pictures), description="image", layout=W.Layout(width="420px"))
    upload = W.FileUpload(accept="image/*", multiple=False, description="your own")
    question = W.Text(value="What do you see in this image?", description="you", layout=W.Layout(width="520px"))
    send = W.Button(description="ask")
    image, transcript = W.Image(format="png", width=192, height=192), W.HTML()
    history: list[dict[str, str]] = []

    def new_image(_=None) -> None:
        history.clear()
        image.value = _png(pictures[picked.value], 192)
        transcript.value = ""

    def add_upload(change) -> None:
        for item in change["new"]:
            pictures[f"upload: {item['name']}"] = uploaded_image(bytes(item["content"]))
            picked.options = list(pictures)
            picked.value = f"upload: {item['name']}"

    def ask(_=None) -> None:
        asked = question.value.strip()
        if not asked:
            return
        answer = reply_fn(pictures[picked.value], list(history), asked,
                          lambda so_far: setattr(transcript, "value", chat_transcript(
                              history + [{"from": "human", "value": asked}], so_far)))
        history.extend([{"from": "human", "value": asked}, {"from": "gpt", "value": answer}])
        transcript.value = chat_transcript(history)

    picked.observe(new_image, names="value")
    upload.observe(add_upload, names="value")
    send.on_click(ask)
    new_image()
    return W.VBox([W.HBox([picked, upload]), W.HBox([question, send]),
                   W.HBox([image, transcript], layout=W.Layout(align_items="flex-start"))])
