"""Augmentation dissection (seed 000, §VI-3, Table VII; Figs. 4-6).

For every transform T of a list (colour jitter, blur, grayscale, solarisation, rotations, flip: the
rows of Table VII; any family of :mod:`pairlens.methods.transforms` at any strength can be added)
and every pair (x1, x2), Averaged Transforms (non-guided and guided) explains the pair along the
dissection path from x1 to T(x2), and the maps are scored with the pair metrics on the pair
(x1, T(x2)) (SI, SD, SAD by default, the columns of Table VII). With ``x2 = x1`` (the default)
this is the paper's setting: an image against a transformed copy of itself.

What was checked against the paper and its code (fawazsammani/explain-cl):

* the transform strengths of the paper's code (``data_transforms.py``): ``ColorJitter(0.8, 0.8,
  0.8, 0.4)`` = ``color-jitter@0.8``; ``GaussianBlur(11, sigma=5)`` at 224 px = ``gaussian-blur@5``
  (scaled here to the model's input size: 5 * side / 224 px); ``RandomGrayscale(p=1)`` =
  ``grayscale@1``; ``ImageOps.solarize`` (threshold 128 of 255) = ``solarize@0.5``. Rotations and
  the flip are not in the published code; rotations fill with black (torchvision's default);
* the dissection (``create_mixed_images``, ``averaged_transforms``): the un-augmented image I1 and
  a transformed copy T(I2); views ``lambda * I1 + (1 - lambda) * T(I2)``, lambda = 0.9 ... 0.1;
  gradients w.r.t. I1 and w.r.t. each view; map 2 on the last view. This is Averaged Transforms'
  ``interpolation="paper"``, called here with explicit ``steps=10``, ``noise=False``;
* the paper does not say which pair Table VII scores; we score (x1, T(x2)), the pair whose two
  maps the method returns.

How T is applied: T(x2) is computed here (random parts, e.g. the jitter direction, drawn from
:func:`~pairlens.methods.common.pair_generators`, so a pair's T(x2) depends only on the seed and
the pair, and both variants score the same image), and Averaged Transforms dissects the path from
x1 to it with an identity family (``grayscale`` at strength 0). In paper mode the method never
differentiates through T, so for photometric transforms this is exactly the method called with
the family itself (a test checks it); for geometric ones (rotations, flip), which the method
refuses in paper mode because map 2 lies on a blend of two frames, it is the paper's own
construction: the views cross-fade x1 and the rotated image, and map 2 lies on the last view,
nine tenths T(x2).

The row ``none`` (T = identity) is the clean reference: the same method on the untransformed
pair. With self-pairs that pair is an image and itself, whose similarity is stationary (zero
gradient): such *degenerate* pairs (similarity 1, blank maps, or refused by the method's
blank-map guard) are counted and left out, never scored.

Work unit: ``pairs_per_unit`` pairs of one (transform, variant); the output folder resumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pairlens.analysis.common import (
    RunFolder,
    explain_pairs,
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
PAPER_METRICS = ("SI", "SD", "SAD")
#: the clean reference row: the identity (grayscale blend of weight 0 is exactly x)
CLEAN = "none"
#: the family Averaged Transforms dissects T(x2) with: strength 0, the identity
IDENTITY = "grayscale"


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
        ValueError: unknown family or a strength that is not a number.
    """
    from pairlens.methods.transforms import FAMILIES

    label = text.strip()
    if label == CLEAN:
        return TransformSpec(CLEAN, IDENTITY, 0.0)
    family, _, value = label.partition("@")
    family = family.strip()
    if family not in FAMILIES:
        raise ValueError(f"unknown transform {family!r}; choose from {', '.join(FAMILIES)}")
    try:
        strength = float(value) if value else float(FAMILIES[family][1][1])
    except ValueError:
        raise ValueError(f"transform {label!r}: strength {value!r} is not a number") from None
    if family == "gaussian-blur":
        strength = strength * min(input_size) / 224
    return TransformSpec(label, family, strength)


def transformed(model: SimilarityModel, spec: TransformSpec, x1: Tensor, x2: Tensor,
                seed: int) -> Tensor:
    """T(x2) at full strength in model-input space (the transform acts on [0, 1] pixels); the
    random parts of pair k are drawn from its :func:`pair_generators` generator."""
    from pairlens.methods.common import pair_generators
    from pairlens.methods.transforms import apply_transform

    u = torch.stack([torch.rand(8, generator=g) for g in pair_generators(seed, x1, x2)])
    x01 = model.denormalize(x2, 2)
    return model.normalize(apply_transform(spec.family, x01, spec.strength, u.to(x01)), 2)


