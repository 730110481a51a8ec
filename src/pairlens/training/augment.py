"""The SimCLR augmentation pipeline (Chen et al. 2020, appendix A) on batches of tensors.

Every image of a batch gets its own random parameters, drawn from a ``torch.Generator`` **on the
CPU** (so a seed gives the same views on CPU and CUDA), and all pixel work is done on the batch's
device in a few vectorised operations (no per-image Python loop). Images are (B, 3, H, W) floats
in [0, 1] (pixel space, before the model's mean / std normalisation); outputs stay in [0, 1].

Steps, in this fixed order (the order of SimCLR's ``transforms.Compose``):

1. random resized crop: area fraction ~ U(``crop_scale``), aspect ratio log-uniform in
   ``crop_ratio``, sides clipped to the image (instead of torchvision's 10 retries), position
   uniform; resampled bilinearly (``grid_sample``, ``align_corners=False``) to ``out_size``;
2. horizontal flip with probability 0.5 if ``flip`` (off for digits: a mirrored 3 is not a 3);
3. colour jitter with probability ``jitter_p`` (0.8): brightness, contrast, saturation, hue in this
   fixed order (torchvision shuffles the order; we do not, for simplicity). Strength ``s`` gives
   factors ``0.8 s`` for brightness / contrast / saturation and ``0.2 s`` for hue, as in SimCLR.
   Hue is shifted by rotating the chroma (I, Q) plane of YIQ colour space, a cheap linear
   approximation of torchvision's HSV hue shift;
4. grayscale with probability ``grayscale_p`` (0.2), luma weights 0.299 / 0.587 / 0.114;
5. Gaussian blur with probability ``blur_p`` (0.5), sigma ~ U(``blur_sigma``) in output pixels,
   kernel ``2·ceil(3·sigma_max)+1`` (at most the image size, odd).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.methods.transforms import blur_per_image, hue_rotate, luma


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the SimCLR augmentation pipeline (see the module docstring)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter_p: float = 0.8
    jitter_strength: float = 1.0
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @classmethod
    def digits(cls) -> AugmentConfig:
        """Preset for 32 px digits: no flip, crops keep >= 40 % of the area, SimCLR's CIFAR
        jitter strength 0.5, mild blur (sigma up to 1 px)."""
        return cls(crop_scale=(0.4, 1.0), flip=False, jitter_strength=0.5, blur_sigma=(0.1, 1.0))

    @classmethod
    def photos(cls) -> AugmentConfig:
        """Preset for ~100 px photo crops: SimCLR's ImageNet recipe (scale 0.2..1 rather than
        0.08..1 for the small images, jitter strength 1), blur sigma up to 1.5 px."""
        return cls(crop_scale=(0.2, 1.0), flip=True, jitter_strength=1.0, blur_sigma=(0.1, 1.5))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class SimCLRAugment:
    """Callable ``aug(x, generator) -> views``: one random SimCLR view of every image in ``x``.

    Args:
        config: :class:`AugmentConfig`.
        out_size: (H, W) of the views; defaults to the input size.
    """

    def __init__(
        self, config: AugmentConfig | None = None, out_size: tuple[int, int] | None = None
    ):
        self.config = config or AugmentConfig()
        self.out_size = None if out_size is None else (int(out_size[0]), int(out_size[1]))

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"augment expects (B, 3, H, W) images; got {tuple(x.shape)}")
        cfg = self.config
        b = x.shape[0]
        out_hw = self.out_size or (x.shape[2], x.shape[3])
        # all random numbers first, in a fixed order, on the CPU generator
        p = _Params(b, cfg, generator)
        dev = x.device
        v = _resized_crop(x, p, out_hw)
        v = _color_jitter(v, p, dev)
        gray = p.grayscale.to(dev).view(b, 1, 1, 1)
        v = torch.where(gray, luma(v).expand_as(v), v)
        v = _blur(v, p, cfg.blur_sigma[1])
        return v.clamp(0.0, 1.0)

    def two_views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Two independent views of every image (the SimCLR positive pair)."""
        return self(x, generator), self(x, generator)


