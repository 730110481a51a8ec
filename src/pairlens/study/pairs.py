"""Pairs of images to evaluate explanations on (seed 000, §V-A: the paper uses an image and an
augmentation of it).

Image sources (``--data``):

* ``digits`` (the test split of :func:`pairlens.data.bundled.digits`, 270 images),
  ``digits:train|val|test|all``; labels are the digit classes;
* ``photos``: the bundled photographs (:func:`pairlens.data.bundled.photos`), no labels;
* a directory: ImageNet style class sub-folders (labels = folder names) or a flat folder of
  images (no labels), read with :func:`pairlens.io.scan_images` (recursive, the suffixes of
  :data:`pairlens.io.IMAGE_SUFFIXES`, directories never taken for images), sorted by relative
  path;
* a text file listing one image path per line, optionally followed by whitespace and a label
  (relative paths are relative to the list file; ``#`` starts a comment);
* ``composites``: the ground-truth benchmark (:mod:`pairlens.data.composites`): its pairs are
  two scenes sharing one object, rendered at the model's (square) input size, and each pair
  carries the shared object's masks (:meth:`PairSet.masks`) for the PG / EPG metrics.

Every source has a :meth:`PairSet.fingerprint`: what the pairs are made of (the bundled tensors'
bytes; for folders and lists, every file's relative path, size and modification time), so that a
results store can refuse to mix pairs of data that changed. Unreadable files follow a
:class:`pairlens.io.BadFiles` policy (:meth:`PairSet.load`: stop, or skip the pairs using them).

Pair modes (``--pair-mode``):

* ``augmented``: image ``order[i mod M]`` (``order`` a seeded permutation of the M images) and a
  SimCLR-style augmentation of it (:class:`pairlens.training.augment.SimCLRAugment`, the digits
  preset for digits, the photos preset otherwise) drawn with a generator seeded by
  ``seed * 1_000_003 + i``, applied in [0, 1] pixel space at the model's input size;
* ``same-class``: pair ``i`` takes image ``order[i mod M]`` as the first image and a different
  image of the same label, drawn with a seeded generator (images whose label has no other image are
  skipped);
* ``list``: ``--data`` is a file of pairs, one ``path1 path2`` per line (whitespace or a comma in
  between), used in file order;
* ``shared-object``: the pairs of ``--data composites`` (the only mode of that data), pair ``i``
  being :func:`pairlens.data.composites.composite_pair` ``(i, seed)``; 200 pairs by default.

Pair ``i`` never depends on how many pairs are requested (asking for more pairs later extends the
list), nor on which process or batch materialises it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairlens.io import BadFiles, ImageError, is_image_name, scan_images
from pairlens.models.similarity import SimilarityModel

PAIR_MODES = ("augmented", "same-class", "list", "shared-object")
COMPOSITES_DEFAULT_PAIRS = 200


def is_composites(data: str) -> bool:
    """Whether ``--data`` names the composites benchmark (not a file or folder of that name)."""
    return data == "composites" and not Path(data).exists()


def default_pair_mode(data: str) -> str:
    """``shared-object`` for composites, ``list`` for a list file whose lines name two images
    (``a.jpg b.jpg``: a pair list), ``augmented`` otherwise."""
    if is_composites(data):
        return "shared-object"
    path = Path(data).expanduser()
    return "list" if path.is_file() and _is_pair_list(path) else "augmented"


def _is_pair_list(path: Path) -> bool:
    """Whether the first line of list file ``path`` names two images (not an image and a label)."""
    try:
        lines = _lines(path)
    except ValueError:
        return False  # not a readable list: the loader says why
    return bool(lines) and _is_pair_line(lines[0])


def _is_pair_line(line: str) -> bool:
    """``a.jpg b.jpg`` or ``a.jpg,b.jpg`` (as :func:`read_pairs` reads a line): two images."""
    parts = line.replace(",", " ").split()
    return len(parts) == 2 and all(is_image_name(Path(part)) for part in parts)


@dataclass(frozen=True)
class ImageItem:
    """One image of a source: something :meth:`SimilarityModel.preprocess` accepts (or a
    (3, H, W) tensor in [0, 1]), its label (or None) and a name for reports."""

    image: Any
    label: str | None
    name: str


def load_images(data: str) -> tuple[list[ImageItem], str]:
    """The images of ``data`` and the augmentation preset suiting them (``digits``/``photos``)."""
    from pairlens.data import bundled

    key, _, option = data.partition(":")
    if key == "digits" and not Path(data).exists():
        split = option or "test"
        x, y = bundled.digits(split=split, seed=0)
        items = [ImageItem(x[i], str(int(y[i])), f"digits:{split}:{i}") for i in range(len(y))]
        return items, "digits"
    if key == "photos" and not Path(data).exists():
        photos = bundled.photos()
        return [ImageItem(img, None, f"photos:{n}") for n, img in photos.items()], "photos"
    path = Path(data).expanduser()
    if path.is_dir():
        files = scan_images(path)
        if not files:
            raise ValueError(f"{path}: no image files found")
        labelled = all(f.parent != path for f in files)
        items = [
            ImageItem(str(f), f.relative_to(path).parts[0] if labelled else None,
                      str(f.relative_to(path)))
            for f in files
        ]
        return items, "photos"
    if path.is_file():
        items = []
        for line in _lines(path):
            parts = line.split(maxsplit=1)
            if _is_pair_line(line):
                raise ValueError(f"{path}: the line {line!r} names two images, a pair, where one "
                                 "image and an optional label are expected; use --pair-mode "
                                 "list (the default for such files)")
            img = _resolve(parts[0], path.parent)
            items.append(ImageItem(str(img), parts[1].strip() if len(parts) > 1 else None,
                                   parts[0]))
        if not items:
            raise ValueError(f"{path}: the list holds no images")
        return items, "photos"
    raise ValueError(f"--data {data!r} is neither digits, photos, a directory nor a list file")


def _lines(path: Path) -> list[str]:
    """Non-empty lines of a list file without ``#`` comments; one-line errors for an image or a
    binary file given where a list file is expected."""
    if is_image_name(path):
        raise ValueError(f"{path}: is an image file; --data takes a folder of images, a list "
                         "file (one image path per line), digits or photos")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text list file (one image path per line); --data takes "
                         "a folder of images, a list file, digits or photos") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from None
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def _resolve(name: str, base: Path) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def _source_identity(image: Any) -> Any:
    """``[size, mtime_ns]`` of a file (``[-1, -1]`` if missing), or the sha256 of an in-memory
    image's pixels (tensor, array or PIL image)."""
    if isinstance(image, (str, Path)):
        try:
            st = os.stat(Path(image).expanduser())
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return [-1, -1]
    if isinstance(image, Tensor):
        arr = image.detach().cpu().contiguous().numpy()
    elif isinstance(image, np.ndarray):
        arr = np.ascontiguousarray(image)
    else:  # a PIL image
        arr = np.asarray(image)
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def read_pairs(source: str | Path) -> list[tuple[str, str]]:
    """Image pairs from a list file or a folder.

    * A file: one ``image1 image2`` per line (whitespace or a comma in between; ``#`` starts a
      comment); relative paths are relative to the file's folder.
    * A folder with sub-folders: every sub-folder holding exactly two images is a pair (in
      sorted order); a sub-folder with another number of images is an error.
    * A flat folder: its images sorted by name and taken two at a time (1st with 2nd, 3rd with
      4th, ...); an odd number of images is an error.

    Raises ValueError when nothing usable is found.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_pairs(path)
    if not path.is_file():
        raise ValueError(f"{source}: no such pair list file or folder")
    pairs = []
    for line in _lines(path):
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise ValueError(f"{path}: expected 'image1 image2' per line, got {line!r}")
        pairs.append((str(_resolve(parts[0], path.parent)), str(_resolve(parts[1], path.parent))))
    if not pairs:
        raise ValueError(f"{path}: the list holds no pairs")
    return pairs


def _folder_pairs(path: Path) -> list[tuple[str, str]]:
    subs = sorted(p for p in path.iterdir()
                  if p.is_dir() and scan_images(p, recursive=False))
    if subs:
        pairs = []
        for sub in subs:
            found = scan_images(sub, recursive=False)
            if len(found) != 2:
                raise ValueError(f"{sub}: a pair folder must hold exactly two images, "
                                 f"found {len(found)}")
            pairs.append((str(found[0]), str(found[1])))
        return pairs
    found = scan_images(path, recursive=False)
    if not found:
        raise ValueError(f"{path}: no image files found")
    if len(found) % 2:
        raise ValueError(f"{path}: {len(found)} images; a flat folder of pairs needs an even "
                         "number (sorted by name, taken two at a time)")
    return [(str(a), str(b)) for a, b in zip(found[::2], found[1::2], strict=True)]


def _seed_of(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PairSet:
    """``n`` pairs of images for one model, materialised on demand by pair id (0 .. n-1).

    Args:
        model: the model whose ``preprocess`` / ``input_size`` the images are prepared for.
        data: the image source (see the module docstring); the pair list file for ``list``.
        mode: ``augmented``, ``same-class``, ``list`` or ``shared-object`` (composites only).
        n: number of pairs (None: all images once, all listed pairs, or 200 composites pairs).
        seed: selects the images and the augmentations.
    """

    def __init__(self, model: SimilarityModel, data: str, mode: str = "augmented",
                 n: int | None = None, seed: int = 0) -> None:
        if mode not in PAIR_MODES:
            raise ValueError(f"unknown pair mode {mode!r}; choose from {', '.join(PAIR_MODES)}")
        self.model, self.data, self.mode, self.seed = model, data, mode, int(seed)
        self.preset = "photos"
        self._fingerprint: tuple[str, dict[str, Any]] | None = None
        if (mode == "shared-object") != is_composites(data):
            raise ValueError("pair mode 'shared-object' goes with --data composites, and "
                             f"composites only with it (got data {data!r}, mode {mode!r})")
        if mode == "shared-object":
            h, w = model.input_size
            if h != w:
                raise ValueError(f"composites scenes are square; model {model.name!r} takes "
                                 f"{h}x{w} inputs")
            self.n = COMPOSITES_DEFAULT_PAIRS if n is None else int(n)
            if self.n < 1:
                raise ValueError("the number of pairs must be >= 1")
            self._items, self._index, self._pairs = [], [], []
            return
        if mode == "list":
            path = Path(data).expanduser()
            if not path.is_file():
                raise ValueError(f"{data}: pair mode 'list' needs a file of image pairs")
            self._pairs = read_pairs(path)
            total = len(self._pairs)
            if n is not None:
                if n > total:
                    raise ValueError(f"{path} lists {total} pairs; --pairs {n} asks for more")
                total = n
            self._items: list[ImageItem] = []
            self._index: list[tuple[int, int]] = []
            self.n = total
            return
        self._items, self.preset = load_images(data)
        m = len(self._items)
        order = np.random.default_rng(self.seed).permutation(m)
        self.n = int(n) if n is not None else m
        if self.n < 1:
            raise ValueError("the number of pairs must be >= 1")
        if mode == "augmented":
            self._index = [(int(order[i % m]), -1) for i in range(self.n)]
        else:
            self._index = self._same_class(order)

    def _same_class(self, order: np.ndarray) -> list[tuple[int, int]]:
        labels = [it.label for it in self._items]
        if any(lab is None for lab in labels):
            raise ValueError(f"{self.data}: pair mode 'same-class' needs labelled images "
                             "(class sub-folders, a list with labels, or digits)")
        by_label: dict[str, list[int]] = {}
        for i, lab in enumerate(labels):
            by_label.setdefault(lab, []).append(i)  # type: ignore[arg-type]
        anchors = [int(i) for i in order if len(by_label[labels[i]]) > 1]  # type: ignore[index]
        if not anchors:
            raise ValueError(f"{self.data}: no label has two images")
        rng = np.random.default_rng(_seed_of("same-class", self.seed))
        out = []
        for i in range(self.n):
            a = anchors[i % len(anchors)]
            others = [j for j in by_label[labels[a]] if j != a]  # type: ignore[index]
            out.append((a, int(others[rng.integers(len(others))])))
        return out

    def __len__(self) -> int:
        return self.n

    @property
    def key(self) -> str:
        """Identity of the pair list (data, mode, seed) used as part of the results key."""
        return f"{self.data}|{self.mode}|seed={self.seed}"

    @property
    def has_masks(self) -> bool:
        """Whether the pairs carry ground-truth masks (:meth:`masks`)."""
        return self.mode == "shared-object"

    def masks(self, ids: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Ground-truth masks (len(ids), H, W) bool of the shared object in each image (composites
        only; raises ``ValueError`` otherwise)."""
        if not self.has_masks:
            raise ValueError(f"{self.data}: these pairs have no ground-truth masks; the PG / EPG "
                             "metrics need --data composites")
        _, _, m1, m2 = self._composites(ids)
        return m1.to(self.model.device), m2.to(self.model.device)

    def _composites(self, ids: Sequence[int]):
        from pairlens.data.composites import pair_batch

        key = tuple(int(i) for i in ids)
        if getattr(self, "_last", (None,))[0] != key:  # batch() and masks() of one unit render once
            for pid in key:
                if not 0 <= pid < self.n:
                    raise IndexError(f"pair id {pid} out of range 0..{self.n - 1}")
            self._last = (key, pair_batch(key, seed=self.seed, size=self.model.input_size[0]))
        return self._last[1]

    def describe(self, pair_id: int) -> tuple[str, str]:
        """Names of the two images of pair ``pair_id``."""
        if self.mode == "shared-object":
            from pairlens.data.composites import composite_pair, object_library

            pair = composite_pair(pair_id, self.seed, self.model.input_size[0])
            names = [o.name for o in object_library()]
            return tuple(  # type: ignore[return-value]
                f"composites:{pair_id}:{k} ({names[pair.shared]} + "
                f"{', '.join(names[d] for d in pair.distractors(k))})" for k in (1, 2))
        if self.mode == "list":
            return self._pairs[pair_id]  # type: ignore[return-value]
        a, b = self._index[pair_id]
        name = self._items[a].name
        return name, (f"{name} (augmented #{pair_id})" if b < 0 else self._items[b].name)

    def _prepare(self, image: Any) -> Tensor:
        model = self.model
        if isinstance(image, Tensor):
            x01 = image.float().unsqueeze(0) if image.dim() == 3 else image.float()
            if tuple(x01.shape[-2:]) != tuple(model.input_size):
                arr = (x01[0].permute(1, 2, 0).clamp(0, 1).numpy())
                return model.preprocess(arr)
            return model.normalize(x01.to(model.device))
        return model.preprocess(image)

    def batch(self, ids: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Model-input tensors (len(ids), 3, H, W) of the first and second images; an unreadable
        image raises :class:`~pairlens.io.ImageError` naming the file."""
        kept, x1, x2 = self.load(ids)
        assert x1 is not None and x2 is not None and len(kept) == len(ids)
        return x1, x2

    def load(self, ids: Sequence[int], bad: BadFiles | None = None
             ) -> tuple[list[int], Tensor | None, Tensor | None]:
        """The pairs ``ids`` as model-input tensors, following ``bad`` (default: stop) for
        unreadable images: under ``skip`` a pair using a bad file is left out (and the file
        reported once). Returns the ids kept and their (k, 3, H, W) batches (None when k = 0)."""
        if self.mode == "shared-object":  # generated: nothing can be unreadable
            x1, x2, _, _ = self._composites(ids)
            dev = self.model.device
            return (list(ids), self.model.normalize(x1.to(dev)),
                    self.model.normalize(x2.to(dev)))
        bad = bad or BadFiles("stop")
        kept, firsts, seconds = [], [], []
        for pid in ids:
            if not 0 <= pid < self.n:
                raise IndexError(f"pair id {pid} out of range 0..{self.n - 1}")
            if self.mode == "list":
                a, b = self._pairs[pid]
                x1 = self._load_one(a, a, bad)
                x2 = self._load_one(b, b, bad) if x1 is not None else None
            else:
                ia, ib = self._index[pid]
                first = self._items[ia]
                x1 = self._load_one(first.image, first.name, bad)
                if x1 is None:
                    x2 = None
                elif ib < 0:
                    x2 = self._augment(x1, pid)
                else:
                    x2 = self._load_one(self._items[ib].image, self._items[ib].name, bad)
            if x1 is None or x2 is None:
                continue
            kept.append(pid)
            firsts.append(x1)
            seconds.append(x2)
        if not kept:
            return [], None, None
        return kept, torch.cat(firsts), torch.cat(seconds)

    def _load_one(self, image: Any, name: str, bad: BadFiles) -> Tensor | None:
        try:
            return self._prepare(image)
        except ImageError as err:
            bad.failed(str(image) if isinstance(image, (str, Path)) else name, err)
            return None

    # ------------------------------------------------------------------ identity of the data
    def fingerprint(self) -> tuple[str, dict[str, Any]]:
        """``(sha256, manifest)`` of what the pairs are made of. The manifest maps each source
        to ``[size, mtime_ns]`` for files (``[-1, -1]`` when missing), or to the sha256 of the
        pixels for bundled images; list files also contribute their own content. The fingerprint
        is the sha256 of the manifest, so any added, removed, resized or touched file changes
        it (a file copied with a new modification time does too: identical content is not
        assumed)."""
        if self._fingerprint is None and self.mode == "shared-object":
            from pairlens.data.composites import fingerprint

            manifest = {"composites": fingerprint()}
            text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
            self._fingerprint = (hashlib.sha256(text.encode()).hexdigest(), manifest)
        if self._fingerprint is None:
            manifest: dict[str, Any] = {}
            if self.mode == "list" or Path(self.data).expanduser().is_file():
                lst = Path(self.data).expanduser()
                manifest[f"<list {lst.name}>"] = hashlib.sha256(lst.read_bytes()).hexdigest()
            sources: list[tuple[str, Any]] = []
            if self.mode == "list":
                sources = [(p, p) for pair in self._pairs for p in pair]
            else:
                sources = [(it.name, it.image) for it in self._items]
            for name, image in sources:
                if name not in manifest:
                    manifest[name] = _source_identity(image)
            text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
            self._fingerprint = (hashlib.sha256(text.encode()).hexdigest(), manifest)
        return self._fingerprint

    def _augment(self, x1: Tensor, pair_id: int) -> Tensor:
        from pairlens.training.augment import AugmentConfig, SimCLRAugment

        config = AugmentConfig.digits() if self.preset == "digits" else AugmentConfig.photos()
        aug = SimCLRAugment(config, out_size=tuple(self.model.input_size))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + pair_id)
        x01 = self.model.denormalize(x1).clamp(0, 1)
        return self.model.normalize(aug(x01, gen))
