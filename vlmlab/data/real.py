"""Real images with English text, all offline. Introduced in notebook 00; used on the "real track" later.

| source                 | what                                    | installs with                            |
|------------------------|-----------------------------------------|------------------------------------------|
| `image_folder(root)`   | your images + `metadata.jsonl`          | (your files)                             |
| `tuxpaint_stamps()`    | ~800 object drawings/photos + captions  | Debian `tuxpaint-stamps-default`         |
| `fashion_mnist(split)` | 70k 28x28 clothes images, 10 classes    | Debian `dataset-fashion-mnist`           |
| `sample_photos()`      | 10 photos bundled with Python packages  | scikit-image, matplotlib, scikit-learn   |
| `imagenet_classnames()`| the 1000 ImageNet-1k class names        | the `timm` wheel (never imported)        |

Bad data is reported by file name and either refused (`on_error="raise"`) or skipped with one
warning that names every skipped file (`on_error="skip"`); it is never used silently.
`INSTALL_HINTS` holds the command that installs each source (`python -m vlmlab doctor` prints them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..files import package_folder

INSTALL_HINTS = {
    "tuxpaint_stamps": "sudo apt-get install --no-install-recommends tuxpaint-stamps-default",
    "fashion_mnist": "sudo apt-get install dataset-fashion-mnist",
    "imagenet_classnames": "pip install --no-deps timm",
    "skimage": "pip install scikit-image",
    "matplotlib": "pip install matplotlib",
    "sklearn": "pip install scikit-learn",
}
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")  # where the Debian packages put them
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
ON_ERROR = ("raise", "skip")

# name -> (package, file inside the package folder, caption). These are the files that skimage.data.astronaut(),
# matplotlib.cbook.get_sample_data() and sklearn.datasets.load_sample_image() read; reading them directly
# never imports the package and can never download (skimage fetches its non-bundled data with pooch).
SAMPLE_PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png", "an astronaut in an orange spacesuit"),
    "chelsea": ("skimage", "data/chelsea.png", "a close-up of a tabby cat"),
    "coffee": ("skimage", "data/coffee.png", "a cup of coffee on a red saucer"),
    "rocket": ("skimage", "data/rocket.jpg", "a rocket on a launch pad at night"),
    "motorcycle": ("skimage", "data/motorcycle_left.png", "a red motorcycle in a garage"),
    "hubble": ("skimage", "data/hubble_deep_field.jpg", "many galaxies in deep space"),
    "retina": ("skimage", "data/retina.jpg", "the back of a human eye"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "an old woman in a navy uniform"),
    "china": ("sklearn", "datasets/images/china.jpg", "a Chinese pagoda by a lake"),
    "flower": ("sklearn", "datasets/images/flower.jpg", "an orange dahlia flower"),
}


class DataError(ValueError):
    """Data on disk is missing or malformed; the message names each file (and line) and what is wrong."""


class BadImageError(DataError):
    """An image file cannot be read; the message names the file and the reason."""


class SourceUnavailable(FileNotFoundError):
    """A data source is not installed; the message has the command that installs it."""


@dataclass(frozen=True)
class ImageText:
    path: Path
    text: str
    group: str = ""  # stamps: the category folder ("animals"); image folders: the file's sub-folder


# ---- images ----

_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises on a bad file


def load_rgb(path, size: int | None = None) -> Image.Image:
    """Open an image as RGB. Transparent pixels are composited on white.

    With `size`, the image is scaled to fit a size x size square and padded with white: the whole
    object stays in view (a centre crop could cut a stamp's object in half).
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size={size!r} must be a positive int or None")
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                rgb = Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
            else:
                rgb = img.convert("RGB")
    except FileNotFoundError as err:
        raise BadImageError(f"{path}: file not found") from err
    except _PIL_ERRORS as err:
        raise BadImageError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err
    return rgb if size is None else ImageOps.pad(rgb, (size, size), color="white")


def _image_problem(path: Path) -> str | None:
    """None if PIL can open and verify the file, else why not. verify checks the file's structure (for PNG,
    every chunk's checksum) without decoding pixels; an error found only by decoding is raised by load_rgb."""
    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as img:
            img.verify()
    except _PIL_ERRORS as err:
        return f"unreadable image ({type(err).__name__}: {err})"
    return None


def _report(problems: list[str], on_error: str, where: str, total: int) -> None:
    """Raise one DataError listing every problem, or warn once naming each skipped file."""
    if not problems:
        return
    listing = "\n  ".join(problems)
    if on_error == "raise":
        raise DataError(f"{where}: {len(problems)} problem(s):\n  {listing}\n(on_error='skip' skips these items)")
    warnings.warn(f"{where}: skipped {len(problems)} of {total} item(s):\n  {listing}", stacklevel=3)


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not one of {ON_ERROR}")


def image_folder(root, on_error: str = "raise") -> list[ImageText]:
    """Images listed in `root/metadata.jsonl`, the Hugging Face imagefolder convention:
    one JSON object per line, `{"file_name": "cat.png", "text": "a cat"}`; blank lines are ignored.

    Every image is checked readable. A missing metadata file always raises DataError.
    """
    _check_on_error(on_error)
    root = Path(root)
    metadata = root / "metadata.jsonl"
    if not metadata.is_file():
        raise DataError(f"{metadata}: not found; an image folder needs one JSON line per image: "
                        '{"file_name": "cat.png", "text": "a cat"}')
    try:
        lines = metadata.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{metadata}: not UTF-8 text ({err})") from err
    items, problems, total = [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        total += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: invalid JSON ({err})")
            continue
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"line {number}: no 'file_name'")
            continue
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"line {number}: {name}: missing or empty 'text'")
            continue
        why = _image_problem(root / name)
        if why:
            problems.append(f"line {number}: {name}: {why}")
            continue
        group = Path(name).parent.as_posix()
        items.append(ImageText(root / name, text.strip(), "" if group == "." else group))
    _report(problems, on_error, str(metadata), total)
    return items


