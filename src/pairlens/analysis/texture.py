"""The shared-texture probe (seed 000, §VI-1 "Meaningless concepts and biasness towards texture").

The paper sampled 50 pairs of images "containing different objects but with a common texture" and
found that "in 64 % of the cases the methods explain similarity based on texture" (Figs. 17:
Interaction-CAM; the 50 pairs, the methods and the decision rule are not published). Here such
pairs are *built* from bundled content, so the texture's location is known exactly:

* two different objects (two bundled photographs, the stereo motorcycle counting as one object;
  or two digits of different classes) and one texture photograph (scikit-image's ``brick``,
  ``grass``, ``gravel``);
* the same square patch of the texture (side ``patch`` x the image side, from a random place of
  the texture) is pasted at a random place on each object: the pasted pixels are the mask.

For every method and pair, each map's positive mass inside its image's patch is measured and the
two are averaged; a pair is *explained by texture* when that mass is above ``threshold`` (0.5:
"mostly on the shared texture"). Reported per method: the fraction flagged with its Wilson 95 %
interval, the mean mass in the patch with its bootstrap interval, the chance level (the patch's
share of the image, what a uniform map would give) and how much the shared patch raises the
pair's similarity over the same two objects without it.

Work unit: ``pairs_per_unit`` pairs of one method; the output folder resumes.
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

from pairlens.analysis import TEXTURE_METHODS
from pairlens.analysis.common import (
    RunFolder,
    explain_pairs,
    format_interval,
    interval_fields,
    markdown_table,
    mass_in,
    mean_interval,
    proportion_interval,
    row_interval,
    run_units,
)
from pairlens.models.similarity import SimilarityModel
from pairlens.progress import progress_bars

TEXTURE_PHOTOS = ("brick", "grass", "gravel")
DEFAULT_METHODS = TEXTURE_METHODS
PAPER_FRACTION = 0.64


@dataclass
class TexturePairs:
    """Pairs sharing a texture patch: images (n, 3, H, W) in [0, 1] with and without the patch,
    boolean patch masks (n, H, W), and per pair the object and texture indices."""

    x1: Tensor
    x2: Tensor
    plain1: Tensor
    plain2: Tensor
    mask1: Tensor
    mask2: Tensor
    info: list[dict[str, Any]]


def texture_pairs(
    objects01: Tensor,
    textures01: Sequence[Tensor],
    n: int,
    *,
    labels: Sequence[Any] | None = None,
    patch: float = 0.35,
    seed: int = 0,
) -> TexturePairs:
    """Build ``n`` pairs of different objects that share one texture patch.

    Args:
        objects01: (M, 3, H, W) object images in [0, 1] (M >= 2).
        textures01: texture images (3, h, w) in [0, 1], each at least the patch size.
        n: number of pairs.
        labels: objects with equal labels are never paired (default: all objects differ).
        patch: side of the square patch as a fraction of the image side.
        seed: pair ``i`` depends only on (seed, i).

    Raises:
        ValueError: fewer than two different objects, a texture smaller than the patch.
    """
    m, _, h, w = objects01.shape
    side = max(2, round(patch * min(h, w)))
    labels = list(range(m)) if labels is None else list(labels)
    if len(set(labels)) < 2:
        raise ValueError("texture pairs need at least two different objects")
    for t in textures01:
        if min(t.shape[-2:]) < side:
            raise ValueError(f"a texture of {tuple(t.shape[-2:])} px is smaller than the "
                             f"{side}-px patch")
    x1, x2, info = [], [], []
    pairs = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        a = int(rng.integers(m))
        others = [j for j in range(m) if labels[j] != labels[a]]
        b = int(others[rng.integers(len(others))])
        t = int(rng.integers(len(textures01)))
        tex = textures01[t]
        ty, tx = (int(rng.integers(tex.shape[-2] - side + 1)),
                  int(rng.integers(tex.shape[-1] - side + 1)))
        piece = tex[:, ty : ty + side, tx : tx + side]
        pos = [(int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1)))
               for _ in range(2)]
        pairs.append((a, b, piece, pos))
        info.append({"object1": a, "object2": b, "texture_index": t, "position1": pos[0],
                     "position2": pos[1], "patch": side})
    masks1, masks2 = [], []
    for a, b, piece, pos in pairs:
        for idx, (r, c), dest, masks in ((a, pos[0], x1, masks1), (b, pos[1], x2, masks2)):
            img = objects01[idx].clone()
            img[:, r : r + side, c : c + side] = piece
            mask = torch.zeros(h, w, dtype=torch.bool)
            mask[r : r + side, c : c + side] = True
            dest.append(img)
            masks.append(mask)
    plain1 = objects01[[p[0] for p in pairs]]
    plain2 = objects01[[p[1] for p in pairs]]
    return TexturePairs(torch.stack(x1), torch.stack(x2), plain1, plain2, torch.stack(masks1),
                        torch.stack(masks2), info)


def bundled_textures(size: int) -> list[Tensor]:
    """The texture photographs of :data:`TEXTURE_PHOTOS` as (3, size, size) tensors in [0, 1]."""
    from pairlens.data.bundled import photos, square_tensor

    return [square_tensor(img, size) for img in photos(TEXTURE_PHOTOS).values()]


def bundled_objects(model: SimilarityModel, data: str) -> tuple[Tensor, list[str], list[str]]:
    """Objects for the probe: for ``digits``, the digits test split (labels = classes); for
    ``photos``, the bundled photographs without the texture photographs (the two stereo motorcycle
    views share a label). Returns images (M, 3, H, W) in [0, 1] at the model's input size,
    labels and names."""
    from pairlens.analysis.common import load_images

    x, labels, names = load_images(model, data)
    if data.split(":")[0] == "photos":
        keep = [i for i, nm in enumerate(names) if nm.split(":")[-1] not in TEXTURE_PHOTOS]
        x = x[keep]
        names = [names[i] for i in keep]
        labels = [nm.split(":")[-1].replace("_left", "").replace("_right", "") for nm in names]
    labels = [lab if lab is not None else nm for lab, nm in zip(labels, names, strict=True)]
    return model.denormalize(x).clamp(0, 1).cpu(), labels, names


# ---------------------------------------------------------------------- the probe
def texture_probe(
    model: SimilarityModel,
    pairs: TexturePairs,
    methods: str | Sequence[Any] = DEFAULT_METHODS,
    *,
    threshold: float = 0.5,
    pairs_per_unit: int = 10,
    batch_size: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    description: dict[str, Any] | None = None,
    figure_pairs: int = 3,
) -> list[dict[str, Any]]:
    """Explain every texture pair with every method and measure the mass on the shared patch.

    Args:
        model: the similarity model.
        pairs: from :func:`texture_pairs` (images in [0, 1] at the model's input size).
        methods: ``--methods`` syntax (``name[key=value]`` items, comma separated) or a list of
            :class:`pairlens.study.loop.MethodSpec`.
        threshold: a pair is explained by texture when the mean mass of its two maps inside the
            patch exceeds this.
        pairs_per_unit: pairs per resumable unit.
        batch_size: images per forward pass of the methods that take one (None: the
            device-aware default); changes results only by float rounding.
        out: output folder (``config.json``, ``records.jsonl``, ``table.md``, ``table.csv``,
            ``texture.png``).
        resume: continue an interrupted run.
        description: how the pairs were made (stored in ``config.json``).
        figure_pairs: pairs drawn in the figure.

    Returns:
        One record per (method, pair): ``mass1``, ``mass2``, ``mass``, ``texture`` (flag),
        ``chance``, ``similarity``, ``similarity_plain`` (same objects without the patch).
    """
    from pairlens.study.loop import MethodSpec, parse_methods

    specs = parse_methods(methods) if isinstance(methods, str) else list(methods)
    if not all(isinstance(s, MethodSpec) for s in specs):
        raise TypeError("methods must be a --methods string or a list of MethodSpec")
    n = len(pairs.x1)
    config = {"analysis": "texture", "model": model.describe(), "pairs": n,
              "methods": [s.label for s in specs], "threshold": threshold,
              "pairs_per_unit": pairs_per_unit, "construction": description or {}}
    folder = RunFolder(out, config, resume) if out is not None else None
    x1, x2 = model.normalize(pairs.x1.to(model.device)), model.normalize(pairs.x2.to(model.device))
    with torch.no_grad():
        sim = model.similarity(x1, x2).cpu()
        plain = model.similarity(model.normalize(pairs.plain1.to(model.device)),
                                 model.normalize(pairs.plain2.to(model.device))).cpu()
    chance = (pairs.mask1.flatten(1).float().mean(1) + pairs.mask2.flatten(1).float().mean(1)) / 2

    def unit(spec: Any, start: int) -> list[dict[str, Any]]:
        sl = slice(start, start + pairs_per_unit)
        map1, map2 = _explain(model, x1[sl], x2[sl], spec, batch_size)
        m1, m2 = mass_in(map1, pairs.mask1[sl]), mass_in(map2, pairs.mask2[sl])
        recs = []
        for i in range(len(map1)):
            k = start + i
            mass = (float(m1[i]) + float(m2[i])) / 2
            recs.append({"method": spec.label, "pair": k, "mass1": float(m1[i]),
                         "mass2": float(m2[i]), "mass": mass,
                         "texture": bool(mass > threshold) if math.isfinite(mass) else None,
                         "chance": float(chance[k]), "similarity": float(sim[k]),
                         "similarity_plain": float(plain[k]), **pairs.info[k]})
        return recs

    units = [(f"{s.label}|{start}", partial(unit, s, start))
             for s in specs for start in range(0, n, pairs_per_unit)]
    records = run_units(folder, units, "texture")
    if folder is not None:
        summary = texture_summary(records)
        folder.write_text("table.md", texture_table(summary, threshold))
        folder.write_csv("table.csv", summary)
        if figure_pairs > 0:
            folder.write_figure("texture.png",
                                texture_figure(model, pairs, specs, min(figure_pairs, n),
                                               batch_size))
    return records


def _explain(model: SimilarityModel, x1: Tensor, x2: Tensor, spec: Any,
             batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    _, map1, map2 = explain_pairs(model, x1, x2, spec.name, batch_size, **spec.given)
    return map1.cpu(), map2.cpu()


def texture_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: fraction explained by texture (Wilson 95 %), mass on the patch and the
    similarities with and without the patch (bootstrap 95 %), chance level, counts."""
    rows = []
    for label in dict.fromkeys(r["method"] for r in records):
        recs = [r for r in records if r["method"] == label]
        flags = [r["texture"] for r in recs if r["texture"] is not None]
        rows.append({
            "method": label, "pairs": len(recs), "empty_maps": len(recs) - len(flags),
            **interval_fields("texture", proportion_interval(sum(flags), len(flags))),
            **interval_fields("mass", mean_interval(r["mass"] for r in recs)),
            "chance": mean_interval(r["chance"] for r in recs).value,
            **interval_fields("similarity", mean_interval(r["similarity"] for r in recs)),
            **interval_fields("similarity_plain",
                              mean_interval(r["similarity_plain"] for r in recs)),
            "paper": PAPER_FRACTION,
        })
    return rows


def texture_table(rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> str:
    """Markdown of :func:`texture_summary` rows."""
    header = ["method", f"explained by texture (mass > {threshold:g})", "mass on the patch",
              "chance (patch area)", "similarity with patch", "without patch", "pairs",
              "paper (§VI-1)"]
    out = [[r["method"], format_interval(row_interval(r, "texture"), percent=True),
            format_interval(row_interval(r, "mass")), f"{r['chance']:.3f}",
            format_interval(row_interval(r, "similarity")),
            format_interval(row_interval(r, "similarity_plain")),
            f"{r['pairs']}" + (f" ({r['empty_maps']} empty maps)" if r["empty_maps"] else ""),
            f"{100 * r['paper']:.0f} % (50 pairs)"] for r in rows]
    return markdown_table(header, out)


def texture_figure(model: SimilarityModel, pairs: TexturePairs, specs: Sequence[Any],
                   n: int = 3, batch_size: int | None = None):
    """For ``n`` pairs: the two images (patch outlined) and every method's two maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairlens.viz import overlay, to_pil

    fig, axes = plt.subplots(2 * n, len(specs) + 1, squeeze=False,
                             figsize=(1.7 * (len(specs) + 1), 1.75 * 2 * n + 0.4))
    x1 = model.normalize(pairs.x1[:n].to(model.device))
    x2 = model.normalize(pairs.x2[:n].to(model.device))
    with progress_bars(False):
        maps = [_explain(model, x1, x2, s, batch_size) for s in specs]
    for i in range(n):
        for j, (img, mask) in enumerate(((pairs.x1[i], pairs.mask1[i]),
                                         (pairs.x2[i], pairs.mask2[i]))):
            r = 2 * i + j
            axes[r, 0].imshow(to_pil(img))
            axes[r, 0].contour(mask.float().numpy(), levels=[0.5], colors="white",
                               linewidths=0.8)
            axes[r, 0].set_ylabel(f"pair {i}, image {j + 1}", fontsize=7)
            for c, (spec, m) in enumerate(zip(specs, maps, strict=True)):
                ax = axes[r, c + 1]
                ax.imshow(overlay(img, m[j][i], alpha=0.5))
                ax.contour(mask.float().numpy(), levels=[0.5], colors="white", linewidths=0.8)
                share = float(mass_in(m[j][i : i + 1], mask[None])[0])
                ax.set_title(f"{spec.label[:22]}\nmass on patch {share:.2f}" if r == 0
                             else f"mass on patch {share:.2f}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("shared-texture probe: the same texture patch (outlined) on two different "
                 "objects", fontsize=9)
    fig.tight_layout()
    return fig
