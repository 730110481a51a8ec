"""Pictures of explanations: map overlays, the pair figure, the all-methods grid and the
correspondence figure.

Display conventions (for display only; saved ``.npz`` maps are never altered):

* each map is optionally smoothed (``smooth``: Gaussian sigma in pixels), then values above its
  ``clip`` percentile (default :data:`DISPLAY_CLIP` = 99) are clipped, then it is min-max
  normalised to [0, 1] on its own. The clip keeps a handful of extreme pixels (typical of
  gradient saliency maps) from compressing everything else into the bottom colour;
  ``clip=100`` shows the plain min-max normalised map;
* every figure carries a colour bar labelled :data:`COLORBAR_LABEL`.

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot, so importing or using
this module never changes the matplotlib backend (notebooks keep theirs) and needs no display.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pairlens.metrics.faithfulness import minmax
from pairlens.params import format_value

COLORBAR_LABEL = "importance (min-max normalised per image)"
#: percentile above which map values are clipped for display
DISPLAY_CLIP = 99.0
#: resolution figures are saved at; panels are sized to be readable at 100 % zoom
DPI = 100
_PANEL = 1.9  # inches per image panel


def smooth_map(m: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of an (H, W) map with standard deviation ``sigma`` pixels (display only;
    torchvision's ``gaussian_blur``, kernel ``2 * ceil(3 sigma) + 1``, reflect padding)."""
    if sigma <= 0:
        return m
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * int(np.ceil(3 * sigma)) + 1
    k = min(k, 2 * min(m.shape[-2:]) - 1)  # reflect padding needs pad < side
    return gaussian_blur(m.float()[None, None], [k, k], [float(sigma)] * 2)[0, 0]


def display_map(heatmap: Tensor, smooth: float = 0.0, clip: float = DISPLAY_CLIP) -> np.ndarray:
    """An (H, W) map as shown: smoothed, clipped at its ``clip`` percentile, min-max normalised
    to [0, 1] (float32 array). A constant map becomes all zeros."""
    if not 0 < clip <= 100:
        raise ValueError(f"clip must be a percentile in (0, 100], got {clip}")
    m = smooth_map(heatmap.detach().float().cpu(), smooth)
    if clip < 100:
        m = m.clamp(max=float(torch.quantile(m.flatten(), clip / 100)))
    return minmax(m[None])[0].numpy().astype(np.float32)


def _rgb(image01: Tensor) -> np.ndarray:
    """(C, H, W) tensor in [0, 1] to an (H, W, 3) float array (a 1-channel image is gray)."""
    arr = image01.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def to_pil(image01: Tensor) -> Image.Image:
    """(C, H, W) tensor in [0, 1] to a PIL image (RGB; a 1-channel image is gray)."""
    return Image.fromarray((_rgb(image01) * 255).round().astype(np.uint8))


def overlay(
    image01: Tensor,
    heatmap: Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
    smooth: float = 0.0,
    clip: float = DISPLAY_CLIP,
) -> Image.Image:
    """Blend the colour-mapped display map (:func:`display_map`) of ``heatmap`` (H, W) over
    ``image01`` (C, H, W, values in [0, 1]; a 1-channel image is gray); ``alpha`` is the weight
    of the colours."""
    import matplotlib

    m = display_map(heatmap, smooth, clip)
    colored = matplotlib.colormaps[cmap](m)[..., :3]
    out = (1 - alpha) * _rgb(image01) + alpha * colored
    return Image.fromarray((out * 255).round().astype(np.uint8))


