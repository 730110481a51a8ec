"""Feature inversion (seed 000, appendix "Exploring invariance", Fig. 19; Mahendran & Vedaldi,
CVPR 2015): which image does a layer's feature map stand for, and how much colour does it keep?

An image is reconstructed from the features phi_l(x0) of layer l by starting from noise and
minimising, over x in model-input space,

    MSE(phi_l(x), phi_l(x0)) + alpha_weight * sum |x|^alpha + tv_weight * sum TV_beta(x),

TV_beta(x) = ((x[i+1, j] - x[i, j])^2 + (x[i, j+1] - x[i, j])^2)^(beta / 2) summed over pixels and
channels (Mahendran & Vedaldi's R_V^beta; beta = 2 in the reference code the paper's settings come
from). Defaults are the paper's text (checked: the authors' repository fawazsammani/explain-cl does
not contain this experiment): x starts from N(0, 0.1^2); SGD, momentum 0.9, 200 iterations,
learning rate 1e4 multiplied by 0.1 every 50 iterations; tv_weight 1e-8 (beta 2); alpha = 6,
alpha_weight 1e-7; the feature loss is the mean squared error. (That reference code, Utku
Ozbulak's ``pytorch-cnn-visualizations`` ``inverted_representation.py``, has the same start,
optimiser and priors, but its feature loss is 0.1 x ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 and it
decays the learning rate every 40 iterations; we follow the paper's text.)

The learning rate 1e4 was tuned for a ResNet-50 at 224 px; the size of a layer's gradients depends
on the model, and 1e4 makes the optimisation diverge on the bundled models (NaN within a few
iterations). So an image whose feature loss does not at least halve (it diverged to NaN, grew,
or bounced) is redone with the learning rate divided by 10, at most ``max_backoffs`` times; the
reconstruction kept is the one with the lowest final / initial feature-loss ratio, and it is an
error if every learning rate diverged (ratio not below 1). The learning rate used and the ratio
are recorded with every result (never silently).

Colour statistics of each reconstruction (clipped to [0, 1]) against its original:
mean HSV saturation, colourfulness (Hasler & Süsstrunk 2003, on the 0-255 scale), the Pearson
correlation of the luma maps (structure kept) and of the CIELAB a*, b* chroma maps (colour kept;
NaN for a grey original). "Colour invariance" is then a number: chroma correlation and
saturation falling with depth while the luma correlation stays.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pairlens.analysis import INVERSION_PAPER_SETTINGS
from pairlens.analysis.common import (
    RunFolder,
    format_interval,
    interval_fields,
    markdown_table,
    mean_interval,
    row_interval,
    run_units,
)
from pairlens.models.hooks import capture_outputs
from pairlens.models.similarity import SimilarityModel

#: the paper's settings (appendix), used as defaults of :func:`invert_features`
PAPER_SETTINGS = INVERSION_PAPER_SETTINGS
STAT_NAMES = ("saturation", "saturation_original", "colourfulness", "colourfulness_original",
              "luma_corr", "chroma_corr")


@dataclass
class Inversion:
    """Reconstructions ``images`` (B, 3, H, W) in model-input space, the learning rate used for
    each image (B,), and the feature loss at the start and at the end (B,)."""

    images: Tensor
    lr: Tensor
    loss_start: Tensor
    loss_end: Tensor


SEQUENCES = ("blocks", "stages", "features", "layers", "layer")


def default_layers(model: SimilarityModel) -> list[str]:
    """Three layers of the encoder at increasing depth, as the paper's stages 3, 4, 5 of a
    ResNet-50: ``layer2``-``layer4`` of a ResNet; elements at 1/3, 2/3 and the end of the
    outermost block sequence (a module list named ``blocks``, ``stages``, ``features``,
    ``layers`` or ``layer``: timm ViTs and Swin, ConvNeXt, torchvision and Hugging Face ViTs);
    otherwise the last three direct children of the encoder whose output is a feature map or a
    token sequence."""
    enc = model.encoder
    if all(hasattr(enc, f"layer{i}") for i in (2, 3, 4)):
        return ["layer2", "layer3", "layer4"]
    for path, seq in enc.named_modules():
        if (path.rsplit(".", 1)[-1] in SEQUENCES and isinstance(seq, (nn.Sequential, nn.ModuleList))
                and len(seq) >= 2):
            names = [n for n, _ in seq.named_children()]
            picks = sorted({max(0, math.ceil(len(names) * k / 3) - 1) for k in (1, 2, 3)})
            return [f"{path}.{names[i]}" for i in picks]
    children = [n for n, _ in enc.named_children()]
    x = torch.zeros(1, 3, *model.input_size, device=model.device)
    with torch.no_grad():
        outs = capture_outputs(enc, x, children)
    spatial = [n for n in children if n in outs and outs[n].dim() in (3, 4)]
    if not spatial:
        raise ValueError(f"cannot choose layers to invert in {type(enc).__name__}; give them")
    return spatial[-3:]


def _features(model: SimilarityModel, x: Tensor, layer: str) -> Tensor:
    return capture_outputs(model.encoder, x, [layer])[layer]


def _regularisers(x: Tensor, alpha: float, alpha_weight: float, tv_weight: float,
                  tv_beta: float) -> Tensor:
    """Per image (B,): alpha_weight * sum |x|^alpha + tv_weight * sum TV_beta(x)."""
    norm = x.abs().pow(alpha).flatten(1).sum(1)
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    tv = (dx.pow(2) + dy.pow(2)).pow(tv_beta / 2).flatten(1).sum(1)
    return alpha_weight * norm + tv_weight * tv


def _optimise(model, target, layer, start, settings, lr):
    x = start.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=lr, momentum=settings["momentum"])
    sched = torch.optim.lr_scheduler.StepLR(opt, int(settings["lr_step"]), settings["lr_gamma"])
    first = None
    for _ in range(int(settings["steps"])):
        opt.zero_grad(set_to_none=True)
        f = _features(model, x, layer)
        data = (f - target).pow(2).flatten(1).mean(1)  # (B,) mean squared error per image
        if first is None:
            first = data.detach().clone()
        if not bool(torch.isfinite(data).all()):
            break  # diverged: no use going on
        reg = _regularisers(x, settings["alpha"], settings["alpha_weight"],
                            settings["tv_weight"], settings["tv_beta"])
        (x.grad,) = torch.autograd.grad((data + reg).sum(), x)  # no parameter gradients
        opt.step()
        sched.step()
    with torch.no_grad():
        last = (_features(model, x, layer) - target).pow(2).flatten(1).mean(1)
    return x.detach(), first, last


def invert_features(
    model: SimilarityModel,
    x: Tensor,
    layer: str,
    *,
    steps: int = 200,
    lr: float = 1e4,
    momentum: float = 0.9,
    lr_step: int = 50,
    lr_gamma: float = 0.1,
    init_std: float = 0.1,
    tv_weight: float = 1e-8,
    tv_beta: float = 2.0,
    alpha: float = 6.0,
    alpha_weight: float = 1e-7,
    max_backoffs: int = 4,
    seed: int = 0,
) -> Inversion:
    """Reconstruct the images ``x`` from their features at ``layer`` (see the module docstring).

    Args:
        model: the model; ``layer`` is a dotted submodule of ``model.encoder``, or ``"input"``
            (the features are the image itself: the reconstruction must be the image).
        x: (B, 3, H, W) originals in model-input space. Images are independent (eval mode).
        steps, lr, momentum, lr_step, lr_gamma: SGD with momentum, learning rate multiplied by
            ``lr_gamma`` every ``lr_step`` iterations (the paper: 200, 1e4, 0.9, 50, 0.1).
        init_std: standard deviation of the Gaussian start (model-input space; paper 0.1).
        tv_weight, tv_beta, alpha, alpha_weight: the natural-image priors (paper: 1e-8, 2, 6,
            1e-7).
        max_backoffs: how often an image whose feature loss did not halve is redone with the
            learning rate / 10.
        seed: seed of the noise start.

    Returns:
        An :class:`Inversion`.

    Raises:
        ValueError: unknown layer, or an image that diverges at every learning rate tried.
    """
    settings = {"steps": steps, "momentum": momentum, "lr_step": lr_step, "lr_gamma": lr_gamma,
                "tv_weight": tv_weight, "tv_beta": tv_beta, "alpha": alpha,
                "alpha_weight": alpha_weight}
    if steps < 1:
        raise ValueError("steps must be >= 1")
    x = model.check_input(x, "image")
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(int(seed))
    start = (init_std * torch.randn(x.shape, generator=g)).to(x.device)
    out = torch.empty_like(x)
    used = torch.full((len(x),), math.nan)
    loss0, loss1 = torch.full((len(x),), math.nan), torch.full((len(x),), math.nan)
    best = torch.full((len(x),), math.inf)  # lowest end / start feature-loss ratio so far
    pending = torch.arange(len(x))
    try:
        with torch.no_grad():
            target = _features(model, x, layer).detach()
        rate = float(lr)
        for _ in range(max_backoffs + 1):
            with torch.enable_grad():
                img, first, last = _optimise(model, target[pending], layer, start[pending],
                                             settings, rate)
            first, last = first.cpu(), last.cpu()
            ratio = torch.where(torch.isfinite(last), last / first, torch.full_like(last, math.inf))
            better = ratio < best[pending]  # finite and lower than the best lr so far
            take = pending[better]
            out[take], used[take] = img[better.to(img.device)], rate
            loss0[take], loss1[take], best[take] = first[better], last[better], ratio[better]
            pending = pending[best[pending] > 0.5]  # not yet halved: try a smaller lr
            if len(pending) == 0:
                break
            rate /= 10
    finally:
        model.train(was_training)
    failed = torch.nonzero(~(best < 1)).flatten()
    if len(failed):
        raise ValueError(
            f"feature inversion of layer {layer!r} diverged for image(s) {failed.tolist()} "
            f"at every learning rate from {lr:g} to {rate:g}; lower lr or raise max_backoffs"
        )
    return Inversion(out, used, loss0, loss1)


# ---------------------------------------------------------------------- colour statistics
def colour_statistics(recon01: Tensor, original01: Tensor) -> dict[str, Tensor]:
    """Statistics (each (B,)) of reconstructions against originals, both (B, 3, H, W) in [0, 1]:
    ``saturation`` / ``saturation_original`` (mean HSV saturation), ``colourfulness`` /
    ``colourfulness_original`` (Hasler & Süsstrunk 2003, 0-255 scale), ``luma_corr`` and
    ``chroma_corr`` (Pearson correlations of luma and of CIELAB (a*, b*); NaN when the original
    has no variation in them)."""
    from skimage.color import rgb2hsv, rgb2lab

    out: dict[str, list[float]] = {k: [] for k in STAT_NAMES}
    for r, o in zip(recon01.detach().cpu(), original01.detach().cpu(), strict=True):
        a = r.clamp(0, 1).permute(1, 2, 0).double().numpy()
        b = o.clamp(0, 1).permute(1, 2, 0).double().numpy()
        out["saturation"].append(float(rgb2hsv(a)[..., 1].mean()))
        out["saturation_original"].append(float(rgb2hsv(b)[..., 1].mean()))
        out["colourfulness"].append(_colourfulness(a))
        out["colourfulness_original"].append(_colourfulness(b))
        luma = np.array([0.299, 0.587, 0.114])
        out["luma_corr"].append(_pearson(a @ luma, b @ luma, 1e-3))
        # CIELAB a*, b* are in units of about one just-noticeable difference
        out["chroma_corr"].append(_pearson(rgb2lab(a)[..., 1:], rgb2lab(b)[..., 1:], 0.5))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def _colourfulness(rgb01: np.ndarray) -> float:
    rgb = 255 * rgb01
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _pearson(a: np.ndarray, b: np.ndarray, min_std: float) -> float:
    """Pearson correlation of ``a`` (reconstruction) and ``b`` (original); NaN when the original
    varies by less than ``min_std`` (nothing to keep: a grey image has no chroma), 0 when the
    reconstruction does not vary at all (nothing kept)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    if b.std() < min_std:
        return math.nan
    if a.std() < min_std:
        return 0.0
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------- the analysis
def invert_models(
    models: Mapping[str, SimilarityModel],
    images01: Tensor,
    layers: Sequence[str] | None = None,
    *,
    settings: Mapping[str, float] | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Invert the features of ``layers`` of every model for every image (Fig. 19: contrastive and
    supervised models of one architecture side by side).

    Args:
        models: ``{label: model}``; all share ``input_size`` and the ``layers``.
        images01: (N, 3, H, W) originals in [0, 1] pixel space at that size (each model
            normalises them its own way).
        layers: encoder layers (default: :func:`default_layers` of the first model).
        settings: overrides of :data:`PAPER_SETTINGS` (and ``max_backoffs``).
        seed: seed of the noise start (the same start for every model and layer).
        out: output folder: ``config.json``, ``records.jsonl``, ``recon_*.npz``, ``table.md``,
            ``table.csv``, ``inversion.png``.
        resume: continue an interrupted run.
        names: image names for the records.

    Returns:
        One record per (model, layer, image): the statistics of :func:`colour_statistics`,
        ``lr`` (used), ``loss_start``, ``loss_end`` and ``seconds``.
    """
    if not models:
        raise ValueError("give at least one model")
    first = next(iter(models.values()))
    sizes = {tuple(m.input_size) for m in models.values()}
    if len(sizes) > 1:
        raise ValueError(f"the models take different input sizes {sorted(sizes)}")
    if tuple(images01.shape[-2:]) != tuple(first.input_size):
        raise ValueError(f"images are {tuple(images01.shape[-2:])} px; the models take "
                         f"{tuple(first.input_size)}")
    layers = list(layers) if layers else default_layers(first)
    opts = {**PAPER_SETTINGS, **dict(settings or {})}
    config = {"analysis": "invert", "models": {k: m.describe() for k, m in models.items()},
              "layers": layers, "settings": opts, "seed": seed, "images": len(images01),
              "names": list(names) if names is not None else None}
    folder = RunFolder(out, config, resume) if out is not None else None
    recon: dict[tuple[str, str], Tensor] = {}

    def unit(label: str, layer: str) -> list[dict[str, Any]]:
        model = models[label]
        inv = invert_features(model, model.normalize(images01.to(model.device)), layer,
                              seed=seed, **opts)
        rec01 = model.denormalize(inv.images).clamp(0, 1).cpu()
        recon[(label, layer)] = rec01
        if folder is not None:
            _save_recon(folder, _recon_file(label, layer), rec01)
        stats = colour_statistics(rec01, images01)
        recs = []
        for i in range(len(images01)):
            r: dict[str, Any] = {"model": label, "layer": layer, "image": i,
                                 "lr": float(inv.lr[i]), "loss_start": float(inv.loss_start[i]),
                                 "loss_end": float(inv.loss_end[i])}
            r.update({k: float(v[i]) for k, v in stats.items()})
            if names is not None:
                r["name"] = names[i]
            recs.append(r)
        return recs

    units = [(f"{label}|{layer}", partial(unit, label, layer)) for label in models
             for layer in layers]
    records = run_units(folder, units, "invert")
    if folder is not None:  # reconstructions of units finished by an earlier run
        for label in models:
            for layer in layers:
                if (label, layer) not in recon:
                    recon[(label, layer)] = _load_recon(folder.out / _recon_file(label, layer))
    if folder is not None:
        summary = inversion_summary(records)
        folder.write_text("table.md", inversion_table(summary))
        folder.write_csv("table.csv", summary)
        folder.write_figure("inversion.png", inversion_figure(images01, recon, list(models),
                                                              layers))
    return records


def _recon_file(label: str, layer: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{label}_{layer}")
    return f"recon_{safe}.npz"


def _save_recon(folder: RunFolder, name: str, images01: Tensor) -> None:
    from pairlens.io import atomic_write

    buf = io.BytesIO()
    np.savez_compressed(buf, images=(images01.numpy() * 255).round().astype(np.uint8))
    data = buf.getvalue()
    atomic_write(folder.out / name, lambda f: f.write(data))


def _load_recon(path: Path) -> Tensor:
    with np.load(path) as z:
        return torch.from_numpy(z["images"].astype(np.float32) / 255)


def inversion_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, layer): mean and bootstrap 95 % interval over images of the colour
    statistics and of the feature loss ratio end / start, and the learning rates used."""
    rows = []
    for label, layer in dict.fromkeys((r["model"], r["layer"]) for r in records):
        recs = [r for r in records if r["model"] == label and r["layer"] == layer]
        row: dict[str, Any] = {"model": label, "layer": layer, "images": len(recs)}
        for k in STAT_NAMES:
            row.update(interval_fields(k, mean_interval(r[k] for r in recs)))
        row.update(interval_fields("loss_ratio", mean_interval(
            r["loss_end"] / r["loss_start"] for r in recs if r["loss_start"] > 0)))
        row["lr"] = ", ".join(f"{v:g}" for v in sorted({r["lr"] for r in recs}))
        rows.append(row)
    return rows


def inversion_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`inversion_summary` rows."""
    header = ["model", "layer", "saturation (original → reconstruction)",
              "colourfulness (original → reconstruction)", "luma corr", "chroma corr",
              "feature loss end / start", "lr used", "images"]
    out = [[r["model"], r["layer"],
            f"{r['saturation_original']:.3f} → {format_interval(row_interval(r, 'saturation'))}",
            f"{r['colourfulness_original']:.1f} → "
            f"{format_interval(row_interval(r, 'colourfulness'), 1)}",
            format_interval(row_interval(r, "luma_corr")),
            format_interval(row_interval(r, "chroma_corr")),
            format_interval(row_interval(r, "loss_ratio")), r["lr"], str(r["images"])]
           for r in rows]
    return markdown_table(header, out)


def inversion_figure(images01: Tensor, recon: Mapping[tuple[str, str], Tensor],
                     labels: Sequence[str], layers: Sequence[str], max_images: int = 3):
    """Fig. 19: for each image and model a row: the original, then the reconstruction from each
    layer (titled with its mean saturation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairlens.viz import to_pil

    n = min(max_images, len(images01))
    rows = [(i, lab) for i in range(n) for lab in labels]
    fig, axes = plt.subplots(len(rows), len(layers) + 1, squeeze=False,
                             figsize=(1.9 * (len(layers) + 1), 2.0 * len(rows) + 0.3))
    for r, (i, lab) in enumerate(rows):
        axes[r, 0].imshow(to_pil(images01[i]))
        axes[r, 0].set_ylabel(f"{lab}\nimage {i}", fontsize=8)
        for c, layer in enumerate(layers):
            img = recon.get((lab, layer))
            if img is None:
                continue
            sat = colour_statistics(img[i : i + 1], images01[i : i + 1])["saturation"][0]
            axes[r, c + 1].imshow(to_pil(img[i]))
            axes[r, c + 1].set_title(f"{layer}  sat {float(sat):.2f}", fontsize=7)
        if r == 0:
            axes[r, 0].set_title("original", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("feature inversion: reconstructions from deeper layers (left to right)",
                 fontsize=9)
    fig.tight_layout()
    return fig
