"""Sanity check by cascading model-parameter randomisation (seed 000, §IV-A and Fig. 13;
Adebayo et al., 2018).

Convention (DESIGN.md): starting from the top (the head) and moving to the bottom layer, the layers
of a copy of the model are re-initialised one after another (cumulatively); after each step the
explanation is recomputed with the same method and parameters and compared with the original map
of each image by the Spearman rank correlation and the SSIM.

Choices (documented here and tested):

* a *layer* is a module that owns parameters directly (convolutions, linear layers, norm layers,
  ...) and takes part in computing the embedding; layers are ordered by the order in which they
  first run in a forward pass, and randomised in reverse order (head first). A classifier probe that
  the embedding does not use is ignored.
* re-initialisation calls the layer's ``reset_parameters()`` (PyTorch's default init; norm layers
  return to weight 1, bias 0 and fresh running statistics) under a generator seeded with
  ``seed + step``; layers without it get N(0, 0.02) weights and zero biases.
* norm layers (batch, instance, group and layer norm): ``norm="reset"`` (default) as above;
  ``norm="random"`` additionally draws their scale gamma and shift beta from N(0, 1), so that a
  randomised norm layer no longer passes the (normalised) structure of its input through
  unchanged. Adebayo et al.'s code re-runs each trainable variable's initialiser
  (``adebayoj/sanity_checks_saliency``, ``src/utils.py`` ``reinitlayerlist``:
  ``tf.initialize_variables``), which puts batch-norm beta back to 0 and gamma to 1 and keeps
  the moving statistics: "reset" is the closer of the two to that code.
* ``layers_per_step`` layers are randomised per step (1 by default; the figure may show only every
  few steps, like Fig. 13).
* Spearman: ``scipy.stats.spearmanr`` of the flattened maps (average ranks for ties); NaN when a
  map is constant (for example an all-zero map after randomisation).
* SSIM: ``skimage.metrics.structural_similarity`` of the maps each min-max normalised to [0, 1]
  (``data_range=1``), window 7 (or the largest odd size that fits a smaller map).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pairlens.metrics.faithfulness import minmax
from pairlens.models.similarity import SimilarityModel, evaluating


@dataclass(frozen=True)
class SanityResult:
    """Outcome of :func:`sanity_check`.

    Attributes:
        method, params: the explanation method checked.
        steps: for each randomisation step, the names of the layers randomised at that step
            (cumulative: step j has layers of steps 0..j randomised).
        maps: (map1, map2) for the original model (index 0) and after every step (index j + 1);
            each (B, H, W) on the CPU.
        spearman, ssim: (n_steps, B, 2) similarity of each image's map after each step with the
            original one (last axis: image 1, image 2).
        images: the pair images in [0, 1] (B, 3, H, W), for the figure.
    """

    method: str
    params: dict[str, Any]
    steps: list[list[str]]
    maps: list[tuple[Tensor, Tensor]]
    spearman: Tensor
    ssim: Tensor
    images: tuple[Tensor, Tensor]

    def figure(self, index: int = 0, every: int = 1, max_columns: int = 12):
        """Matplotlib figure like Fig. 13: for each image of pair ``index``, the image, the
        original map, then the map after every ``every``-th randomisation step (titled with the
        last randomised layer)."""
        import matplotlib.pyplot as plt

        shown = list(range(every - 1, len(self.steps), every))
        if shown and shown[-1] != len(self.steps) - 1:
            shown.append(len(self.steps) - 1)
        shown = shown[: max(0, max_columns - 2)]
        cols = 2 + len(shown)
        fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 3.9), squeeze=False)
        for row in range(2):
            img = self.images[row][index].permute(1, 2, 0).clamp(0, 1).numpy()
            axes[row, 0].imshow(img)
            axes[row, 0].set_title("image" if row == 0 else "", fontsize=7)
            axes[row, 1].imshow(self.maps[0][row][index].numpy(), cmap="jet")
            axes[row, 1].set_title("original" if row == 0 else "", fontsize=7)
            for c, j in enumerate(shown):
                ax = axes[row, c + 2]
                ax.imshow(self.maps[j + 1][row][index].numpy(), cmap="jet")
                if row == 0:
                    ax.set_title(f"{j + 1}: …{self.steps[j][-1][-14:]}", fontsize=6)
                rho = float(self.spearman[j, index, row])
                ax.set_xlabel(f"ρ={rho:.2f}", fontsize=6)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"cascading randomisation: {self.method}", fontsize=9)
        fig.tight_layout()
        return fig


def randomisable_layers(model: SimilarityModel, x: Tensor, x2: Tensor | None = None) -> list[str]:
    """Names of the modules owning parameters that run when embedding ``x`` (and ``x2`` through
    tower 2 of a two-tower model), in forward order."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            def hook(_m: nn.Module, _i: Any, _o: Any, name: str = name) -> None:
                if name not in order:
                    order.append(name)

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), evaluating(model):
            model.embed_pair(x[:1], (x2 if x2 is not None else x)[:1])
    finally:
        for h in handles:
            h.remove()
    return order


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def reinitialise(module: nn.Module, seed: int, norm: Literal["reset", "random"] = "reset") -> None:
    """Re-initialise ``module``'s own parameters (see the module docstring).

    Raises:
        ValueError: an unknown ``norm``.
    """
    if norm not in ("reset", "random"):
        raise ValueError(f"norm must be 'reset' or 'random', got {norm!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            if norm == "random" and isinstance(module, NORM_LAYERS):
                with torch.no_grad():
                    for p in module.parameters(recurse=False):  # gamma (weight), beta (bias)
                        p.copy_(torch.randn(p.shape, generator=gen))
            return
        for name, p in module.named_parameters(recurse=False):
            with torch.no_grad():
                if "bias" in name:
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def sanity_check(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    method: str,
    params: Mapping[str, Any] | None = None,
    layers_per_step: int = 1,
    max_steps: int | None = None,
    seed: int = 0,
    norm: Literal["reset", "random"] = "reset",
) -> SanityResult:
    """Cascading randomisation sanity check of ``method`` on the pairs ``(x1[i], x2[i])``.

    The model itself is not modified (a deep copy is randomised) and runs in eval mode (its own
    mode is restored). Both towers of a two-tower model are randomised, in forward order from the
    last layer that ran. ``max_steps`` stops early. ``norm`` chooses how norm layers are
    randomised (see the module docstring).
    """
    from pairlens.explanation import explain

    params = dict(params or {})
    x1 = model.check_input(x1, "image 1", 1)
    x2 = model.check_input(x2, "image 2", 2)
    original = explain(model, x1, x2, method=method, **params)
    work = copy.deepcopy(model).eval()
    names = list(reversed(randomisable_layers(work, x1, x2)))
    groups = [names[i : i + layers_per_step] for i in range(0, len(names), layers_per_step)]
    if max_steps is not None:
        groups = groups[:max_steps]
    maps = [tuple(m.detach().cpu() for m in original.maps)]
    rho, ssim = [], []
    for j, group in enumerate(groups):
        for name in group:
            reinitialise(work.get_submodule(name), seed + j, norm)
        exp = explain(work, x1, x2, method=method, **params)
        now = tuple(m.detach().cpu() for m in exp.maps)
        maps.append(now)
        rho.append(torch.stack([spearman(maps[0][k], now[k]) for k in range(2)], -1))
        ssim.append(torch.stack([map_ssim(maps[0][k], now[k]) for k in range(2)], -1))
    b = x1.shape[0]
    empty = torch.empty(0, b, 2)
    return SanityResult(
        method=original.method,
        params=original.params,
        steps=[list(g) for g in groups],
        maps=maps,  # type: ignore[arg-type]
        spearman=torch.stack(rho) if rho else empty,
        ssim=torch.stack(ssim) if ssim else empty,
        images=tuple(im.cpu() for im in original.images),  # type: ignore[arg-type]
    )


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation (B,) of two batches of maps (B, H, W); NaN for constant maps."""
    from scipy.stats import spearmanr

    out = []
    for u, v in zip(a.flatten(1).double().numpy(), b.flatten(1).double().numpy(), strict=True):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            out.append(math.nan)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(float(spearmanr(u, v).statistic))
    return torch.tensor(out, dtype=torch.float32)


def map_ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM (B,) of two batches of maps (B, H, W), each min-max normalised to [0, 1]."""
    from skimage.metrics import structural_similarity

    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return torch.full((a.shape[0],), math.nan)
    na, nb = minmax(a).double().numpy(), minmax(b).double().numpy()
    return torch.tensor(
        [structural_similarity(u, v, data_range=1.0, win_size=win) for u, v in zip(na, nb,
                                                                                   strict=True)],
        dtype=torch.float32,
    )
