"""The fixed per-call cost of ``pairlens.explain`` on a small model: PairLens / floor for the given
methods (the methods part of ``benchmarks/methods.py``, without the reference loops) and the
number of tensor operations of one call of each (counted with a ``TorchDispatchMode``, backward
pass included).

On a model whose call takes 1-3 ms (the digits CNN), the excess over the floor is the number of
small tensor operations PairLens adds (guards, the method's own arithmetic): docs/performance.md,
"What the digits rows' excess over the floor is". To compare two versions, run this script with
``PYTHONPATH`` pointing at each version's ``src`` in turn (e.g. an older commit exported with
``git archive``), alternating, in one session.

Usage:  python benchmarks/overhead.py [--model digits] [--methods grad-cam,...] [--repeats 5]
        [--clock cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import add_clock_option, load_benchmark_model, pair, set_clock, timed_together  # noqa: E402
from methods import floor_fn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import pairlens  # noqa: E402
from pairlens.methods.registry import get_method  # noqa: E402
from pairlens.runtime import tune_cpu_runtime  # noqa: E402

FAST = "grad-cam,interaction-cam,deep-similarity,input-x-gradient,averaged-transforms"


class _Count(TorchDispatchMode):
    """Counts the tensor operations dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def operations(fn) -> int:
    """Tensor operations of one call of ``fn`` (after a warm-up call)."""
    fn()
    with _Count() as count:
        fn()
    return count.n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--methods", default=FAST)
    ap.add_argument("--repeats", type=int, default=5)
    add_clock_option(ap)
    args = ap.parse_args(argv)
    set_clock(args.clock)
    tune_cpu_runtime()
    torch.set_num_threads(1)
    model = load_benchmark_model(args.model)
    x1, x2 = pair(model, 1)
    print(f"pairlens from {Path(pairlens.__file__).parent}; clock {args.clock}")
    print("| method | PairLens ms | floor ms | / floor | excess us | ops PairLens | ops floor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.methods.split(","):
        floor = floor_fn(model, name, get_method(name).params, x1, x2)

        def ours(name=name):
            pairlens.explain(model, x1, x2, method=name)

        t_ours, t_floor = timed_together([ours, floor], args.repeats)
        print(f"| {name} | {t_ours * 1e3:.3f} | {t_floor * 1e3:.3f} | {t_ours / t_floor:.3f} | "
              f"{(t_ours - t_floor) * 1e6:.0f} | {operations(ours)} | {operations(floor)} |",
              flush=True)


if __name__ == "__main__":
    main()