def explain_dissection(
    model: SimilarityModel, x1: Tensor, x2: Tensor, spec: TransformSpec, guided: bool,
    steps: int, seed: int, batch_size: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Averaged Transforms (paper mode) along the dissection path from x1 to T(x2): returns
    T(x2) (model-input space), map 1 (on x1), map 2 (on the last view, T(x2)'s frame) and a
    boolean (B,) marking degenerate pairs (stationary similarity: NaN maps)."""
    xt = transformed(model, spec, x1, x2, seed)
    _, map1, map2 = explain_pairs(
        model, x1, xt, "averaged-transforms", transform=IDENTITY, strength=(0.0, 0.0),
        steps=steps, interpolation="paper", guided=guided, noise=False, batch_size=batch_size,
        seed=seed)
    refused = torch.isnan(map1.flatten(1)).any(1).cpu()
    return xt, map1, map2, refused


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
    batch_size: int | None = None,
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
        batch_size: images per forward pass (None: the device-aware default); never changes
            a result.
        pairs_per_unit: pairs per resumable unit (the results do not depend on it).
        seed: seed of the random transform draws (per pair: :func:`pair_generators`).
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
        recs = _score_unit(model, x1[sl], x2[sl], spec, g, steps, seed, metrics, step,
                           batch_size)
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

    xt, map1, map2, refused = explain_dissection(model, x1, x2, spec, guided, steps, seed,
                                                 batch_size)
    with torch.no_grad():
        sim = model.similarity(x1, xt)
    blank = ~(map1.flatten(1).nan_to_num(0).amax(1) > 0) | ~(map2.flatten(1).nan_to_num(0)
                                                             .amax(1) > 0)
    degenerate = (blank | (sim >= 1 - 1e-6)).cpu() | refused
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
    geometric = ("rotation", "horizontal-flip", "resized-crop", "simclr")
    if any(parse_transform(lab).family in geometric for lab in labels if lab != CLEAN):
        note += ("\nGeometric rows (rotation, flip): as in the paper's construction, the views "
                 "cross-fade image 1 and T(image 2), and map 2 lies on the last view (nine tenths "
                 "T(image 2)).\n")
    if any(by[(CLEAN, g)]["degenerate"] == by[(CLEAN, g)]["pairs"] for g in variants
           if (CLEAN, g) in by):
        note += ("\n`none` is the untransformed pair; an image paired with itself has a "
                 "stationary similarity (zero gradient), so its row is degenerate (not scored).\n")
    return markdown_table(header, out) + note


# ---------------------------------------------------------------------- figure
def dissection_figure(
    model: SimilarityModel, x1: Tensor, x2: Tensor, specs: Sequence[TransformSpec],
    steps: int = 10, seed: int = 0, batch_size: int | None = None, columns: int = 5,
):
    """The dissection strip of Figs. 4-6 for one pair: one row per transform; x1 with its
    Averaged Transforms map, ``columns`` of the views lambda x1 + (1 - lambda) T(x2) along the
    path, each with the Input x Gradient map of that single step (w.r.t. the view), and T(x2)
    with its Averaged Transforms map (drawn on the last view, as the method computes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairlens.explanation import explain
    from pairlens.methods.transforms import paper_weights
    from pairlens.models.similarity import BlankGradientError
    from pairlens.viz import overlay, to_pil

    rho = paper_weights(steps)  # lambda = 0.9 ... 0.1
    show = sorted({min(len(rho), max(1, round(len(rho) * (k + 1) / columns))) - 1
                   for k in range(columns)})
    fig, axes = plt.subplots(len(specs), len(show) + 2, squeeze=False,
                             figsize=(1.6 * (len(show) + 2), 1.75 * len(specs) + 0.4))
    img1 = model.denormalize(x1)[0].clamp(0, 1)
    for row, spec in enumerate(specs):
        with progress_bars(False):
            xt, map1, map2, refused = explain_dissection(model, x1, x2, spec, False, steps, seed,
                                                         batch_size)
            identical = bool(refused[0]) or bool(model.similarity(x1, xt)[0] >= 1 - 1e-6)
            cells = [(img1, None if identical else map1[0], "image 1")]
            for k in show:
                lam = float(rho[k])
                v = lam * x1 + (1 - lam) * xt
                try:
                    m = explain(model, x1, v, method="input-x-gradient").maps[1][0]
                except BlankGradientError:  # the view is x1 itself: no gradient
                    m = None
                cells.append((model.denormalize(v)[0].clamp(0, 1), m, f"λ = {lam:.1f}"))
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
