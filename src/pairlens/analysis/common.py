"""Plumbing shared by the analyses: resumable output folders, intervals, images and map statistics.

Output folder (:class:`RunFolder`): ``config.json`` holds every setting that changes a result;
``records.jsonl`` holds one JSON line per finished *unit* of work (a unit's records are written in
one line, so a unit is complete or absent; a line cut short by a crash is ignored and its unit is
recomputed). Re-running with ``resume=True`` skips the finished units, and refuses to continue a
folder whose settings differ. Tables (``table.md``, ``table.csv``) and figures (``*.png``) are
written atomically at the end, from the records, so they can be rebuilt at any time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pairlens.io import atomic_write

CONFIG_FILE = "config.json"
RECORDS_FILE = "records.jsonl"


# ---------------------------------------------------------------------- output folder
class RunFolder:
    """A resumable output folder (see the module docstring).

    Args:
        out: the folder (created if needed).
        config: JSON-friendly settings that determine the results.
        resume: continue a folder that already holds results; without it an existing
            ``records.jsonl`` is an error (nothing is overwritten).

    Raises:
        FileExistsError: results exist and ``resume`` is False.
        ValueError: ``resume`` is True but the stored settings differ.
    """

    def __init__(self, out: str | Path, config: dict[str, Any], resume: bool = False) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.config = json.loads(json.dumps(config))  # normalised: tuples become lists
        records, config_path = self.out / RECORDS_FILE, self.out / CONFIG_FILE
        if records.exists() and records.stat().st_size > 0:
            if not resume:
                raise FileExistsError(
                    f"{self.out} already holds results; pass --resume (resume=True) to continue "
                    "them or choose another output folder"
                )
            saved = json.loads(config_path.read_text()) if config_path.exists() else {}
            diff = sorted(k for k in set(saved) | set(self.config)
                          if saved.get(k) != self.config.get(k))
            if diff:
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {self.config.get(k)!r}"
                                   for k in diff)
                raise ValueError(f"cannot resume {self.out}: settings differ ({detail})")
        self.write_text(CONFIG_FILE, json.dumps(self.config, indent=2))

    def units(self) -> dict[str, list[dict[str, Any]]]:
        """Finished units: ``{unit key: its records}`` (a truncated last line is skipped)."""
        path = self.out / RECORDS_FILE
        done: dict[str, list[dict[str, Any]]] = {}
        if not path.exists():
            return done
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption: that unit is redone
            done[item["unit"]] = item["records"]
        return done

    def records(self) -> list[dict[str, Any]]:
        """All records of the finished units, in the order they were written."""
        return [r for recs in self.units().values() for r in recs]

    def add(self, unit: str, records: list[dict[str, Any]]) -> None:
        """Append a finished unit (one line, flushed to disk)."""
        line = json.dumps({"unit": unit, "records": records}, allow_nan=True) + "\n"
        with open(self.out / RECORDS_FILE, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write_text(self, name: str, text: str) -> Path:
        data = text.encode("utf-8")
        return atomic_write(self.out / name, lambda f: f.write(data))

    def write_csv(self, name: str, rows: Sequence[dict[str, Any]]) -> Path:
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        return self.write_text(name, buf.getvalue())

    def write_figure(self, name: str, fig: Any, dpi: int = 110) -> Path:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        data = buf.getvalue()
        return atomic_write(self.out / name, lambda f: f.write(data))


def run_units(folder: RunFolder | None, units: Sequence[tuple[str, Callable[[], list]]],
              desc: str) -> list[dict[str, Any]]:
    """Run the work units ``(key, compute)`` in order with one progress bar: a unit already
    finished in ``folder`` is read back, any other is computed (inner progress bars off), timed
    (``seconds`` per record, unless the unit sets it) and appended to ``folder``. Returns every
    record in unit order, so a resumed run returns what an uninterrupted one does."""
    from pairlens.progress import progress_bars, track

    done = folder.units() if folder is not None else {}
    records: list[dict[str, Any]] = []
    for key, compute in track(units, desc=desc):
        if key in done:
            records += done[key]
            continue
        began = time.perf_counter()
        with progress_bars(False):
            recs = compute()
        seconds = (time.perf_counter() - began) / max(1, len(recs))
        for r in recs:
            r.setdefault("seconds", round(seconds, 4))
        if folder is not None:
            folder.add(key, recs)
        records += recs
    return records


# ---------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval over ``n`` values (NaN when n = 0)."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return format_interval(self)


def mean_interval(values: Iterable[float], confidence: float = 0.95,
                  resamples: int = 4000) -> Interval:
    """Mean of the finite ``values`` (NaNs dropped) with a percentile-bootstrap interval
    (``resamples`` resamples, fixed seed, so the interval stays inside the range of the data:
    the metrics are bounded). One value, or identical values, give a zero-width interval."""
    import numpy as np

    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))])
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n == 1 or float(v.max() - v.min()) == 0.0:
        return Interval(mean, mean, mean, n)
    rng = np.random.default_rng(0)
    means = v[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), n)


def proportion_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Fraction ``k / n`` with its Wilson score interval (scipy ``binomtest``)."""
    from scipy import stats

    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence,
                                                         method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high), n)


