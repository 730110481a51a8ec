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
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import load_benchmark_model, machine_line, now, pair, sync  # noqa: E402

import pairlens  # noqa: E402
from pairlens.methods.registry import NotApplicableError, method_infos  # noqa: E402
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


def run_timed(fn: Callable, device: torch.device) -> tuple[float, object]:
    """(seconds, result) of ``fn()``; a call under 1 s is warmed up first and timed as the best
    of 3, a slower one is run once (its own warm-up is negligible)."""
    runs = 1
    while True:
        best, result = math.inf, None
        for _ in range(runs):
            sync(device)
            start = now()
            result = fn()
            sync(device)
            best = min(best, now() - start)
        if best >= 1.0 or runs > 1:
            return best, result
        runs = 3


def check(
    models: dict[str, Callable[[], pairlens.SimilarityModel]],
    device: str = "cuda",
    reference_device: str = "cpu",
    batches: tuple[int, ...] = (1, 16),
    methods: list[str] | None = None,
    execution: dict | None = None,
    time_reference: bool = False,
    min_rank_correlation: float = MIN_RANK_CORRELATION,
    max_metric_difference: float = MAX_METRIC_DIFFERENCE,
    out: Callable[[str], None] = print,
) -> int:
    """Time every method and the six metrics with the model on ``device`` (with ``execution``,
    see ``SimilarityModel.set_execution``) and compare one pair's maps and metric values with
    the float32 model on ``reference_device``; print a markdown table through ``out``; return the
    number of failed checks. ``time_reference``: also time the reference (one pair) and print
    the ratio. The metrics are computed on the reference's Grad-CAM maps on both sides."""
    methods = methods or method_names()
    failures = 0
    dev, ref_dev = torch.device(device), torch.device(reference_device)
    cols = [f"s/pair, {b} pair(s)" for b in batches]
    if time_reference:
        cols += ["reference s/pair", "ratio (1 pair)"]
    out(f"| model | method | {' | '.join(cols)} | Table VI (RTX 3090) | "
        f"agreement with {reference_device} float32 | ok |")
    out("|---|---|" + "---:|" * (len(cols) + 2) + "---|")
    for model_name, factory in models.items():
        failures += _check_model(model_name, factory(), dev, ref_dev, batches, methods,
                                 execution or {}, time_reference, min_rank_correlation,
                                 max_metric_difference, out)
    return failures


def device_copy(model: pairlens.SimilarityModel, device: torch.device,
                execution: dict) -> pairlens.SimilarityModel:
    """The model under test: a copy of ``model`` on ``device`` with ``execution`` settings."""
    return copy.deepcopy(model).to(device).set_execution(**execution)


def _check_model(model_name, base, dev, ref_dev, batches, methods, execution, time_reference,
                 min_rank_correlation, max_metric_difference, out) -> int:
    failures = 0
    model = device_copy(base, dev, execution)
    reference = base.to(ref_dev)
    x1, x2 = pair(model, max(batches))
    r1, r2 = x1[:1].to(ref_dev), x2[:1].to(ref_dev)

    def row(name: str, fn, ref_fn, compare) -> int:
        times, results = [], {}
        for b in batches:
            seconds, results[b] = run_timed(lambda b=b: fn(b), dev)
            times.append(seconds / b)
        ref_seconds, ref_result = run_timed(ref_fn, ref_dev)
        if time_reference:
            times += [ref_seconds, times[batches.index(1)] / ref_seconds if 1 in batches
                      else math.nan]
        text, ok = compare(results[min(batches)], ref_result)
        paper = TABLE_VI.get(name)
        out(f"| {model_name} | {name} | " + " | ".join(f"{t:.4f}" for t in times)
            + f" | {paper if paper is not None else '-'} | {text} | "
            f"{'yes' if ok else 'NO'} |")
        return int(not ok)

    def compare_maps(ours, theirs) -> tuple[str, bool]:
        rho = min(float(spearman(a[:1].cpu(), b.cpu()).min())
                  for a, b in zip(ours.maps, theirs.maps, strict=True))
        return f"rank corr. {rho:.4f}", rho >= min_rank_correlation  # NaN fails

    for name in methods:
        try:
            failures += row(
                name,
                lambda b, name=name: pairlens.explain(model, x1[:b], x2[:b], method=name),
                lambda name=name: pairlens.explain(reference, r1, r2, method=name),
                compare_maps,
            )
        except NotApplicableError as err:  # e.g. BiLRP on a ViT: a row saying so, no failure
            dashes = " | ".join("-" for _ in range(len(batches) + 2 * time_reference))
            out(f"| {model_name} | {name} | {dashes} | - | not applicable: "
                f"{str(err).split(';')[0]} | n/a |")
    maps = pairlens.explain(reference, r1, r2, method="grad-cam").maps

    def compare_metrics(ours, theirs) -> tuple[str, bool]:
        worst = max(abs(float(ours[k][0]) - float(theirs[k][0])) for k in METRICS)
        return f"max metric diff. {worst:.1e}", worst <= max_metric_difference

    failures += row(
        "six metrics",
        lambda b: pairlens.evaluate(model, x1[:b], x2[:b],
                                    tuple(m.to(dev).expand(b, -1, -1) for m in maps),
                                    metrics=METRICS),
        lambda: pairlens.evaluate(reference, r1, r2, maps, metrics=METRICS),
        compare_metrics,
    )
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
