"""The benchmark study (seed 000, §V): pairs, the evaluation loop, the results store, sharding.

See :mod:`pairlens.runner.pairs`, :mod:`pairlens.runner.loop`, :mod:`pairlens.runner.store` and the
``pairlens evaluate`` / ``pairlens report`` commands in :mod:`pairlens.runner.cli`.
"""

from pairlens.runner.loop import MethodSpec, Shard, parse_methods, parse_metrics, run_evaluation
from pairlens.runner.pairs import PAIR_MODES, PairSet, load_images
from pairlens.runner.store import ResultStore, read_tables

__all__ = [
    "PAIR_MODES",
    "MethodSpec",
    "PairSet",
    "ResultStore",
    "Shard",
    "load_images",
    "parse_methods",
    "parse_metrics",
    "read_tables",
    "run_evaluation",
]
