"""The Shapes World: scene sampling, splits, rendering, determinism."""

import hashlib
from collections import Counter

import numpy as np
import pytest

from vlmlab.data.language import scene_texts
from vlmlab.data.shapes import (
    BACKGROUND,
    COLORS,
    GRID,
    HELDOUT_COMBOS,
    RGB,
    SHAPES,
    SIZES,
    SPLITS,
    ShapesWorld,
    render_array,
    sample_scene,
)

# Golden digests: the same (seed, split, index) must give the same pixels and text on every
# machine (pinned Pillow). If a deliberate change to the world alters them, update both here.
PIXELS_SHA256 = "62b1ae206b7c93d79596b333a33f9829e841eaa06d3f17c20966ba905231d64a"
TEXT_SHA256 = "df2105242c2045d3b00017a638df188b18772f5bf5e5a992dba0f0addd1dc155"  # hard negatives avoid held-out pairs


def test_world_vocabulary_is_as_large_as_promised():
    assert len(SHAPES) >= 6 and len(COLORS) == 8 and len(SIZES) == 2
    assert len(set(RGB.values())) == len(COLORS)


def test_same_seed_same_scene_and_different_index_differs():
    assert sample_scene(3, 10) == sample_scene(3, 10)
    assert sample_scene(3, 10) != sample_scene(3, 11)
    assert sample_scene(3, 10) != sample_scene(4, 10)


def test_golden_pixels_and_text():
    world = ShapesWorld(seed=7)
    pixels, text = hashlib.sha256(), hashlib.sha256()
    for i in range(50):
        for split in SPLITS:
            scene = world.scene(i, split)
            pixels.update(render_array(scene, 64).tobytes())
            text.update("|".join(scene_texts(scene)).encode())
    assert pixels.hexdigest() == PIXELS_SHA256
    assert text.hexdigest() == TEXT_SHA256


def test_objects_are_in_distinct_cells_and_counts_in_range():
    world = ShapesWorld(seed=1)
    counts = Counter()
    for scene in world.scenes(500):
        cells = [(o.row, o.col) for o in scene.objects]
        assert len(set(cells)) == len(cells)
        counts[len(scene)] += 1
        for o in scene.objects:
            assert o.col == int(o.x * GRID) and o.row == int(o.y * GRID)
    assert set(counts) == {1, 2, 3, 4}


def test_heldout_combinations_never_in_train_val_test_and_always_in_heldout():
    world = ShapesWorld(seed=2)
    for split in ("train", "val", "test"):
        seen = {(o.shape, o.color) for s in world.scenes(400, split) for o in s.objects}
        assert not seen & HELDOUT_COMBOS
    for scene in world.scenes(200, "heldout"):
        assert any((o.shape, o.color) in HELDOUT_COMBOS for o in scene.objects)
    # every colour and every shape still appears in training
    train = [o for s in world.scenes(1000) for o in s.objects]
    assert {o.color for o in train} == set(COLORS) and {o.shape for o in train} == set(SHAPES)


def test_render_shows_every_object_in_its_colour_and_nothing_else():
    world = ShapesWorld(seed=3, image_size=64)
    for scene in world.scenes(100):
        img = render_array(scene, 64)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        colours = {tuple(p) for p in img.reshape(-1, 3)}
        assert colours == {BACKGROUND} | {RGB[o.color] for o in scene.objects}


def test_large_objects_cover_more_pixels_than_small():
    world = ShapesWorld(seed=4, max_objects=1)
    area = {"small": [], "large": []}
    for scene in world.scenes(200):
        img = render_array(scene, 64)
        area[scene.objects[0].size].append((img != BACKGROUND).any(-1).sum())
    assert max(area["small"]) < min(area["large"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split='nope'"):
        sample_scene(0, 0, "nope")
    with pytest.raises(ValueError, match="max_objects"):
        sample_scene(0, 0, min_objects=3, max_objects=2)
