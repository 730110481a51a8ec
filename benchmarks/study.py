"""Wall time of the README study, end to end, with its per-stage breakdown.

Runs, as a user would, in a fresh process::

    pairlens evaluate --model digits --data digits --pairs 200 --methods all --store S --quiet

and prints the wall time of the whole command (start-up, model and data loading included) and
the breakdown the command reports: data (pair materialisation), explain (all methods), metrics
(SI, SD, CI, CD, SAD, CAD), store (SQLite writes), other (progress bar, bookkeeping), plus the
explanation time of every method. The store is a temporary file, deleted afterwards.

Usage:  python benchmarks/study.py [--pairs 200] [--threads 2] [-- extra evaluate options]

The command's own choice of local worker processes applies (``--workers auto``: the first output
line says "by N worker processes" when it started several); pass ``-- --workers 1`` for one
process with ``--threads`` threads, ``-- --workers 2`` to force two.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_study(pairs: int, threads: int | None, extra: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the command (all threads), the command's output) of the
    README study with ``pairs`` pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pairlens", "evaluate", "--model", "digits", "--data",
               "digits", "--pairs", str(pairs), "--methods", "all", "--store",
               str(Path(tmp) / "study.db"), "--quiet", *extra]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                          env.get("PYTHONPATH")]))
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - start
        cpu = _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"pairlens evaluate failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, cpu, proc.stdout


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("extra", nargs="*", help="more options for pairlens evaluate (after --)")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    wall, cpu, out = run_study(args.pairs, args.threads, args.extra)
    print(f"README study, {args.pairs} pairs, all methods, six metrics: wall {wall:.1f} s "
          f"({wall / 60:.2f} min), CPU {cpu:.1f} s (all threads); 1-min load at start "
          f"{load:.2f}, at end {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    print(out.rstrip())


if __name__ == "__main__":
    main()
