"""Plots return figures with the right content; the widgets do what their controls say."""

import matplotlib

matplotlib.use("Agg")

import io  # noqa: E402
import warnings  # noqa: E402
from datetime import datetime  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vlmlab import viz  # noqa: E402
from vlmlab.data.language import caption, hard_negatives, vqa_pairs  # noqa: E402
from vlmlab.data.loaders import encode_texts  # noqa: E402
from vlmlab.data.shapes import ShapesWorld, render_array  # noqa: E402
from vlmlab.harness import zero_shot_classifier  # noqa: E402
from vlmlab.nn import TextConfig, ViTConfig  # noqa: E402
from vlmlab.strategies.clip import CLIP, Config  # noqa: E402
from vlmlab.widgets import (  # noqa: E402
    anchor_picker,
    attention_overlay,
    beta_slider,
    caption_explorer,
    caption_table,
    changed_word,
    chat_box,
    chat_transcript,
    describe_scene,
    fewshot_builder,
    fewshot_table,
    itm_editor,
    query_explorer,
    retrieval_gallery,
    retrieve,
    scene_explorer,
    split_list,
    token_shading,
    vqa_box,
    vqa_table,
    zero_shot_playground,
    zero_shot_probabilities,
)


def tiny_clip(tok) -> CLIP:
    torch.manual_seed(0)
    return CLIP(Config(vision=ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, n_heads=2),
                       text=TextConfig(vocab_size=len(tok), max_len=32, dim=32, depth=1, n_heads=2, causal=True),
                       embed_dim=16)).eval()


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


def test_heatmap_of_long_captions_fits_its_labels():
    """Notebook 02's heatmaps label rows and columns with whole captions (up to ~90 characters): the figure makes
    room for them, so the learner sees no 'tight layout not applied' warning and no label cut off."""
    captions = [caption(s) for s in ShapesWorld(seed=0).scenes(8)]
    assert max(map(len, captions)) > 80
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = viz.similarity_heatmap(torch.rand(8, 8), captions, captions)
    assert all(len(line) <= 36 for t in fig.axes[0].get_yticklabels() for line in t.get_text().split("\n"))


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


def test_zero_shot_probabilities_are_the_softmax_of_scaled_cosines(tok):
    model, image = tiny_clip(tok), torch.from_numpy(render_array(ShapesWorld(seed=0).scene(0), 32)).permute(2, 0, 1)
    labels, templates = ["red", "blue", "green"], ["a {}", "a large {} star"]
    probs = zero_shot_probabilities(model, tok, image, labels, templates, temperature=0.05)
    classes = zero_shot_classifier(model, tok, labels, templates)
    expected = (model.encode_image(image[None].float() / 127.5 - 1) @ classes.T / 0.05).softmax(-1)[0]
    assert list(probs) == labels and np.allclose(list(probs.values()), expected.tolist(), atol=1e-6)
    flat = zero_shot_probabilities(model, tok, image, labels, templates, temperature=100.0)
    assert max(flat.values()) - min(flat.values()) < 1e-3  # a huge temperature flattens the softmax
    assert zero_shot_probabilities(model, tok, image, [], templates, 1.0) == {}
    assert split_list(" red, ,blue ,", ",") == ["red", "blue"]


def test_zero_shot_playground_redraws_bars_for_new_labels(tok):
    app = zero_shot_playground(tiny_clip(tok), tok)
    labels = next(c for c in app.children if getattr(c, "description", "") == "labels")
    bars = app.children[-1].children[1]
    labels.value = "cat, dog"
    table = bars.value.split("<table>")[1]
    assert "<td>cat</td>" in table and "<td>dog</td>" in table and "hexagon" not in table


def test_retrieve_ranks_images_by_cosine_and_gallery_shows_k(tok):
    model = tiny_clip(tok)
    images = torch.stack([torch.from_numpy(render_array(ShapesWorld(seed=0).scene(i), 32)).permute(2, 0, 1)
                          for i in range(10)])
    with torch.no_grad():
        image_emb = model.encode_image(images.float() / 127.5 - 1)
    indices, scores = retrieve(model, tok, "a small red star", image_emb, k=4)
    assert len(indices) == 4 and scores == sorted(scores, reverse=True)
    query = encode_texts(tok, ["a small red star"], max_length=32)
    with torch.no_grad():
        text_emb = model.encode_text(query.input_ids, query.attention_mask)  # [1, E]
    assert indices[0] == int((image_emb @ text_emb[0]).argmax())
    app = retrieval_gallery(model, tok, images, k=3)
    assert len(app.children[1].children) == 3


