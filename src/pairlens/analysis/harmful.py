"""The harmful-augmentation probe (seed 000, §VI-2 "Identifying harmful data augments", Fig. 18).

The paper found pairs of views of the same content with a low similarity (< 0.5) whose
Interaction-CAM maps "show small overlap with any of the main subjects", traced them to *blur and
blackening* (blackening: the brightness part of colour jitter turned down), applied the two to
50 sampled pairs and reports that "94 % of the explanations highlight meaningless concepts". The
pairs, the strengths and the decision rule are not published. Here:

* for each image x, a clean view v is a random resized crop of it (area ``crop_scale``, aspect
  3/4-4/3; no photometric change) and the harmful view h = blur(brightness * v): brightness factor
  ``brightness`` (0.3: the dark end of SimCLR's jitter range [0.2, 1.8]), Gaussian blur with
  sigma ``blur_sigma`` px (default 2 px at 224 px, SimCLR's largest, scaled to the input size, at
  least 1 px);
* the clean pair (x, v) and the harmful pair (x, h) are explained by each method. Measured per
  pair: the similarity, the dispersion of the maps (normalised entropy of each map's positive
  mass, 1 = uniform) and the *object mass*: the share of each map's positive mass on the main
  object, averaged over the two images;
* the main object is the digit's strokes for digits (pixels above 0.25; the crop moves the mask
  with the image) or any masks given; without masks (photos) the clean pair's own explanation
  stands in for the subject: its top ``proxy`` fraction of pixels (this makes the clean pair a
  reference, not a control);
* a pair is *flagged* (its explanation misses the subject) when its object mass is below chance,
  the masks' share of the image (what a uniform map gets).

Reported per method and condition: similarity, fraction below 0.5, entropy, object mass, the
fraction flagged with its Wilson 95 % interval (with true masks, the clean pairs are the control),
next to the paper's 94 %. Work unit: ``pairs_per_unit`` pairs of one method; resumable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairlens.analysis import HARMFUL_METHODS
from pairlens.analysis.common import (
    RunFolder,
    explain_pairs,
    format_interval,
    interval_fields,
    markdown_table,
    mass_in,
    mean_interval,
    normalized_entropy,
    proportion_interval,
    random_box,
    row_interval,
    run_units,
    top_fraction_mask,
)
from pairlens.models.similarity import SimilarityModel
from pairlens.progress import progress_bars

DEFAULT_METHODS = HARMFUL_METHODS
PAPER_FRACTION = 0.94
CONDITIONS = ("clean", "harmful")


@dataclass
class HarmfulViews:
    """Clean views (n, 3, H, W) and harmful views (blur + blackening of the clean ones), in
    [0, 1], the crop boxes ``(top, left, height, width)`` and the masks moved by the crop (or
    None)."""

    clean: Tensor
    harmful: Tensor
    boxes: list[tuple[int, int, int, int]]
    masks: Tensor | None


def default_blur_sigma(side: int) -> float:
    """SimCLR's largest blur (sigma 2 px at 224 px) scaled to ``side``, at least 1 px."""
    return max(1.0, 2.0 * side / 224)


def digit_masks(images01: Tensor, threshold: float = 0.25) -> Tensor:
    """Main-object masks of digits images (n, 3, H, W): the strokes, luma above ``threshold``."""
    from pairlens.methods.transforms import luma

    return luma(images01)[:, 0] > threshold


