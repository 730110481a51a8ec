"""`PairExplanation`, the result of :func:`pairlens.explain`, and the function itself;
`PairCorrespondence`, the result of :func:`pairlens.correspond` (second-order explanations)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairlens.io import atomic_write
from pairlens.methods.common import cell_index, upsample
from pairlens.methods.registry import PairRelevance, get_method, method_infos
from pairlens.models.similarity import SimilarityModel, check_finite


@dataclass(frozen=True)
class PairExplanation:
    """Two importance maps explaining the similarity of a batch of image pairs.

    Attributes:
        maps: (map1, map2), each (B, H, W) float32 at input resolution; higher = more important.
        score: (B,) cosine similarity of the unaltered pairs.
        method: registered method name.
        params: the method's parameters as used (defaults filled in).
        images: the two input batches in [0, 1] pixel space (B, 3, H, W), for display.
        model: a JSON-friendly description of the model.
        sources: where the images came from (paths or descriptions), if known.
        seconds: wall time of the explanation.
    """

    maps: tuple[Tensor, Tensor]
    score: Tensor
    method: str
    params: dict[str, Any]
    images: tuple[Tensor, Tensor] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, str] | None = None
    seconds: float = math.nan

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def overlay(
        self, index: int = 0, alpha: float = 0.5, cmap: str = "jet", smooth: float = 0.0
    ) -> tuple[Any, Any]:
        """PIL images of the two maps of pair ``index`` over their images.

        ``smooth`` is the sigma (in pixels) of a Gaussian blur applied for display only.
        """
        from pairlens.viz import overlay

        if self.images is None:
            raise ValueError("this explanation carries no images to overlay on")
        return tuple(
            overlay(img[index], m[index], alpha=alpha, cmap=cmap, smooth=smooth)
            for img, m in zip(self.images, self.maps, strict=True)
        )

    def figure(self, index: int = 0, smooth: float = 0.0):
        """Matplotlib figure: both images with their maps, the score and the method name."""
        from pairlens.viz import pair_figure

        return pair_figure(self, index=index, smooth=smooth)

    def save(self, out_dir: str | Path, stem: str | None = None, smooth: float = 0.0,
             **figure_options: Any) -> list[Path]:
        """Write a PNG figure per pair, the raw maps (.npz) and JSON metadata into ``out_dir``.

        Files are written to a temporary name and renamed, so an interrupted save never leaves a
        half-written file under the final name. ``figure_options`` go to :meth:`figure` (e.g.
        ``top`` for a correspondence). Returns the paths written.
        """
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.method
        written: list[Path] = []
        if self.images is not None:
            for i in range(len(self)):
                fig = self.figure(i, smooth=smooth, **figure_options)
                suffix = "" if len(self) == 1 else f"_{i}"
                png = out / f"{stem}{suffix}.png"
                written.append(
                    atomic_write(png, lambda f, fig=fig: fig.savefig(f, dpi=120, format="png"))
                )
                plt.close(fig)
        arrays = self._arrays()
        written.append(
            atomic_write(out / f"{stem}.npz", lambda f: np.savez_compressed(f, **arrays))
        )
        meta = self._meta()
        written.append(
            atomic_write(
                out / f"{stem}.json", lambda f: f.write(json.dumps(meta, indent=2).encode())
            )
        )
        return written

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "map1": self.maps[0].detach().cpu().numpy().astype(np.float32),
            "map2": self.maps[1].detach().cpu().numpy().astype(np.float32),
            "score": self.score.detach().cpu().numpy().astype(np.float32),
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": _jsonable(self.params),
            "score": [float(v) for v in self.score.detach().cpu()],
            "model": self.model,
            "sources": list(self.sources) if self.sources else None,
            "seconds": self.seconds,
            "map_shape": list(self.maps[0].shape),
        }


@dataclass(frozen=True)
class PairCorrespondence(PairExplanation):
    """Which region of image 1 the model matches with which region of image 2.

    A :class:`PairExplanation` whose ``maps`` are the two marginals of ``relevance``, so every
    first-order tool (overlays, the pair metrics, the report) works on it unchanged.

    Attributes (besides those of :class:`PairExplanation`):
        relevance: (B, h1*w1, h2*w2) float32, the contribution of each (region i of image 1,
            region j of image 2) pair to the similarity; regions numbered row-major on ``grids``.
        grids: ((h1, w1), (h2, w2)), the region grid of each image.
        extras: per-pair diagnostics, each (B,): ``target`` (what the relevance sums to in theory,
            see the method) and ``completeness_error`` (its sum minus ``target``).
    """

    relevance: Tensor | None = None
    grids: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
    extras: dict[str, Tensor] = field(default_factory=dict)

    def grid_relevance(self, index: int = 0) -> Tensor:
        """Relevance of pair ``index`` as (h1, w1, h2, w2)."""
        assert self.relevance is not None
        (h1, w1), (h2, w2) = self.grids
        return self.relevance[index].reshape(h1, w1, h2, w2)

    def match_map(self, point: tuple[float, float], index: int = 0, image: int = 1) -> Tensor:
        """Map (H, W) of the *other* image: the relevance of every one of its regions paired with
        the region of image ``image`` (1 or 2) that holds pixel ``point = (row, col)``.

        Raises:
            ValueError: ``image`` not 1 or 2, or ``point`` outside the image.
        """
        assert self.relevance is not None
        if image not in (1, 2):
            raise ValueError(f"image must be 1 or 2; got {image}")
        h, w = self.maps[0].shape[-2:]
        row, col = (int(v) for v in point)
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"point {point} is outside the {h}x{w} image")
        grid_from, grid_to = self.grids if image == 1 else self.grids[::-1]
        cell = int(cell_index((h, w), grid_from)[row, col])
        rel = self.relevance[index] if image == 1 else self.relevance[index].T
        values = rel[cell].reshape(1, *grid_to)
        return upsample(values, (h, w))[0]

    def top_matches(self, index: int = 0, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` region pairs ``(i, j, relevance)`` of pair ``index`` with the highest
        relevance, highest first (regions numbered row-major on ``grids``)."""
        assert self.relevance is not None
        flat = self.relevance[index].flatten()
        k = min(int(k), flat.numel())
        values, order = flat.topk(k)
        n2 = self.relevance.shape[2]
        return [(int(o) // n2, int(o) % n2, float(v)) for o, v in zip(order, values, strict=True)]

    def figure(self, index: int = 0, smooth: float = 0.0, top: int = 20):
        """Figure: the two images side by side with the ``top`` matches as coloured lines (colour =
        relevance), and the two marginal maps below."""
        from pairlens.viz import correspondence_figure

        return correspondence_figure(self, index=index, top=top, smooth=smooth)

    def _arrays(self) -> dict[str, np.ndarray]:
        assert self.relevance is not None
        out = super()._arrays()
        out["relevance"] = self.relevance.detach().cpu().numpy().astype(np.float32)
        out["grid1"] = np.asarray(self.grids[0], dtype=np.int64)
        out["grid2"] = np.asarray(self.grids[1], dtype=np.int64)
        for key, value in self.extras.items():
            out[key] = value.detach().cpu().numpy().astype(np.float32)
        return out

    def _meta(self) -> dict[str, Any]:
        out = super()._meta()
        out["grids"] = [list(self.grids[0]), list(self.grids[1])]
        out["relevance_shape"] = list(self.relevance.shape) if self.relevance is not None else None
        out.update({key: [float(v) for v in value.detach().cpu()]
                    for key, value in self.extras.items()})
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Tensor):
        return v.tolist() if v.numel() <= 16 else f"tensor{tuple(v.shape)}"
    return repr(v)


def explain(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    method: str = "interaction-cam",
    sources: tuple[str, str] | None = None,
    **params: Any,
) -> PairExplanation:
    """Explain the similarity of each pair (x1[i], x2[i]) with a registered method.

    Args:
        model: the similarity model.
        x1, x2: (B, 3, H, W) batches in model-input space (see ``model.preprocess``); a (3, H, W)
            image is taken as a batch of one.
        method: a name from :func:`pairlens.methods`.
        sources: optional descriptions of the two images, kept in the saved metadata.
        **params: the method's parameters (see ``pairlens methods``), checked and converted by
            :meth:`~pairlens.methods.registry.MethodInfo.validate` (unknown names, values of the
            wrong type or out of range are an error naming the parameter and its valid range);
            ``exp.params`` records every parameter exactly as used.

    Returns:
        A :class:`PairExplanation` with one (B, H, W) map per image; for a correspondence method
        (``feature-grid``, ``bilrp``, ``integrated-jacobians``) a :class:`PairCorrespondence`,
        whose maps are the marginals of its pair relevance.

    Raises:
        ValueError: unknown method or parameter, an invalid parameter value, mismatched shapes,
            NaN/inf inputs, integer tensors other than uint8 pixels, or a NaN map.
    """
    info = get_method(method)
    used = info.validate(params)  # strict types and ranges, defaults filled in
    x1 = model.check_input(x1, "image 1")
    x2 = model.check_input(x2, "image 2")
    if x1.shape != x2.shape:
        raise ValueError(
            f"the two batches must have the same shape; got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    start = time.perf_counter()
    out = info.fn(model, x1, x2, **used)
    relevance = None
    if isinstance(out, PairRelevance):
        relevance = out
        b, _, h, w = x1.shape
        (h1, w1), (h2, w2) = out.grids
        if tuple(out.relevance.shape) != (b, h1 * w1, h2 * w2):
            raise RuntimeError(f"method {info.name} returned relevance of shape "
                               f"{tuple(out.relevance.shape)} for grids {out.grids}")
        check_finite(out.relevance, f"the {info.name} relevance")
        if out.maps is not None:
            map1, map2 = out.maps
        else:
            map1 = upsample(out.relevance.sum(2).reshape(b, h1, w1), (h, w))
            map2 = upsample(out.relevance.sum(1).reshape(b, h2, w2), (h, w))
        score = out.score
    else:
        map1, map2, score = out
    if score is None:
        with torch.no_grad():
            score = model.similarity(x1, x2)
    seconds = time.perf_counter() - start
    check_finite(score, f"the similarity (embeddings of model {model.name!r})")
    for m, which in ((map1, "1"), (map2, "2")):
        if m.shape != (x1.shape[0], x1.shape[2], x1.shape[3]):
            raise RuntimeError(f"method {info.name} returned map {which} of shape {tuple(m.shape)}")
        check_finite(m, f"the {info.name} map of image {which}")
    common = dict(
        maps=(map1.detach().float(), map2.detach().float()),
        score=score.detach(),
        method=info.name,
        params=used,
        images=(
            model.denormalize(x1).clamp(0, 1).detach(),
            model.denormalize(x2).clamp(0, 1).detach(),
        ),
        model=model.describe(),
        sources=sources,
        seconds=seconds,
    )
    if relevance is None:
        return PairExplanation(**common)
    return PairCorrespondence(
        **common,
        relevance=relevance.relevance.detach().float(),
        grids=(tuple(relevance.grids[0]), tuple(relevance.grids[1])),
        extras={k: v.detach().float() for k, v in (relevance.extras or {}).items()},
    )


def correspondence_methods() -> list[str]:
    """Names of the registered correspondence (second-order) methods."""
    return [info.name for info in method_infos() if info.family == "correspondence"]


def correspond(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    method: str = "feature-grid",
    grid: int | None = None,
    sources: tuple[str, str] | None = None,
    **params: Any,
) -> PairCorrespondence:
    """Which region of image 1 the model matches with which region of image 2, for each pair.

    Args:
        model: the similarity model (cosine or dot similarity).
        x1, x2: (B, 3, H, W) batches in model-input space; (3, H, W) is a batch of one.
        method: a correspondence method: ``feature-grid``, ``bilrp`` or ``integrated-jacobians``
            (see ``pairlens methods``).
        grid: ``grid x grid`` regions for the relevance, or None for the model's feature grid.
        sources: optional descriptions of the two images, kept in the saved metadata.
        **params: the method's other parameters.

    Returns:
        A :class:`PairCorrespondence`: ``relevance`` (B, h1*w1, h2*w2), its marginal ``maps``
        (B, H, W) each, the similarity, method, parameters and images.

    Raises:
        ValueError: ``method`` is not a correspondence method, or anything :func:`explain` raises.
    """
    info = get_method(method)
    if info.family != "correspondence":
        raise ValueError(f"{info.name!r} is a first-order method (use pairlens.explain); "
                         f"correspondence methods: {', '.join(correspondence_methods())}")
    out = explain(model, x1, x2, method=info.name, sources=sources, grid=grid, **params)
    assert isinstance(out, PairCorrespondence)
    return out
