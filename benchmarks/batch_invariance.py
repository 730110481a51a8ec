"""How much a result moves with the batch it is computed in (``batch_size``, ``--pairs-per-unit``).

Explains N pairs one pair per call and all N in one call, and prints: the largest difference of
the maps (float rounding: convolution kernels pick other algorithms for other batch sizes), the
share of a map's pixels whose value lies within 1e-7 of the next-ranked pixel (near-ties, e.g. a
CAM upsampled from a coarse grid), and the largest difference of each metric computed on the two
sets of maps, next to the difference the metric passes alone make (the same maps scored for one
pair alone and inside the batch: float rounding of the forward passes). Insertion / deletion rank
the pixels, so where near-ties are reordered by the maps' rounding, their altered images, and the
AUC, differ by more than rounding.

Usage:  python benchmarks/batch_invariance.py [--model digits] [--pairs 8] [--methods grad-cam]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine_line, positive_int  # noqa: E402

import pairlens  # noqa: E402
from pairlens.study.pairs import PairSet  # noqa: E402

METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--pairs", type=positive_int, default=8)
    ap.add_argument("--methods", default="grad-cam,input-x-gradient")
    ap.add_argument("--threads", type=positive_int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = pairlens.load_model(args.model, device="cpu")
    pairs = PairSet(model, args.model if args.model in ("digits", "photos") else "digits",
                    mode="augmented", n=args.pairs, seed=0)
    x1, x2 = pairs.batch(list(range(args.pairs)))
    print(machine_line())
    print("| model | method | pairs | max map difference | near-tied pixels | same maps, pair 1 "
          "alone vs in the batch: max metric difference | maps computed alone vs in one batch: "
          "max metric difference |")
    print("|---|---|---:|---:|---:|---|---|")
    for method in args.methods.split(","):
        together = pairlens.explain(model, x1, x2, method=method).maps
        alone = [torch.cat(m) for m in zip(*(
            pairlens.explain(model, x1[i:i + 1], x2[i:i + 1], method=method).maps
            for i in range(args.pairs)), strict=True)]
        map_diff = max(float((a - b).abs().max()) for a, b in zip(alone, together, strict=True))
        ranked = together[0].flatten(1).sort(dim=1).values
        ties = float(((ranked[:, 1:] - ranked[:, :-1]).abs() < 1e-7).float().mean())
        with_together = pairlens.evaluate(model, x1, x2, together, metrics=METRICS)
        with_alone = pairlens.evaluate(model, x1, x2, tuple(alone), metrics=METRICS)
        first = pairlens.evaluate(model, x1[:1], x2[:1], tuple(m[:1] for m in together),
                                  metrics=METRICS)
        same = max(float((first[k][0] - with_together[k][0]).abs()) for k in METRICS)
        diffs = ", ".join(f"{k} {float((with_alone[k] - with_together[k]).abs().max()):.1e}"
                          for k in METRICS)
        print(f"| {args.model} | {method} | {args.pairs} | {map_diff:.1e} | {ties:.1%} | "
              f"{same:.1e} | {diffs} |", flush=True)


if __name__ == "__main__":
    main()
