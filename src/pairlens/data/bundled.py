"""Data that ships inside installed packages, so PairLens works offline.

* :func:`digits`: scikit-learn's 1,797 handwritten digits (8 x 8, values 0..16), scaled to [0, 1],
  upsampled to 32 x 32 with bilinear interpolation (``align_corners=False``) and repeated to three
  (RGB) channels: white strokes on black. Split with a fixed, seeded, stratified 70 / 15 / 15
  train / validation / test split.
* :func:`photos`: the photographs bundled with scikit-learn (``load_sample_images``: china, flower)
  and those scikit-image ships in its wheel (no download: astronaut, coffee, chelsea, rocket, ...).
  Images that scikit-image would fetch from the internet (brain, lily, kidney, eagle, skin) are not
  used. ``motorcycle_right`` (the second stereo view of ``motorcycle_left``) is returned by
  :func:`photos` but held out of :data:`TRAIN_PHOTOS`, so the stereo pair is an unseen example pair.
* :func:`example_pairs`: the example pairs of ``pairlens explain`` with no images, read from small
  image files in ``pairlens/data/examples`` (:func:`example_image_paths`).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

DIGITS_SIZE = 32
SPLITS = ("train", "val", "test", "all")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)

#: scikit-image photographs that ship inside its wheel (loaded without pooch / network).
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "clock",
    "grass",
    "gravel",
    "brick",
)
SKLEARN_PHOTOS = ("china", "flower")
STEREO = ("motorcycle_left", "motorcycle_right")
#: photos the bundled ``photos`` model was trained on (``motorcycle_right`` is held out).
TRAIN_PHOTOS = SKLEARN_PHOTOS + SKIMAGE_PHOTOS + ("motorcycle_left",)
ALL_PHOTOS = TRAIN_PHOTOS + ("motorcycle_right",)


# ---------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0).repeat(1, 3, 1, 1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


@functools.lru_cache(maxsize=8)
def _digits_split_indices(seed: int) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, y = _digits_all()
    idx = np.arange(len(y))
    labels = y.numpy()
    train_frac, val_frac, test_frac = SPLIT_FRACTIONS
    train, rest = train_test_split(
        idx, train_size=train_frac, stratify=labels, random_state=seed, shuffle=True
    )
    val, test = train_test_split(
        rest,
        test_size=test_frac / (val_frac + test_frac),
        stratify=labels[rest],
        random_state=seed,
        shuffle=True,
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test), "all": idx}


def digits(split: str = "train", seed: int = 0) -> tuple[Tensor, Tensor]:
    """scikit-learn digits as ``(images, labels)``: (N, 3, 32, 32) float32 in [0, 1] and (N,).

    ``split`` is ``"train"`` (70 %), ``"val"`` (15 %), ``"test"`` (15 %) or ``"all"``; the split
    is stratified by class and fixed by ``seed`` (sklearn ``train_test_split``). The bundled
    ``digits`` model was trained and probed on ``seed=0``. Returns copies (safe to modify).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; choose from {', '.join(SPLITS)}")
    x, y = _digits_all()
    idx = torch.from_numpy(_digits_split_indices(int(seed))[split])
    return x[idx].clone(), y[idx].clone()


