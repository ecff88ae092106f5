import gzip
import json
import socket
import sys

import numpy as np
import pytest
from PIL import Image

from vlmlab.data import real
from vlmlab.data.real import BadImageError, DataError, ImageText, SourceUnavailable


def write_png(path, color=(255, 0, 0), size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def write_metadata(root, lines):
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---- load_rgb ----

def test_load_rgb_composites_transparency_on_white(tmp_path):
    img = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    img.putpixel((1, 0), (255, 0, 0, 0))  # fully transparent red
    img.save(tmp_path / "a.png")
    out = real.load_rgb(tmp_path / "a.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=1)  # palette index 1 (green) is transparent
    out = real.load_rgb(tmp_path / "p.png")
    assert out.getpixel((0, 0)) == (0, 0, 255) and out.getpixel((1, 0)) == (255, 255, 255)


def test_load_rgb_pads_to_square_keeping_aspect(tmp_path):
    write_png(tmp_path / "wide.png", (255, 0, 0), size=(40, 20))
    out = real.load_rgb(tmp_path / "wide.png", size=10)
    assert out.size == (10, 10)
    assert out.getpixel((5, 5)) == (255, 0, 0)  # the whole image is kept, scaled to 10 x 5
    assert out.getpixel((5, 0)) == (255, 255, 255) and out.getpixel((5, 9)) == (255, 255, 255)  # white bands
    with pytest.raises(ValueError, match="size=0"):
        real.load_rgb(tmp_path / "wide.png", size=0)


def test_load_rgb_names_bad_and_missing_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(BadImageError, match=r"broken\.png: unreadable image"):
        real.load_rgb(tmp_path / "broken.png")
    with pytest.raises(ValueError, match=r"gone\.png: file not found"):  # BadImageError is a ValueError
        real.load_rgb(tmp_path / "gone.png")


# ---- image_folder ----

@pytest.fixture
def messy_folder(tmp_path):
    write_png(tmp_path / "red.png", (255, 0, 0))
    write_png(tmp_path / "cats" / "blue.png", (0, 0, 255))
    write_png(tmp_path / "untexted.png")
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    cut = write_png(tmp_path / "cut.png")
    cut.write_bytes(cut.read_bytes()[:-20])  # a valid header, then the file stops: only reading it all finds out
    write_metadata(tmp_path, [
        json.dumps({"file_name": "red.png", "text": "  a red square "}),
        "",
        json.dumps({"file_name": "cats/blue.png", "text": "a blue square"}),
        json.dumps({"file_name": "broken.png", "text": "noise"}),
        json.dumps({"file_name": "untexted.png"}),
        json.dumps({"file_name": "missing.png", "text": "nothing"}),
        '{"file_name": "half.png", "text": ',
        json.dumps({"file_name": "cut.png", "text": "a cut file"}),
    ])
    return tmp_path


def test_image_folder_reads_good_items(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "sub" / "b.jpg")
    write_metadata(tmp_path, [json.dumps({"file_name": "a.png", "text": "a"}),
                              json.dumps({"file_name": "sub/b.jpg", "text": "b"})])
    items = real.image_folder(tmp_path)
    assert items == [ImageText(tmp_path / "a.png", "a", ""), ImageText(tmp_path / "sub" / "b.jpg", "b", "sub")]


def test_image_folder_raise_lists_every_problem(messy_folder):
    with pytest.raises(DataError) as info:
        real.image_folder(messy_folder)
    msg = str(info.value)
    assert "5 problem(s)" in msg
    assert "line 4: broken.png: unreadable image" in msg
    assert "line 5: untexted.png: missing or empty 'text'" in msg
    assert "line 6: missing.png: file not found" in msg
    assert "line 7: invalid JSON" in msg
    assert "line 8: cut.png: unreadable image" in msg
    assert "red.png" not in msg


def test_image_folder_skip_warns_once_and_keeps_good(messy_folder):
    with pytest.warns(UserWarning) as record:
        items = real.image_folder(messy_folder, on_error="skip")
    assert len(record) == 1
    msg = str(record[0].message)
    assert "skipped 5 of 7" in msg
    for name in ("broken.png", "untexted.png", "missing.png", "line 7", "cut.png"):
        assert name in msg
    assert [(x.path.name, x.text, x.group) for x in items] == [("red.png", "a red square", ""),
                                                                ("blue.png", "a blue square", "cats")]


def test_image_folder_refuses_missing_metadata_and_bad_on_error(tmp_path):
    with pytest.raises(DataError, match=r"metadata\.jsonl: not found"):
        real.image_folder(tmp_path, on_error="skip")
    with pytest.raises(ValueError, match="on_error='ignore'"):
        real.image_folder(tmp_path, on_error="ignore")


# ---- Tux Paint layout (a fake stamps folder) ----

def test_tuxpaint_stamps_layout(tmp_path):
    write_png(tmp_path / "animals" / "birds" / "owl.png", mode="RGBA", color=(0, 0, 0, 0))
    (tmp_path / "animals" / "birds" / "owl.txt").write_text("An owl.\nfr.utf8=Un hibou.\n", encoding="utf-8")
    write_png(tmp_path / "animals" / "birds" / "owl_mirror.png")  # no .txt: not a stamp
    (tmp_path / "food" / "cake.svg").parent.mkdir()
    (tmp_path / "food" / "cake.svg").write_text("<svg/>")
    (tmp_path / "food" / "cake.txt").write_text("A cake.\n")  # SVG only: left out
    write_png(tmp_path / "food" / "bun.png")
    (tmp_path / "food" / "bun.txt").write_text("\nfr.utf8=Un pain.\n")  # empty English caption
    (tmp_path / "food" / "pie.png").write_bytes(b"not a png")
    (tmp_path / "food" / "pie.txt").write_text("A pie.\n")
    with pytest.warns(UserWarning, match=r"skipped 2 of 3") as record:
        items = real.tuxpaint_stamps(tmp_path)
    msg = str(record[0].message)
    assert "food/bun.png: empty first line" in msg and "food/pie.png: unreadable image" in msg
    assert items == [ImageText(tmp_path / "animals" / "birds" / "owl.png", "An owl.", "animals")]
    with pytest.raises(DataError, match="food/pie.png"):
        real.tuxpaint_stamps(tmp_path, on_error="raise")


def test_tuxpaint_missing_says_how_to_install(tmp_path):
    with pytest.raises(SourceUnavailable, match="sudo apt-get install --no-install-recommends tuxpaint-stamps-default"):
        real.tuxpaint_stamps(tmp_path / "nowhere")


# ---- IDX / Fashion-MNIST layout (fake files) ----

def write_idx(path, array, magic=None):
    header = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    data = header + np.array(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)  # raw, not gzipped
    return tmp_path


def test_fashion_mnist_parses_idx(fake_fashion):
    files = real.fashion_mnist_files(fake_fashion)
    assert files["train"]["images"].name == "train-images-idx3-ubyte.gz"
    assert files["test"]["labels"].name == "t10k-labels-idx1-ubyte"
    images, labels = real.fashion_mnist("test", root=fake_fashion)
    expected = np.random.default_rng(0).integers(0, 256, (5, 28, 28))  # the train images come first in the rng
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2]
    train_images, _ = real.fashion_mnist("train", root=fake_fashion)
    assert np.array_equal(train_images, expected)
    with pytest.raises(ValueError, match="split='val'"):
        real.fashion_mnist("val", root=fake_fashion)


def test_idx_errors_name_the_file(fake_fashion):
    bad = fake_fashion / "train-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((2, 28, 28)), magic=b"\x00\x00\x0d\x03")  # float type code
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: bad magic number 0x00000d03"):
        real.fashion_mnist("train", root=fake_fashion)
    short = fake_fashion / "short-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1]) + np.array([10], dtype=">u4").tobytes() + bytes(7))
    with pytest.raises(DataError, match="short-idx1-ubyte: header says shape \\(10,\\) = 10 bytes but 7 follow"):
        real.read_idx(short)
    write_idx(fake_fashion / "t10k-labels-idx1-ubyte", np.arange(2))  # 2 labels for 3 images
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: labels have shape \(2,\), expected \[3\]"):
        real.fashion_mnist("test", root=fake_fashion)
    write_idx(fake_fashion / "t10k-labels-idx1-ubyte", np.array([0, 10, 1]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 10 is not a class index 0..9"):
        real.fashion_mnist("test", root=fake_fashion)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    assert real.fashion_mnist_files(tmp_path) is None
    with pytest.raises(SourceUnavailable, match="sudo apt-get install dataset-fashion-mnist"):
        real.fashion_mnist("train", root=tmp_path)


# ---- split_items ----

def test_split_items_is_fixed_by_seed_not_order():
    items = [ImageText(real.Path(f"/x/{i}.png"), f"t{i}", "g") for i in range(1000)]
    train, val = real.split_items(items, 0.2, seed=0)
    assert len(train) + len(val) == 1000 and 150 < len(val) < 250
    assert {x.path for x in train}.isdisjoint(x.path for x in val)
    _, val_reversed = real.split_items(items[::-1], 0.2, seed=0)
    _, val_half = real.split_items(items[:500], 0.2, seed=0)
    assert set(val_reversed) == set(val) and set(val_half) == {x for x in val if x in items[:500]}
    moved = [ImageText(real.Path("/elsewhere") / x.path.name, x.text, x.group) for x in items]
    assert [x.path.name for x in real.split_items(moved, 0.2, seed=0)[1]] == [x.path.name for x in val]
    assert set(real.split_items(items, 0.2, seed=1)[1]) != set(val)
    assert real.split_items(items, 0.0, seed=0) == (items, [])
    with pytest.raises(ValueError, match="val_fraction=1"):
        real.split_items(items, 1, seed=0)


# ---- sample photos and ImageNet names (files inside installed packages) ----

def test_sample_photos_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample_photos tried to use the network")

    if real.package_folder("skimage") is None:
        pytest.skip(f"scikit-image not installed: {real.INSTALL_HINTS['skimage']}")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    photos = real.sample_photos()
    assert len(photos) >= 5
    for name, (img, caption) in photos.items():
        assert img.mode == "RGB" and min(img.size) >= 256, name
        assert caption[0].islower() and not caption.endswith("."), name  # short CLIP-style captions


def test_sample_photos_warns_about_missing_packages(monkeypatch):
    original = real.package_folder
    monkeypatch.setattr(real, "package_folder", lambda package: None if package == "sklearn" else original(package))
    with pytest.warns(UserWarning, match=r"china: sklearn is not installed \(pip install scikit-learn\)"):
        photos = real.sample_photos()
    assert "china" not in photos and "flower" not in photos


def test_imagenet_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(real, "package_folder", lambda package: None)
    assert real.imagenet_classnames_path() is None
    with pytest.raises(SourceUnavailable, match="pip install --no-deps timm"):
        real.imagenet_classnames()


# ---- the real installed sources (CI installs them; skipped where absent) ----

@pytest.fixture(scope="module")
def stamps():
    if real.tuxpaint_root() is None:
        pytest.skip(f"Tux Paint stamps not installed: {real.INSTALL_HINTS['tuxpaint_stamps']}")
    return real.tuxpaint_stamps(on_error="raise")  # the packaged stamps have no bad files


def test_installed_tuxpaint_stamps(stamps):
    assert len(stamps) > 400
    assert all(x.text and "=" not in x.text for x in stamps)  # English line 1, not a "fr.utf8=..." line
    assert [x.path for x in stamps] == sorted(x.path for x in stamps)
    assert {"animals", "food", "vehicles"} <= {x.group for x in stamps}
    frog = next(x for x in stamps if x.path.name == "frog.png")
    assert frog.text == "A frog." and frog.group == "animals"
    assert real.load_rgb(frog.path, 32).size == (32, 32)
    train, val = real.split_items(stamps, 0.1, seed=0)
    assert 0.05 * len(stamps) < len(val) < 0.15 * len(stamps) and len(train) + len(val) == len(stamps)


def test_installed_fashion_mnist():
    if real.fashion_mnist_files() is None:
        pytest.skip(f"Fashion-MNIST not installed: {real.INSTALL_HINTS['fashion_mnist']}")
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = real.fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels).tolist() == [n // 10] * 10  # balanced classes
    assert labels[0] == 9 and real.FASHION_MNIST_CLASSES[9] == "Ankle boot"  # first test image


def test_installed_imagenet_classnames():
    if real.imagenet_classnames_path() is None:
        pytest.skip(f"timm not installed: {real.INSTALL_HINTS['imagenet_classnames']}")
    names = real.imagenet_classnames()
    assert len(names) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"] and names[-1] == "toilet tissue"
    assert "timm" not in sys.modules  # found by find_spec, never imported (it needs torchvision)
