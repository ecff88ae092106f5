"""Fixed evaluation sets of the Shapes World, shared by the strategy notebooks. Introduced in notebook 02.

Every set is a pure function of (seed, n): the same scenes, texts and images on every machine and in
every notebook, so numbers measured in different notebooks are comparable. All are drawn from the
`test` split (never trained on) except `heldout_objects`, which uses the colour-shape pairs that no
training scene contains.

The benchmarks a strategy is measured on (`vlmlab.harness.suite`) are built from a small spec, the form a
checkpoint's record keeps so that `zoo verify` can build the same set again:

    build({"kind": "dual_encoder", "seed": 0, "n": 1000})    # notebook 02: retrieval, zero-shot, swaps
    build({"kind": "scenes", "seed": 0, "n": 1000})          # notebook 01's backbones, notebooks 03-04: captions, VQA
    build({"kind": "world_text", "seed": 0, "n": 1000})      # notebook 01's tiny LM: the world's text, blind VQA
    build({"kind": "fusion", "seed": 0, "n": 1000})          # notebook 06: the swap probes and the scenes together
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..params import require
from .language import QA, caption, hard_negatives, sample_vqa
from .shapes import BACKGROUND, COLORS, SHAPES, SIZES, Scene, ShapesWorld, render_array
from .world_text import documents

ATTRIBUTE_NAMES = {"color": COLORS, "shape": SHAPES}


def images_of(scenes: list[Scene], image_size: int = 64) -> torch.Tensor:
    """Render scenes -> uint8 [N, 3, H, W]."""
    return torch.from_numpy(np.stack([render_array(s, image_size) for s in scenes])).permute(0, 3, 1, 2).contiguous()


def blank_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, H, W] -> as many empty scenes: the world's background colour only. Notebook 06."""
    return torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1).expand_as(images).contiguous()


def distinct_caption_scenes(seed: int = 0, n: int = 1000, split: str = "test") -> list[Scene]:
    """The first `n` scenes of `split` whose canonical captions are all different, so every caption
    describes exactly one image of the set: the retrieval benchmark."""
    world, scenes, seen, index = ShapesWorld(seed=seed), [], set(), 0
    while len(scenes) < n:
        scene = world.scene(index, split)
        text = caption(scene)
        if text not in seen:
            seen.add(text)
            scenes.append(scene)
        index += 1
        if index > 50 * n:
            raise ValueError(f"n={n}: the {split} split has too few distinct captions")
    return scenes


def single_objects(seed: int = 0, n: int = 1000, split: str = "test") -> list[Scene]:
    """`n` one-object scenes: the zero-shot classification benchmark (what colour / shape is it?)."""
    return ShapesWorld(seed=seed, min_objects=1, max_objects=1).scenes(n, split)


def heldout_objects(seed: int = 0, n: int = 500) -> list[Scene]:
    """`n` one-object scenes whose colour-shape pair never occurs in training (compositional generalisation)."""
    return single_objects(seed, n, "heldout")


def generation_scenes(seed: int = 0, n: int = 1000, split: str = "test") -> list[Scene]:
    """`n` scenes of 1-4 objects: the captioning and VQA benchmark of the generative notebooks (03 on)."""
    return ShapesWorld(seed=seed).scenes(n, split)


def vqa_questions(scenes: list[Scene], k: int = 3, salt: str = "eval") -> tuple[list[int], list[QA]]:
    """`k` questions of distinct types per scene (`language.sample_vqa`) and the index of the scene each asks
    about. Introduced in notebook 03."""
    rows = [(i, qa) for i, scene in enumerate(scenes) for qa in sample_vqa(scene, k, salt)]
    return [i for i, _ in rows], [qa for _, qa in rows]


def graph_key(scene: Scene) -> tuple:
    """A scene graph as a hashable key: its objects' (row, column, shape, colour, size), in order."""
    return tuple(sorted((o.row, o.col, o.shape, o.color, o.size) for o in scene.objects))


def novel(scenes: list[Scene], train_scenes: list[Scene]) -> list[int]:
    """The indices of `scenes` whose scene graph (shapes, colours, sizes, cells) occurs nowhere in `train_scenes`:
    the held-out scenes a model cannot have seen in training, whatever it memorised. Introduced in notebook 02."""
    seen = {graph_key(s) for s in train_scenes}
    return [i for i, s in enumerate(scenes) if graph_key(s) not in seen]


@dataclass
class SwapPairs:
    """Scenes with one true caption and one hard negative each (ARO-style paired choice)."""

    kind: str
    scenes: list[Scene]
    positives: list[str]
    negatives: list[str]


def swap_pairs(kind: str, seed: int = 0, n: int = 1000, split: str = "test") -> SwapPairs:
    """The first `n` scenes of `split` that have a `kind` hard negative ('relation_swap', 'attribute_swap'
    or 'object_replacement', see `language.hard_negatives`), with their true caption and that negative."""
    world, out, index = ShapesWorld(seed=seed), SwapPairs(kind, [], [], []), 0
    while len(out.scenes) < n:
        scene = world.scene(index, split)
        for negative in hard_negatives(scene):
            if negative.kind == kind:
                out.scenes.append(scene)
                out.positives.append(caption(scene))
                out.negatives.append(negative.text)
        index += 1
        if index > 50 * n:
            raise ValueError(f"kind={kind!r}: not a hard-negative kind, or the {split} split has too few of them")
    return out


