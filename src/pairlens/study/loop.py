"""The evaluation loop of ``pairlens evaluate``: methods x pairs -> metrics -> results store.

Before any work the store binds the model label to the model's fingerprint and the data label to
the data's (:meth:`ResultStore.claim`): a store built from other weights or other files under
the same labels is refused with a line naming the difference.

Work is cut into *units*: the pairs ``[j*B, (j+1)*B)`` (``B`` = pairs per batch) for one method
variant. Unit ``j`` of the ``m``-th method variant belongs to rank ``(m*U + j) mod world_size``
(``U`` units per method, :meth:`Shard.owns`): a static rule, the same for ``torchrun`` ranks and
the local workers of ``pairlens evaluate --workers``, that never depends on what the store holds,
so processes started at slightly different times never skip or duplicate a unit, and an odd
number of units per method alternates between ranks. Every rank computes exactly the batches a
single process would, and a resumed run computes the same batches as an uninterrupted one (a unit
is stored in one transaction, so it is either complete or absent).
Within a unit only the (pair, metric) values missing from the store are computed: pairs lacking
the same metrics are explained and scored together. Per unit: the explanation (timed),
:func:`pairlens.evaluate` with the curves, one store transaction. Pairs whose images cannot be
read are stopped at or skipped according to a :class:`~pairlens.io.BadFiles` policy, and so are
pairs that a per-pair guard of the model refuses (two identical images: a stationary similarity,
a zero embedding; :func:`~pairlens.models.similarity.is_pair_error`): a unit that fails with one
is scored again pair by pair to find them, and its other pairs are stored as usual.
``batch_size`` (images per forward pass) is passed to every method that takes one and to the
metrics; it changes speed and memory, and results only by float rounding (docs/performance.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pairlens.io import BadFiles
from pairlens.methods.registry import get_method
from pairlens.methods.registry import parse_methods as parse_method_variants
from pairlens.metrics import ALL_METRICS, GROUND_TRUTH_METRICS, canonical_metrics, evaluate
from pairlens.models.similarity import SimilarityModel, is_pair_error
from pairlens.study.pairs import PairSet
from pairlens.study.store import PairResult, ResultStore, canonical_params


@dataclass(frozen=True)
class MethodSpec:
    """A method variant: registered name, the parameters given explicitly, and all parameters
    (defaults filled in)."""

    name: str
    given: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return {**get_method(self.name).params, **self.given}

    @property
    def result_params(self) -> dict[str, Any]:
        """:attr:`params` with the execution parameters (``batch_size``) at their defaults: the
        store key, so a pair explained at another batch size finds its stored row
        (:meth:`~pairlens.methods.registry.MethodInfo.result_params`)."""
        return get_method(self.name).result_params(self.params)

    @property
    def label(self) -> str:
        """``name`` or ``name[key=value,...]`` with the parameters differing from the defaults
        (execution parameters such as ``batch_size`` left out: they change no result)."""
        info = get_method(self.name)
        defaults = info.params
        diff = {k: v for k, v in self.given.items()
                if defaults.get(k, object()) != v and k not in info.execution_params}
        if not diff:
            return self.name
        return f"{self.name}[{','.join(f'{k}={_show(v)}' for k, v in sorted(diff.items()))}]"


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def parse_methods(text: str, overrides: Sequence[str] = ()) -> list[MethodSpec]:
    """Parse ``--methods`` and ``--param [method.]key=value`` into method variants
    (:func:`pairlens.methods.registry.parse_methods`: values checked by the methods' declared
    types; variants differing only in ``batch_size`` are one result, so one variant). Raises
    ValueError on unknown names."""
    return [MethodSpec(name, given) for name, given in parse_method_variants(text, overrides)]


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError(f"unknown metric (none); choose from {', '.join(ALL_METRICS)}")
    return canonical_metrics(names)


#: environment variable naming a local worker's shard, ``"i/N"`` (set by ``evaluate --workers``)
WORKER_ENV = "PAIRLENS_WORKER"


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether the process was started by ``torchrun`` (or another launcher setting ``RANK``),
    even with one process."""
    env = os.environ if env is None else env
    return "RANK" in env or "TORCHELASTIC_RUN_ID" in env


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: rank ``rank`` of ``world`` processes. ``launcher`` is
    ``"torchrun"`` (ranks join a process group), ``"workers"`` (local worker processes of
    ``pairlens evaluate --workers``, no process group) or ``None`` (one process)."""

    rank: int = 0
    world: int = 1
    launcher: str | None = None

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"bad shard: rank {self.rank} of {self.world} processes")

    @classmethod
    def from_env(cls) -> Shard:
        """The shard of a local worker (``PAIRLENS_WORKER=i/N``), else rank and world size from
        ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``), else one process. Raises
        ValueError for a malformed ``PAIRLENS_WORKER``."""
        worker = os.environ.get(WORKER_ENV)
        if worker:
            try:
                rank, world = (int(v) for v in worker.split("/"))
            except ValueError:
                raise ValueError(f"{WORKER_ENV}={worker!r}: expected RANK/WORLD, e.g. 0/2") \
                    from None
            return cls(rank, world, "workers")
        world = int(os.environ.get("WORLD_SIZE", 1))
        return cls(int(os.environ.get("RANK", 0)), world, "torchrun" if world > 1 else None)

    def owns(self, method_index: int, unit: int, units_per_method: int) -> bool:
        """Whether unit ``unit`` (pairs ``[unit*B, (unit+1)*B)``) of the ``method_index``-th
        method variant is this rank's: ``(method_index * units_per_method + unit) mod world ==
        rank``. Static (independent of the store), so every unit has exactly one owner."""
        return (method_index * units_per_method + unit) % self.world == self.rank


@dataclass
class RunSummary:
    """What a run did: pairs explained (with at least one missing metric), metric values
    computed, pairs that were already complete, files skipped, time. ``stages`` splits
    ``seconds`` into ``data`` (loading the pairs), ``explain``, ``metrics``, ``store`` and
    ``other`` (progress bar, bookkeeping)."""

    computed_pairs: int = 0
    computed_values: int = 0
    skipped_pairs: int = 0
    seconds: float = 0.0
    per_method: dict[str, float] = field(default_factory=dict)
    missing_metrics: set[str] = field(default_factory=set)
    skipped_files: dict[str, str] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)


def setting_key(pairs: PairSet, step: int | None, ms_samples: int) -> str:
    """What, besides the model, method and metric, determines a metric value: the data label,
    pair mode and seed (:attr:`PairSet.key`), the insertion/deletion step and the number of
    max-sensitivity samples (the data label's files are bound by the store's identities)."""
    return f"{pairs.key}|step={step or 'default'}|ms={ms_samples}"


def model_label(name: str, checkpoint: str | None = None, embedding: str | None = None) -> str:
    """The label of a model in a store: ``name``, ``name@CHECKPOINT`` (the path as given, so two
    checkpoints with the same file name in different folders are two models), ``#embedding``."""
    label = name
    if checkpoint:
        label += f"@{checkpoint}"
    if embedding:
        label += f"#{embedding}"
    return label