# ---- Tux Paint stamps ----

def tuxpaint_root() -> Path | None:
    """The installed stamps folder, or None."""
    return TUXPAINT_DIR if TUXPAINT_DIR.is_dir() else None


def tuxpaint_stamps(root=None, on_error: str = "skip") -> list[ImageText]:
    """Tux Paint stamps sorted by path: `<category>/.../<name>.png` with the first line of `<name>.txt` as text.

    Only PNG stamps are listed; stamps that exist only as SVG are left out (PIL does not read SVG), and
    `*_mirror.png` files (the artwork Tux Paint shows when a stamp is flipped; no .txt) are not stamps.
    In tuxpaint-stamps-default 2022.06.04 that gives 785 stamps, leaving out 165 SVG-only stamps and
    2 captions with no image. An unreadable PNG or an empty caption is a problem for `on_error`.
    """
    _check_on_error(on_error)
    root = Path(root) if root is not None else tuxpaint_root()
    if root is None or not root.is_dir():
        raise SourceUnavailable(f"Tux Paint stamps not found in {root or TUXPAINT_DIR}; "
                                f"install them with: {INSTALL_HINTS['tuxpaint_stamps']}")
    items, problems, total = [], [], 0
    for caption_file in sorted(root.rglob("*.txt")):
        image = caption_file.with_suffix(".png")
        if not image.is_file():
            continue  # an SVG-only stamp, or a caption without an image
        total += 1
        relative = image.relative_to(root)
        try:
            text = caption_file.read_text(encoding="utf-8-sig").partition("\n")[0].strip()  # line 1 is English
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"{caption_file.relative_to(root)}: unreadable caption ({err})")
            continue
        why = "empty first line in its .txt" if not text else _image_problem(image)
        if why:
            problems.append(f"{relative}: {why}")
            continue
        items.append(ImageText(image, text, relative.parts[0] if len(relative.parts) > 1 else ""))
    _report(problems, on_error, f"Tux Paint stamps in {root}", total)
    return items


# ---- Fashion-MNIST (IDX files) ----

def read_idx(path) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format, gzipped or not) as a uint8 array of the shape its header gives.

    Header: 2 zero bytes, type code 0x08 (unsigned byte), number of dims, then each dim as a big-endian uint32.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; EOFError: truncated gzip
        raise DataError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] == 0:
        raise DataError(f"{path}: bad magic number 0x{raw[:4].hex()}; an IDX file of unsigned bytes starts with 0x000008 "
                        "and its number of dims (0x00000803 for images, 0x00000801 for labels)")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path}: file ends inside its header ({len(raw)} bytes, header needs {start})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - start != math.prod(shape):
        raise DataError(f"{path}: header says shape {shape} = {math.prod(shape)} bytes but {len(raw) - start} follow it")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape).copy()