# ---------------------------------------------------------------------- photos
def _to_pil(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.shape[2] == 4:
        return Image.fromarray(arr, "RGBA").convert("RGB")
    return Image.fromarray(arr[:, :, :3], "RGB")


@functools.lru_cache(maxsize=1)
def _photos_cached() -> dict[str, Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    out: dict[str, Image.Image] = {}
    sample = load_sample_images()
    for path, img in zip(sample.filenames, sample.images, strict=True):
        out[Path(path).stem] = _to_pil(img)
    for name in SKIMAGE_PHOTOS:
        out[name] = _to_pil(getattr(skimage.data, name)())
    left, right, _disparity = skimage.data.stereo_motorcycle()
    out["motorcycle_left"], out["motorcycle_right"] = _to_pil(left), _to_pil(right)
    return {name: out[name] for name in ALL_PHOTOS}


def photos(names: tuple[str, ...] | None = None) -> dict[str, Image.Image]:
    """Bundled photographs as ``{name: PIL RGB image}`` (all of :data:`ALL_PHOTOS` by default).

    Everything is read from files inside the installed scikit-learn and scikit-image packages;
    nothing is downloaded. Greyscale photos (camera, coins, moon, ...) are converted to RGB.
    """
    all_photos = _photos_cached()
    names = ALL_PHOTOS if names is None else names
    unknown = [n for n in names if n not in all_photos]
    if unknown:
        raise ValueError(f"unknown photo(s) {unknown}; choose from {', '.join(ALL_PHOTOS)}")
    return {n: all_photos[n].copy() for n in names}


def square_tensor(image: Image.Image, size: int) -> Tensor:
    """A PIL image resized (shorter side to ``size``, bicubic) and centre-cropped to a square,
    as a (3, size, size) float tensor in [0, 1]."""
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    img = image.convert("RGB").resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def photos_tensor(
    size: int = 160, names: tuple[str, ...] = TRAIN_PHOTOS
) -> tuple[Tensor, list[str]]:
    """Photos as one (N, 3, size, size) tensor in [0, 1] (see :func:`square_tensor`) and names."""
    imgs = photos(names)
    return torch.stack([square_tensor(imgs[n], size) for n in names]), list(names)


# ---------------------------------------------------------------------- example pairs
EXAMPLES_PACKAGE = "pairlens.data"
EXAMPLE_FILES = {
    "photos": (
        ("cat.jpg", "cat-view.jpg"),  # a photo and a seeded SimCLR-augmented view of it
        ("motorcycle-left.jpg", "motorcycle-right.jpg"),  # two stereo views (right one unseen)
        ("cat.jpg", "coffee.jpg"),  # two different photos
    ),
    "digits": (
        ("digit-3a.png", "digit-3b.png"),  # two different test-split images of a 3
        ("digit-3a.png", "digit-8.png"),  # a 3 and an 8
    ),
}


class ExamplePair(NamedTuple):
    """A bundled example pair; unpacks as ``name1, image1, name2, image2`` (names are paths)."""

    name1: str
    image1: Image.Image
    name2: str
    image2: Image.Image


def examples_dir() -> Path:
    """Directory of the bundled example images (inside the installed package)."""
    return Path(str(resources.files(EXAMPLES_PACKAGE).joinpath("examples")))


def example_image_paths(kind: str | None = None) -> list[Path]:
    """Paths of the bundled example image files (``kind`` = ``"photos"``, ``"digits"`` or all)."""
    kinds = EXAMPLE_FILES if kind is None else {kind: _example_kind(kind)}
    names: list[str] = []
    for pairs in kinds.values():
        for pair in pairs:
            names.extend(n for n in pair if n not in names)
    return [examples_dir() / n for n in names]


def _example_kind(kind: str) -> tuple[tuple[str, str], ...]:
    if kind not in EXAMPLE_FILES:
        raise ValueError(f"unknown example kind {kind!r}; choose from {', '.join(EXAMPLE_FILES)}")
    return EXAMPLE_FILES[kind]


def example_pairs(kind: str = "photos") -> list[ExamplePair]:
    """The bundled example pairs for ``pairlens explain`` with no images.

    ``kind="photos"`` (for the default ``photos`` model): [0] the cat photo (scikit-image
    ``chelsea``) and a seeded SimCLR-augmented view of it, [1] the two stereo views of
    scikit-image's motorcycle (the right view was held out of training), [2] the cat and the
    coffee cup.
    ``kind="digits"``: [0] two different 3s from the digits test split, [1] a 3 and an 8.
    """
    out = []
    for a, b in _example_kind(kind):
        pa, pb = examples_dir() / a, examples_dir() / b
        out.append(ExamplePair(str(pa), _open(pa), str(pb), _open(pb)))
    return out


def _open(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")
