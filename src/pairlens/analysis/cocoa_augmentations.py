"""COCOA on augmentations (seed 002, §4.2 "Understanding data augmentations in SimCLR", Fig. 2
and Appendix M, Figs. 8-10): which features of an augmented image keep it close to its original?

For each image x: the corpus is x itself, the foil is a set of other images, and the explicands
are x and its augmentations. COCOA (contrastive corpus similarity, eq. 3) paired with RISE shows
which pixels of each augmented image make its representation similar to the original's and not to
the foil's. Settings checked against the paper and its authors' code
(suinleelab/cl-explainability, ``scripts/augmentation_use_case.py``):

* augmentations ``original``, ``flip`` (horizontal), ``crop`` (random resized crop, area 0.2-0.5,
  aspect 3/4-4/3, back to full size), ``crop-flip``, ``grayscale``, ``jitter`` (torchvision
  ``ColorJitter(0.8, 0.8, 0.8, 0.2)``), ``cutout`` (``RandomErasing(scale=(0.1, 0.25))`` with
  value 0.5 in [0, 1] pixels; torchvision's aspect range 0.3-3.3) and ``rotate-90`` (counter-
  clockwise); cutout and rotation are not SimCLR augmentations;
* RISE with 5000 masks, p = 0.5, a 7 x 7 grid (4 x 4 for 32-px inputs), the blurred explicand
  (kernel 21, sigma 5) as baseline; the authors' figures show the positive part of the
  attribution (``relu``) on a symmetric red-blue scale; ours show each map minus its mean on that
  scale (see :func:`cocoa_figure`). All augmentations of an image
  are explained with the same masks (the authors draw fresh masks for each), so that their maps
  differ because of the images, not because of the masks. Shared masks also share the masks'
  sampling noise, which inflates the agreement of two maps; the control ``remasked`` (the
  original explained again with other masks) measures how far two maps of the *same* image agree
  under independent masks: agreements below it are not evidence of a change;
* the class prediction of each augmented image by the model's linear classifier, when it has one
  (the paper used SimCLR's ImageNet linear classifier);
* the paper's foil is 1500 random ImageNet training images; here ``foil`` images of the data set
  (the digits training split; for the 18 bundled photographs, the other photographs).

Beyond the paper's pictures, "which features survive" is measured: every augmented image's map is
moved back into the original's frame (flip, crop and rotation are undone; pixels a crop cut away
are left out) and compared with the original's map (Spearman rank correlation and the overlap of
the two top-20 % regions, intersection over union).

Work unit: one image (all its augmentations); resumable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairlens.analysis.common import (
    RunFolder,
    format_interval,
    interval_fields,
    markdown_table,
    mean_interval,
    proportion_interval,
    random_box,
    row_interval,
    run_units,
)
from pairlens.models.similarity import SimilarityModel, pool_features

AUGMENTATIONS = ("original", "flip", "crop", "crop-flip", "grayscale", "jitter", "cutout",
                 "rotate-90", "remasked")
NOT_IN_SIMCLR = ("cutout", "rotate-90")
#: the control: the original image explained with RISE masks of another seed (offset below)
REMASKED = "remasked"
REMASK_SEED_OFFSET = 1_000_003
TOP = 0.2


@dataclass
class Augmented:
    """An augmented image (3, H, W) in [0, 1] and how to move a map (H, W) of it back into the
    original's frame (NaN where the augmented image shows nothing of the original)."""

    image: Tensor
    back: Callable[[Tensor], Tensor]


