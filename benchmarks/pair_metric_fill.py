"""Why the region-pair metrics (PI, PD) blur removed regions instead of zeroing them.

For N augmented digits pairs, every listed method is scored with PI / PD under both fills. With a
constant fill both images converge to the same blank image, whose similarity to itself dominates
the interaction ``I_n`` of the fully removed pair; the method ``random`` (maps independent of the
images) shows where chance lies.

Usage:  python benchmarks/pair_metric_fill.py [--pairs 12] [--model digits]
"""

from __future__ import annotations

import argparse

import torch

import pairlens
from pairlens.study.pairs import PairSet

METHODS = {"feature-grid": {}, "bilrp": {"k": 8}, "integrated-jacobians": {"k": 8, "steps": 16},
           "grad-cam": {}, "random": {}}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = pairlens.load_model(args.model)
    pairs = PairSet(model, args.model, n=args.pairs, seed=0)
    x1, x2 = pairs.batch(list(range(args.pairs)))
    with torch.no_grad():
        mean_similarity = float(model.similarity(x1, x2).mean())
    print(f"{args.pairs} augmented {args.model} pairs, mean similarity {mean_similarity:.3f}")
    print("| method | fill | PI | PI-marginal | PI-random | PD | PD-random | I_n |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in args.methods.split(","):
        exp = pairlens.explain(model, x1, x2, method=name, **METHODS.get(name, {}))
        for fill in ("zero", "blur"):
            s = pairlens.evaluate(model, x1, x2, exp, metrics=["PI", "PD"], pair_fill=fill,
                                  return_curves=True)
            row = {k: float(v.mean()) for k, v in s.items() if not k.endswith("_curve")}
            row.update(method=name, fill=fill, end=float(s["PI_curve"][:, -1].mean()))
            rows.append(row)
            print(f"| {name} | {fill} | {row['PI']:.3f} | {row['PI-marginal']:.3f} | "
                  f"{row['PI-random']:.3f} | {row['PD']:.3f} | {row['PD-random']:.3f} | "
                  f"{row['end']:.3f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
