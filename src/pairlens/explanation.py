"""`PairExplanation`, the result of :func:`pairlens.explain`, and the function itself."""

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

    def save(self, out_dir: str | Path, stem: str | None = None, smooth: float = 0.0) -> list[Path]:
        """Write a PNG figure per pair, the raw maps (.npz) and JSON metadata into ``out_dir``.

        Files are written to a temporary name and renamed, so an interrupted save never leaves a
        half-written file under the final name. Returns the paths written.
        """
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.method
        written: list[Path] = []
        if self.images is not None:
            for i in range(len(self)):
                fig = self.figure(i, smooth=smooth)
                suffix = "" if len(self) == 1 else f"_{i}"
                png = out / f"{stem}{suffix}.png"
                written.append(
                    atomic_write(png, lambda f, fig=fig: fig.savefig(f, dpi=120, format="png"))
                )
                plt.close(fig)
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