def test_caption_table_scores_each_caption_against_the_scene():
    scene = ShapesWorld(seed=0, min_objects=1, max_objects=1).scene(0, "test")
    html = caption_table(scene, [(caption(scene), -1.5), ("a small white cross", -9.0)])
    assert "1.00" in html and "-1.50" in html and "-9.00" in html and scene.objects[0].phrase in html


def test_caption_explorer_asks_for_the_picked_decoding():
    calls = []

    def caption_fn(scene, strategy, num_beams):
        calls.append((scene.index, strategy, num_beams))
        return [(caption(scene), -1.0)]

    app = caption_explorer(caption_fn)
    controls = {w.description: w for w in app.children if hasattr(w, "description")}
    controls["decoding"].value = "beam"
    controls["beams"].value = 3
    controls["scene"].value = 5
    assert calls[0] == (0, "greedy", 4) and calls[-1] == (5, "beam", 3)
    image, table = app.children[-1].children
    assert bytes(image.value).startswith(b"\x89PNG") and "log p" in table.value


def test_vqa_box_answers_and_shows_the_truth_for_the_worlds_questions():
    asked = []
    app = vqa_box(lambda scene, question: asked.append(question) or "yes")
    controls = {w.description: w for w in app.children if hasattr(w, "description")}
    controls["examples"].value = controls["examples"].options[2]
    assert asked[-1] == controls["examples"].options[2] == controls["question"].value
    scene = ShapesWorld(seed=0, min_objects=2, max_objects=2).scene(0, "test")
    qa = next(q for q in vqa_pairs(scene) if q.answer == "yes")
    assert "✓" in vqa_table(scene, qa.question, "yes") and "✗" in vqa_table(scene, qa.question, "no")
    assert "truth" not in vqa_table(scene, "what is the meaning of life?", "42")


def test_fewshot_builder_sends_the_picked_scenes_and_shows_prompt_continuation_and_gates():
    calls = []

    def continue_fn(support, query, task, question):
        calls.append(([s.index for s in support], query.index, task, question))
        return "<image>Output: a red star<|endofchunk|><image>Output:", "a blue circle", [(0.1, -0.2), (0.3, 0.0)]

    app = fewshot_builder(continue_fn)
    controls = {w.description: w for w in app.children if hasattr(w, "description")}
    controls["supports"].value = "3, x, 7"
    controls["task"].value = "vqa"
    controls["query"].value = 9
    assert calls[0] == ([0, 1], 0, "caption", "how many objects are there?") and calls[-1][:3] == ([3, 7], 9, "vqa")
    images, shown = app.children[-2:]
    assert len(images.children) == 3 and bytes(images.children[0].value).startswith(b"\x89PNG")
    assert "a blue circle" in shown.value and "+0.300" in shown.value and "&lt;image&gt;" in shown.value
    assert fewshot_table("p", "c", []).count("<tr>") == 1


def test_itm_editor_scores_both_texts_and_follows_the_changed_word():
    calls = []

    def score_fn(scene, text, word):
        calls.append((scene.index, text, word))
        return (0.9 if word is None else 0.2), (None if word is None else np.eye(4))

    app = itm_editor(score_fn)
    index, original, edited, row = app.children
    assert calls[-2][2] is None and calls[-1][1] == edited.value  # a hard negative to start with
    edited.value = original.value.replace(original.value.split()[1], "zzz", 1)
    assert calls[-1][2] == 1 and "<b>zzz</b>" in row.children[1].value and "0.200" in row.children[1].value
    assert bytes(row.children[0].value).startswith(b"\x89PNG")
    edited.value = " ".join(original.value.split()[:1])  # only deletions: no word to follow
    assert calls[-1][2] is None
    index.value = 5
    assert calls[-1][0] == 5
    assert changed_word("a red star", "a blue star") == 1 and changed_word("a b", "a b") is None
    assert changed_word("a b", "a b c") == 2


def test_anchor_picker_passes_the_removed_concepts_and_marks_the_truth():
    calls = []

    def predict_fn(scene, removed):
        calls.append((scene.index, list(removed)))
        return [("circle", 0.1), ("star", 0.9 if not removed else 0.2), (scene.objects[0].shape, 0.5)]

    app = anchor_picker(predict_fn, ["circle", "star"])
    index, boxes, row = app.children
    assert calls[-1][1] == [] and "✓" in row.children[1].value
    boxes.children[1].value = False  # untick "star"
    assert calls[-1][1] == ["star"] and "anchors removed: star" in row.children[1].value
    index.value = 4
    assert calls[-1][0] == 4 and bytes(row.children[0].value).startswith(b"\x89PNG")


