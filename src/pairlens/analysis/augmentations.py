"""Augmentation dissection (seed 000, §VI-3, Table VII; Figs. 4-6).

For every transform T of a list (colour jitter, blur, grayscale, solarisation, rotations, flip: the
rows of Table VII; any family of :mod:`pairlens.methods.transforms` at any strength can be added)
and every pair (x1, x2), Averaged Transforms (non-guided and guided) explains the pair along the
dissection path from x2 to T(x2), and the maps are scored with the pair metrics on the pair
(x1, T(x2)) (SI, SD, SAD by default, the columns of Table VII). With ``x2 = x1`` (the default,
``pairs="self"``) this is the paper's setting: an image against a transformed copy of itself.

What was checked against the paper and its code (fawazsammani/explain-cl):

* the transform strengths of the paper's code (``data_transforms.py``): ``ColorJitter(0.8, 0.8,
  0.8, 0.4)`` = ``color-jitter@0.8``; ``GaussianBlur(11, sigma=5)`` at 224 px = ``gaussian-blur@5``
  (scaled here to the model's input size: 5 * side / 224 px); ``RandomGrayscale(p=1)`` =
  ``grayscale@1``; ``ImageOps.solarize`` (threshold 128 of 255) = ``solarize@0.5``. Rotations and
  the flip are not in the published code; rotations fill with black (torchvision's default);
* the pair: the code pairs the un-augmented image with a transformed copy of itself
  (``create_mixed_images``); the dissection views mix the two in pixel space,
  ``lambda * I1 + (1 - lambda) * T(I2)`` for lambda = 1, 0.9, ..., 0.1;
* the paper does not say which pair Table VII scores; we score (x1, T(x2)), the pair whose two
  maps the method returns (its code draws map 2 on the last, most transformed view).

Differences, by necessity or choice (documented in docs/analyses.md):

* PairLens's Averaged Transforms differentiates *through* T, so map 2 lives in x2's frame; for
  geometric transforms (rotation, flip, crop) it is warped with the same T into T(x2)'s frame
  before scoring. The dissection views blend x2 and T(x2), two frames, so for these rows map 2
  also carries the x2 component of the path, moved by the warp to where T(x2) does not show it
  (the paper's code takes the gradient w.r.t. each view, in the view's own frame; this cannot be
  asked of the public method). ``simclr`` (geometric and photometric at once) is refused;
* the method is called with explicit ``interpolation="pixel"``, ``steps=10``, ``noise=False`` and
  ``strength=(0, s)``: with x1 = x2 its views are ``(1 - t) x + t T(x)``, t = 0.1 ... 1.0 (the
  paper's code stops at t = 0.9);
* the row ``none`` (T = identity) is the clean reference: the same method on the untransformed
  pair. With ``pairs="self"`` that pair is an image and itself, whose similarity gradient is zero:
  such *degenerate* pairs (all-zero maps or similarity 1) are counted and left out, never scored.

Work unit: ``pairs_per_unit`` pairs of one (transform, variant); the output folder resumes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pairlens.analysis.common import (
    RunFolder,
    format_interval,
    interval_fields,
    markdown_table,
    mean_interval,
    row_interval,
    run_units,
)
from pairlens.models.similarity import SimilarityModel
from pairlens.progress import progress_bars

#: Table VII's rows (strength after ``@``; ``gaussian-blur`` is scaled to the input size)
PAPER_TRANSFORMS = (
    "color-jitter@0.8", "gaussian-blur@5", "grayscale@1", "solarize@0.5", "rotation@30",
    "rotation@60", "rotation@90", "rotation@180", "horizontal-flip@1",
)
#: transforms whose maps must be warped into the transformed image's frame
GEOMETRIC = ("rotation", "horizontal-flip", "resized-crop")
PHOTOMETRIC = ("color-jitter", "gaussian-blur", "grayscale", "solarize")
PAPER_METRICS = ("SI", "SD", "SAD")
#: the clean reference row: the identity (grayscale blend of weight 0 is exactly x)
CLEAN = "none"


@dataclass(frozen=True)
class TransformSpec:
    """A row of the table: ``label`` (as given), transform ``family`` and full ``strength``."""

    label: str
    family: str
    strength: float


def parse_transform(text: str, input_size: Sequence[int] = (224, 224)) -> TransformSpec:
    """``family@strength`` (``rotation@60``), ``family`` (the family's default top strength) or
    ``none``. ``gaussian-blur`` strengths are sigmas for a 224-px image, scaled to
    ``input_size``.

    Raises:
        ValueError: unknown family, a family that mixes geometric and photometric operations
            (``simclr``), or a strength that is not a number.
    """
    from pairlens.methods.transforms import FAMILIES

    label = text.strip()
    if label == CLEAN:
        return TransformSpec(CLEAN, "grayscale", 0.0)
    family, _, value = label.partition("@")
    family = family.strip()
    if family not in FAMILIES:
        raise ValueError(f"unknown transform {family!r}; choose from "
                         f"{', '.join(f for f in FAMILIES if f in GEOMETRIC + PHOTOMETRIC)}")
    if family not in GEOMETRIC + PHOTOMETRIC:
        raise ValueError(f"transform {family!r} mixes geometric and photometric operations; its "
                         "maps cannot be placed on the transformed image")
    try:
        strength = float(value) if value else float(FAMILIES[family][1][1])
    except ValueError:
        raise ValueError(f"transform {label!r}: strength {value!r} is not a number") from None
    if family == "gaussian-blur":
        strength = strength * min(input_size) / 224
    return TransformSpec(label, family, strength)


def _unit_seed(seed: int, label: str, unit: int) -> int:
    """Seed of the random transform draws of a unit: the same for both variants, so the guided
    and the non-guided columns score the same transformed images."""
    return zlib.crc32(f"{seed}|{label}|{unit}".encode()) & 0x7FFFFFFF


def method_draws(seed: int, n: int, device: torch.device) -> Tensor:
    """The per-pair random draws ``u`` (n, 8) that ``averaged-transforms`` makes for ``seed``
    (so that T(x2) here is exactly the method's last view)."""
    from pairlens.methods.common import generator

    return torch.rand(n, 8, generator=generator(seed, device), device=device)


def transformed(model: SimilarityModel, spec: TransformSpec, x: Tensor, u: Tensor) -> Tensor:
    """T(x) at full strength in model-input space (the transform acts on [0, 1] pixels)."""
    from pairlens.methods.transforms import apply_transform

    return model.normalize(apply_transform(spec.family, model.denormalize(x), spec.strength, u))


def warp_maps(spec: TransformSpec, maps: Tensor, u: Tensor) -> Tensor:
    """Maps (B, H, W) in x2's frame moved into T(x2)'s frame (geometric families only)."""
    from pairlens.methods.transforms import apply_transform

    if spec.family not in GEOMETRIC:
        return maps
    m3 = maps[:, None].expand(-1, 3, -1, -1)
    return apply_transform(spec.family, m3, spec.strength, u)[:, 0]


def explain_dissection(
    model: SimilarityModel, x1: Tensor, x2: Tensor, spec: TransformSpec, guided: bool,
    steps: int, seed: int, batch_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Averaged Transforms along the dissection path of ``spec``: returns T(x2) (model-input
    space), map 1 (on x1) and map 2 moved onto T(x2)."""
    from pairlens.explanation import explain

    exp = explain(model, x1, x2, method="averaged-transforms", transform=spec.family,
                  steps=steps, strength=(0.0, spec.strength), interpolation="pixel",
                  guided=guided, noise=False, batch_size=batch_size, seed=seed)
    u = method_draws(seed, len(x1), x1.device)
    return transformed(model, spec, x2, u), exp.maps[0], warp_maps(spec, exp.maps[1], u)


def dissect_augmentations(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    transforms: Sequence[str] = PAPER_TRANSFORMS,
    guided: Sequence[bool] = (False, True),
    metrics: Sequence[str] = PAPER_METRICS,
    steps: int = 10,
    step: int | None = None,
    batch_size: int = 256,
    pairs_per_unit: int = 8,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    names: Sequence[str] | None = None,
    figure_pair: int | None = 0,
) -> list[dict[str, Any]]:
    """Table VII on the pairs (x1[i], x2[i]) (seed 000, §VI-3).

    Args:
        model: the similarity model.
        x1: (N, 3, H, W) first images, model-input space.
        x2: second images (default: ``x1``, the paper's image-vs-its-transform setting).
        transforms: rows, ``family@strength`` (see :func:`parse_transform`); the clean row
            ``none`` is always added first.
        guided: the variants of Table VII's column groups (non-guided, guided backprop).
        metrics: pair metrics (:data:`pairlens.metrics.ALL_METRICS` except MS).
        steps: dissection steps Z of Averaged Transforms (the paper's 10).
        step: pixels per insertion / deletion step (default: the metric's, 224 at 224 px).
        batch_size: images per forward pass.
        pairs_per_unit: pairs per resumable unit (part of the results: it fixes the random
            draws of colour jitter).
        seed: seed of the random transform draws.
        out: output folder (``config.json``, ``records.jsonl``, ``table.md``, ``table.csv``,
            ``dissection.png``); None keeps everything in memory.
        resume: continue an interrupted run in ``out``.
        names: names of the pairs for the records.
        figure_pair: index of the pair drawn in ``dissection.png`` (None: no figure).

    Returns:
        One record per (transform, variant, pair): ``transform``, ``guided``, ``pair``,
        ``similarity`` (of x1 and T(x2)), ``degenerate`` and one value per metric (NaN when
        degenerate or, for SAD, when the similarity is <= 0).

    Raises:
        ValueError: bad transforms or metrics, mismatched shapes, resuming different settings.
    """
    x2 = x1 if x2 is None else x2
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
    specs = [parse_transform(CLEAN)] + [parse_transform(t, model.input_size) for t in transforms
                                        if t.strip() != CLEAN]
    metrics = [m.upper() for m in metrics]
    if "MS" in metrics:
        raise ValueError("MS is not a dissection metric (it recomputes the explanation)")
    self_pairs = x2 is x1 or bool(torch.equal(x1, x2))
    config = {
        "analysis": "augmentations", "model": model.describe(), "pairs": len(x1),
        "self_pairs": self_pairs, "transforms": [s.label for s in specs],
        "guided": [bool(g) for g in guided], "metrics": metrics, "steps": steps, "step": step,
        "pairs_per_unit": pairs_per_unit, "seed": seed,
        "images": list(names) if names is not None else None,
    }
    folder = RunFolder(out, config, resume) if out is not None else None

    def unit(spec: TransformSpec, g: bool, start: int) -> list[dict[str, Any]]:
        sl = slice(start, start + pairs_per_unit)
        recs = _score_unit(model, x1[sl], x2[sl], spec, g, steps,
                           _unit_seed(seed, spec.label, start // pairs_per_unit), metrics,
                           step, batch_size)
        for i, r in enumerate(recs):
            r["pair"] = start + i
            if names is not None:
                r["image"] = names[start + i]
        return recs

    units = [(f"{spec.label}|guided={bool(g)}|{start}", partial(unit, spec, bool(g), start))
             for spec in specs for g in guided for start in range(0, len(x1), pairs_per_unit)]
    records = run_units(folder, units, "augmentations")
    if folder is not None:
        folder.write_text("table.md", augmentation_table(records, metrics))
        folder.write_csv("table.csv", summary_rows(records, metrics))
        if figure_pair is not None and 0 <= figure_pair < len(x1):
            fig = dissection_figure(model, x1[figure_pair : figure_pair + 1],
                                    x2[figure_pair : figure_pair + 1], specs[1:], steps=steps,
                                    seed=seed, batch_size=batch_size)
            folder.write_figure("dissection.png", fig)
    return records


def _score_unit(model, x1, x2, spec, guided, steps, seed, metrics, step, batch_size):
    from pairlens.metrics import evaluate

    xt, map1, map2 = explain_dissection(model, x1, x2, spec, guided, steps, seed, batch_size)
    with torch.no_grad():
        sim = model.similarity(x1, xt)
    empty = (map1.flatten(1).amax(1) <= 0) | (map2.flatten(1).amax(1) <= 0)
    degenerate = (empty | (sim >= 1 - 1e-6)).cpu()
    keep = torch.nonzero(~degenerate).flatten().tolist()  # only these pairs are scored
    scores = {m: torch.full((len(x1),), math.nan) for m in metrics}
    if keep:
        kept = evaluate(model, x1[keep], xt[keep], (map1[keep], map2[keep]), metrics=metrics,
                        step=step, batch_size=batch_size)
        for m in metrics:
            scores[m][keep] = kept[m].float().cpu()
    recs = []
    for i in range(len(x1)):
        r: dict[str, Any] = {"transform": spec.label, "guided": guided,
                             "similarity": float(sim[i]), "degenerate": bool(degenerate[i])}
        r.update({m: float(scores[m][i]) for m in metrics})
        recs.append(r)
    return recs


# ---------------------------------------------------------------------- tables
def summary_rows(records: Sequence[dict[str, Any]], metrics: Sequence[str]
                 ) -> list[dict[str, Any]]:
    """One row per (transform, variant): mean, 95 % interval and counts of every metric."""
    rows = []
    keys = list(dict.fromkeys((r["transform"], r["guided"]) for r in records))
    for label, guided in keys:
        recs = [r for r in records if r["transform"] == label and r["guided"] == guided]
        row: dict[str, Any] = {"transform": label, "guided": guided, "pairs": len(recs),
                               "degenerate": sum(bool(r["degenerate"]) for r in recs)}
        row.update(interval_fields("similarity", mean_interval(r["similarity"] for r in recs)))
        for m in metrics:
            row.update(interval_fields(m, mean_interval(r.get(m, math.nan) for r in recs)))
        rows.append(row)
    return rows


def augmentation_table(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """Table VII's layout: one row per transform, the metrics of each variant side by side
    (mean and 95 % t-interval over pairs), the best row of each column in bold."""
    from pairlens.metrics import HIGHER_IS_BETTER

    rows = summary_rows(records, metrics)
    variants = list(dict.fromkeys(r["guided"] for r in rows))
    labels = list(dict.fromkeys(r["transform"] for r in rows))
    by = {(r["transform"], r["guided"]): r for r in rows}
    header = ["transform", "similarity"]
    for g in variants:
        header += [f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'} ({'guided' if g else 'non-guided'})"
                   for m in metrics]
    header += ["pairs (degenerate)"]
    best = {}
    for g in variants:
        for m in metrics:
            vals = [(by[(lab, g)][m], lab) for lab in labels if lab != CLEAN
                    and (lab, g) in by and math.isfinite(by[(lab, g)][m])]
            if vals:
                pick = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
                best[(g, m)] = pick[1]
    out = []
    for lab in labels:
        first = by[(lab, variants[0])]
        cells = [lab, f"{first['similarity']:.3f}"]
        for g in variants:
            row = by.get((lab, g))
            for m in metrics:
                if row is None:
                    cells.append("–")
                    continue
                text = format_interval(row_interval(row, m))
                cells.append(f"**{text}**" if best.get((g, m)) == lab else text)
        cells.append(f"{first['pairs']} ({first['degenerate']})")
        out.append(cells)
    note = ""
    if any(parse_transform(lab).family in GEOMETRIC for lab in labels if lab != CLEAN):
        note += ("\nGeometric rows (rotation, flip, crop): map 2 is PairLens's Averaged Transforms "
                 "map moved onto T(image 2); along the path it mixes the two frames (see "
                 "docs/analyses.md).\n")
    if any(by[(CLEAN, g)]["degenerate"] == by[(CLEAN, g)]["pairs"] for g in variants
           if (CLEAN, g) in by):
        note += ("\n`none` is the untransformed pair; an image paired with itself has similarity "
                "1 and a zero gradient, so its row is degenerate (not scored).\n")
    return markdown_table(header, out) + note


# ---------------------------------------------------------------------- figure
def dissection_figure(
    model: SimilarityModel, x1: Tensor, x2: Tensor, specs: Sequence[TransformSpec],
    steps: int = 10, seed: int = 0, batch_size: int = 256, columns: int = 5,
):
    """The dissection strip of Figs. 4-6 for one pair: one row per transform; x1 with its
    Averaged Transforms map, ``columns`` views along the strength steps, each with the
    Input x Gradient map of that single step (w.r.t. the view), and T(x2) with its Averaged
    Transforms map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairlens.explanation import explain
    from pairlens.methods.transforms import transform_path
    from pairlens.viz import overlay, to_pil

    show = sorted({max(1, round(steps * (k + 1) / columns)) for k in range(columns)})
    fig, axes = plt.subplots(len(specs), len(show) + 2, squeeze=False,
                             figsize=(1.6 * (len(show) + 2), 1.75 * len(specs) + 0.4))
    img1 = model.denormalize(x1)[0].clamp(0, 1)
    for row, spec in enumerate(specs):
        with progress_bars(False):
            seed_row = _unit_seed(seed, spec.label, 0)
            xt, map1, map2 = explain_dissection(model, x1, x2, spec, False, steps, seed_row,
                                                batch_size)
            u = method_draws(seed_row, 1, x1.device)
            views01 = transform_path(spec.family, model.denormalize(x2), steps,
                                     (0.0, spec.strength), "pixel", u)[:, 0]
            identical = bool(model.similarity(x1, xt)[0] >= 1 - 1e-6)
            cells = [(img1, None if identical else map1[0], "image 1")]
            for z in show:
                v = model.normalize(views01[z - 1 : z])
                m = explain(model, x1, v, method="input-x-gradient")
                flat = bool(m.score[0] >= 1 - 1e-6)  # the view is x1 itself: no gradient
                cells.append((views01[z - 1].clamp(0, 1), None if flat else m.maps[1][0],
                              f"t = {z / steps:.1f}"))
            cells.append((model.denormalize(xt)[0].clamp(0, 1), None if identical else map2[0],
                          "T(image 2)"))
        for col, (img, m, title) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(to_pil(img) if m is None else overlay(img, m, alpha=0.45))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row, 0].set_ylabel(spec.label + ("\n(= image 1: no map)" if identical else ""),
                                fontsize=8)
    fig.suptitle("augmentation dissection: Averaged Transforms (first / last column) and the "
                 "Input x Gradient map of each step", fontsize=9)
    fig.tight_layout()
    return fig