def format_interval(iv: Interval, digits: int = 3, percent: bool = False) -> str:
    """``0.945 [0.912, 0.978]`` (or ``64 % [50, 76]``); ``–`` when there is no value."""
    if iv.n == 0 or not math.isfinite(iv.value):
        return "–"
    if percent:
        return f"{100 * iv.value:.0f} % [{100 * iv.low:.0f}, {100 * iv.high:.0f}]"
    if iv.n == 1:
        return f"{iv.value:.{digits}f}"
    return f"{iv.value:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def interval_fields(name: str, iv: Interval) -> dict[str, float]:
    """``{name: value, name_low: low, name_high: high, name_n: n}`` for a CSV row."""
    return {name: iv.value, f"{name}_low": iv.low, f"{name}_high": iv.high, f"{name}_n": iv.n}


def row_interval(row: dict[str, Any], name: str) -> Interval:
    """The :class:`Interval` stored in ``row`` by :func:`interval_fields`."""
    return Interval(row[name], row[f"{name}_low"], row[f"{name}_high"], row[f"{name}_n"])


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


# ---------------------------------------------------------------------- images
def default_data(model: Any) -> str:
    """The bundled image source that suits a model: ``digits`` for 32-px digits models, else
    ``photos``."""
    name = str(getattr(model, "name", ""))
    return "digits" if name.startswith("digits") or tuple(model.input_size) == (32, 32) \
        else "photos"


def load_images(model: Any, data: str, n: int | None = None, seed: int = 0
                ) -> tuple[Tensor, list[str | None], list[str]]:
    """``n`` images of ``data`` (see :func:`pairlens.study.pairs.load_images`: ``digits``,
    ``digits:SPLIT``, ``photos``, a folder or a list file), chosen by a seeded permutation, as
    model-input tensors (n, 3, H, W) on the model's device, with their labels and names.

    Raises:
        ValueError: ``n`` < 1 or larger than the number of images available.
    """
    import numpy as np

    from pairlens.study.pairs import load_images as source_images

    items, _ = source_images(data)
    total = len(items)
    n = total if n is None else int(n)
    if not 1 <= n <= total:
        raise ValueError(f"{data} has {total} images; asked for {n}")
    order = np.random.default_rng(seed).permutation(total)[:n]
    chosen = [items[int(i)] for i in order]
    return (torch.cat([prepare(model, it.image) for it in chosen]),
            [it.label for it in chosen], [it.name for it in chosen])