def run_evaluation(
    model: SimilarityModel,
    model_key: str,
    pairs: PairSet,
    specs: Sequence[MethodSpec],
    metrics: Sequence[str],
    store: ResultStore,
    step: int | None = None,
    pairs_per_batch: int = 8,
    batch_size: int | None = None,
    shard: Shard = Shard(),
    progress: bool = True,
    on_unit: Callable[[str, list[int]], None] | None = None,
    ms_samples: int = 10,
    bad_files: BadFiles | None = None,
) -> RunSummary:
    """Evaluate every method variant on every pair of this shard, computing exactly the (pair,
    metric) values missing from ``store``.

    ``pairs_per_batch`` pairs are explained, scored and stored together (one unit); ``batch_size``
    is images per forward pass in the methods and metrics (None: device-aware default).

    Raises :class:`~pairlens.study.identity.IdentityMismatch` if ``store`` holds results of
    another model under ``model_key`` or of other files under the data label, and
    :class:`~pairlens.io.ImageError` for an unreadable image, and the per-pair guard error (its
    message naming the pair's files) for a pair the model refuses, under the ``stop`` policy.
    """
    from tqdm.auto import tqdm

    if pairs_per_batch < 1 or (batch_size is not None and batch_size < 1) or ms_samples < 1:
        raise ValueError("pairs_per_batch, batch_size and ms_samples must be >= 1")
    metrics = list(dict.fromkeys(canonical_metrics(metrics)))
    ground_truth = [m for m in metrics if m in GROUND_TRUTH_METRICS]
    if ground_truth and not pairs.has_masks:
        raise ValueError(f"metric(s) {', '.join(ground_truth)} need ground-truth masks; "
                         f"--data {pairs.data} has none (use --data composites)")
    bad = bad_files or BadFiles("stop")
    claim_identities(model, model_key, pairs, store)
    setting = setting_key(pairs, step, ms_samples)
    summary = RunSummary()
    units = plan_units(store, model_key, setting, len(pairs), specs, metrics, pairs_per_batch,
                       shard, summary)
    total = sum(len(ids) for _, _, ids, _ in units)
    bar = tqdm(total=total, disable=not progress, unit="pair", dynamic_ncols=True,
               desc=f"rank {shard.rank}" if shard.world > 1 else "evaluate",
               position=shard.rank if shard.world > 1 else None)
    start_all = time.perf_counter()
    stages = dict.fromkeys(("data", "explain", "metrics", "store"), 0.0)
    try:
        for spec, params_key, ids, wanted in units:
            bar.set_postfix_str(spec.label[:40])
            t_data = time.perf_counter()
            kept, x1, x2 = pairs.load(ids, bad)
            if not kept:
                bar.update(len(ids))
                continue
            t0 = time.perf_counter()

            def score(ids: list[int], x1, x2, spec=spec, wanted=wanted):
                exp = _explain(model, x1, x2, spec, batch_size)
                t = time.perf_counter()
                needs_masks = any(m in GROUND_TRUTH_METRICS for m in wanted)
                masks = pairs.masks(ids) if needs_masks else None
                return t, evaluate(model, x1, x2, exp, metrics=wanted, step=step,
                                   batch_size=batch_size, return_curves=True,
                                   ms_samples=ms_samples, seed=0, masks=masks)

            try:
                t1, scores = score(kept, x1, x2)
            except Exception as err:
                if not is_pair_error(err):
                    raise
                kept, x1, x2 = _drop_failing_pairs(pairs, kept, x1, x2, score, err, bad)
                if not kept:
                    bar.update(len(ids))
                    continue
                t0 = time.perf_counter()
                t1, scores = score(kept, x1, x2)
            t2 = time.perf_counter()
            k = len(kept)
            results = []
            for row, pid in enumerate(kept):
                results.append(PairResult(
                    pair_id=pid,
                    metrics={m: float(v[row]) for m, v in scores.items()
                             if not m.endswith("_curve")},  # PI/PD add reference orders
                    curves={name[:-6]: scores[name][row].float().cpu().numpy()
                            for name in scores if name.endswith("_curve")},
                    explain_seconds=(t1 - t0) / k,
                    metric_seconds=(t2 - t1) / k,
                ))
            store.add_batch(model_key, setting, spec.name, params_key, spec.label, results,
                            rank=shard.rank)
            t3 = time.perf_counter()
            for stage, seconds in (("data", t0 - t_data), ("explain", t1 - t0),
                                   ("metrics", t2 - t1), ("store", t3 - t2)):
                stages[stage] += seconds
            summary.computed_pairs += k
            summary.computed_values += k * len(wanted)
            summary.missing_metrics.update(wanted)
            summary.per_method[spec.label] = summary.per_method.get(spec.label, 0.0) + (t1 - t0)
            bar.update(len(ids))
            if on_unit is not None:
                on_unit(spec.label, kept)
    finally:
        bar.close()
        summary.skipped_files = dict(bad.skipped)
        store.add_skipped(pairs.data, bad.skipped)
    summary.seconds = time.perf_counter() - start_all
    stages["other"] = summary.seconds - sum(stages.values())
    summary.stages = stages
    return summary


