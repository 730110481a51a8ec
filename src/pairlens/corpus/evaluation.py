"""The quantitative evaluation of COCOA (seed 002, §4.1, Tables 1-4) on any model with a probe.

Protocol (following the paper and its reference code):

* **Targets**: label-free, contrastive label-free, corpus and COCOA
  (:mod:`pairlens.corpus.targets`), cosine similarity by default; **methods**: Integrated
  Gradients (50 steps), GradientSHAP
  (50 samples, sd 0.2), RISE (5000 masks, 4 x 4 grid for 32 px inputs, else 7 x 7, p 0.5), all
  with the blurred explicand (kernel 21, sigma 5) as baseline, plus random attributions
  (standard normal noise) as the benchmark. Attributions are averaged over channels.
* **Data**: for each class c, ``corpus_size`` (100) training images of class c are the corpus;
  the foil is drawn at random from the remaining training images, of the size Proposition C.2
  gives for delta = 0.01 and epsilon = 0.05 (1060 for non-negative embeddings; capped at what is
  available); explicands are held-out images of class c (*same class*, Table 1) or of any other
  class (*different class*, Table 2). Corpus, foil and explicands are redrawn for each seed.
* **Measures**: insertion and deletion with 50 steps (``H*W // 50`` pixels per step, the first
  ``H*W % 50`` steps one more), pixels ranked by attribution (descending, ties by flat index),
  removed pixels replaced by the blurred explicand (deletion) or inserted into it (insertion); the
  curve is scored by (i) the contrastive corpus similarity with the same corpus and foil (Tables
  3-4) and (ii) the *corpus majority probability*: the softmax probability, under the downstream
  linear classifier on the representation, of the class most corpus images are predicted as
  (Tables 1-2). AUC is the trapezoid rule over the fraction of pixels in [0, 1].
* **Statistics**: per seed the mean AUC over all explicands; tables give the mean over seeds and
  the 95 % confidence interval ``1.96 * std / sqrt(n_seeds)`` (population std, as the reference
  notebooks).

Costs: corpus and foil embeddings are computed once per class and seed; the four targets of an
explicand share RISE's masked images (one encoder pass per mask scores all four), and every
ablated image is encoded once for both measures.

Results go to the SQLite table ``corpus_results`` (one row per seed x setting x method x target x
measure) of a results database; :func:`corpus_tables` renders Tables 1-4 from it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pairlens.attribution import attribute
from pairlens.attribution.baselines import blur
from pairlens.attribution.rise import rise_maps
from pairlens.corpus.targets import (
    ContrastiveCorpus,
    ContrastiveLabelFree,
    Corpus,
    LabelFree,
    Target,
    embed_images,
    foil_size,
)
from pairlens.models.similarity import pool_features

TARGET_NAMES = ("label-free", "contrastive-label-free", "corpus", "cocoa")
TARGET_LABELS = {
    "label-free": "Label-Free",
    "contrastive-label-free": "Contrastive Label-Free",
    "corpus": "Corpus",
    "cocoa": "COCOA",
    "random": "Random",
}
METHOD_NAMES = ("integrated-gradients", "gradient-shap", "rise")
METHOD_LABELS = {
    "integrated-gradients": "Integrated Gradients",
    "gradient-shap": "Gradient SHAP",
    "rise": "RISE",
    "random": "Random",
}
SETTINGS = ("same-class", "different-class")
MEASURES = ("corpus-majority-prob", "contrastive-corpus-similarity")
MEASURE_LABELS = {
    "corpus-majority-prob": "corpus majority probability",
    "contrastive-corpus-similarity": "contrastive corpus similarity",
}
TABLE = "corpus_results"


@dataclass
class CorpusEvalConfig:
    """Settings of one §4.1 evaluation run (defaults: the paper's, except the explicand count)."""

    model: str = "digits"
    checkpoint: str | None = None
    embedding: str | None = "backbone"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    settings: tuple[str, ...] = SETTINGS
    methods: tuple[str, ...] = METHOD_NAMES
    targets: tuple[str, ...] = TARGET_NAMES
    similarity: str = "cosine"
    explicands_per_class: int = 1
    classes: tuple[int, ...] | None = None
    corpus_size: int = 100
    foil_size: int | None = None
    delta: float = 0.01
    epsilon: float = 0.05
    n_masks: int = 5000
    ig_steps: int = 50
    shap_samples: int = 50
    shap_stdevs: float = 0.2
    ablation_steps: int = 50
    batch_size: int = 512
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class EvalData:
    """Images in model-input space with labels: the pool for corpus / foil and the held-out set."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


# ----------------------------------------------------------------------------- measures
def ablation_counts(n_pixels: int, n_steps: int = 50) -> Tensor:
    """Cumulative number of pixels changed at steps 0..n_steps (the reference's step sizes)."""
    n_steps = min(n_steps, n_pixels)
    size, remainder = divmod(n_pixels, n_steps)
    sizes = [0] + [size + (1 if i < remainder else 0) for i in range(n_steps)]
    return torch.tensor(sizes).cumsum(0)


def ablation_images(x: Tensor, base: Tensor, maps: Tensor, kind: str, n_steps: int = 50) -> Tensor:
    """Altered images (M, S+1, 3, H, W) for M maps (M, H, W) of one explicand ``x`` (3, H, W).

    Deletion replaces the top-ranked pixels by ``base`` (the blurred explicand); insertion starts
    from ``base`` and copies them from ``x``. Ranking: descending, ties by flat index."""
    m, h, w = maps.shape
    order = torch.sort(-maps.reshape(m, h * w), dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=maps.device).expand(m, -1))
    counts = ablation_counts(h * w, n_steps).to(maps.device)
    top = (rank[:, None, :] < counts[None, :, None]).float().reshape(m, -1, 1, h, w)
    keep = top if kind == "insertion" else 1 - top
    if kind not in ("insertion", "deletion"):
        raise ValueError(f"kind must be insertion or deletion; got {kind!r}")
    return x * keep + base * (1 - keep)


def auc(curves: Tensor, n_pixels: int, n_steps: int = 50) -> Tensor:
    """Trapezoid AUC of curves (..., S+1) over the fraction of changed pixels in [0, 1]."""
    frac = ablation_counts(n_pixels, n_steps).to(curves.device, curves.dtype) / n_pixels
    return torch.trapezoid(curves, frac, dim=-1)


def probe_representation(model: Any, classifier: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    """The representation the linear ``classifier`` reads: the model's embedding if the sizes
    match, else the pooled encoder output (for example the digits probe on backbone features)."""
    in_features = getattr(classifier, "in_features", None)
    probe = torch.zeros(1, 3, *model.input_size, device=model.device)
    with torch.no_grad():
        d_embed = model.embed(probe).shape[-1]
    if in_features is None or in_features == d_embed:
        return model.embed
    with torch.no_grad():
        d_pool = pool_features(model.encoder(probe)).shape[-1]
    if in_features == d_pool:
        return lambda x: pool_features(model.encoder(x))
    raise ValueError(
        f"the classifier takes {in_features} features but the model's embedding has {d_embed} "
        f"and its pooled encoder output {d_pool}"
    )


# ----------------------------------------------------------------------------- one explicand
def _attribution_maps(
    targets: dict[str, Target], i: int, x: Tensor, base: Tensor, cfg: CorpusEvalConfig, seed: int
) -> dict[tuple[str, str], Tensor]:
    """Channel-averaged maps (H, W) of explicand ``i`` for every (method, target) and random."""
    maps: dict[tuple[str, str], Tensor] = {}
    selected = {name: t.select(i) for name, t in targets.items()}
    names = list(selected)
    model = next(iter(selected.values())).model
    for method in cfg.methods:
        if method == "rise":

            def stacked(images: Tensor) -> Tensor:
                z = model.embed(images)
                return torch.stack([selected[n].score_embeddings(z) for n in names], dim=1)

            generator = torch.Generator(device=x.device).manual_seed(seed)
            out = rise_maps(stacked, x, base, n_masks=cfg.n_masks, generator=generator)
            for k, name in enumerate(names):
                maps[(method, name)] = out[k]
            continue
        params: dict[str, Any] = (
            {"n_steps": cfg.ig_steps}
            if method == "integrated-gradients"
            else {"n_samples": cfg.shap_samples, "stdevs": cfg.shap_stdevs}
        )
        for name in names:
            maps[(method, name)] = attribute(
                selected[name], x, method, baseline=base, seed=seed, **params
            )[0]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    maps[("random", "random")] = torch.randn(x.shape, generator=generator, device=x.device).mean(1)[
        0
    ]
    return maps


@torch.no_grad()
def _score_maps(
    maps: dict[tuple[str, str], Tensor],
    x: Tensor,
    base: Tensor,
    measure_fns: dict[str, Callable[[Tensor], Tensor]],
    embed: Callable[[Tensor], Tensor],
    cfg: CorpusEvalConfig,
) -> dict[tuple[str, str, str, str], float]:
    """AUCs {(kind, method, target, measure): value} of every map of one explicand."""
    keys = list(maps)
    stacked = torch.stack([maps[k] for k in keys])
    h, w = stacked.shape[-2:]
    out: dict[tuple[str, str, str, str], float] = {}
    for kind in ("insertion", "deletion"):
        images = ablation_images(x[0], base[0], stacked, kind, cfg.ablation_steps)
        flat = images.reshape(-1, *images.shape[2:])
        z = torch.cat(
            [embed(flat[s : s + cfg.batch_size]) for s in range(0, len(flat), cfg.batch_size)]
        )
        for measure, fn in measure_fns.items():
            curves = fn(z).reshape(len(keys), -1)
            aucs = auc(curves, h * w, cfg.ablation_steps)
            for k, value in zip(keys, aucs.tolist(), strict=True):
                out[(kind, k[0], k[1], measure)] = value
    return out


# ----------------------------------------------------------------------------- the run
def run_corpus_eval(
    model: Any,
    classifier: torch.nn.Module,
    data: EvalData,
    cfg: CorpusEvalConfig,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the §4.1 protocol; returns one record per seed x setting x method x target x measure
    with the mean insertion and deletion AUC over the seed's explicands."""
    device = model.device
    model.eval()
    classifier = classifier.to(device).eval()
    rep = probe_representation(model, classifier)
    shared_rep = rep is model.embed
    train_x, train_y = data.train_images.to(device), data.train_labels.cpu()
    test_x, test_y = data.test_images.to(device), data.test_labels.cpu()
    train_z = embed_images(model, train_x, cfg.batch_size)
    with torch.no_grad():
        train_pred = torch.cat(
            [
                classifier(rep(train_x[s : s + cfg.batch_size])).argmax(-1).cpu()
                for s in range(0, len(train_x), cfg.batch_size)
            ]
        )
    nonnegative = bool((train_z >= 0).all())
    classes = cfg.classes or tuple(sorted(set(train_y.tolist())))
    sums: dict[tuple, list[float]] = defaultdict(list)
    for seed in cfg.seeds:
        for setting in cfg.settings:
            for c in classes:
                g = torch.Generator().manual_seed(_mix(seed, c, SETTINGS.index(setting)))
                in_class = torch.nonzero(train_y == c).flatten()
                in_class = in_class[torch.randperm(len(in_class), generator=g)]
                corpus_idx = in_class[: cfg.corpus_size]
                rest = torch.ones(len(train_y), dtype=torch.bool)
                rest[corpus_idx] = False
                rest_idx = torch.nonzero(rest).flatten()
                rest_idx = rest_idx[torch.randperm(len(rest_idx), generator=g)]
                m = cfg.foil_size or foil_size(cfg.delta, cfg.epsilon, nonnegative)
                foil_idx = rest_idx[:m]
                pool = torch.nonzero((test_y == c) if setting == "same-class" else (test_y != c))
                pool = pool.flatten()
                explicand_idx = pool[torch.randperm(len(pool), generator=g)][
                    : cfg.explicands_per_class
                ]
                if len(explicand_idx) == 0 or len(corpus_idx) == 0:
                    continue
                corpus_z, foil_z = train_z[corpus_idx], train_z[foil_idx]
                explicands = test_x[explicand_idx.to(device)]
                majority = int(torch.mode(train_pred[corpus_idx]).values)
                all_targets = {
                    "label-free": LabelFree(model, explicands, cfg.similarity),
                    "contrastive-label-free": ContrastiveLabelFree(
                        model, explicands, foil_z, cfg.similarity
                    ),
                    "corpus": Corpus(model, corpus_z, cfg.similarity),
                    "cocoa": ContrastiveCorpus(model, corpus_z, foil_z, cfg.similarity),
                }
                targets = {n: all_targets[n] for n in cfg.targets}
                cocoa = all_targets["cocoa"]

                def majority_prob(z: Tensor, _maj: int = majority) -> Tensor:
                    return classifier(z).softmax(-1)[:, _maj]

                if shared_rep:
                    embed, majority_fn = model.embed, majority_prob
                else:

                    def embed(images: Tensor) -> Tensor:
                        return torch.cat([model.embed(images), rep(images)], dim=1)

                    d = int(cocoa.direction.shape[-1])

                    def majority_fn(z: Tensor, _d: int = d, _f: Callable = majority_prob) -> Tensor:
                        return _f(z[:, _d:])

                d_embed = int(cocoa.direction.shape[-1])
                measure_fns = {
                    "corpus-majority-prob": majority_fn,
                    "contrastive-corpus-similarity": lambda z, _t=cocoa, _d=d_embed: (
                        _t.score_embeddings(z[:, :_d])
                    ),
                }
                for i in range(len(explicands)):
                    x = explicands[i : i + 1]
                    base = blur(x)
                    start = time.perf_counter()
                    explicand_seed = _mix(seed, c, SETTINGS.index(setting), i)
                    maps = _attribution_maps(targets, i, x, base, cfg, explicand_seed)
                    scores = _score_maps(maps, x, base, measure_fns, embed, cfg)
                    for (kind, method, target, measure), value in scores.items():
                        sums[(seed, setting, method, target, measure, kind)].append(value)
                    if progress:
                        progress(
                            f"seed {seed} {setting} class {c} explicand {i}: "
                            f"{time.perf_counter() - start:.1f}s"
                        )
    records: dict[tuple, dict[str, Any]] = {}
    for (seed, setting, method, target, measure, kind), values in sums.items():
        key = (seed, setting, method, target, measure)
        rec = records.setdefault(
            key,
            {
                "seed": seed,
                "setting": setting,
                "method": method,
                "target": target,
                "measure": measure,
                "n_explicands": len(values),
            },
        )
        rec[kind] = float(sum(values) / len(values))
    return list(records.values())


def _mix(*values: int) -> int:
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (int(v) + 0x9E3779B9)) * 1099511628211) % (2**61 - 1)
    return h


# ----------------------------------------------------------------------------- digits
def digits_eval_setup(
    cfg: CorpusEvalConfig, device: str = "cpu"
) -> tuple[Any, torch.nn.Module, EvalData]:
    """The bundled digits model (backbone embedding, the representation its probe reads), its
    linear probe and the digits train / test splits in model-input space."""
    from pairlens.data.bundled import digits
    from pairlens.models import load_model

    kwargs: dict[str, Any] = {"checkpoint": cfg.checkpoint, "device": device}
    if cfg.embedding:
        kwargs["embedding"] = cfg.embedding
    model = load_model(cfg.model, **kwargs)
    classifier = getattr(model, "classifier", None)
    if classifier is None:
        raise ValueError(f"model {cfg.model!r} has no linear probe (model.classifier)")
    train_x, train_y = digits("train")
    test_x, test_y = digits("test")
    data = EvalData(
        model.normalize(train_x.to(model.device)),
        train_y,
        model.normalize(test_x.to(model.device)),
        test_y,
    )
    return model, classifier, data


# ----------------------------------------------------------------------------- storage
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    similarity TEXT NOT NULL,
    setting TEXT NOT NULL,
    seed INTEGER NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    measure TEXT NOT NULL,
    insertion REAL,
    deletion REAL,
    n_explicands INTEGER,
    config TEXT,
    created TEXT,
    PRIMARY KEY (run_id, setting, seed, method, target, measure)
)
"""


def save_results(
    db_path: str | Path, records: Sequence[dict[str, Any]], cfg: CorpusEvalConfig, run_id: str
) -> None:
    """Insert (or replace) the records of run ``run_id`` into the ``corpus_results`` table."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with sqlite3.connect(db_path, timeout=600) as con:
        con.execute(SCHEMA)
        con.executemany(
            f"INSERT OR REPLACE INTO {TABLE} VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    run_id,
                    cfg.model,
                    cfg.similarity,
                    r["setting"],
                    r["seed"],
                    r["method"],
                    r["target"],
                    r["measure"],
                    r.get("insertion"),
                    r.get("deletion"),
                    r["n_explicands"],
                    cfg.to_json(),
                    created,
                )
                for r in records
            ],
        )


