"""The benchmark study (seed 000, §V): pairs, the evaluation loop, the results store, sharding.

See :mod:`pairlens.study.pairs`, :mod:`pairlens.study.loop`, :mod:`pairlens.study.store` and the
``pairlens evaluate`` / ``pairlens report`` commands in :mod:`pairlens.cli.evaluate`.
"""

from pairlens.study.loop import MethodSpec, Shard, parse_methods, parse_metrics, run_evaluation
from pairlens.study.pairs import PAIR_MODES, PairSet, load_images
from pairlens.study.store import ResultStore, read_tables

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