def fashion_mnist_files(root=None) -> dict | None:
    """{"train": {"images": path, "labels": path}, "test": {...}} (each file .gz or raw), or None if any is missing."""
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    files = {"train": {}, "test": {}}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, suffix in (("images", "idx3-ubyte"), ("labels", "idx1-ubyte")):
            name = f"{prefix}-{kind}-{suffix}"
            found = [p for p in (folder / f"{name}.gz", folder / name) if p.is_file()]
            if not found:
                return None
            files[split][kind] = found[0]
    return files


def fashion_mnist(split: str = "train", root=None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as (images uint8 [N, 28, 28], labels int64 [N]); N = 60000 (train) or 10000 (test).

    Class names: FASHION_MNIST_CLASSES[label].
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not one of ('train', 'test')")
    files = fashion_mnist_files(root)
    if files is None:
        raise SourceUnavailable(f"Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) not found in "
                                f"{root or FASHION_MNIST_DIR}; install them with: {INSTALL_HINTS['fashion_mnist']}")
    images_file, labels_file = files[split]["images"], files[split]["labels"]
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_file}: images have shape {images.shape}, expected [N, 28, 28] (magic 0x00000803)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_file}: labels have shape {labels.shape}, expected [{len(images)}] (magic 0x00000801) "
                        f"to match {images_file}")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_file}: label {labels.max()} is not a class index 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels.astype(np.int64)


# ---- sample photos and ImageNet class names: files inside installed Python packages ----

def sample_photos() -> dict[str, tuple[Image.Image, str]]:
    """name -> (RGB photo, short English caption) for each SAMPLE_PHOTOS file that is installed.

    A missing package or file is skipped with one warning that says what is missing and how to install it.
    """
    photos, missing = {}, []
    for name, (package, file, caption) in SAMPLE_PHOTOS.items():
        folder = package_folder(package)
        if folder is None:
            missing.append(f"{name}: {package} is not installed ({INSTALL_HINTS[package]})")
        elif not (folder / file).is_file():
            missing.append(f"{name}: {folder / file} is not in this version of {package}")
        else:
            photos[name] = (load_rgb(folder / file), caption)
    if missing:
        warnings.warn("sample_photos: skipped {} photo(s):\n  {}".format(len(missing), "\n  ".join(missing)), stacklevel=2)
    return photos


def imagenet_classnames_path() -> Path | None:
    """timm's `data/_info` folder holding imagenet_synsets.txt and imagenet_synset_to_lemma.txt, or None."""
    timm = package_folder("timm")  # timm needs torchvision to import; its data files do not
    info = timm / "data" / "_info" if timm else None
    if info and (info / "imagenet_synsets.txt").is_file() and (info / "imagenet_synset_to_lemma.txt").is_file():
        return info
    return None


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order: the first lemma of each synset
    ("goldfish, Carassius auratus" -> "goldfish"). Two names repeat, as in WordNet: "crane" (bird and
    machine) and "maillot"."""
    info = imagenet_classnames_path()
    if info is None:
        raise SourceUnavailable(f"ImageNet class names not found (they ship inside the timm wheel); "
                                f"install them with: {INSTALL_HINTS['imagenet_classnames']}")
    synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
                  if "\t" in line)
    unknown = [s for s in synsets if s not in lemmas]
    if len(synsets) != 1000 or unknown:
        raise DataError(f"{info}: imagenet_synsets.txt has {len(synsets)} synsets (expected 1000), "
                        f"{len(unknown)} without a lemma in imagenet_synset_to_lemma.txt (e.g. {unknown[:3]})")
    return [lemmas[s].split(",")[0].strip() for s in synsets]


# ---- a fixed held-out split ----

def split_items(items: list[ImageText], val_fraction: float, seed: int = 0) -> tuple[list[ImageText], list[ImageText]]:
    """(train, val), each in input order. An item is in val when a hash of (seed, group, file name) falls
    below val_fraction, so its side never depends on the order of the list, on the other items, or on
    where the folder lives: the held-out set stays fixed as long as the seed does. Same-named files of one
    group (Tux Paint's photo and cartoon `food/.../banana.png`) land on the same side."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} must be a number in [0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an int")
    train, val = [], []
    for item in items:
        digest = hashlib.sha256(f"{seed}:{item.group}/{Path(item.path).name}".encode()).digest()
        (val if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else train).append(item)
    return train, val
