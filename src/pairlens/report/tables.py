"""Aggregation of stored results into the paper's tables (seed 000, Tables I-VI, Fig. 14).

* per study (a model and a setting), methods x metrics: the mean over pairs of each metric
  (Tables I-IV; SAD / CAD averaged over the pairs where they are defined, the number of skipped
  pairs reported); MS per method and model (Table V);
* mean seconds per pair of each method's explanation (Table VI) and of its metric pass;
* Fig. 14 groups: ``(SI, CI)`` mean, ``1 - (SD, CD)`` mean, ``1 - (SAD, CAD)`` mean, so higher is
  better in every group.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from pairlens.metrics import HIGHER_IS_BETTER

TABLE_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD", "SAI", "CAI")
GROUPS = {
    "(SI, CI)": (("SI", "CI"), False),
    "1 - (SD, CD)": (("SD", "CD"), True),
    "1 - (SAD, CAD)": (("SAD", "CAD"), True),
}


@dataclass
class Cell:
    """Mean of one metric over the pairs of one method variant (NULL values skipped)."""

    mean: float
    std: float
    n: int
    skipped: int


@dataclass
class Study:
    """All results of one model under one setting."""

    model: str
    setting: str
    methods: list[str] = field(default_factory=list)  # labels, in first-seen order
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (label, metric)
    seconds: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    curves: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # mean curves

    @property
    def title(self) -> str:
        return f"{self.model} ({self.setting})"

    def metrics(self) -> list[str]:
        present = {m for _, m in self.cells}
        order = list(TABLE_METRICS) + ["MS"]
        return [m for m in order if m in present] + sorted(present - set(order))

    def value(self, label: str, metric: str) -> float:
        cell = self.cells.get((label, metric))
        return cell.mean if cell else math.nan

    def group(self, label: str, name: str) -> float:
        metrics, invert = GROUPS[name]
        vals = [self.value(label, m) for m in metrics]
        if any(math.isnan(v) for v in vals):
            return math.nan
        mean = sum(vals) / len(vals)
        return 1 - mean if invert else mean

    def best(self, metric: str) -> str | None:
        vals = [(self.value(lab, metric), lab) for lab in self.methods]
        vals = [(v, lab) for v, lab in vals if not math.isnan(v)]
        if not vals:
            return None
        higher = HIGHER_IS_BETTER.get(metric, True)
        return (max if higher else min)(vals, key=lambda t: t[0])[1]


def build_studies(tables: dict[str, list[tuple]]) -> list[Study]:
    """Group stored rows (from :func:`pairlens.study.store.read_tables`) into studies."""
    labels: dict[tuple, str] = {}
    order: dict[tuple[str, str], list[str]] = defaultdict(list)
    seconds: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for model, setting, method, params, _pid, label, t_exp, t_met in tables["pairs_done"]:
        labels[(model, setting, method, params)] = label
        if label not in order[(model, setting)]:
            order[(model, setting)].append(label)
        seconds[(model, setting, label)].append((t_exp or 0.0, t_met or 0.0))
    values: dict[tuple[str, str, str, str], list[tuple[int, float | None]]] = defaultdict(list)
    for model, setting, method, params, pid, metric, value in tables["results"]:
        label = labels.get((model, setting, method, params))
        if label is None:  # results without their completion row cannot exist; be safe
            continue
        values[(model, setting, label, metric)].append((pid, value))
    curves: dict[tuple[str, str, str, str], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for model, setting, method, params, pid, metric, blob in tables["curves"]:
        label = labels.get((model, setting, method, params))
        if label is not None:
            curves[(model, setting, label, metric)].append((pid, np.frombuffer(blob, "<f4")))
    studies: dict[tuple[str, str], Study] = {}
    for key in sorted(order):
        studies[key] = Study(model=key[0], setting=key[1], methods=_method_order(order[key]))
    for (model, setting, label, metric), pv in values.items():
        pv.sort(key=lambda t: t[0])
        vals = np.array([v for _, v in pv if v is not None], dtype=np.float64)
        studies[(model, setting)].cells[(label, metric)] = Cell(
            mean=float(vals.mean()) if len(vals) else math.nan,
            std=float(vals.std()) if len(vals) else math.nan,
            n=len(vals),
            skipped=len(pv) - len(vals),
        )
    for (model, setting, label), ts in seconds.items():
        arr = np.array(ts, dtype=np.float64)
        studies[(model, setting)].seconds[label] = (float(arr[:, 0].mean()),
                                                    float(arr[:, 1].mean()), len(ts))
    for (model, setting, label, metric), pc in curves.items():
        pc.sort(key=lambda t: t[0])
        lengths = {len(c) for _, c in pc}
        if len(lengths) == 1:
            studies[(model, setting)].curves[(label, metric)] = np.stack([c for _, c in pc]).mean(0)
    return list(studies.values())


def _method_order(labels: list[str]) -> list[str]:
    """Registered-method order (the order of ``pairlens methods``), variants after their method,
    the random baseline last."""
    from pairlens.methods.registry import method_infos

    rank = {info.name: i for i, info in enumerate(method_infos())}

    def key(label: str) -> tuple:
        name = label.split("[", 1)[0]
        return (name == "random", rank.get(name, len(rank)), label)

    return sorted(labels, key=key)


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the finite (x, y) points; NaN with fewer than 3 or constant data."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pts) < 3:
        return math.nan
    xa, ya = np.array(pts).T
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return math.nan
    return float(np.corrcoef(xa, ya)[0, 1])
