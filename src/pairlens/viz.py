"""Pictures of explanations: map overlays and side-by-side pair figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # headless by default; figures are saved, not shown
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from pairlens.metrics.faithfulness import minmax  # noqa: E402

if TYPE_CHECKING:
    from pairlens.explanation import PairCorrespondence, PairExplanation


def smooth_map(m: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of an (H, W) map with standard deviation ``sigma`` pixels (display only)."""
    if sigma <= 0:
        return m
    radius = max(1, int(3 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=torch.float32, device=m.device)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()
    x = m.float()[None, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x[0, 0]


def _rgb(image01: Tensor) -> np.ndarray:
    """(C, H, W) tensor in [0, 1] to an (H, W, 3) float array (a 1-channel image is gray)."""
    arr = image01.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def to_pil(image01: Tensor) -> Image.Image:
    """(C, H, W) tensor in [0, 1] to a PIL image (RGB; a 1-channel image is gray)."""
    return Image.fromarray((_rgb(image01) * 255).round().astype(np.uint8))


def overlay(
    image01: Tensor, heatmap: Tensor, alpha: float = 0.5, cmap: str = "jet", smooth: float = 0.0
) -> Image.Image:
    """Blend a colour-mapped, min-max normalised ``heatmap`` (H, W) over ``image01`` (C, H, W)."""
    m = minmax(smooth_map(heatmap.detach(), smooth)[None])[0].cpu().numpy()
    colored = plt.get_cmap(cmap)(m)[..., :3]
    out = (1 - alpha) * _rgb(image01) + alpha * colored
    return Image.fromarray((out * 255).round().astype(np.uint8))


def pair_figure(exp: PairExplanation, index: int = 0, smooth: float = 0.0):
    """Figure with the two images on top and their overlays below, titled with method and score."""
    assert exp.images is not None
    cols = _columns(exp)
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6.6), squeeze=False)
    for col in range(cols):
        axes[0, col].imshow(to_pil(exp.images[col][index]))
        axes[1, col].imshow(overlay(exp.images[col][index], exp.maps[col][index], smooth=smooth))
        axes[0, col].set_title(_source_title(exp, col), fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    params = ", ".join(
        f"{k}={v}" for k, v in exp.params.items() if k not in ("batch_size",) and v is not None
    )
    against = ""
    if cols == 1:
        against = f"\nagainst {exp.sources[1] if exp.sources else 'a fixed target'}"
    fig.suptitle(
        f"{exp.method}  ·  {_similarity_label(exp)} {float(exp.score[index]):.3f}{against}\n"
        f"{exp.model.get('name', '')}  {params}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _columns(exp: PairExplanation) -> int:
    """2 for a pair, 1 for an explanation against a fixed target (no image 2)."""
    return 1 if exp.maps[1] is None else 2


def _similarity_label(exp: PairExplanation) -> str:
    name = exp.model.get("similarity", "cosine")
    return "similarity" if name == "cosine" else f"similarity ({name})"


def _source_title(exp: PairExplanation, col: int) -> str:
    if exp.sources:
        name = str(exp.sources[col]).replace("\\", "/").rsplit("/", 1)[-1]
        return name[:40]
    return f"image {col + 1}"


def grid_figure(explanations: list[PairExplanation], index: int = 0, smooth: float = 0.0):
    """One row per explanation (method) of the same pair: overlay 1, overlay 2 (Fig. 12 style)."""
    n = len(explanations)
    cols = _columns(explanations[0])
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n + 0.3), squeeze=False)
    for row, exp in enumerate(explanations):
        assert exp.images is not None
        for col in range(cols):
            ax = axes[row, col]
            ax.imshow(overlay(exp.images[col][index], exp.maps[col][index], smooth=smooth))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(_short_name(exp), fontsize=8)
    first = explanations[0]
    fig.suptitle(f"{_similarity_label(first)} {float(first.score[index]):.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def _short_name(exp: PairExplanation) -> str:
    extra = [f"{k}={v}" for k, v in exp.params.items() if isinstance(v, bool) and v]
    if "reduction" in exp.params:
        extra.insert(0, str(exp.params["reduction"]))
    return exp.method + ("\n" + ",".join(extra) if extra else "")


def cell_centres(size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(rows*cols, 2) pixel coordinates (x, y) of the centres of a grid's cells, row-major."""
    h, w = size
    ys = (np.arange(grid[0]) + 0.5) * h / grid[0] - 0.5
    xs = (np.arange(grid[1]) + 0.5) * w / grid[1] - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], 1)