class _Params:
    """Per-image random parameters, drawn from ``generator`` on the CPU in a fixed order."""

    def __init__(self, b: int, cfg: AugmentConfig, g: torch.Generator):
        def u(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(b, generator=g)

        area = u(*cfg.crop_scale)
        log_ratio = u(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
        ratio = log_ratio.exp()
        self.crop_w = (area * ratio).sqrt().clamp(max=1.0)  # fraction of the width
        self.crop_h = (area / ratio).sqrt().clamp(max=1.0)
        self.crop_cx = (2 * torch.rand(b, generator=g) - 1) * (1 - self.crop_w)
        self.crop_cy = (2 * torch.rand(b, generator=g) - 1) * (1 - self.crop_h)
        flip = torch.rand(b, generator=g) < 0.5
        self.flip = flip & cfg.flip
        s = cfg.jitter_strength
        self.jitter = torch.rand(b, generator=g) < cfg.jitter_p
        bright, contr, satur, hue = 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s
        self.brightness = u(max(0.0, 1 - bright), 1 + bright)
        self.contrast = u(max(0.0, 1 - contr), 1 + contr)
        self.saturation = u(max(0.0, 1 - satur), 1 + satur)
        self.hue = u(-min(hue, 0.5), min(hue, 0.5))
        self.grayscale = torch.rand(b, generator=g) < cfg.grayscale_p
        self.blur = torch.rand(b, generator=g) < cfg.blur_p
        self.sigma = u(*cfg.blur_sigma)


def _resized_crop(x: Tensor, p: _Params, out_hw: tuple[int, int]) -> Tensor:
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3)
    sign = torch.where(p.flip, -1.0, 1.0)
    theta[:, 0, 0] = p.crop_w * sign
    theta[:, 0, 2] = p.crop_cx
    theta[:, 1, 1] = p.crop_h
    theta[:, 1, 2] = p.crop_cy
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, [b, 3, out_hw[0], out_hw[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _color_jitter(x: Tensor, p: _Params, dev: torch.device) -> Tensor:
    b = x.shape[0]
    on = p.jitter.to(dev).view(b, 1, 1, 1)
    one = torch.ones(b)

    def factor(f: Tensor) -> Tensor:
        return torch.where(p.jitter, f, one).to(dev, x.dtype).view(b, 1, 1, 1)

    y = (x * factor(p.brightness)).clamp(0, 1)
    mean = luma(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * factor(p.contrast) + mean).clamp(0, 1)
    gray = luma(y)
    y = ((y - gray) * factor(p.saturation) + gray).clamp(0, 1)
    y = hue_rotate(y, torch.where(p.jitter, p.hue, torch.zeros(b))).clamp(0, 1)
    return torch.where(on, y, x)


def _blur(x: Tensor, p: _Params, sigma_max: float) -> Tensor:
    b, _, h, w = x.shape
    if not bool(p.blur.any()):
        return x
    radius = max(1, math.ceil(3 * sigma_max))
    radius = min(radius, (min(h, w) - 1) // 2)
    if radius < 1:
        return x
    y = blur_per_image(x, p.sigma, 2 * radius + 1)
    return torch.where(p.blur.to(x.device).view(b, 1, 1, 1), y, x)


def write_examples(directory: str | None = None, size: int = 256) -> list:
    """(Re)create the example image files (run once by the developers; they ship in the package).

    Photos are resized so the shorter side is ``size`` and saved as JPEG (quality 90); the
    augmented cat view is :class:`~pairlens.training.augment.SimCLRAugment` with the photos
    preset at seed 0. Digits are 32 px PNGs from the ``seed=0`` test split.
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from pairlens.data.bundled import digits, examples_dir, photos, square_tensor

    directory = Path(directory) if directory is not None else examples_dir()
    directory.mkdir(parents=True, exist_ok=True)
    imgs = photos(("chelsea", "coffee", "motorcycle_left", "motorcycle_right"))
    written = []

    def save(img: Image.Image, name: str) -> None:
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        path = directory / name
        if name.endswith(".jpg"):
            img.save(path, quality=90)
        else:
            img.save(path)
        written.append(path)

    save(imgs["chelsea"], "cat.jpg")
    save(imgs["coffee"], "coffee.jpg")
    save(imgs["motorcycle_left"], "motorcycle-left.jpg")
    save(imgs["motorcycle_right"], "motorcycle-right.jpg")
    cat = square_tensor(imgs["chelsea"], 300).unsqueeze(0)
    aug = SimCLRAugment(AugmentConfig.photos(), out_size=(size, size))
    view = aug(cat, torch.Generator().manual_seed(0))[0]
    arr = (view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    save(Image.fromarray(arr), "cat-view.jpg")

    x, y = digits("test", seed=0)
    threes = torch.nonzero(y == 3).flatten().tolist()
    eight = int(torch.nonzero(y == 8).flatten()[0])
    chosen = (("digit-3a.png", threes[0]), ("digit-3b.png", threes[1]), ("digit-8.png", eight))
    for name, i in chosen:
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(directory / name)
        written.append(directory / name)
    return written
