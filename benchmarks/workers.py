"""Processes against threads for ``pairlens evaluate``: the measurement behind ``--workers auto``.

For each case (a bundled model and its data), runs the same command, in fresh processes and fresh
stores, as one process with ``--threads T`` (``--workers 1``) and as ``N`` worker processes of
``T / N`` threads each (``--workers N --threads T``), alternating the two ``--repeats`` times so a
change of load hits both alike, and prints a Markdown table: end-to-end wall seconds (start-up,
model and data loading and the estimate step included: what a user waits), their ratio
(processes / threads, < 1: processes win), the same for the work phase the command reports (after
its serial estimate step, the workers' start-up included), and the peak resident memory of the
single process and of each worker::

    pairlens evaluate --model M --data D --pairs P --methods LIST --pairs-per-unit U \\
        --store S --quiet --json --yes --workers 1|N --threads T

Usage:  python benchmarks/workers.py [--cases digits,composites,photos] [--pairs 8]
        [--methods LIST] [--workers 2] [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: case -> (model, data, input pixels per side)
CASES = {"digits": ("digits", "digits", 32), "composites": ("composites", "composites", 64),
         "photos": ("photos", "photos", 112)}
DEFAULT_METHODS = "grad-cam,input-x-gradient,smoothgrad,pairwise-occlusion"


def run(case: str, pairs: int, methods: str, unit: int, workers: int, threads: int,
        metrics: str | None) -> tuple[float, float, float, list[float]]:
    """(wall seconds, the command's work-phase seconds (after its estimate step; with workers
    their start-up included), peak RSS in MB of the command's process (with workers: the largest
    of it and its workers), peak RSS of each worker in MB) of one ``pairlens evaluate`` run."""
    model, data, _ = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pairlens", "evaluate", "--model", model, "--data", data,
               "--pairs", str(pairs), "--methods", methods, "--pairs-per-unit", str(unit),
               "--store", str(Path(tmp) / "s.db"), "--quiet", "--json", "--yes",
               "--workers", str(workers), "--threads", str(threads)]
        if metrics:
            cmd += ["--metrics", metrics]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                          env.get("PYTHONPATH")]))
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
            _, status, usage = os.wait4(proc.pid, 0)  # its own rusage: peak RSS included
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"pairlens evaluate failed ({proc.returncode}): {stderr.strip()}")
    report = json.loads(stdout.strip().splitlines()[-1])
    if report.get("workers", 1) != workers:
        raise SystemExit(f"asked for {workers} workers, the command used {report.get('workers')}")
    return (wall, float(report["wall_seconds"]), usage.ru_maxrss / 1024,
            report.get("worker_peak_rss_mb", []))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="digits,composites,photos")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--metrics", default=None, help="(default: the command's)")
    ap.add_argument("--pairs-per-unit", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"{args.pairs} pairs, methods {args.methods}, --pairs-per-unit {args.pairs_per_unit}; "
          f"1 process x {args.threads} threads against {args.workers} processes x "
          f"{max(1, args.threads // args.workers)} thread(s); min of {args.repeats}")
    print()
    print("| case | input | 1 process s | workers s | workers / 1 process | work phase: 1 "
          "process s | workers s | ratio | peak RSS 1 process MB | peak RSS per worker MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        one, many, work_one, work_many, rss_many = [], [], [], [], []
        for _ in range(args.repeats):
            wall, work, rss_one, _ = run(case, args.pairs, args.methods, args.pairs_per_unit, 1,
                                         args.threads, args.metrics)
            one.append(wall)
            work_one.append(work)
            wall, work, _, rss_many = run(case, args.pairs, args.methods, args.pairs_per_unit,
                                          args.workers, args.threads, args.metrics)
            many.append(wall)
            work_many.append(work)
        side = CASES[case][2]
        print(f"| {case} | {side} px | {min(one):.1f} | {min(many):.1f} | "
              f"{min(many) / min(one):.2f} | {min(work_one):.1f} | {min(work_many):.1f} | "
              f"{min(work_many) / min(work_one):.2f} | {rss_one:.0f} | "
              f"{', '.join(f'{r:.0f}' for r in rss_many)} |", flush=True)
    print()
    print(f"1-min load at start {load:.2f}, at end {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
