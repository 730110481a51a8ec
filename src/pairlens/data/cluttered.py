"""``cluttered-digits``: scikit-learn digits placed at random positions on random photo crops.

A harder bundled data set for explanation-driven contrastive training (ExCon, issue 5): the class
is decided by a small digit while most of the image is background clutter, so masking the clutter
away (ExCon's explanation-driven views) can matter. Everything is generated on the fly from data
that ships inside installed packages (no download), deterministically for a ``seed``.

Construction of one 32 x 32 image (all random numbers from a ``torch.Generator`` seeded with
``seed`` and the split, so every split of every seed is reproducible and independent):

1. the digit: the sample of :func:`pairlens.data.bundled.digits` (same stratified 70 / 15 / 15
   split for the same ``seed``), resized from 32 to :data:`DIGIT_SIZE` (24) px with antialiasing;
   its intensity in [0, 1] is the alpha ``a``;
2. the background: a photograph of :func:`pairlens.data.bundled.photos` (uniformly chosen), first
   resized so its shorter side is :data:`PHOTO_SIDE` (128) px, then a random square crop of side
   ``s ~ U{32..96}`` px at a uniform position, resized to 32 px (bilinear, antialiased) and
   dimmed (multiplied by :data:`BACKGROUND_BRIGHTNESS`, 0.6);
3. the digit's top-left corner is uniform in ``{0..8}^2`` (the digit lies fully inside);
4. the digit's colour is white when the mean luma of the background under the digit box is below
   0.5 and black otherwise (with the dimmed photos nearly always white), so it stays visible:
   ``image = (1 - a) * background + a * colour``.

Digit size and dimming were chosen so that supervised contrastive training of the small
``digits-cnn`` learns within a CPU budget of a few epochs: with 16 px digits on undimmed photos
SupCon stayed at the collapsed loss log(2B - 1) for more than 100 steps.

Pixels outside the digit box are exactly the photo crop. :func:`cluttered_layout` returns the
per-image choices (photo, crop box, digit position and colour) so this can be checked.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.data import bundled

IMAGE_SIZE = 32
DIGIT_SIZE = 24
PHOTO_SIDE = 128
CROP_SIDES = (32, 96)
#: the photo background is multiplied by this (dimmed), so the white digits stand out
BACKGROUND_BRIGHTNESS = 0.6
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "all": 3}


@functools.lru_cache(maxsize=1)
def background_photos() -> tuple[tuple[str, ...], tuple[Tensor, ...]]:
    """Names and (3, H, W) tensors in [0, 1] of the bundled photographs, shorter side
    :data:`PHOTO_SIDE` px (aspect ratio kept)."""
    import numpy as np
    from PIL import Image

    names, tensors = [], []
    for name, img in bundled.photos().items():
        w, h = img.size
        scale = PHOTO_SIDE / min(w, h)
        size = (max(PHOTO_SIDE, round(w * scale)), max(PHOTO_SIDE, round(h * scale)))
        arr = np.asarray(img.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 255.0
        names.append(name)
        tensors.append(torch.from_numpy(arr).permute(2, 0, 1).contiguous())
    return tuple(names), tuple(tensors)


def photo_crop(photo: int, top: int, left: int, side: int) -> Tensor:
    """The background of step 2: crop ``side`` px at (top, left) of background photo ``photo``,
    resized to 32 px, multiplied by :data:`BACKGROUND_BRIGHTNESS` (0.6); (3, 32, 32)."""
    img = background_photos()[1][photo]
    crop = img[:, top : top + side, left : left + side].unsqueeze(0)
    out = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                        align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0) * BACKGROUND_BRIGHTNESS


@functools.lru_cache(maxsize=8)
def _generate(split: str, seed: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    digits, labels = bundled.digits(split, seed=seed)
    alpha = F.interpolate(digits[:, :1], size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear",
                          align_corners=False, antialias=True).clamp(0.0, 1.0)
    _, photos = background_photos()
    n = len(labels)
    g = torch.Generator().manual_seed(1_000_003 * int(seed) + SPLIT_OFFSETS[split])
    photo = torch.randint(len(photos), (n,), generator=g)
    side = torch.randint(CROP_SIDES[0], CROP_SIDES[1] + 1, (n,), generator=g)
    u_top, u_left = torch.rand(n, generator=g), torch.rand(n, generator=g)
    span = IMAGE_SIZE - DIGIT_SIZE + 1
    dig_top = torch.randint(span, (n,), generator=g)
    dig_left = torch.randint(span, (n,), generator=g)
    top = torch.zeros(n, dtype=torch.long)
    left = torch.zeros(n, dtype=torch.long)
    colour = torch.zeros(n)
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    for i in range(n):
        img = photos[int(photo[i])]
        s = int(side[i])
        top[i] = int(u_top[i] * (img.shape[1] - s + 1))
        left[i] = int(u_left[i] * (img.shape[2] - s + 1))
        bg = photo_crop(int(photo[i]), int(top[i]), int(left[i]), s)
        r, c = int(dig_top[i]), int(dig_left[i])
        box = bg[:, r : r + DIGIT_SIZE, c : c + DIGIT_SIZE]
        colour[i] = 1.0 if float((box * luma).sum(0).mean()) < 0.5 else 0.0
        a = alpha[i]
        bg[:, r : r + DIGIT_SIZE, c : c + DIGIT_SIZE] = (1 - a) * box + a * colour[i]
        images[i] = bg
    layout = {"photo": photo, "crop_top": top, "crop_left": left, "crop_side": side,
              "digit_top": dig_top, "digit_left": dig_left, "colour": colour, "alpha": alpha[:, 0]}
    return images, labels, layout


def cluttered_digits(split: str = "train", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Cluttered digits as ``(images, labels)``: (N, 3, 32, 32) float32 in [0, 1] and (N,).

    Same convention as :func:`pairlens.data.bundled.digits` (``split`` in train / val / test /
    all, the digits' stratified split fixed by ``seed``); see the module docstring for how each
    image is made. Returns copies (safe to modify).
    """
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_OFFSETS)}")
    images, labels, _ = _generate(split, int(seed))
    return images.clone(), labels.clone()


def cluttered_layout(split: str = "train", seed: int = 0) -> dict[str, Tensor]:
    """Per-image generation choices of :func:`cluttered_digits`: ``photo`` (index into
    :func:`background_photos`), ``crop_top``, ``crop_left``, ``crop_side``, ``digit_top``,
    ``digit_left``, ``colour`` (0 black, 1 white) and ``alpha`` (N, 16, 16)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_OFFSETS)}")
    return {k: v.clone() for k, v in _generate(split, int(seed))[2].items()}