def augment(x01: Tensor, name: str, seed: int) -> Augmented:
    """Augmentation ``name`` of one image (3, H, W) in [0, 1], its random parameters drawn from
    ``seed`` (see the module docstring for the settings).

    Raises:
        ValueError: unknown augmentation, or ``rotate-90`` of a non-square image.
    """
    import torchvision.transforms.v2 as T
    import torchvision.transforms.v2.functional as TF

    from pairlens.methods.transforms import luma

    _, h, w = x01.shape
    rng = np.random.default_rng(seed)
    same = lambda m: m  # noqa: E731 - the frame does not change
    if name in ("original", REMASKED):
        return Augmented(x01.clone(), same)
    if name == "flip":
        return Augmented(x01.flip(-1), lambda m: m.flip(-1))
    if name in ("crop", "crop-flip"):
        top, left, ch, cw = random_box(rng, h, w, (0.2, 0.5))
        img = TF.resized_crop(x01, top, left, ch, cw, [h, w], antialias=True).clamp(0, 1)
        flip = name == "crop-flip"

        def back(m: Tensor) -> Tensor:
            m = m.flip(-1) if flip else m
            small = TF.resize(m[None].float(), [ch, cw], antialias=True)[0]
            full = torch.full((h, w), math.nan, dtype=small.dtype, device=m.device)
            full[top : top + ch, left : left + cw] = small
            return full

        return Augmented(img.flip(-1) if flip else img, back)
    if name == "grayscale":
        return Augmented(luma(x01[None])[0].expand(3, -1, -1).clone(), same)
    if name == "jitter":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            img = T.ColorJitter(0.8, 0.8, 0.8, 0.2)(x01.cpu()).to(x01.device)
        return Augmented(img.clamp(0, 1), same)
    if name == "cutout":
        top, left, eh, ew = random_box(rng, h, w, (0.1, 0.25), (0.3, 3.3))
        img = x01.clone()
        img[:, top : top + eh, left : left + ew] = 0.5
        return Augmented(img, same)
    if name == "rotate-90":
        if h != w:
            raise ValueError("rotate-90 needs square images")
        return Augmented(torch.rot90(x01, 1, dims=(-2, -1)), lambda m: torch.rot90(m, -1, (-2, -1)))
    raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")


def _classify(model: SimilarityModel, x: Tensor) -> Tensor | None:
    clf = getattr(model, "classifier", None)
    if clf is None:
        return None
    with torch.no_grad():
        return clf(pool_features(model.encoder(x))).argmax(1).cpu()


