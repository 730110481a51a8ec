"""GPU check: speed of every method and of the six metrics on CUDA, and agreement with the CPU.

On a CUDA machine, for ResNet-50 and ViT-B/16 (random weights, 224 px):

1. seconds per pair of every method (default parameters) and of the six metrics (SI, SD, CI,
   CD, SAD, CAD) at 1 and 16 pairs per call, printed next to the paper's Table VI (seed 000, one
   RTX 3090, its own code, one pair at a time);
2. agreement of CUDA with the CPU on one pair: each map's Spearman rank correlation with the CPU
   map must be >= 0.99 (random draws are made on the CPU, so stochastic methods use the same
   noise on both), and each metric AUC / drop of the same maps within 1e-3.

Prints one table and a verdict line; exits 1 if any agreement check fails. On a machine without
CUDA it says so in one line and exits 0. Expected run time on one recent GPU: a few minutes
(most of it the CPU side of the agreement check).

Usage:  python benchmarks/device_check.py [--models resnet50,vit-b16] [--batches 1,16]
        [--device cuda] [--amp bf16] [--channels-last]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import load_benchmark_model, machine_line, pair, timed  # noqa: E402

import pairlens  # noqa: E402
from pairlens.methods.registry import method_infos  # noqa: E402
from pairlens.metrics.sanity import spearman  # noqa: E402

METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD")
#: seed 000, Table VI: seconds per pair on one RTX 3090 (the authors' code, SimCLRv2 ResNet-50)
TABLE_VI = {
    "conditional-occlusion": 0.980,
    "pairwise-occlusion": 0.257,
    "input-x-gradient": 0.296,
    "smoothgrad": 2.258,
    "averaged-transforms": 0.411,
    "grad-cam": 0.215,
    "interaction-cam": 0.050,  # with gradient interaction (PairLens's default); 0.079 without
}
MIN_RANK_CORRELATION = 0.99
MAX_METRIC_DIFFERENCE = 1e-3


def method_names() -> list[str]:
    return [i.name for i in method_infos() if i.family != "corpus" and i.name != "random"]


def check(
    models: dict[str, Callable[[], pairlens.SimilarityModel]],
    device: str = "cuda",
    reference_device: str = "cpu",
    batches: tuple[int, ...] = (1, 16),
    methods: list[str] | None = None,
    execution: dict | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Time every method and the metrics on ``device`` and compare them with
    ``reference_device``; print a table through ``out``; return the number of failed checks."""
    methods = methods or method_names()
    failures = 0
    out(f"| model | method | s/pair, {' | s/pair, '.join(f'{b} pair(s)' for b in batches)} | "
        f"Table VI (RTX 3090) | min rank corr. vs {reference_device} | ok |")
    out("|---|---|" + "---:|" * len(batches) + "---:|---:|---|")
    for model_name, factory in models.items():
        base = factory()
        model = copy.deepcopy(base).to(device).set_execution(**(execution or {}))
        reference = base.to(reference_device)
        x1, x2 = pair(model, max(batches))
        r1, r2 = x1[:1].to(reference_device), x2[:1].to(reference_device)
        dev = torch.device(device)
        for name in methods:
            times = [timed(lambda b=b, name=name, m=model, a=x1, c=x2: pairlens.explain(
                m, a[:b], c[:b], method=name), 1, device=dev) / b for b in batches]
            ours = pairlens.explain(model, x1[:1], x2[:1], method=name).maps
            theirs = pairlens.explain(reference, r1, r2, method=name).maps
            rho = min(float(spearman(a.cpu(), b.cpu()).min()) for a, b in zip(ours, theirs,
                                                                              strict=True))
            ok = rho >= MIN_RANK_CORRELATION  # NaN (a constant map) fails
            failures += not ok
            paper = TABLE_VI.get(name)
            out(f"| {model_name} | {name} | " + " | ".join(f"{t:.4f}" for t in times)
                + f" | {paper if paper is not None else '-'} | {rho:.4f} | "
                f"{'yes' if ok else 'NO'} |")
        maps = pairlens.explain(reference, r1, r2, method="grad-cam").maps
        times = []
        for b in batches:
            bmaps = tuple(m.to(device).expand(b, -1, -1) for m in maps)
            times.append(timed(lambda b=b, bmaps=bmaps, m=model, a=x1, c=x2: pairlens.evaluate(
                m, a[:b], c[:b], bmaps, metrics=METRICS), 1, device=dev) / b)
        ours = pairlens.evaluate(model, x1[:1], x2[:1], tuple(m.to(device) for m in maps),
                                 metrics=METRICS)
        theirs = pairlens.evaluate(reference, r1, r2, maps, metrics=METRICS)
        worst = max(abs(float(ours[k][0]) - float(theirs[k][0])) for k in METRICS)
        ok = worst <= MAX_METRIC_DIFFERENCE
        failures += not ok
        out(f"| {model_name} | six metrics | " + " | ".join(f"{t:.4f}" for t in times)
            + f" | - | max |diff| {worst:.2e} | {'yes' if ok else 'NO'} |")
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,vit-b16")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--amp", default=None, choices=("bf16", "fp16"))
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("device_check: no CUDA device on this machine; nothing to check.")
        return 0
    start = time.perf_counter()
    if args.device.startswith("cuda"):
        print(f"{torch.cuda.get_device_name(torch.device(args.device))}; {machine_line()}")
    failures = check(
        {name: (lambda name=name: load_benchmark_model(name)) for name in args.models.split(",")},
        device=args.device,
        batches=tuple(int(b) for b in args.batches.split(",")),
        methods=None if args.methods == "all" else args.methods.split(","),
        execution={"amp": args.amp, "channels_last": args.channels_last},
    )
    minutes = (time.perf_counter() - start) / 60
    verdict = "all checks passed" if failures == 0 else f"{failures} check(s) FAILED"
    print(f"device_check: {verdict} in {minutes:.1f} min")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