def correspondence_figure(exp: PairCorrespondence, index: int = 0, top: int = 20,
                          smooth: float = 0.0):
    """The two images side by side with the ``top`` region pairs of highest relevance drawn as
    lines between the region centres (colour and width: relevance), and the relevance's two
    marginals on the region grid below (Eberle et al.'s BiLRP figures also draw the strongest
    pairs as lines). The pixel-level marginal ``maps`` are in the saved ``.npz``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    assert exp.images is not None
    img1 = np.asarray(to_pil(exp.images[0][index]), dtype=np.float32) / 255
    img2 = np.asarray(to_pil(exp.images[1][index]), dtype=np.float32) / 255
    h, w = img1.shape[:2]
    gap = max(2, w // 12)
    canvas = np.ones((h, 2 * w + gap, 3), dtype=np.float32)
    canvas[:, :w], canvas[:, w + gap :] = img1, img2
    fig = plt.figure(figsize=(6.4, 6.8))
    grid = fig.add_gridspec(2, 2, height_ratios=(1.0, 1.0))
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(canvas)
    matches = exp.top_matches(index, top)
    values = np.array([v for _, _, v in matches])
    vmax = float(np.abs(values).max()) if len(values) and np.abs(values).max() > 0 else 1.0
    norm = Normalize(vmin=min(0.0, float(values.min()) if len(values) else 0.0), vmax=vmax)
    cmap = plt.get_cmap("plasma")
    c1 = cell_centres((h, w), exp.grids[0])
    c2 = cell_centres((h, w), exp.grids[1]) + np.array([w + gap, 0])
    for i, j, v in reversed(matches):  # strongest drawn last, on top
        colour = cmap(norm(v))
        ax.plot([c1[i, 0], c2[j, 0]], [c1[i, 1], c2[j, 1]], color=colour,
                linewidth=0.6 + 2.4 * abs(v) / vmax, alpha=0.9)
        ax.plot([c1[i, 0], c2[j, 0]], [c1[i, 1], c2[j, 1]], "o", color=colour, markersize=3)
    ax.set_xlim(-0.5, 2 * w + gap - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03, pad=0.01,
                 label="pair relevance")
    ax.set_title(f"top {len(matches)} of {exp.relevance.shape[1]}x{exp.relevance.shape[2]} "
                 f"region pairs ({exp.grids[0][0]}x{exp.grids[0][1]} grid)", fontsize=8)
    # the marginals at the resolution of the lines (the region grid): pixel-level LRP and
    # integrated-gradient maps are dominated by a few pixels at this size
    rel = exp.relevance[index]
    marginals = (rel.sum(1).reshape(1, *exp.grids[0]), rel.sum(0).reshape(1, *exp.grids[1]))
    for col in range(2):
        axm = fig.add_subplot(grid[1, col])
        shown = F.interpolate(marginals[col][None].float(), size=(h, w), mode="bilinear",
                              align_corners=False)[0, 0]
        axm.imshow(overlay(exp.images[col][index], shown, smooth=smooth))
        axm.set_title(f"{_source_title(exp, col)}: region marginal", fontsize=8)
        axm.axis("off")
    extra = ""
    if "completeness_error" in exp.extras:
        extra = f"  ·  completeness error {float(exp.extras['completeness_error'][index]):+.3g}"
    fig.suptitle(f"{exp.method}  ·  similarity {float(exp.score[index]):.3f}{extra}\n"
                 f"{exp.model.get('name', '')}", fontsize=9)
    fig.tight_layout()
    return fig