_OBJECT_FRAMES = ["a {}", "there is a {}", "a picture of a {}", "an image with a {} in it"]
GENERIC_TEMPLATES = {  # CLIP's kind of prompt: a frame around the class name that says nothing else about the scene
    "shape": _OBJECT_FRAMES,
    "color": ["a {} shape", "there is a {} object", "a picture of a {} shape", "an image with a {} object in it"],
    "pair": _OBJECT_FRAMES,  # a colour-shape pair names an object too: 'a red star'
}


def prompt_templates(attribute: str, kind: str = "generic") -> list[str]:
    """Zero-shot prompts for one attribute (introduced in notebook 02). kind='generic': CLIP's sort of template,
    the same frames for every class ('a picture of a {}'). kind='vocabulary': one prompt per combination of the
    other words of a caption (colour -> 'a small {} circle', 'a large {} square', ...), an ensemble that needs to
    know the world's whole vocabulary and so is reported only as an extra."""
    require(attribute in GENERIC_TEMPLATES, "attribute", attribute, f"one of {tuple(GENERIC_TEMPLATES)}")
    require(kind in ("generic", "vocabulary"), "kind", kind, "'generic' or 'vocabulary'")
    if kind == "generic":
        return list(GENERIC_TEMPLATES[attribute])
    if attribute == "color":
        return [f"a {size} {{}} {shape}" for size in SIZES for shape in SHAPES]
    if attribute == "shape":
        return [f"a {size} {color} {{}}" for size in SIZES for color in COLORS]
    return [f"a {size} {{}}" for size in SIZES]


# ---------------------------------------------------------------- benchmarks, built from a spec


@dataclass
class DualEncoderBench:
    """The held-out sets notebook 02 measures every dual encoder and pair scorer on, rendered once."""

    retrieval: list[Scene]  # scenes with distinct captions
    single: list[Scene]  # one-object test scenes (zero-shot colour and shape)
    heldout: list[Scene]  # one-object scenes of never-trained colour-shape pairs
    swaps: dict[str, SwapPairs]  # kind -> true caption and its hard negative, per scene
    images: dict[str, torch.Tensor]  # the same names -> uint8 [N, 3, H, W]

    @classmethod
    def build(cls, seed: int = 0, n: int = 1000, image_size: int = 64) -> DualEncoderBench:
        retrieval, single = distinct_caption_scenes(seed, n), single_objects(seed, n)
        heldout = heldout_objects(seed, n // 2)
        swaps = {kind: swap_pairs(kind, seed, n) for kind in ("relation_swap", "attribute_swap")}
        images = {"retrieval": retrieval, "single": single, "heldout": heldout} | {k: v.scenes for k, v in swaps.items()}
        return cls(retrieval, single, heldout, swaps, {k: images_of(v, image_size) for k, v in images.items()})


@dataclass
class SceneBench:
    """`n` test scenes of 1-4 objects (`generation_scenes`), their images, and `questions_per_scene` questions of
    distinct types about each (`vqa_questions`): what notebook 01's backbones, the captioners and the VQA models
    are measured on."""

    scenes: list[Scene]
    images: torch.Tensor  # uint8 [n, 3, H, W]
    question_scene: list[int]  # the scene each question asks about
    questions: list[QA]

    @classmethod
    def build(cls, seed: int = 0, n: int = 1000, image_size: int = 64, questions_per_scene: int = 3) -> SceneBench:
        scenes = generation_scenes(seed, n)
        index, qas = vqa_questions(scenes, k=questions_per_scene)
        return cls(scenes, images_of(scenes, image_size), index, qas)


@dataclass
class WorldTextBench:
    """The text of `n` test scenes (`generation_scenes`): every kind of document `world_text` writes, and
    `questions_per_scene` questions per scene asked blind. What notebook 01's tiny LM is measured on."""

    scenes: list[Scene]
    documents: list[tuple[str, str]]  # (kind, text)
    questions: list[QA]

    @classmethod
    def build(cls, seed: int = 0, n: int = 1000, questions_per_scene: int = 3) -> WorldTextBench:
        scenes = generation_scenes(seed, n)
        return cls(scenes, documents(scenes, seed), vqa_questions(scenes, k=questions_per_scene)[1])


@dataclass
class FusionBench:
    """Both held-out sets at once, for models that score pairs and answer questions (notebook 06's fusion encoders):
    the swap probes and retrieval scenes of a DualEncoderBench, the scenes and questions of a SceneBench."""

    pairs: DualEncoderBench
    scenes: SceneBench

    @classmethod
    def build(cls, seed: int = 0, n: int = 1000, image_size: int = 64) -> FusionBench:
        return cls(DualEncoderBench.build(seed, n, image_size), SceneBench.build(seed, n, image_size))


BENCHES = {"dual_encoder": DualEncoderBench, "scenes": SceneBench, "world_text": WorldTextBench, "fusion": FusionBench}


def build(spec: dict) -> DualEncoderBench | SceneBench | WorldTextBench | FusionBench:
    """The benchmark a spec names: {"kind": "dual_encoder" | "scenes" | "world_text" | "fusion", "seed", "n", ...};
    the other keys go to its `build`."""
    kind = spec.get("kind")
    if kind not in BENCHES:
        raise ValueError(f"evaluation set kind={kind!r} is not one of {sorted(BENCHES)}")
    return BENCHES[kind].build(**{k: v for k, v in spec.items() if k != "kind"})
