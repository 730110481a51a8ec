"""`PairExplanation`, the result of :func:`pairlens.explain`, and the function itself."""

from __future__ import annotations

import dataclasses
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
from pairlens.methods.registry import get_method
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
            maps=(self.maps[0][one], self.maps[1][one]),
            score=self.score[one],
            images=None if self.images is None else (self.images[0][one], self.images[1][one]),
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
            overlay(img[index], m[index], alpha=alpha, cmap=cmap, smooth=smooth, clip=clip)
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

    def save(
        self, out_dir: str | Path, stem: str | None = None, smooth: float = 0.0, clip: float = 99.0
    ) -> list[Path]:
        """Write a PNG figure per pair (``smooth`` / ``clip`` as in :meth:`overlay`), the raw
        maps (.npz, unaltered) and JSON metadata into ``out_dir``.

        Files are written to a temporary name and renamed, so an interrupted save never leaves a
        half-written file under the final name. Returns the paths written.
        """
        from pairlens.viz import DPI

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.method
        written: list[Path] = []
        if self.images is not None:
            for i in range(len(self)):
                fig = self.figure(i, smooth=smooth, clip=clip)
                suffix = "" if len(self) == 1 else f"_{i}"
                png = out / f"{stem}{suffix}.png"
                written.append(
                    atomic_write(png, lambda f, fig=fig: fig.savefig(f, dpi=DPI, format="png"))
                )
        arrays = {
            "map1": self.maps[0].detach().cpu().numpy().astype(np.float32),
            "map2": self.maps[1].detach().cpu().numpy().astype(np.float32),
            "score": self.score.detach().cpu().numpy().astype(np.float32),
        }
        written.append(
            atomic_write(out / f"{stem}.npz", lambda f: np.savez_compressed(f, **arrays))
        )
        meta = {
            "method": self.method,
            "params": _jsonable(self.params),
            "score": [float(v) for v in self.score.detach().cpu()],
            "model": self.model,
            "sources": list(self.sources) if self.sources else None,
            "seconds": self.seconds,
            "map_shape": list(self.maps[0].shape),
        }
        written.append(
            atomic_write(
                out / f"{stem}.json", lambda f: f.write(json.dumps(meta, indent=2).encode())
            )
        )
        return written


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
        A :class:`PairExplanation` with one (B, H, W) map per image.

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
    map1, map2, score = info.fn(model, x1, x2, **used)
    if score is None:
        with torch.no_grad():
            score = model.similarity(x1, x2)
    seconds = time.perf_counter() - start
    check_finite(score, f"the similarity (embeddings of model {model.name!r})")
    for m, which in ((map1, "1"), (map2, "2")):
        if m.shape != (x1.shape[0], x1.shape[2], x1.shape[3]):
            raise RuntimeError(f"method {info.name} returned map {which} of shape {tuple(m.shape)}")
        check_finite(m, f"the {info.name} map of image {which}")
    return PairExplanation(
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