def harmful_views(
    images01: Tensor,
    masks: Tensor | None = None,
    *,
    brightness: float = 0.3,
    blur_sigma: float | None = None,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    seed: int = 0,
) -> HarmfulViews:
    """Clean and harmful views of ``images01`` (n, 3, H, W) in [0, 1] (see the module docstring).

    Raises:
        ValueError: brightness outside (0, 1], negative blur, or a bad crop scale.
    """
    import torchvision.transforms.v2.functional as TF

    from pairlens.methods.transforms import blur_per_image

    if not 0 < brightness <= 1:
        raise ValueError("brightness (the blackening factor) must be in (0, 1]")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
    n, _, h, w = images01.shape
    sigma = default_blur_sigma(min(h, w)) if blur_sigma is None else float(blur_sigma)
    if sigma < 0:
        raise ValueError("blur_sigma must be >= 0")
    clean, boxes, moved = [], [], []
    for i in range(n):
        top, left, bh, bw = random_box(np.random.default_rng([seed, i]), h, w, crop_scale)
        boxes.append((top, left, bh, bw))
        clean.append(TF.resized_crop(images01[i], top, left, bh, bw, [h, w], antialias=True))
        if masks is not None:
            m = TF.resized_crop(masks[i][None].float(), top, left, bh, bw, [h, w],
                                interpolation=TF.InterpolationMode.NEAREST)
            moved.append(m[0] > 0.5)
    v = torch.stack(clean).clamp(0, 1)
    dark = v * brightness
    if sigma > 0:
        radius = min(max(1, math.ceil(3 * sigma)), (min(h, w) - 1) // 2)
        dark = blur_per_image(dark, torch.full((n,), sigma), 2 * radius + 1)
    return HarmfulViews(v, dark.clamp(0, 1), boxes, torch.stack(moved) if moved else None)


# ---------------------------------------------------------------------- the probe
def harmful_probe(
    model: SimilarityModel,
    images01: Tensor,
    views: HarmfulViews,
    masks: Tensor | None = None,
    methods: str | Sequence[Any] = DEFAULT_METHODS,
    *,
    proxy: float = 0.2,
    pairs_per_unit: int = 10,
    batch_size: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    description: dict[str, Any] | None = None,
    figure_pairs: int = 3,
) -> list[dict[str, Any]]:
    """Explain the clean and the harmful pair of every image with every method.

    Args:
        model: the similarity model.
        images01: (n, 3, H, W) first images x in [0, 1] at the model's input size.
        views: from :func:`harmful_views` of the same images (its ``masks`` are the object masks
            in the views' frame when ``masks`` is given).
        masks: object masks of ``images01`` (n, H, W) or None (proxy masks, see the module doc).
        methods: ``--methods`` syntax or a list of :class:`pairlens.study.loop.MethodSpec`.
        proxy: fraction of the clean map's pixels standing in for the subject without masks.
        pairs_per_unit: pairs per resumable unit.
        batch_size: images per forward pass of the methods that take one (None: the
            device-aware default); changes results only by float rounding.
        out: output folder (``config.json``, ``records.jsonl``, ``table.md``, ``table.csv``,
            ``harmful.png``).
        resume: continue an interrupted run.
        description: how the views were made (stored in ``config.json``).
        figure_pairs: pairs drawn in the figure.

    Returns:
        One record per (method, pair, condition): ``similarity``, ``entropy``,
        ``object_mass``, ``chance``, ``flagged``, ``masks`` (``"object"`` or ``"proxy"``).
    """
    from pairlens.study.loop import parse_methods

    specs = parse_methods(methods) if isinstance(methods, str) else list(methods)
    n = len(images01)
    if len(views.clean) != n:
        raise ValueError(f"{n} images but {len(views.clean)} views")
    if masks is not None and views.masks is None:
        raise ValueError("object masks given for the images but not moved into the views: "
                         "build the views with harmful_views(images, masks)")
    config = {"analysis": "harmful-augmentations", "model": model.describe(), "pairs": n,
              "methods": [s.label for s in specs], "masks": "object" if masks is not None
              else f"proxy top {proxy:g}", "pairs_per_unit": pairs_per_unit,
              "construction": description or {}}
    folder = RunFolder(out, config, resume) if out is not None else None
    def unit(spec: Any, start: int) -> list[dict[str, Any]]:
        sl = slice(start, start + pairs_per_unit)
        recs = _unit(model, spec, images01[sl], views.clean[sl], views.harmful[sl],
                     None if masks is None else (masks[sl], views.masks[sl]), proxy, batch_size)
        for r in recs:
            r["pair"] = start + r.pop("index")
        return recs

    units = [(f"{s.label}|{start}", partial(unit, s, start))
             for s in specs for start in range(0, n, pairs_per_unit)]
    records = run_units(folder, units, "harmful-augmentations")
    if folder is not None:
        summary = harmful_summary(records)
        folder.write_text("table.md", harmful_table(summary))
        folder.write_csv("table.csv", summary)
        if figure_pairs > 0:
            folder.write_figure("harmful.png", harmful_figure(model, images01, views, specs[0],
                                                              min(figure_pairs, n), batch_size))
    return records


def _explain(model, spec, a01, b01, batch_size=None):
    score, map1, map2 = explain_pairs(model, model.normalize(a01.to(model.device)),
                                      model.normalize(b01.to(model.device)), spec.name,
                                      batch_size, **spec.given)
    return score.cpu(), map1.cpu(), map2.cpu()


def _unit(model, spec, x, clean, harmful, masks, proxy, batch_size=None):
    out = {c: _explain(model, spec, x, v, batch_size)
           for c, v in (("clean", clean), ("harmful", harmful))}
    if masks is None:  # the clean explanation's top pixels stand in for the subject
        _, c1, c2 = out["clean"]
        m1, m2, kind = top_fraction_mask(c1, proxy), top_fraction_mask(c2, proxy), "proxy"
    else:
        (m1, m2), kind = masks, "object"
    chance = (m1.flatten(1).float().mean(1) + m2.flatten(1).float().mean(1)) / 2
    recs = []
    for cond, (score, map1, map2) in out.items():
        mass = (mass_in(map1, m1) + mass_in(map2, m2)) / 2
        entropy = (normalized_entropy(map1) + normalized_entropy(map2)) / 2
        for i in range(len(x)):
            ok = math.isfinite(float(mass[i]))
            recs.append({"method": spec.label, "index": i, "condition": cond,
                         "similarity": float(score[i]), "entropy": float(entropy[i]),
                         "object_mass": float(mass[i]), "chance": float(chance[i]),
                         "flagged": bool(mass[i] < chance[i]) if ok else None, "masks": kind})
    return recs


def harmful_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and condition: similarity, share below 0.5, entropy, object mass, chance and
    the fraction flagged (Wilson 95 %; the others bootstrap 95 %)."""
    rows = []
    for label in dict.fromkeys(r["method"] for r in records):
        for cond in CONDITIONS:
            recs = [r for r in records if r["method"] == label and r["condition"] == cond]
            if not recs:
                continue
            flags = [r["flagged"] for r in recs if r["flagged"] is not None]
            low = sum(r["similarity"] < 0.5 for r in recs)
            rows.append({
                "method": label, "condition": cond, "pairs": len(recs),
                **interval_fields("similarity", mean_interval(r["similarity"] for r in recs)),
                **interval_fields("low_similarity", proportion_interval(low, len(recs))),
                **interval_fields("entropy", mean_interval(r["entropy"] for r in recs)),
                **interval_fields("object_mass", mean_interval(r["object_mass"] for r in recs)),
                "chance": mean_interval(r["chance"] for r in recs).value,
                **interval_fields("flagged", proportion_interval(sum(flags), len(flags))),
                "masks": recs[0]["masks"], "paper": PAPER_FRACTION if cond == "harmful" else None,
            })
    return rows


def harmful_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`harmful_summary` rows."""
    header = ["method", "pairs", "n", "similarity", "similarity < 0.5", "entropy",
              "object mass", "chance", "flagged (object mass < chance)", "masks",
              "paper (§VI-2)"]
    out = []
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["method"] != r["method"]
        out.append([
            r["method"] if first else "", r["condition"], str(r["pairs"]),
            format_interval(row_interval(r, "similarity")),
            format_interval(row_interval(r, "low_similarity"), percent=True),
            format_interval(row_interval(r, "entropy")),
            format_interval(row_interval(r, "object_mass")), f"{r['chance']:.3f}",
            format_interval(row_interval(r, "flagged"), percent=True), r["masks"],
            f"{100 * r['paper']:.0f} % of 50 pairs" if r["paper"] is not None else "",
        ])
    return markdown_table(header, out)


def harmful_figure(model: SimilarityModel, images01: Tensor, views: HarmfulViews, spec: Any,
                   n: int = 3, batch_size: int | None = None):
    """For ``n`` images: the clean pair (x, v) and the harmful pair (x, h) with the maps of
    ``spec``, titled with the similarities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairlens.viz import overlay

    fig, axes = plt.subplots(n, 4, squeeze=False, figsize=(7.0, 1.9 * n + 0.5))
    with progress_bars(False):
        clean = _explain(model, spec, images01[:n], views.clean[:n], batch_size)
        harm = _explain(model, spec, images01[:n], views.harmful[:n], batch_size)
    for i in range(n):
        cells = [(images01[i], clean[1][i], f"x  (clean pair {float(clean[0][i]):.2f})"),
                 (views.clean[i], clean[2][i], "clean view"),
                 (images01[i], harm[1][i], f"x  (harmful pair {float(harm[0][i]):.2f})"),
                 (views.harmful[i], harm[2][i], "blur + blackening")]
        for c, (img, m, title) in enumerate(cells):
            axes[i, c].imshow(overlay(img, m, alpha=0.5))
            axes[i, c].set_title(title, fontsize=7)
            axes[i, c].set_xticks([])
            axes[i, c].set_yticks([])
    fig.suptitle(f"harmful augmentations: {spec.label} on clean and blurred + blackened views",
                 fontsize=9)
    fig.tight_layout()
    return fig
