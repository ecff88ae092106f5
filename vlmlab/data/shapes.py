"""The Shapes World: scene graphs sampled from (seed, split, index), rendered with PIL.

Introduced in notebook 00. A scene holds 1-4 objects, each a (shape, colour, size) placed
in its own cell of a 3x3 grid, so objects never overlap and every spatial relation is exact.
The same (seed, split, index) gives the same scene, pixels and text on every machine:
sampling uses Python's `random.Random` seeded with a string (hashed with SHA-512, not with
the per-process `hash()`), and rendering draws only integer polygons.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "large")
SPLITS = ("train", "val", "test", "heldout")

RGB = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 230, 40),
    "green": (40, 190, 60),
    "cyan": (40, 220, 230),
    "blue": (50, 80, 235),
    "purple": (160, 60, 210),
    "white": (245, 245, 245),
}
BACKGROUND = (28, 28, 32)
GRID = 3  # objects sit in distinct cells of a GRID x GRID layout
SIZE_FRACTION = {"small": 0.5, "large": 0.9}  # object diameter as a fraction of a cell

# One colour per shape is never seen in training: the compositional-generalisation split.
# (3*i + 1) % 8 gives each shape a different colour, so every colour and every shape
# still appears in training, only the pairing is new.
HELDOUT_COMBOS = frozenset((shape, COLORS[(3 * i + 1) % len(COLORS)]) for i, shape in enumerate(SHAPES))


@dataclass(frozen=True)
class Obj:
    """One object of a scene; (row, col) is its grid cell, (x, y) its centre in [0, 1]."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    x: float
    y: float

    @property
    def phrase(self) -> str:
        """'large red star': the canonical noun phrase."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A scene graph: the objects, sorted left to right (then top to bottom)."""

    objects: tuple[Obj, ...]
    seed: int
    split: str
    index: int

    def __len__(self) -> int:
        return len(self.objects)


def relation(a: Obj, b: Obj) -> str:
    """The spatial relation of `a` to `b`: 'left of', 'right of', 'above' or 'below'.

    Columns decide first (a caption reads left to right); objects in the same column
    are related vertically. Exact, because each object has its own grid cell.
    """
    if a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    return "above" if a.row < b.row else "below"


def _rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"shapes-world:{seed}:{split}:{index}")


def sample_scene(
    seed: int, index: int, split: str = "train", min_objects: int = 1, max_objects: int = 4
) -> Scene:
    """Sample the scene graph for (seed, split, index).

    `train`, `val` and `test` never contain a held-out colour-shape combination;
    every scene of `heldout` contains at least one.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if not 1 <= min_objects <= max_objects <= GRID * GRID:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {GRID * GRID}, got {min_objects}, {max_objects}")
    rng = _rng(seed, split, index)
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(GRID * GRID), n)
    heldout_slot = rng.randrange(n) if split == "heldout" else -1
    objects = []
    for k, cell in enumerate(cells):
        if k == heldout_slot:
            shape, color = rng.choice(_HELDOUT_LIST)
        else:
            shape, color = rng.choice(TRAIN_COMBOS)
        size = rng.choice(SIZES)
        row, col = divmod(cell, GRID)
        # jitter the centre inside its cell, leaving room for the largest object
        slack = (1 - SIZE_FRACTION[size]) / 2
        x = (col + 0.5 + rng.uniform(-slack, slack) * 0.8) / GRID
        y = (row + 0.5 + rng.uniform(-slack, slack) * 0.8) / GRID
        objects.append(Obj(shape, color, size, row, col, round(x, 4), round(y, 4)))
    objects.sort(key=lambda o: (o.col, o.row))
    return Scene(tuple(objects), seed, split, index)


TRAIN_COMBOS = tuple((s, c) for s in SHAPES for c in COLORS if (s, c) not in HELDOUT_COMBOS)
_HELDOUT_LIST = tuple(sorted(HELDOUT_COMBOS))


@cache
def _unit_polygon(shape: str) -> tuple[tuple[float, float], ...]:
    """Vertices of `shape` inside the unit circle, centred at the origin (y points down)."""

    def ring(k: int, radius: float = 1.0, start: float = -math.pi / 2) -> list[tuple[float, float]]:
        return [
            (radius * math.cos(start + 2 * math.pi * i / k), radius * math.sin(start + 2 * math.pi * i / k))
            for i in range(k)
        ]

    if shape == "circle":
        return tuple(ring(32))
    if shape == "square":
        r = 0.78
        return ((-r, -r), (r, -r), (r, r), (-r, r))
    if shape == "triangle":
        return tuple((x, y + 0.15) for x, y in ring(3, 1.05))
    if shape == "star":
        outer, inner = ring(5, 1.0), ring(5, 0.42, -math.pi / 2 + math.pi / 5)
        return tuple(p for pair in zip(outer, inner) for p in pair)
    if shape == "diamond":
        return ((0, -1), (0.72, 0), (0, 1), (-0.72, 0))
    if shape == "cross":
        a, b = 0.3, 0.9
        return ((-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a))
    if shape == "hexagon":
        return tuple(ring(6, 1.0, 0.0))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw `scene` as a `size` x `size` RGB image."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    for obj in scene.objects:
        radius = SIZE_FRACTION[obj.size] * cell / 2
        cx, cy = obj.x * size, obj.y * size
        points = [(round(cx + radius * px), round(cy + radius * py)) for px, py in _unit_polygon(obj.shape)]
        draw.polygon(points, fill=RGB[obj.color])
    return image


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    """The rendered scene as a uint8 array, (H, W, 3)."""
    return np.array(render(scene, size))


@dataclass(frozen=True)
class ShapesWorld:
    """A configured world: `world.scene(i, split)` and `world.image(i, split)`."""

    seed: int = 0
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4

    def scene(self, index: int, split: str = "train") -> Scene:
        return sample_scene(self.seed, index, split, self.min_objects, self.max_objects)

    def image(self, index: int, split: str = "train") -> Image.Image:
        return render(self.scene(index, split), self.image_size)

    def scenes(self, n: int, split: str = "train", start: int = 0) -> list[Scene]:
        return [self.scene(i, split) for i in range(start, start + n)]