def claim_identities(model: SimilarityModel, model_key: str, pairs: PairSet,
                     store: ResultStore) -> None:
    """Bind ``model_key`` to the model's fingerprint and the data label to the files' in
    ``store``; raises :class:`~pairlens.study.identity.IdentityMismatch` if either label is
    already bound to something else (:meth:`ResultStore.claim`)."""
    from pairlens.study.identity import (
        explain_data_difference,
        explain_model_difference,
        model_fingerprint,
    )

    fingerprint, detail = model_fingerprint(model)
    store.claim("model", model_key, fingerprint, detail, explain_model_difference)
    data_fp, manifest = pairs.fingerprint()
    store.claim("data", pairs.data, data_fp, manifest, explain_data_difference)


def plan_units(
    store: ResultStore,
    model_key: str,
    setting: str,
    n: int,
    specs: Sequence[MethodSpec],
    metrics: Sequence[str],
    pairs_per_batch: int,
    shard: Shard = Shard(),
    summary: RunSummary | None = None,
) -> list[tuple[MethodSpec, str, list[int], list[str]]]:
    """The work of ``shard`` among ``n`` pairs: ``(spec, params key, pair ids, missing
    metrics)`` for each group of pairs of one of its units (:meth:`Shard.owns`) that lack the
    same metrics in ``store``. Pairs already complete are counted in ``summary.skipped_pairs``.
    Only what is computed within a unit depends on the store, never which rank owns it."""
    units: list[tuple[MethodSpec, str, list[int], list[str]]] = []
    per_method = -(-n // pairs_per_batch)
    for m, spec in enumerate(specs):
        params_key = canonical_params(spec.result_params)
        present = store.present(model_key, setting, spec.name, params_key)
        for j, start in enumerate(range(0, n, pairs_per_batch)):
            if not shard.owns(m, j, per_method):
                continue
            groups: dict[tuple[str, ...], list[int]] = {}
            for pid in range(start, min(start + pairs_per_batch, n)):
                missing = tuple(mt for mt in metrics if mt not in present.get(pid, ()))
                if missing:
                    groups.setdefault(missing, []).append(pid)
                elif summary is not None:
                    summary.skipped_pairs += 1
            for missing, ids in groups.items():
                units.append((spec, params_key, ids, list(missing)))
    return units


def _drop_failing_pairs(pairs: PairSet, kept: list[int], x1, x2, score, err: Exception,
                        bad: BadFiles):
    """A unit failed with a per-pair guard error (:func:`~pairlens.models.similarity.
    is_pair_error`): find its offending pairs by scoring the pairs one at a time and hand each
    to ``bad`` (``stop`` raises naming the pair's files, ``skip`` records it). Returns the
    other pairs ``(ids, x1, x2)`` (ids empty and tensors None when none is left). Any other
    error of a single pair propagates."""
    failing: dict[int, Exception] = {}
    if len(kept) == 1:
        failing[0] = err
    else:
        for row in range(len(kept)):
            try:
                score(kept[row:row + 1], x1[row:row + 1], x2[row:row + 1])
            except Exception as one:
                if not is_pair_error(one):
                    raise
                failing[row] = one
    for row, one in failing.items():
        bad.pair_failed(*pairs.describe(kept[row]), one)
    rows = [r for r in range(len(kept)) if r not in failing]
    if not rows:
        return [], None, None
    return [kept[r] for r in rows], x1[rows], x2[rows]


def _explain(model: SimilarityModel, x1, x2, spec: MethodSpec, batch_size: int | None):
    from pairlens.explanation import explain

    params = dict(spec.given)
    if batch_size is not None and "batch_size" in spec.params and "batch_size" not in params:
        params["batch_size"] = batch_size
    exp = explain(model, x1, x2, method=spec.name, **params)
    if model.device.type == "cuda":  # honest timings on GPU
        torch.cuda.synchronize(model.device)
    return exp
