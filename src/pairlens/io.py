"""Image loading and validation.

Every image entering PairLens passes through :func:`load_image`, which returns an RGB PIL image or
raises :class:`ImageError` with a one-line message naming the source. Grayscale, RGBA (composited
on white), palette, CMYK, 16-bit and float images are converted; tiny images are accepted (the
model's ``preprocess`` resizes them); very large images are accepted up to ``MAX_PIXELS``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageLike = str | Path | Image.Image | np.ndarray

MAX_PIXELS = 20_000 * 20_000

#: file name endings recognised as images when a folder is searched
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def image_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`, any case) in ``folder``, sorted by path."""
    root = Path(folder).expanduser()
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(binary_file)`` into a unique temporary file in the same
    folder, then rename it into place: readers never see a half-written file, and a failed or
    killed write leaves the previous file (and no temporary file on failure) behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ImageError(ValueError):
    """An image could not be read or understood."""


def load_image(source: ImageLike) -> Image.Image:
    """Load ``source`` (path, PIL image or array) as an RGB PIL image."""
    if isinstance(source, Image.Image):
        return _to_rgb(source, "image")
    if isinstance(source, np.ndarray):
        return array_to_pil(source, "array")
    if isinstance(source, (str, Path)):
        return _open_path(Path(source).expanduser())
    raise ImageError(f"cannot use an object of type {type(source).__name__} as an image")


def _open_path(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                return _to_rgb(im, str(path))
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PairLens can read") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: image is larger than {MAX_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: unreadable or truncated image ({_one_line(err)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _to_rgb(im: Image.Image, what: str) -> Image.Image:
    if im.width < 1 or im.height < 1:
        raise ImageError(f"{what}: image has no pixels")
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return array_to_pil(np.asarray(im), what)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def array_to_pil(arr: np.ndarray, what: str = "array") -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any numeric dtype to an RGB image.

    Integers are scaled by their type's range (uint16 by 65535), floats are taken as [0, 1] and
    clipped. NaN or infinite values are an error.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW given
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"{what}: expected an HxW or HxWxC image array, got shape {a.shape}")
    if a.size == 0:
        raise ImageError(f"{what}: image has no pixels")
    if a.dtype == bool:
        a = a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(f"{what}: image contains NaN or infinite values")
        a = np.clip(a, 0.0, 1.0)
    elif np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        top = 255 if info.max <= 255 else (65535 if a.max() <= 65535 else float(a.max()))
        a = np.clip(a.astype(np.float64), 0, top) / top
    else:
        raise ImageError(f"{what}: unsupported array dtype {a.dtype}")
    u8 = np.round(a * 255).astype(np.uint8)
    if u8.ndim == 2:
        u8 = np.stack([u8] * 3, axis=-1)
    if u8.shape[-1] == 4:
        rgba = Image.fromarray(u8, "RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return Image.fromarray(u8, "RGB")
