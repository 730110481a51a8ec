"""Image loading, folder scanning, bad-file policy and atomic file writes.

Every image entering PairLens passes through :func:`load_image`, which returns an RGB PIL image or
raises :class:`ImageError` with a one-line message naming the source:

* **one pixel limit** (:func:`pixel_limit`: ``PAIRLENS_MAX_PIXELS`` from the environment, else
  :data:`MAX_PIXELS` = 100 megapixels) checked on the file's *header*, before any pixel is
  decoded, for files, in-memory PIL images and arrays alike; callers may pass a stricter
  ``max_pixels`` (the web demo does);
* **EXIF orientation** applied (``PIL.ImageOps.exif_transpose``), so a phone photo tagged
  "rotate 90°" is explained upright, as every image viewer shows it;
* grayscale, RGBA (composited on white), palette, CMYK, 16-bit and float images are converted;
  tiny images are accepted (the model's ``preprocess`` resizes them).

Folders are read with :func:`scan_images` only (the same suffixes everywhere, directories never
taken for images), and a run that meets a bad file follows a :class:`BadFiles` policy (``stop``
or ``skip``). Files are written with :func:`atomic_write` (temporary file + rename, mode from the
process umask).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = str | Path | Image.Image | np.ndarray

#: default pixel limit (100 megapixels: decoding one costs about 0.3 GB as RGB, and the peak of
#: loading, orienting and resizing stays near 1 GB). Override with ``PAIRLENS_MAX_PIXELS``.
MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "PAIRLENS_MAX_PIXELS"

#: file suffixes (any case) taken for images by every command and function that reads a folder.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")

OnError = Literal["stop", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("stop", "skip")


class ImageError(ValueError):
    """An image could not be read or understood, or is over the pixel limit."""


# ---------------------------------------------------------------------- atomic writes
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # portable fallback: set and restore (serialised within this process)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask

def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(binary_file)`` into a unique temporary file in the same
    folder, then rename it into place: readers never see a half-written file, and a failed or
    killed write leaves the previous file (and no temporary file on failure) behind.

    The file gets mode ``0o666 & ~umask`` (``-rw-r--r--`` with the usual umask 022), like any file
    created with ``open(path, "w")``; ``mkstemp`` alone would make it ``0o600``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------- pixel limit
def pixel_limit() -> int:
    """The pixel limit in force: ``PAIRLENS_MAX_PIXELS`` if set (a positive integer; ``1e9`` and
    ``400_000_000`` are accepted), else :data:`MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = -1.0
    if not (value >= 1 and value == int(value)):
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive whole number of pixels")
    return int(value)


def check_pixels(width: int, height: int, what: str, max_pixels: int | None = None) -> None:
    """Raise :class:`ImageError` naming ``what`` if ``width x height`` exceeds the limit
    (``max_pixels`` if given, else :func:`pixel_limit`)."""
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    if width < 1 or height < 1:
        raise ImageError(f"{what}: image has no pixels ({width}x{height})")
    if width * height > limit:
        raise ImageError(
            f"{what}: image is {width}x{height} pixels ({_amount(width * height)}); the limit "
            f"is {_amount(limit)} (set {MAX_PIXELS_ENV} to change it)"
        )


def _amount(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"


# ---------------------------------------------------------------------- loading
def load_image(source: ImageLike, max_pixels: int | None = None) -> Image.Image:
    """Load ``source`` (path, PIL image or array) as an RGB PIL image, EXIF orientation applied.

    Raises :class:`ImageError` (one line naming the source) for a missing, empty, truncated or
    unreadable file, a directory, an unsupported array, or an image over the pixel limit
    (``max_pixels``, default :func:`pixel_limit`), which is checked before decoding.
    """
    if isinstance(source, Image.Image):
        check_pixels(*source.size, "image", max_pixels)
        return _to_rgb(_orient(source, "image"), "image")
    if isinstance(source, np.ndarray):
        return array_to_pil(source, "array", max_pixels)
    if isinstance(source, (str, Path)):
        return _open_path(Path(source).expanduser(), max_pixels)
    raise ImageError(f"cannot use an object of type {type(source).__name__} as an image")


def open_image(fp: Any, what: str, max_pixels: int | None = None) -> Image.Image:
    """Decode an image from a path or a binary file object: header first, the pixel limit
    checked, then the pixels; EXIF orientation applied. Returns an RGB image."""
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    try:
        try:
            im = _open_header(fp)
        except Image.DecompressionBombError as err:
            # PIL refuses above 2 x PIL.Image.MAX_IMAGE_PIXELS (179 MP by default) on its own
            found = re.search(r"\((\d+) pixels\)", str(err))
            pixels = int(found.group(1)) if found else None
            if pixels is None or pixels > limit:
                size = _amount(pixels) if pixels else "too large for PIL"
                raise ImageError(f"{what}: image is {size}; the limit is {_amount(limit)} "
                                 f"(set {MAX_PIXELS_ENV} to change it)") from None
            im = _open_header(fp, unlimited=True)  # a configured limit above PIL's own
        with im:
            check_pixels(*im.size, what, limit)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DecompressionBombWarning: checked above
                im.load()
            return _to_rgb(_orient(im, what), what)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{what}: not an image file PairLens can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ImageError(f"{what}: unreadable or truncated image ({_one_line(err)})") from None


_PIL_LIMIT_LOCK = threading.Lock()


def _open_header(fp: Any, unlimited: bool = False) -> Image.Image:
    """``Image.open`` (reads the header only). ``unlimited`` lifts PIL's own decompression-bomb
    limit for this call (a process-wide setting, so it is restored at once, under a lock)."""
    if hasattr(fp, "seek"):
        fp.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not unlimited:
            return Image.open(fp)
        with _PIL_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _open_path(path: Path, max_pixels: int | None) -> Image.Image:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({_one_line(err)})") from None
    if size == 0:
        raise ImageError(f"{path}: file is empty")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: permission denied")
    return open_image(path, str(path), max_pixels)


def _orient(im: Image.Image, what: str) -> Image.Image:
    """Apply the EXIF orientation tag (a no-op for images without one)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block: use the pixels as stored
        return im
    if orientation in (None, 1):
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception as err:  # noqa: BLE001 - PIL raises several types for bad EXIF data
        raise ImageError(f"{what}: cannot apply its EXIF orientation ({_one_line(err)})") from None


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


def array_to_pil(arr: np.ndarray, what: str = "array", max_pixels: int | None = None
                 ) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any numeric dtype to an RGB image.

    Integers are scaled by their type's range (uint16 by 65535), floats are taken as [0, 1] and
    clipped. NaN or infinite values, and arrays over the pixel limit, are an error.
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
    check_pixels(a.shape[1], a.shape[0], what, max_pixels)
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


# ---------------------------------------------------------------------- folders
def is_image_name(path: str | Path) -> bool:
    """True if the name has an image suffix (:data:`IMAGE_SUFFIXES`, any case) and is not hidden."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def scan_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """The image files in ``folder``, the one folder scanner of PairLens.

    A file is taken if its suffix is one of :data:`IMAGE_SUFFIXES` (any case), it is a regular
    file (or a symbolic link to one) and its name does not start with ``.``; directories are never
    images whatever their name (``x.png/``), and hidden folders (``.git``,
    ``.ipynb_checkpoints``) are not entered. ``recursive=False`` looks at ``folder`` itself only.
    Sorted by the path relative to ``folder``. Raises :class:`ImageError` for a folder that does
    not exist or cannot be listed; an empty result is returned as is.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ImageError(f"{root}: not a folder")

    def fail(err: OSError) -> None:
        raise ImageError(f"{err.filename or root}: cannot list folder ({err.strerror or err})")

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in filenames:
            p = Path(dirpath) / name
            if is_image_name(p) and p.is_file():
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


# ---------------------------------------------------------------------- bad files
class BadFiles:
    """What a run does with a file it cannot read: ``stop`` (the default: raise, naming the file
    and the way to skip it) or ``skip`` (report each bad file once through ``log``, remember it in
    :attr:`skipped` and go on).

    Args:
        policy: ``"stop"`` or ``"skip"``.
        log: called with one line per newly skipped file (default: nothing).
        hint: appended to the error under ``stop`` (the CLI passes its ``--on-error skip``).
    """

    def __init__(self, policy: str = "stop", log: Callable[[str], None] | None = None,
                 hint: str = "pass on_error='skip' to skip bad files") -> None:
        if policy not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}; "
                             f"got {policy!r}")
        self.policy = policy
        self.log = log or (lambda line: None)
        self.hint = hint
        self.skipped: dict[str, str] = {}  # file (or pair) -> reason, in the order met
        self.pairs: list[str] = []  # the entries of skipped that are pairs (pair_failed)

    def failed(self, name: str, err: BaseException) -> None:
        """Record that ``name`` could not be read: raise under ``stop``, log once under ``skip``."""
        reason = _one_line(err)
        if self.policy == "stop":
            raise ImageError(f"{reason}; {self.hint}") from None
        self._skip(name, reason)

    def pair_failed(self, first: str, second: str, err: Exception) -> None:
        """Record that the pair of images ``first`` and ``second`` could be read but not explained
        (a per-pair guard of :mod:`pairlens.models`, e.g. identical embeddings): under ``stop``
        raise ``err``'s class with a message naming the two files, under ``skip`` log it once and
        remember it in :attr:`skipped` as ``"FIRST + SECOND"``."""
        name = pair_name(first, second)
        reason = _one_line(err)
        if self.policy == "stop":
            raise type(err)(f"pair {name}: {reason}; {self.hint}") from None
        if name not in self.skipped:
            self.pairs.append(name)
        self._skip(name, reason)

    def _skip(self, name: str, reason: str) -> None:
        if name not in self.skipped:
            self.skipped[name] = reason
            self.log(f"skipped {name}: {reason}")

    def load(self, source: ImageLike, name: str | None = None, **kw: Any) -> Image.Image | None:
        """:func:`load_image` under this policy: None for a skipped file."""
        try:
            return load_image(source, **kw)
        except ImageError as err:
            self.failed(name or str(source), err)
            return None

    def summary(self) -> str:
        """One line listing the skipped files (empty when none)."""
        return skipped_summary(self.skipped, self.pairs)


def skipped_summary(skipped: Mapping[str, str], pairs: Collection[str]) -> str:
    """One line listing skipped files and pairs (:attr:`BadFiles.skipped`; ``pairs``: which of
    its entries are pairs); empty when none."""
    if not skipped:
        return ""
    parts = []
    for names, what in (([n for n in skipped if n not in pairs], "unreadable file"),
                        ([n for n in skipped if n in pairs], "pair that could not be explained")):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more"
                                            if len(names) > 5 else "")
            plural = what.replace("file", "files").replace("pair ", "pairs ")
            parts.append(f"{len(names)} {plural if len(names) > 1 else what}: {shown}")
    return "skipped " + "; ".join(parts)


def pair_name(first: str, second: str) -> str:
    """How a pair is named in messages and in the skipped lists: ``"FIRST + SECOND"``."""
    return f"{first} + {second}"
