"""Speed and accuracy of ``--channels-last`` and ``--amp bf16|fp16`` against float32.

For each variant and model: seconds per pair of every method and of the six metrics with the
variant, the same with the float32 model (measured in the same run), their ratio, and the
agreement: each map's Spearman rank correlation with the float32 map (must be >= 0.99) and the
largest difference of the six metric values computed on the same maps (must be <= 0.005). Uses
:func:`device_check.check` with the float32 model as the reference on the same device.

Usage:  python benchmarks/precision.py [--models digits,resnet50]
        [--variants channels-last,bf16,bf16+channels-last] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import device_check  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    add_clock_option,
    load_benchmark_model,
    machine_line,
    set_clock,
)

from pairlens.runtime import tune_cpu_runtime  # noqa: E402

MIN_RANK_CORRELATION = 0.99
MAX_METRIC_DIFFERENCE = 0.005


def parse_variant(text: str) -> dict:
    """``bf16+channels-last`` -> ``{"amp": "bf16", "channels_last": True}``."""
    parts = set(text.split("+"))
    amp = next((p for p in parts if p in ("bf16", "fp16")), None)
    unknown = parts - {"bf16", "fp16", "channels-last"}
    if unknown:
        raise SystemExit(f"unknown variant part(s): {', '.join(sorted(unknown))}")
    return {"amp": amp, "channels_last": "channels-last" in parts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits,resnet50")
    ap.add_argument("--variants", default="channels-last,bf16,bf16+channels-last")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    add_clock_option(ap)
    args = ap.parse_args(argv)
    set_clock(args.clock)
    tune_cpu_runtime()
    torch.set_num_threads(args.threads)
    print(f"{machine_line()}; clock: {args.clock}")
    failures = 0
    for variant in args.variants.split(","):
        print(f"\n### {variant} against float32 ({args.device})\n")
        failures += device_check.check(
            {name: (lambda name=name: load_benchmark_model(name))
             for name in args.models.split(",")},
            device=args.device, reference_device=args.device, batches=(1,),
            methods=None if args.methods == "all" else args.methods.split(","),
            execution=parse_variant(variant), time_reference=True,
            min_rank_correlation=MIN_RANK_CORRELATION,
            max_metric_difference=MAX_METRIC_DIFFERENCE,
        )
    print(f"\n{machine_line()}\nprecision: {failures} check(s) failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