def _agreement(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Spearman correlation and top-20 % IoU of two maps (H, W) on the pixels where both are
    finite."""
    from scipy.stats import spearmanr

    ok = torch.isfinite(a) & torch.isfinite(b)
    va, vb = a[ok].double().numpy(), b[ok].double().numpy()
    if len(va) < 3 or va.std() == 0 or vb.std() == 0:
        return math.nan, math.nan
    rho = float(spearmanr(va, vb).statistic)
    k = max(1, round(TOP * len(va)))
    ta = set(np.argsort(-va, kind="stable")[:k].tolist())
    tb = set(np.argsort(-vb, kind="stable")[:k].tolist())
    return rho, len(ta & tb) / len(ta | tb)


def cocoa_augmentations(
    model: SimilarityModel,
    images01: Tensor,
    foil: Tensor,
    *,
    labels: Sequence[Any] | None = None,
    augmentations: Sequence[str] = AUGMENTATIONS,
    n_masks: int = 5000,
    seed: int = 0,
    batch_size: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    names: Sequence[str] | None = None,
    figure_images: int = 3,
) -> list[dict[str, Any]]:
    """COCOA attributions of every image's augmentations, with the image as corpus.

    Args:
        model: the model (its ``classifier``, if any, gives class predictions).
        images01: (N, 3, H, W) images in [0, 1] at the model's input size.
        foil: (M, 3, H, W) foil images in model-input space, or their (M, D) embeddings.
        labels: true labels of the images (recorded; predictions are compared with them).
        augmentations: names from :data:`AUGMENTATIONS` (``original`` is always included).
        n_masks: RISE masks per explicand (the paper's 5000).
        seed: seed of the augmentations and of the RISE masks.
        batch_size: masked images per forward pass of RISE (None: the device-aware default);
            changes results only by float rounding.
        out: output folder (``config.json``, ``records.jsonl``, ``maps.npz``, ``table.md``,
            ``table.csv``, ``cocoa-augmentations.png``).
        resume: continue an interrupted run.
        names: image names for the records.
        figure_images: images drawn in the figure.

    Returns:
        One record per (image, augmentation): ``prediction`` and ``class_kept`` (None without a
        classifier), ``cosine`` (to the original), ``cocoa`` (target score), ``spearman`` and
        ``top_iou`` (agreement with the original's map in the original's frame).
    """
    from pairlens.attribution import attribute
    from pairlens.corpus.targets import ContrastiveCorpus, embed_images

    augs = ["original"] + [a for a in augmentations if a != "original"]
    for a in augs:
        if a not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {a!r}; choose from {', '.join(AUGMENTATIONS)}")
    if tuple(images01.shape[-2:]) != tuple(model.input_size):
        raise ValueError(f"images are {tuple(images01.shape[-2:])} px; the model takes "
                         f"{tuple(model.input_size)}")
    with torch.no_grad():
        foil_z = foil.to(model.device) if foil.dim() == 2 else embed_images(model, foil)
    config = {"analysis": "cocoa-augmentations", "model": model.describe(),
              "images": len(images01), "augmentations": augs, "foil": len(foil_z),
              "n_masks": n_masks, "seed": seed,
              "names": list(names) if names is not None else None}
    folder = RunFolder(out, config, resume) if out is not None else None
    maps: dict[int, Any] = {}
    if folder is not None and (folder.out / "maps.npz").exists():
        with np.load(folder.out / "maps.npz") as z:
            maps = {int(k.split("_")[1]): z[k] for k in z.files}

    def unit(i: int) -> list[dict[str, Any]]:
        x01 = images01[i].to(model.device)
        auged = [augment(x01, a, seed * 1_000_003 + i * 101 + j) for j, a in enumerate(augs)]
        xa = model.normalize(torch.stack([a.image for a in auged]))
        target = ContrastiveCorpus(model, xa[:1], foil_z)
        # the same RISE masks for every augmentation of an image; other masks for the control
        att = torch.cat([attribute(target, xa[j : j + 1], method="rise", n_masks=n_masks,
                                   batch_size=batch_size,
                                   seed=seed + i + (REMASK_SEED_OFFSET if a == REMASKED else 0))
                         for j, a in enumerate(augs)]).cpu()
        with torch.no_grad():
            z = model.embed(xa)
            cos = model.embedding_similarity(z[:1].expand_as(z), z).cpu()
            score = target.score_embeddings(z).cpu()
        pred = _classify(model, xa)
        maps[i] = att.numpy()
        if folder is not None:  # before the unit is recorded: a finished unit has its maps
            _save_maps(folder, maps)
        back = [a.back(m) for a, m in zip(auged, att, strict=True)]
        recs = []
        for j, a in enumerate(augs):
            rho, iou = _agreement(back[j], back[0]) if j else (1.0, 1.0)
            r: dict[str, Any] = {"image": i, "augmentation": a, "cosine": float(cos[j]),
                                 "cocoa": float(score[j]), "spearman": rho, "top_iou": iou,
                                 "prediction": None if pred is None else int(pred[j]),
                                 "class_kept": None if pred is None else bool(pred[j] == pred[0])}
            if labels is not None:
                r["label"] = labels[i]
            if names is not None:
                r["name"] = names[i]
            recs.append(r)
        return recs

    records = run_units(folder, [(f"image {i}", partial(unit, i))
                                 for i in range(len(images01))], "cocoa-augmentations")
    if folder is not None:
        summary = cocoa_summary(records)
        folder.write_text("table.md", cocoa_table(summary))
        folder.write_csv("table.csv", summary)
        if figure_images > 0:
            folder.write_figure("cocoa-augmentations.png",
                                cocoa_figure(images01, maps, records, augs, seed,
                                             min(figure_images, len(images01))))
    return records


def _save_maps(folder: RunFolder, maps: dict[int, Any]) -> None:
    import io

    from pairlens.io import atomic_write

    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"image_{k}": np.asarray(v) for k, v in maps.items()})
    data = buf.getvalue()
    atomic_write(folder.out / "maps.npz", lambda f: f.write(data))


def cocoa_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per augmentation: class kept (Wilson 95 %, with a classifier), cosine to the original,
    COCOA score, and agreement of its map with the original's (bootstrap 95 %)."""
    rows = []
    for a in dict.fromkeys(r["augmentation"] for r in records):
        recs = [r for r in records if r["augmentation"] == a]
        kept = [r["class_kept"] for r in recs if r["class_kept"] is not None]
        row: dict[str, Any] = {"augmentation": a, "in_simclr": a not in NOT_IN_SIMCLR,
                               "images": len(recs)}
        if kept:
            row.update(interval_fields("class_kept", proportion_interval(sum(kept), len(kept))))
        for k in ("cosine", "cocoa", "spearman", "top_iou"):
            row.update(interval_fields(k, mean_interval(r[k] for r in recs)))
        rows.append(row)
    return rows


def cocoa_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`cocoa_summary` rows."""
    has_pred = any("class_kept" in r for r in rows)
    header = ["augmentation"] + (["class kept"] if has_pred else []) + [
        "cosine to original", "COCOA score", "map Spearman vs original",
        f"top-{100 * TOP:.0f} % IoU vs original", "images"]
    out = []
    for r in rows:
        note = ("" if r["in_simclr"] else " (not in SimCLR)") if r["augmentation"] != REMASKED \
            else " (control: the original, other RISE masks)"
        cells = [r["augmentation"] + note]
        if has_pred:
            cells.append(format_interval(row_interval(r, "class_kept"), percent=True)
                         if "class_kept" in r else "–")
        cells += [format_interval(row_interval(r, k))
                  for k in ("cosine", "cocoa", "spearman", "top_iou")]
        out.append(cells + [str(r["images"])])
    return markdown_table(header, out)


def cocoa_figure(images01: Tensor, maps: dict[int, Any], records: Sequence[dict[str, Any]],
                 augs: Sequence[str], seed: int, n: int = 3):
    """The paper's Fig. 2 layout: per image, the augmented images (titled with the class
    prediction) above their COCOA attributions on a red-blue scale, each map minus its mean
    (red: more important than the map's average pixel). The authors plot the positive part of the
    raw map instead; on the bundled models every RISE value is positive, so that view is one
    uniform red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairlens.viz import to_pil

    fig, axes = plt.subplots(2 * n, len(augs), squeeze=False,
                             figsize=(1.45 * len(augs), 2 * 1.5 * n + 0.4))
    for i in range(n):
        for j, a in enumerate(augs):
            img = augment(images01[i], a, seed * 1_000_003 + i * 101 + j).image
            rec = next((r for r in records if r["image"] == i and r["augmentation"] == a), {})
            title = a
            if rec.get("prediction") is not None:
                title += f"\npred {rec['prediction']}" + ("" if rec["class_kept"] else " ✗")
            axes[2 * i, j].imshow(to_pil(img))
            axes[2 * i, j].set_title(title, fontsize=7)
            if i in maps:  # centred: RISE maps of this target carry a large constant offset
                m = np.asarray(maps[i][j], dtype=np.float64)
                m = m - m.mean()
                top = float(np.abs(m).max()) or 1.0
                axes[2 * i + 1, j].imshow(m, cmap="seismic", vmin=-top, vmax=top)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("COCOA (RISE) with the original image as corpus: what keeps each augmentation "
                 "close to its original", fontsize=9)
    fig.tight_layout()
    return fig