def test_beta_slider_captions_again_when_beta_moves():
    calls = []

    def caption_fn(scene, beta):
        calls.append(beta)
        return " ".join(o.phrase for o in scene.objects) if beta > 0 else "a small purple square"

    app = beta_slider(caption_fn, beta=1.0)
    *controls, row = app.children
    assert calls == [1.0] and "attribute F1 1.00" in row.children[1].value
    controls[-1].value = 0.0
    assert calls[-1] == 0.0 and "a small purple square" in row.children[1].value


def test_token_shading_darkens_with_the_value_and_leaves_losses_white():
    shaded = token_shading([("a", 0.0), ("red", 2.0), ("star", 1.0), ("<", -3.0)])
    assert "1.00); padding: 1px 2px'>red" in shaded and "0.50); padding: 1px 2px'>star" in shaded
    assert "0.00); padding: 1px 2px'>&lt;" in shaded  # escaped, and a token the query hurts is not shaded


def test_query_explorer_explains_the_picked_query():
    calls = []

    def explain_fn(scene, query):
        calls.append((scene.index, query))
        return np.eye(4)[::-1] * (query + 1), [("a", 0.1), ("blue", float(query))]

    app = query_explorer(explain_fn, n_queries=8)
    *controls, row = app.children
    assert calls == [(0, 0)] and bytes(row.children[0].value).startswith(b"\x89PNG") and "blue" in row.children[1].value
    controls[-1].value = 5
    assert calls[-1] == (0, 5) and controls[-1].max == 7


def test_chat_box_streams_the_answer_and_keeps_the_conversation_per_image():
    calls = []

    def reply_fn(pixels, history, question, on_text):
        calls.append((pixels.shape, [t["value"] for t in history], question))
        on_text("a red")
        return "a red star"

    red, upload = np.zeros((64, 64, 3), np.uint8), Image.new("RGB", (20, 10), (0, 0, 255))
    app = chat_box(reply_fn, {"scene 0": red, "scene 1": red + 255})
    (picked, uploader), (question, send), (image, transcript) = (box.children for box in app.children)
    send.click()
    question.value = "and its size?"
    send.click()
    assert calls == [((64, 64, 3), [], "What do you see in this image?"),
                     ((64, 64, 3), ["What do you see in this image?", "a red star"], "and its size?")]
    assert transcript.value.count("<b>model</b>: a red star") == 2 and "▌" not in transcript.value
    picked.value = "scene 1"  # a new image, a new conversation
    assert transcript.value == "" and bytes(image.value).startswith(b"\x89PNG")
    send.click()
    assert calls[-1][1] == []
    buffer = io.BytesIO()
    upload.save(buffer, format="PNG")
    uploader.value = ({"name": "mine.png", "type": "image/png", "size": len(buffer.getvalue()),
                       "content": memoryview(buffer.getvalue()), "last_modified": datetime.now()},)
    assert picked.value == "upload: mine.png"
    send.click()
    assert calls[-1][0] == (10, 20, 3)


def test_chat_transcript_drops_the_image_marker_and_shows_the_answer_being_written():
    shown = chat_transcript([{"from": "human", "value": "<image>\nWhat is <this>?"}], answering="a st")
    assert "<image>" not in shown and "&lt;this&gt;" in shown and "<b>model</b>: a st ▌" in shown


def test_attention_overlay_lays_each_patch_weight_over_its_own_pixels_for_any_grid():
    """Notebook 08's CLIP grid is 3 x 3 over a 64 px picture: patches of 21 or 22 px, brightest where the weight is."""
    pixels = np.full((64, 64, 3), 200, dtype=np.uint8)
    weights = np.zeros((3, 3))
    weights[2, 0] = 1.0  # the bottom-left patch
    shown = np.asarray(Image.open(io.BytesIO(attention_overlay(pixels, weights, size=64))))[..., 0]  # [64, 64]
    assert shown[63, 0] == 200 and shown[0, 63] == 70  # full brightness there, 0.35 elsewhere
    bright = np.argwhere(shown == 200)  # pixel r belongs to patch row r * 3 // 64: rows 43..63, columns 0..21
    assert (bright.min(0) == (43, 0)).all() and (bright.max(0) == (63, 21)).all() and len(bright) == 21 * 22
