"""Per-image forward cost by batch size, with and without PairLens's CPU runtime settings.

Each setting runs in a fresh process (allocator and OpenMP settings apply at start-up):

* ``glibc``: the default allocator and OpenMP settings;
* ``tuned``: :func:`pairlens.runtime.tune_cpu_runtime` (``mallopt``: no mmap, no trim;
  ``OMP_WAIT_POLICY=PASSIVE``), what the ``pairlens`` command does at start-up.

For every batch size: milliseconds per image of a no-grad forward (best of ``--repeats``), and
of a forward + backward to the input; then the process's peak RSS and minor page faults per
image forward. The batch PairLens picks by default (:func:`pairlens.runtime.default_batch_size`)
is marked.

Usage:  python benchmarks/batch_sizes.py [--model resnet50] [--batches 1,2,4,8,16,32,64]
        [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(model_name: str, batches: list[int], threads: int, repeats: int, tune: bool,
          clock: str = "wall") -> dict:
    """Measure in this process; returns a JSON-able dict."""
    from pairlens.runtime import tune_cpu_runtime

    applied = tune_cpu_runtime() if tune else {}
    import torch

    sys.path.insert(0, str(HERE))
    from common import load_benchmark_model, now, peak_rss_mb, set_clock

    from pairlens.runtime import default_batch_size

    set_clock(clock)
    torch.set_num_threads(threads)
    model = load_benchmark_model(model_name)
    h, w = model.input_size
    rows = []
    for b in batches:
        x = torch.randn(b, 3, h, w)
        with torch.inference_mode():
            model.embed(x)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            best = float("inf")
            for _ in range(repeats):
                start = now()
                model.embed(x)
                best = min(best, now() - start)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (repeats * b)
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model.embed(xg).sum(), xg)
        best_grad = float("inf")
        for _ in range(max(1, repeats - 1)):
            start = now()
            torch.autograd.grad(model.embed(xg).sum(), xg)
            best_grad = min(best_grad, now() - start)
        rows.append({"batch": b, "ms": 1000 * best / b, "ms_grad": 1000 * best_grad / b,
                     "faults": faults})
    return {"applied": applied, "rows": rows,
            "default": default_batch_size("cpu", (h, w)),
            "rss": peak_rss_mb()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or the process's CPU time (one-thread runs, loaded machine)")
    ap.add_argument("--child", choices=("glibc", "tuned"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        print(json.dumps(child(args.model, batches, args.threads, args.repeats,
                               args.child == "tuned", args.clock)))
        return
    print(f"{args.model}, {args.threads} threads, {os.cpu_count()} cores, 1-min load "
          f"{os.getloadavg()[0]:.2f}; ms per image ({args.clock} clock, best of {args.repeats}); "
          "* = PairLens default")
    results = {}
    for setting in ("glibc", "tuned"):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MALLOC_") and k != "OMP_WAIT_POLICY"}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", setting, "--model", args.model, "--batches",
             args.batches, "--threads", str(args.threads), "--repeats", str(args.repeats),
             "--clock", args.clock],
            capture_output=True, text=True, env=env, check=True)
        results[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| batch | forward, glibc | forward, tuned | fwd+bwd, glibc | fwd+bwd, tuned | "
          "minor faults / image, glibc | tuned |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    default = results["tuned"]["default"]
    for g, t in zip(results["glibc"]["rows"], results["tuned"]["rows"], strict=True):
        mark = "*" if g["batch"] == default else ""
        print(f"| {g['batch']}{mark} | {g['ms']:.2f} | {t['ms']:.2f} | {g['ms_grad']:.2f} | "
              f"{t['ms_grad']:.2f} | {g['faults']:.0f} | {t['faults']:.0f} |")
    print(f"peak RSS: glibc {results['glibc']['rss']:.0f} MiB, tuned {results['tuned']['rss']:.0f} "
          f"MiB (tuned applied: {results['tuned']['applied']}); 1-min load at end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