def load_results(db_path: str | Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``corpus_results`` (of the latest run if ``run_id`` is None)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise ValueError(f"{db_path}: no such results database")
    with sqlite3.connect(db_path) as con:
        con.row_factory = sqlite3.Row
        exists = con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)
        ).fetchone()
        if not exists:
            raise ValueError(f"{db_path}: no corpus evaluation results (table {TABLE})")
        if run_id is None:
            row = con.execute(
                f"SELECT run_id FROM {TABLE} ORDER BY created DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise ValueError(f"{db_path}: the {TABLE} table is empty")
            run_id = row["run_id"]
        rows = con.execute(f"SELECT * FROM {TABLE} WHERE run_id=?", (run_id,)).fetchall()
    if not rows:
        raise ValueError(f"{db_path}: no corpus results for run {run_id!r}")
    return [dict(r) for r in rows]


# ----------------------------------------------------------------------------- tables
def summarize(
    records: Sequence[dict[str, Any]],
) -> dict[tuple, dict[str, tuple[float, float, int]]]:
    """{(setting, method, target, measure): {"insertion": (mean, ci95, n_seeds), "deletion": ...}}
    over seeds, with ``ci95 = 1.96 * std / sqrt(n)`` (population std)."""
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = (r["setting"], r["method"], r["target"], r["measure"])
        for kind in ("insertion", "deletion"):
            if r.get(kind) is not None:
                groups[key][kind].append(float(r[kind]))
    out: dict[tuple, dict[str, tuple[float, float, int]]] = {}
    for key, kinds in groups.items():
        out[key] = {}
        for kind, values in kinds.items():
            n = len(values)
            mean = sum(values) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
            out[key][kind] = (mean, 1.96 * std / math.sqrt(n), n)
    return out


def _cell(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "-"
    mean, ci, _ = stat
    if abs(mean) < 0.01 and mean != 0:
        return f"{mean:.2e} ± {ci:.2e}"
    return f"{mean:.3f} ({ci:.3f})"


def corpus_tables(records: Sequence[dict[str, Any]], measure: str = "corpus-majority-prob") -> str:
    """Markdown tables shaped like the paper's Tables 1-2 (``measure="corpus-majority-prob"``) or
    3-4 (``"contrastive-corpus-similarity"``): one table per setting, mean (95 % CI) over seeds."""
    stats = summarize(records)
    methods = [m for m in METHOD_NAMES if any(k[1] == m for k in stats)]
    targets = [t for t in TARGET_NAMES if any(k[2] == t for k in stats)]
    seeds = sorted({r["seed"] for r in records})
    parts = []
    for setting in SETTINGS:
        if not any(k[0] == setting and k[3] == measure for k in stats):
            continue
        n_expl = sum(
            r["n_explicands"]
            for r in records
            if r["setting"] == setting and r["method"] == "random" and r["measure"] == measure
        )
        where = "belong to" if setting == "same-class" else "do not belong to"
        parts.append(
            f"Insertion and deletion AUC of {MEASURE_LABELS[measure]} when explicands {where} "
            f"the corpus class: mean (95 % CI) over {len(seeds)} seeds, {n_expl} explicands in "
            "all. Higher insertion and lower deletion are better.\n"
        )
        lines = ["| Attribution method | Insertion (↑) | Deletion (↓) |", "|---|---|---|"]
        for method in methods:
            lines.append(f"| **{METHOD_LABELS[method]}** | | |")
            for target in targets:
                s = stats.get((setting, method, target, measure), {})
                lines.append(
                    f"| {TARGET_LABELS[target]} | {_cell(s.get('insertion'))} | "
                    f"{_cell(s.get('deletion'))} |"
                )
        s = stats.get((setting, "random", "random", measure), {})
        lines.append(f"| Random | {_cell(s.get('insertion'))} | {_cell(s.get('deletion'))} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def verdicts(records: Sequence[dict[str, Any]], measure: str = "corpus-majority-prob") -> list[str]:
    """One line per setting x method: does COCOA beat both label-free targets (higher insertion,
    lower deletion), and are the 95 % intervals separated?"""
    stats = summarize(records)
    lines = []
    for setting in SETTINGS:
        for method in METHOD_NAMES:
            cocoa = stats.get((setting, method, "cocoa", measure))
            rivals = [
                stats.get((setting, method, t, measure))
                for t in ("label-free", "contrastive-label-free")
            ]
            if not cocoa or not all(rivals):
                continue
            parts = []
            for kind, better in (("insertion", max), ("deletion", min)):
                c_mean, c_ci, _ = cocoa[kind]
                best = better(r[kind][0] for r in rivals)  # type: ignore[index]
                best_ci = next(r[kind][1] for r in rivals if r[kind][0] == best)  # type: ignore[index]
                wins = c_mean > best if kind == "insertion" else c_mean < best
                separated = cocoa[kind][2] > 1 and abs(c_mean - best) > c_ci + best_ci
                overlap = "CIs separated" if separated else "CIs overlap"
                parts.append(
                    f"{kind} {'beats' if wins else 'does not beat'} the best label-free "
                    f"({c_mean:.4g} vs {best:.4g}, {overlap})"
                )
            lines.append(f"{setting}, {METHOD_LABELS[method]}: COCOA " + "; ".join(parts))
    return lines


def report_markdown(records: Sequence[dict[str, Any]]) -> str:
    """Tables 1-4 and the COCOA-vs-label-free verdicts as one markdown text (for ``pairlens
    report`` and ``pairlens corpus-eval --report``)."""
    text = []
    for measure in MEASURES:
        text.append(f"## Insertion / deletion of {MEASURE_LABELS[measure]}\n")
        text.append(corpus_tables(records, measure))
        text.append("\n".join(f"- {line}" for line in verdicts(records, measure)) + "\n")
    return "\n".join(text)


def has_corpus_results(db_path: str | Path) -> bool:
    """Whether a results database holds a non-empty ``corpus_results`` table."""
    try:
        with sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True) as con:
            return con.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False