def add_colorbar(fig: Any, axes: Any, cmap: str = "jet", orientation: str = "vertical") -> Any:
    """A colour bar for maps in [0, 1] beside ``axes``, labelled :data:`COLORBAR_LABEL`."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(Normalize(0.0, 1.0), matplotlib.colormaps[cmap])
    bar = fig.colorbar(mappable, ax=axes, orientation=orientation, fraction=0.05, shrink=0.9,
                       aspect=25)
    bar.set_label(COLORBAR_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def display_figure(width: float, height: float) -> Any:
    """A pyplot-free figure of ``width`` x ``height`` inches with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _image_axes(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def pair_figure(exp: Any, index: int = 0, smooth: float = 0.0, clip: float = DISPLAY_CLIP) -> Any:
    """Pair ``index`` of a :class:`~pairlens.PairExplanation`: the two images on top, their
    overlays below, a colour bar, and a title with method, similarity, model and parameters.
    An explanation against a fixed target (a caption, an embedding) has one column."""
    if exp.images is None:
        raise ValueError("this explanation carries no images to draw")
    cols = _columns(exp)
    fig = display_figure(cols * _PANEL + 1.0 + (0.6 if cols == 1 else 0), 2 * _PANEL + 1.0)
    axes = fig.subplots(2, cols, squeeze=False)
    for col in range(cols):
        axes[0, col].imshow(to_pil(exp.images[col][index]))
        axes[0, col].set_title(source_name(exp, col), fontsize=8)
        axes[1, col].imshow(overlay(exp.images[col][index], exp.maps[col][index], smooth=smooth,
                                    clip=clip))
    for ax in axes.flat:
        _image_axes(ax)
    add_colorbar(fig, axes[1, :], orientation="horizontal")
    params = ", ".join(f"{k}={format_value(v)}" for k, v in exp.params.items()
                       if k != "batch_size" and v is not None)
    title = (f"{exp.method} · {similarity_label(exp)} {float(exp.score[index]):.3f} · "
             f"{exp.model.get('name', '')}")
    lines = [title]
    if cols == 1:
        target = exp.sources[1] if exp.sources else "a fixed target"
        lines += textwrap.wrap(f"against {target}", 40)
    fig.suptitle("\n".join([*lines, *textwrap.wrap(params, 40 if cols == 1 else 62)]),
                 fontsize=8)
    return fig


def _columns(exp: Any) -> int:
    """2 for a pair, 1 for an explanation against a fixed target (no image 2)."""
    return 1 if exp.maps[1] is None else 2


def similarity_label(exp: Any) -> str:
    """"similarity", naming the model's similarity when it is not the cosine."""
    name = exp.model.get("similarity", "cosine")
    return "similarity" if name == "cosine" else f"similarity ({name})"


def grid_figure(
    explanations: Sequence[Any],
    index: int = 0,
    smooth: float = 0.0,
    clip: float = DISPLAY_CLIP,
    blocks: int | None = None,
) -> Any:
    """Several methods on the same pair: one row per method, its name as the row header, the
    overlays on image 1 and image 2 side by side; the first row shows the images. More than
    four methods are laid out in two blocks of rows side by side (Fig. 12 style). Explanations
    against a fixed target have one image column."""
    if not explanations:
        raise ValueError("grid_figure needs at least one explanation")
    first = explanations[0]
    if first.images is None:
        raise ValueError("these explanations carry no images to draw")
    n = len(explanations)
    cols = _columns(first)
    width = cols + 1  # grid columns per block: the row header, then the images
    blocks = blocks or (1 if n <= 4 else 2)
    per_block = -(-n // blocks)
    rows = per_block + 1
    header = 1.5
    fig = display_figure(blocks * (header + cols * _PANEL) + (0.8 if cols == 1 else 0),
                         rows * _PANEL + 0.8)
    grid = fig.add_gridspec(rows, width * blocks,
                            width_ratios=[header / _PANEL, *[1] * cols] * blocks)

    def header_cell(r: int, b: int, text: str) -> None:
        ax = fig.add_subplot(grid[r, width * b])
        ax.axis("off")
        ax.text(1.0, 0.5, text, ha="right", va="center", fontsize=9, transform=ax.transAxes)

    header_cell(0, 0, "images")
    for col in range(cols):
        ax = fig.add_subplot(grid[0, 1 + col])
        ax.imshow(to_pil(first.images[col][index]))
        ax.set_title(source_name(first, col), fontsize=8)
        _image_axes(ax)
    image_axes = []
    for k, exp in enumerate(explanations):
        b, r = divmod(k, per_block)
        header_cell(r + 1, b, method_label(exp))
        for col in range(cols):
            ax = fig.add_subplot(grid[r + 1, width * b + 1 + col])
            ax.imshow(overlay(exp.images[col][index], exp.maps[col][index], smooth=smooth,
                              clip=clip))
            _image_axes(ax)
            image_axes.append(ax)
    if blocks > 1:  # the free top-right cell holds the colour bar
        _bar_into(fig, fig.add_subplot(grid[0, width * blocks - cols : width * blocks]))
    else:
        add_colorbar(fig, image_axes, orientation="horizontal")
    title = (f"{similarity_label(first)} {float(first.score[index]):.3f} · "
             f"{first.model.get('name', '')}")
    if cols == 1:
        title += f"\nagainst {first.sources[1] if first.sources else 'a fixed target'}"
    fig.suptitle(title, fontsize=9)
    return fig


def _bar_into(fig: Any, cax: Any) -> None:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax.set_box_aspect(0.08)
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), matplotlib.colormaps["jet"]), cax=cax,
                       orientation="horizontal")
    bar.set_label(COLORBAR_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def source_name(exp: Any, col: int) -> str:
    """Short name of image ``col`` (0 or 1) of an explanation: the file name, else "image N"."""
    if exp.sources:
        name = str(exp.sources[col]).replace("\\", "/").rsplit("/", 1)[-1]
        return name if len(name) <= 32 else name[:31] + "…"
    return f"image {col + 1}"


def method_label(exp: Any) -> str:
    """Row header of a method: its name and, on the next lines, the parameters that differ from
    the method's defaults."""
    try:
        from pairlens.methods.registry import get_method

        defaults = get_method(exp.method).params
    except ValueError:
        defaults = {}
    diff = [f"{k}={format_value(v)}" for k, v in exp.params.items()
            if k not in ("batch_size",) and defaults.get(k, object()) != v]
    return "\n".join([exp.method, *textwrap.wrap(", ".join(diff), 22)])


def figure_png(fig: Any, dpi: int = DPI) -> bytes:
    """The PNG bytes of a figure."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def cell_centres(size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(rows*cols, 2) pixel coordinates (x, y) of the centres of a grid's cells, row-major."""
    h, w = size
    ys = (np.arange(grid[0]) + 0.5) * h / grid[0] - 0.5
    xs = (np.arange(grid[1]) + 0.5) * w / grid[1] - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], 1)


