"""`PairExplanation`, the result of :func:`pairlens.explain`, and the function itself;
`PairCorrespondence`, the result of :func:`pairlens.correspond` (second-order explanations)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairlens.io import atomic_write
from pairlens.methods.common import cell_index, upsample
from pairlens.methods.registry import (
    MethodInfo,
    NotApplicableError,
    PairRelevance,
    get_method,
    method_infos,
)
from pairlens.models.similarity import (
    SimilarityModel,
    check_all_finite,
    check_finite,
    evaluating,
)


class DisplayImages(Sequence):
    """The images of an explanation in [0, 1] pixel space, (B, C, H, W) each (None for a missing
    image 2), de-normalised the first time they are read.

    Most calls (studies, benchmarks, metrics) never display their images, so :func:`explain`
    keeps a copy of its inputs and of the model's mean / std (one memory copy each) and does the
    de-normalisation only on a read. The copies are taken at call time: an input buffer reused
    afterwards (in place, through ``.data``, or through a NumPy array sharing its memory), or a
    model whose mean / std is changed later, never changes an explanation's pictures.
    """

    def __init__(self, *images: tuple[Tensor, Tensor, Tensor] | None) -> None:
        self._sources = tuple(None if i is None else tuple(t.detach().clone() for t in i)
                              for i in images)  # (x in model-input space, mean, std) per image
        self._done: list[Tensor | None] = [None] * len(images)

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self[i] for i in range(len(self))[index])
        if self._sources[index] is None:
            return None
        if self._done[index] is None:
            x, mean, std = self._sources[index]
            self._done[index] = (x * std + mean).clamp(0, 1)
        return self._done[index]

    def __repr__(self) -> str:
        return f"DisplayImages({len(self)} batches)"

    def __reduce__(self):
        # pickled (torch.save, worker processes, deepcopy) as the plain tuple of computed images
        return tuple, (tuple(self),)


@dataclass(frozen=True)
class PairExplanation:
    """Two importance maps explaining the similarity of a batch of image pairs.

    Attributes:
        maps: (map1, map2), each (B, H, W) float32 at input resolution; higher = more important.
            Against a fixed target (``explain(..., target=z)``) there is no image 2: ``map2`` is
            None.
        score: (B,) similarity of the unaltered pairs (the model's similarity: cosine unless the
            model defines another; ``model["similarity"]`` names it).
        method: registered method name.
        params: the method's parameters as used (defaults filled in).
        images: the two input batches in [0, 1] pixel space (B, C, H, W), for display (image 2
            None against a fixed target); from :func:`explain` a :class:`DisplayImages`,
            computed when first read.
        model: a JSON-friendly description of the model.
        sources: where the images came from (paths or descriptions), if known.
        seconds: wall time of the explanation.
        target: for explanations against a fixed target, what it was (``{"text": ...}`` or
            ``{"embedding": D}``); None for pairs of images.
    """

    maps: tuple[Tensor, Tensor | None]
    score: Tensor
    method: str
    params: dict[str, Any]
    images: Sequence[Tensor | None] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, str] | None = None
    seconds: float = math.nan
    target: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.maps[0].shape[1:])
        scores = ", ".join(f"{float(v):.3f}" for v in self.score[:4].detach().cpu())
        more = ", ..." if len(self) > 4 else ""
        return (f"PairExplanation(method={self.method!r}, pairs={len(self)}, maps={shape}, "
                f"score=[{scores}{more}], model={self.model.get('name', '?')!r})")

    def select(self, index: int) -> PairExplanation:
        """The explanation of pair ``index`` alone (a batch of one)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair {index} of an explanation of {len(self)} pairs")
        one = slice(index, index + 1) if index >= 0 else slice(index, index + 1 or None)
        return dataclasses.replace(
            self,
            maps=tuple(None if m is None else m[one] for m in self.maps),
            score=self.score[one],
            images=None if self.images is None
            else tuple(None if x is None else x[one] for x in self.images),
        )

    def overlay(
        self, index: int = 0, alpha: float = 0.5, cmap: str = "jet", smooth: float = 0.0,
        clip: float = 99.0,
    ) -> tuple[Any, Any]:
        """PIL images of the two maps of pair ``index`` over their images.

        For display only: ``smooth`` is the sigma (pixels) of a Gaussian blur, and values above
        the ``clip`` percentile of each map are clipped before min-max normalisation
        (:func:`pairlens.viz.display_map`).
        """
        from pairlens.viz import overlay

        if self.images is None:
            raise ValueError("this explanation carries no images to overlay on")
        return tuple(
            None if m is None else overlay(img[index], m[index], alpha=alpha, cmap=cmap,
                                           smooth=smooth, clip=clip)
            for img, m in zip(self.images, self.maps, strict=True)
        )

    def figure(self, index: int = 0, smooth: float = 0.0, clip: float = 99.0):
        """Matplotlib figure of pair ``index``: both images, their overlays with a colour bar,
        the similarity, the method and its parameters (:func:`pairlens.viz.pair_figure`)."""
        from pairlens.viz import pair_figure

        return pair_figure(self, index=index, smooth=smooth, clip=clip)

    def _repr_png_(self) -> bytes | None:
        """Notebook display: the figure of the first pair as PNG."""
        if self.images is None:
            return None
        from pairlens.viz import figure_png

        return figure_png(self.figure(0))

    def _repr_html_(self) -> str:
        """Notebook display: the figures of the first pairs (at most four) and a summary line."""
        import base64
        import html

        parts = [f"<p><code>{html.escape(repr(self))}</code></p>"]
        if self.images is not None:
            from pairlens.viz import figure_png

            for i in range(min(len(self), 4)):
                data = base64.b64encode(figure_png(self.figure(i))).decode()
                parts.append(f'<img src="data:image/png;base64,{data}" '
                             f'alt="{html.escape(self.method)} pair {i}"/>')
        return "\n".join(parts)

    def save(self, out_dir: str | Path, stem: str | None = None, smooth: float = 0.0,
             **figure_options: Any) -> list[Path]:
        """Write a PNG figure per pair (``smooth`` and ``figure_options``, e.g. ``clip``, as in
        :meth:`figure`), the raw maps (.npz, unaltered) and JSON metadata into ``out_dir``.

        Files are written to a temporary name and renamed, so an interrupted save never leaves a
        half-written file under the final name. ``figure_options`` go to :meth:`figure` (e.g.
        ``top`` for a correspondence). Returns the paths written.
        """
        from pairlens.viz import DPI

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
                    atomic_write(png, lambda f, fig=fig: fig.savefig(f, dpi=DPI, format="png"))
                )
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
        """The arrays of the saved ``.npz``."""
        arrays = {
            f"map{i + 1}": m.detach().cpu().numpy().astype(np.float32)
            for i, m in enumerate(self.maps)
            if m is not None
        }
        arrays["score"] = self.score.detach().cpu().numpy().astype(np.float32)
        return arrays

    def _meta(self) -> dict[str, Any]:
        """The saved JSON metadata."""
        return {
            "method": self.method,
            "params": _jsonable(self.params),
            "score": [float(v) for v in self.score.detach().cpu()],
            "model": self.model,
            "sources": list(self.sources) if self.sources else None,
            "seconds": self.seconds,
            "map_shape": list(self.maps[0].shape),
            "target": self.target,
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

    def figure(self, index: int = 0, smooth: float = 0.0, top: int = 20, clip: float = 99.0):
        """Figure: the two images side by side with the ``top`` matches as coloured lines (colour =
        relevance), and the two marginal maps below (``smooth`` / ``clip`` as in
        :meth:`overlay`)."""
        from pairlens.viz import correspondence_figure

        return correspondence_figure(self, index=index, top=top, smooth=smooth, clip=clip)

    def select(self, index: int) -> PairCorrespondence:
        """The correspondence of pair ``index`` alone (a batch of one)."""
        one = super().select(index)
        i = index % len(self)
        assert self.relevance is not None
        return dataclasses.replace(
            one, relevance=self.relevance[i : i + 1],
            extras={k: v[i : i + 1] for k, v in self.extras.items()},
        )

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
    x2: Tensor | None = None,
    method: str = "interaction-cam",
    sources: tuple[str, str] | None = None,
    target: Tensor | str | list[str] | None = None,
    **params: Any,
) -> PairExplanation:
    """Explain the similarity of each pair (x1[i], x2[i]), or of each image x1[i] with a fixed
    ``target``, with a registered method.

    Args:
        model: the similarity model (one or two towers: x1 goes through tower 1, x2 tower 2).
        x1, x2: (B, C, H, W) batches in model-input space (see ``model.preprocess``); a
            (C, H, W) image is taken as a batch of one.
        method: a name from :func:`pairlens.methods`.
        sources: optional descriptions of the two images, kept in the saved metadata.
        target: instead of ``x2``, a fixed embedding to explain x1 against: (D,) for every
            image, (B, D) one per image, or caption(s) embedded with ``model.embed_text`` (an
            image-text model). Every method where that makes sense works: saliency methods,
            averaged-transforms (transforming x1), conditional-occlusion, grad-cam,
            interaction-cam and deep-similarity (the target stands in for image 2's pooled
            feature map, a 1x1 map: it needs the feature layer's width). ``maps[1]`` is None.
        **params: the method's parameters (see ``pairlens methods``), checked and converted by
            :meth:`~pairlens.methods.registry.MethodInfo.validate` (unknown names, values of the
            wrong type or out of range are an error naming the parameter and its valid range);
            ``exp.params`` records every parameter exactly as used.

    Returns:
        A :class:`PairExplanation` with one (B, H, W) float32 map per image; for a correspondence
        method (``feature-grid``, ``bilrp``, ``integrated-jacobians``) a
        :class:`PairCorrespondence`, whose maps are the marginals of its pair relevance.

    The model runs in eval mode (BatchNorm running statistics untouched) and gets its own mode
    back afterwards.

    Raises:
        ValueError: unknown method or parameter, an invalid parameter value, mismatched shapes,
            NaN/inf inputs, integer tensors other than uint8 pixels, a NaN map, all-zero
            embeddings (:class:`~pairlens.models.similarity.ZeroEmbeddingError`), a gradient map
            that would be blank (:class:`~pairlens.models.similarity.BlankGradientError`), an
            unreadable feature layout (:class:`~pairlens.models.layouts.LayoutError`).
    """
    info = get_method(method)
    used = info.validate(params)  # strict types and ranges, defaults filled in
    if target is not None:
        if x2 is not None:
            raise ValueError("give either a second image batch x2 or target=, not both")
        if info.pairs_only:
            raise NotApplicableError(
                f"{info.name} needs two images and cannot explain an image against a fixed "
                "target; use conditional-occlusion, a saliency or a CAM method"
            )
        return _explain_target(model, x1, target, info, used, sources)
    if x2 is None:
        raise ValueError("explain needs a second image batch x2, or target= (an embedding)")
    x1, x2 = model.check_pair(x1, x2)
    start = time.perf_counter()
    with evaluating(model):
        map1, map2, score, relevance = _run(info, model, x1, x2, used)
    seconds = time.perf_counter() - start
    common: dict[str, Any] = dict(
        maps=(map1, map2),
        score=score,
        method=info.name,
        params=used,
        images=DisplayImages(_display_source(model, x1, 1), _display_source(model, x2, 2)),
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


def _display_source(model: SimilarityModel, x: Tensor, tower: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """What :class:`DisplayImages` needs to show ``x``: the batch and ``tower``'s mean / std."""
    t = model.tower(tower)
    return x, t.mean, t.std


def _run(
    info: MethodInfo, model: SimilarityModel, x1: Tensor, x2: Tensor, used: dict[str, Any]
) -> tuple[Tensor, Tensor, Tensor, PairRelevance | None]:
    """The method's maps and score, checked: float32 maps of the input size, finite values; and
    the pair relevance of a correspondence method (whose maps are its marginals), else None."""
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
    for m, which in ((map1, "1"), (map2, "2")):
        if m.shape != (x1.shape[0], x1.shape[2], x1.shape[3]):
            raise RuntimeError(f"method {info.name} returned map {which} of shape {tuple(m.shape)}")
    check_all_finite(  # one device sync for the three
        (score, f"the similarity (embeddings of model {model.name!r})"),
        (map1, f"the {info.name} map of image 1"),
        (map2, f"the {info.name} map of image 2"),
    )
    return _plain(map1), _plain(map2), _plain(score), relevance


def _plain(t: Tensor) -> Tensor:
    """``t.detach().float()`` without the ops when ``t`` is a float32 tensor without a graph."""
    if t.requires_grad:
        t = t.detach()
    return t if t.dtype == torch.float32 else t.float()


def _explain_target(
    model: SimilarityModel,
    x1: Tensor,
    target: Tensor | str | list[str],
    info: MethodInfo,
    used: dict[str, Any],
    sources: tuple[str, str] | None,
) -> PairExplanation:
    x1 = model.check_input(x1, "image", 1)
    b = x1.shape[0]
    if isinstance(target, str) or (
        isinstance(target, (list, tuple)) and target and isinstance(target[0], str)
    ):
        texts = [target] if isinstance(target, str) else [str(t) for t in target]
        with torch.no_grad(), evaluating(model):
            z = model.embed_text(texts).float()
        described: dict[str, Any] = {"text": texts[0] if len(texts) == 1 else texts}
    else:
        z = torch.as_tensor(target).detach().float()
        described = {}
    z = z.to(x1.device)
    z = z[None] if z.dim() == 1 else z
    if z.dim() != 2 or len(z) not in (1, b):
        raise ValueError(
            f"target must be (D,), (1, D) or one row per image ({b}, D); got {tuple(z.shape)}"
        )
    check_finite(z, "the target embedding")
    described["embedding_dim"] = int(z.shape[1])
    start = time.perf_counter()
    maps, scores = [], []
    with evaluating(model):
        # one view per distinct target: methods batch (pair, sample) rows freely, and the fixed
        # tower must give every row the same target (a pair's result is the same alone or batched)
        if len(z) == 1:
            chunks = [(slice(0, b), z[0])]
        else:
            chunks = [(slice(i, i + 1), z[i]) for i in range(b)]
        for rows, zi in chunks:
            view = model.with_target(zi)
            image = x1[rows]
            _, m, score, _ = _run(info, view, torch.zeros_like(image), image, used)
            maps.append(m)
            scores.append(score)
    seconds = time.perf_counter() - start
    label = described.get("text", f"a fixed {z.shape[1]}-d embedding")
    return PairExplanation(
        maps=(torch.cat(maps), None),
        score=torch.cat(scores),
        method=info.name,
        params=used,
        images=DisplayImages(_display_source(model, x1, 1), None),
        model=model.describe(),
        sources=(sources[0] if sources else "image", str(label)),
        seconds=seconds,
        target=described,
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
