"""Aggregation of stored results into the paper's tables (seed 000, Tables I-VI, Fig. 14).

* per study (a model and a setting), methods x metrics: the mean over pairs of each metric
  (Tables I-IV; SAD / CAD averaged over the pairs where they are defined, the number of skipped
  pairs reported); MS per method and model (Table V);
* mean seconds per pair of each method's explanation (Table VI) and of its metric pass;
* Fig. 14 groups: ``(SI, CI)`` mean, ``1 - (SD, CD)`` mean, ``1 - (SAD, CAD)`` mean, so higher is
  better in every group;
* each method against the ``random`` baseline (:func:`compare_with_baseline`): means with 95 %
  t-intervals, the paired difference with its interval and a Wilcoxon signed-rank test across
  pairs (``scipy.stats``).

Methods are compared only on the pairs they all have: for each study and metric, a cell is the
mean over the pairs stored for *every* method variant of that study (pairs computed for some
methods only are left out and counted in :attr:`Study.left_out`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from pairlens.metrics import HIGHER_IS_BETTER

TABLE_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD", "SAI", "CAI", "RSI", "RSD", "RCI", "RCD",
                 "SMoRF", "SLeRF", "CMoRF", "CLeRF")
CURVE_METRICS = ("SI", "SD", "CI", "CD", "RSI", "RSD", "RCI", "RCD", "PI", "PD")
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
    values: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)  # common pairs
    left_out: dict[tuple[str, str], int] = field(default_factory=dict)  # pairs not common

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
    common: dict[tuple[str, str, str], set[int]] = {}
    for (model, setting, _label, metric), pv in values.items():
        ids = {pid for pid, _ in pv}
        key = (model, setting, metric)
        common[key] = common[key] & ids if key in common else ids
    for (model, setting, label, metric), pv in values.items():
        shared = common[(model, setting, metric)]  # over the variants that have the metric
        kept = sorted((pid, v) for pid, v in pv if pid in shared)
        study = studies[(model, setting)]
        study.left_out[(label, metric)] = len(pv) - len(kept)
        study.values[(label, metric)] = {pid: math.nan if v is None else float(v)
                                         for pid, v in kept}
        vals = np.array([v for _, v in kept if v is not None], dtype=np.float64)
        study.cells[(label, metric)] = Cell(
            mean=float(vals.mean()) if len(vals) else math.nan,
            std=float(vals.std()) if len(vals) else math.nan,
            n=len(vals),
            skipped=len(kept) - len(vals),
        )
    for (model, setting, label), ts in seconds.items():
        arr = np.array(ts, dtype=np.float64)
        studies[(model, setting)].seconds[label] = (float(arr[:, 0].mean()),
                                                    float(arr[:, 1].mean()), len(ts))
    for (model, setting, label, metric), pc in curves.items():
        shared = common.get((model, setting, metric))
        pc = sorted((t for t in pc if shared is None or t[0] in shared), key=lambda t: t[0])
        if not pc:
            continue
        lengths = {len(c) for _, c in pc}
        if len(lengths) == 1:
            studies[(model, setting)].curves[(label, metric)] = np.stack([c for _, c in pc]).mean(0)
    return list(studies.values())


@dataclass
class Comparison:
    """One method against the baseline on one metric, over the pairs both have (non-NaN)."""

    label: str
    metric: str
    n: int
    mean: float
    ci: tuple[float, float]
    baseline_mean: float
    baseline_ci: tuple[float, float]
    diff: float
    diff_ci: tuple[float, float]
    p_value: float
    better: bool | None  # None when not significant at 0.05 (or undefined)


def mean_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Mean and its Student-t confidence interval; NaN interval with fewer than 2 values."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return math.nan, (math.nan, math.nan)
    m = float(x.mean())
    if len(x) < 2:
        return m, (math.nan, math.nan)
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, (m - half, m + half)


def paired_test(diff: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired differences; 1.0 when all
    differences are 0, NaN with fewer than 2 pairs."""
    from scipy import stats

    diff = np.asarray(diff, dtype=np.float64)
    if len(diff) < 2:
        return math.nan
    if not np.any(diff != 0):
        return 1.0
    return float(stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


def baseline_label(study: Study, name: str = "random") -> str | None:
    """The label of the baseline in a study: ``name`` itself, else its first variant."""
    if name in study.methods:
        return name
    return next((lab for lab in study.methods if lab.split("[", 1)[0] == name), None)


def compare_with_baseline(study: Study, baseline: str = "random",
                          alpha: float = 0.05) -> list[Comparison]:
    """Every other method against the baseline, metric by metric (MS excluded), over the pairs
    where both have a value: means with 95 % t-intervals, the mean paired difference (method -
    baseline) with its interval and the Wilcoxon signed-rank p-value. ``better`` says whether
    the method is significantly better (in the metric's direction) at level ``alpha``."""
    base = baseline_label(study, baseline)
    if base is None:
        return []
    out = []
    for metric in study.metrics():
        ref = study.values.get((base, metric))
        if metric == "MS" or not ref:
            continue
        for label in study.methods:
            vals = study.values.get((label, metric))
            if label == base or not vals:
                continue
            ids = [pid for pid in sorted(vals) if pid in ref
                   and math.isfinite(vals[pid]) and math.isfinite(ref[pid])]
            a = np.array([vals[pid] for pid in ids])
            r = np.array([ref[pid] for pid in ids])
            mean, ci = mean_interval(a)
            bmean, bci = mean_interval(r)
            diff, dci = mean_interval(a - r)
            p = paired_test(a - r)
            better = None
            if math.isfinite(p) and p < alpha:
                better = (diff > 0) == HIGHER_IS_BETTER.get(metric, True)
            out.append(Comparison(label, metric, len(ids), mean, ci, bmean, bci, diff, dci, p,
                                  better))
    return out


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