def prepare(model: Any, image: Any) -> Tensor:
    """One image (a path, PIL image, array or (3, H, W) tensor in [0, 1]) as a (1, 3, H, W)
    model-input tensor."""
    if isinstance(image, Tensor):
        x01 = image.float().unsqueeze(0) if image.dim() == 3 else image.float()
        if tuple(x01.shape[-2:]) == tuple(model.input_size):
            return model.normalize(x01.to(model.device))
        image = x01[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    return model.preprocess(image)


def random_box(rng: Any, height: int, width: int, area: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A random box ``(top, left, h, w)`` inside a ``height`` x ``width`` image: area fraction
    uniform in ``area``, aspect ratio w/h log-uniform in ``ratio`` (torchvision's
    ``RandomResizedCrop`` / ``RandomErasing`` recipe, without its retries: sides are clipped),
    position uniform; ``rng`` a :class:`numpy.random.Generator`."""
    a = rng.uniform(*area) * height * width
    r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = min(width, max(1, round(math.sqrt(a * r))))
    h = min(height, max(1, round(math.sqrt(a / r))))
    return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w


# ---------------------------------------------------------------------- explanations
def explain_pairs(model: Any, x1: Tensor, x2: Tensor, method: str,
                  batch_size: int | None = None, **params: Any
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """``pairlens.explain`` of the pairs (x1[i], x2[i]) as (similarity (B,), map 1, map 2), each
    map (B, H, W). ``batch_size`` (images per forward pass; None: the device-aware default) goes
    to methods that take one, unless ``params`` sets it. A pair the method refuses because its
    similarity is stationary (identical embeddings: a gradient map would be blank,
    :class:`BlankGradientError`) gets NaN maps instead of stopping the batch; the analyses count
    such pairs and never score them."""
    from pairlens.explanation import explain
    from pairlens.methods.registry import get_method
    from pairlens.models.similarity import BlankGradientError

    if batch_size is not None and "batch_size" not in params \
            and "batch_size" in get_method(method).params:
        params["batch_size"] = batch_size
    try:
        exp = explain(model, x1, x2, method=method, **params)
        return exp.score, exp.maps[0], exp.maps[1]
    except BlankGradientError:
        if len(x1) == 1:
            with torch.no_grad():
                score = model.similarity(x1, x2)
            blank = torch.full((1, *x1.shape[2:]), math.nan, device=x1.device)
            return score, blank, blank.clone()
    parts = [explain_pairs(model, x1[i : i + 1], x2[i : i + 1], method, **params)
             for i in range(len(x1))]
    return tuple(torch.cat([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


# ---------------------------------------------------------------------- map statistics
def positive_mass(maps: Tensor) -> Tensor:
    """Maps (B, H, W) as distributions: negative values clipped to 0, each map divided by its
    sum (an all-zero map stays all zero)."""
    m = maps.float().clamp(min=0).flatten(1)
    total = m.sum(1, keepdim=True)
    return torch.where(total > 0, m / total.clamp(min=1e-30), torch.zeros_like(m)).view_as(maps)


def mass_in(maps: Tensor, masks: Tensor) -> Tensor:
    """Fraction (B,) of each map's positive mass inside its boolean mask (B, H, W); NaN for an
    all-zero map (no evidence at all)."""
    p = positive_mass(maps)
    inside = (p * masks.to(p.device, p.dtype)).flatten(1).sum(1)
    empty = p.flatten(1).sum(1) == 0
    return torch.where(empty, torch.full_like(inside, math.nan), inside)


def normalized_entropy(maps: Tensor) -> Tensor:
    """Shannon entropy (B,) of each map's positive mass, divided by log(H*W): 1 for a uniform
    map, 0 for a single pixel; NaN for an all-zero map."""
    p = positive_mass(maps).flatten(1)
    h = -(p * torch.log(p.clamp(min=1e-30))).sum(1) / math.log(p.shape[1])
    return torch.where(p.sum(1) == 0, torch.full_like(h, math.nan), h)


def top_fraction_mask(maps: Tensor, q: float) -> Tensor:
    """Boolean (B, H, W): the top ``q`` fraction of each map's pixels (ties by pixel index)."""
    from pairlens.metrics.faithfulness import pixel_ranks

    k = max(1, round(q * maps[0].numel()))
    return (pixel_ranks(maps) < k).view_as(maps)


def finite_mean(values: Iterable[float]) -> float:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else math.nan
