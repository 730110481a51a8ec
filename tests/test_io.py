"""Image loading: odd but valid images are converted, bad files give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pairlens import SimilarityModel
from pairlens.io import ImageError, array_to_pil, load_image


@pytest.fixture
def model():
    return SimilarityModel(torch.nn.Conv2d(3, 4, 3), input_size=(24, 32), crop_fraction=0.875)


def _write(tmp_path, name, image: Image.Image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_odd_but_valid_images_are_converted(tmp_path, model):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cases = {
        "gray.png": Image.fromarray(rgb[..., 0], "L"),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "sixteen.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "tiny.png": Image.fromarray(rgb[:1, :1]),
        "wide.png": Image.fromarray(rng.integers(0, 256, (30, 400, 3), dtype=np.uint8)),
    }
    for name, image in cases.items():
        x = model.preprocess(_write(tmp_path, name, image))
        assert x.shape == (1, 3, 24, 32) and torch.isfinite(x).all(), name


def test_sixteen_bit_keeps_its_levels(tmp_path):
    a = np.array([[0, 65535], [32768, 65535]], dtype=np.uint16)
    im = load_image(_write(tmp_path, "a.png", Image.fromarray(a)))
    got = np.asarray(im)[..., 0]
    assert got.tolist() == [[0, 255], [128, 255]]


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black
    im = load_image(_write(tmp_path, "t.png", Image.fromarray(a, "RGBA")))
    assert np.asarray(im).min() == 255


def test_large_image_is_accepted(tmp_path, model):
    big = Image.new("RGB", (6000, 4000), (10, 200, 30))
    x = model.preprocess(_write(tmp_path, "big.jpg", big, quality=50))
    assert x.shape == (1, 3, 24, 32)


@pytest.mark.parametrize(
    "array,ok",
    [
        (np.zeros((5, 6)), True),
        (np.zeros((5, 6, 1), dtype=np.uint8), True),
        (np.zeros((3, 5, 6), dtype=np.float32), True),  # CHW
        (np.zeros((5, 6, 2)), False),
        (np.zeros((0, 6, 3)), False),
        (np.full((5, 6, 3), np.nan), False),
    ],
)
def test_arrays(array, ok):
    if ok:
        assert array_to_pil(array).mode == "RGB"
    else:
        with pytest.raises(ImageError):
            array_to_pil(array)


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path):
    good = _write(tmp_path, "good.png", Image.new("RGB", (64, 64), (1, 2, 3)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    for path in (truncated, empty, text, tmp_path / "missing.png", tmp_path):
        with pytest.raises(ImageError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from pairlens.io import atomic_write

    path = tmp_path / "result.json"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left