def correspondence_figure(exp: Any, index: int = 0, top: int = 20, smooth: float = 0.0,
                          clip: float = DISPLAY_CLIP) -> Any:
    """The two images of a :class:`~pairlens.PairCorrespondence` side by side with the ``top``
    region pairs of highest relevance drawn as lines between the region centres (colour and
    width: relevance), and the relevance's two marginals on the region grid below (Eberle et
    al.'s BiLRP figures also draw the strongest pairs as lines). The pixel-level marginal
    ``maps`` are in the saved ``.npz``."""
    import matplotlib
    import torch.nn.functional as F
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if exp.images is None:
        raise ValueError("this correspondence carries no images to draw")
    img1 = _rgb(exp.images[0][index])
    img2 = _rgb(exp.images[1][index])
    h, w = img1.shape[:2]
    gap = max(2, w // 12)
    canvas = np.ones((h, 2 * w + gap, 3), dtype=np.float32)
    canvas[:, :w], canvas[:, w + gap :] = img1, img2
    fig = display_figure(6.4, 7.2)
    grid = fig.add_gridspec(2, 2, height_ratios=(1.0, 1.0))
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(canvas)
    matches = exp.top_matches(index, top)
    values = np.array([v for _, _, v in matches])
    vmax = float(np.abs(values).max()) if len(values) and np.abs(values).max() > 0 else 1.0
    norm = Normalize(vmin=min(0.0, float(values.min()) if len(values) else 0.0), vmax=vmax)
    cmap = matplotlib.colormaps["plasma"]
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
    marginal_axes = []
    for col in range(2):
        axm = fig.add_subplot(grid[1, col])
        shown = F.interpolate(marginals[col][None].float(), size=(h, w), mode="bilinear",
                              align_corners=False)[0, 0]
        axm.imshow(overlay(exp.images[col][index], shown, smooth=smooth, clip=clip))
        axm.set_title(f"{source_name(exp, col)}: region marginal", fontsize=8)
        _image_axes(axm)
        marginal_axes.append(axm)
    add_colorbar(fig, marginal_axes, orientation="horizontal")
    extra = ""
    if "completeness_error" in exp.extras:
        extra = f" · completeness error {float(exp.extras['completeness_error'][index]):+.3g}"
    fig.suptitle(f"{exp.method} · similarity {float(exp.score[index]):.3f}{extra}\n"
                 f"{exp.model.get('name', '')}", fontsize=9)
    return fig
