"""Training and evaluation data for ``--data`` (``pairlens train``, ``eval-classifier``,
``study``): the bundled data sets or a folder of images, as tensors held in memory.

* :func:`load_training_data`: ``digits``, ``photos`` or a folder (labels from class sub-folders
  when every image is in one);
* :func:`load_labelled_data`: ``digits``, ``cluttered-digits`` or a folder of class sub-folders,
  with fixed train / val / test splits.
"""

from __future__ import annotations

from pathlib import Path

from pairlens.io import BadFiles, scan_images

#: the bundled labelled data sets of the supervised modes
DIGITS_LIKE = ("digits", "cluttered-digits")


def load_training_data(data: str, load_size: int, split: str = "train", seed: int = 0,
                       bad=None):
    """``(images, labels or None, description)`` for ``--data``.

    ``digits``: the ``split`` of :func:`pairlens.data.bundled.digits` (float, 32 px).
    ``photos``: :data:`~pairlens.data.bundled.TRAIN_PHOTOS` as ``load_size`` squares (labels =
    photo index). ``DIR``: every image under DIR (:func:`pairlens.io.scan_images`), shorter side
    resized to ``load_size`` and centre-cropped, stored as uint8 in memory; labels from the
    first-level sub-folder names when every image is in one, else None. Unreadable files follow
    ``bad`` (a :class:`pairlens.io.BadFiles`; default: stop at the first).
    """
    import torch

    from pairlens.data import bundled

    if data == "digits":
        x, y = bundled.digits(split, seed=seed)
        return x, y, f"digits ({split} split, seed {seed})"
    if data == "photos":
        x, names = bundled.photos_tensor(load_size, bundled.TRAIN_PHOTOS)
        return x, torch.arange(len(names)), f"{len(names)} bundled photos"
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{data}: not digits, photos or an existing directory")
    bad = bad or BadFiles("stop")
    imgs, files = [], []
    for f in scan_images(root):
        image = bad.load(f)
        if image is not None:
            imgs.append((bundled.square_tensor(image, load_size) * 255).round().to(torch.uint8))
            files.append(f)
    if not files:
        raise ValueError(f"{data}: no readable image files found")
    parts = [f.relative_to(root).parts for f in files]
    classes = sorted({p[0] for p in parts if len(p) > 1})
    labels = None
    if classes and all(len(p) > 1 for p in parts):
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in files])
    return torch.stack(imgs), labels, f"{len(files)} images from {root}"


def load_labelled_data(data: str, split: str, data_seed: int = 0, load_size: int = 160,
                       bad=None):
    """``(images, labels)`` of ``split`` (train / val / test / all) for ``--data``; unreadable
    files of a folder follow ``bad`` (a :class:`pairlens.io.BadFiles`, default: stop)."""
    import torch

    if data == "digits":
        from pairlens.data.bundled import digits

        return digits(split, seed=data_seed)
    if data == "cluttered-digits":
        from pairlens.data.cluttered import cluttered_digits

        return cluttered_digits(split, seed=data_seed)
    if data == "photos" or not Path(data).expanduser().is_dir():
        raise ValueError(f"{data}: not digits, cluttered-digits or a directory of class "
                         "sub-folders")
    images, labels, _ = load_training_data(data, load_size, bad=bad)
    if labels is None:
        raise ValueError(f"{data}: supervised training needs one sub-folder per class")
    if split == "all":
        return images, labels
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    y = labels.numpy()
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 4 else None
    train, rest = train_test_split(idx, train_size=0.70, stratify=stratify,
                                   random_state=data_seed)
    val, test = train_test_split(rest, test_size=0.5,
                                 stratify=None if stratify is None else y[rest],
                                 random_state=data_seed)
    chosen = {"train": train, "val": val, "test": test}[split]
    sel = torch.from_numpy(np.sort(chosen))
    return images[sel], labels[sel]


def default_arch(data: str) -> str:
    """The bundled architecture suiting ``data``: ``digits-cnn`` for the digits data sets,
    ``resnet-mini-64`` for the composites benchmark, ``resnet-mini`` otherwise."""
    if data.split(":", 1)[0] in DIGITS_LIKE:
        return "digits-cnn"
    if data == "composites" and not Path(data).exists():
        return "resnet-mini-64"
    return "resnet-mini"
