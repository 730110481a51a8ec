"""Seconds per pair of the correspondence methods and their ratio to the floor, in one run.

The floor is the plain-PyTorch cost of the passes a method cannot avoid, with the same batch,
the per-direction backward passes batched like the method's (``is_grads_batched``, ``batch_size``
images x directions per call):

* feature-grid: one forward of the 2B images with the feature layer captured, then one backward
  pass from the embedding to the feature layer per embedding direction (m = k, or D for the
  default exact k=None);
* bilrp: one forward of the 2B images and k backward passes to the pixels (the issue's floor,
  plain gradients); ``zennit floor`` is the same with zennit's LRP rules attached (zennit's cost
  of rule-modified backward passes, without PairLens's bookkeeping: the gamma rule alone runs
  each convolution five times per backward pass);
* integrated-jacobians: forwards of the 2B x steps path images and k backward passes each, in
  chunks of ``batch_size`` images.

B pairs are explained in one call (``--batch``): per-pair time falling with B shows the passes
are batched across pairs. Times are the best of ``--repeats`` calls (``common.timed``: after a
warm-up, unless the first call takes over 2 s); ``--clock cpu`` measures this process's CPU time,
which on a loaded machine counts the work done rather than the time other processes held the
cores (use it with ``--threads 1``).

Usage:  python benchmarks/correspondence.py [--models digits,photos,resnet50] [--batch 1,4]
        [--repeats 3] [--k 32] [--steps 32] [--threads 2] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    add_clock_option,
    load_benchmark_model,
    machine_line,
    set_clock,
    timed,
)

import pairlens  # noqa: E402
from pairlens.methods.registry import get_method  # noqa: E402
from pairlens.runtime import resolve_batch_size  # noqa: E402

METHODS = ("feature-grid", "bilrp", "integrated-jacobians")


def vjps(z: torch.Tensor, wrt: torch.Tensor, k: int, per_call: int) -> None:
    """k backward passes of random output vectors, ``per_call`` of them batched in one call."""
    g = torch.Generator().manual_seed(0)
    for m0 in range(0, k, per_call):
        vs = torch.randn(min(per_call, k - m0), *z.shape, generator=g).to(z)
        torch.autograd.grad(z, wrt, grad_outputs=vs, retain_graph=True, is_grads_batched=True)


def floor_fn(model, name: str, params: dict, x1, x2, lrp: bool = False):
    """A plain-PyTorch function doing exactly the passes the method needs."""
    x = torch.cat([x1, x2])
    bs = resolve_batch_size(params["batch_size"], x1, grad=True)  # the method's own default

    if name == "feature-grid":
        def run():
            with torch.enable_grad():
                z, a = model.embed_with_features(x.clone().requires_grad_(True))
                vjps(z, a, params["k"] or z.shape[1], bs)
        return run
    if name == "bilrp":
        def passes(f):
            with torch.enable_grad():
                xx = x.clone().requires_grad_(True)
                z = f(xx)
                vjps(z, xx, params["k"] or z.shape[1], max(1, bs // len(x)))

        if not lrp:
            return lambda: passes(model.embed)

        def run_lrp():
            from pairlens.models.lrp import lrp_embedding

            with lrp_embedding(model, gamma=params["gamma"], epsilon=params["epsilon"]) as view:
                passes(view)
        return run_lrp
    if name == "integrated-jacobians":
        steps = params["steps"]

        def run():
            path = torch.cat([x * (s / steps) for s in range(1, steps + 1)])
            for start in range(0, len(path), bs):
                with torch.enable_grad():
                    xp = path[start : start + bs].clone().requires_grad_(True)
                    z = model.embed(xp)
                    vjps(z, xp, params["k"] or z.shape[1], max(1, bs // len(xp)))
        return run
    raise KeyError(name)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,photos,resnet50")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch", default="1,4", help="pairs per call, comma list")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=None,
                    help="embedding directions of bilrp / integrated-jacobians (default: theirs)")
    ap.add_argument("--steps", type=int, default=None, help="integrated-jacobians path steps")
    ap.add_argument("--threads", type=int, default=2)
    add_clock_option(ap)
    args = ap.parse_args(argv)
    set_clock(args.clock)
    torch.set_num_threads(args.threads)
    print(f"{machine_line()}, clock {args.clock}")
    print("| model | method | pairs per call | s / pair | floor s / pair | ratio | "
          "zennit floor s / pair | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for model_name in args.models.split(","):
        model = load_benchmark_model(model_name)  # resnet50: random weights, 224 px
        h, w = model.input_size
        for b in (int(v) for v in args.batch.split(",")):
            g = torch.Generator().manual_seed(0)
            x1 = torch.randn(b, 3, h, w, generator=g)
            x2 = torch.randn(b, 3, h, w, generator=g)
            for name in args.methods.split(","):
                params = dict(get_method(name).params)
                if args.k is not None and name != "feature-grid":
                    params["k"] = args.k
                if args.steps is not None and name == "integrated-jacobians":
                    params["steps"] = args.steps
                given = {k: v for k, v in params.items() if k in ("k", "steps")}
                t = timed(lambda m=model, a=x1, c=x2, n=name, gv=given:
                          pairlens.correspond(m, a, c, method=n, **gv), args.repeats)
                t_floor = timed(floor_fn(model, name, params, x1, x2), args.repeats)
                row = {"model": model_name, "method": name, "batch": b, "seconds": t / b,
                       "floor": t_floor / b, "ratio": t / t_floor}
                extra = "| – | – |"
                if name == "bilrp":
                    t_lrp = timed(floor_fn(model, name, params, x1, x2, lrp=True), args.repeats)
                    row.update(lrp_floor=t_lrp / b, lrp_ratio=t / t_lrp)
                    extra = f"| {t_lrp / b:.4f} | {t / t_lrp:.2f} |"
                label = name + "".join(f" {k}={v}" for k, v in given.items())
                print(f"| {model_name} | {label} | {b} | {t / b:.4f} | {t_floor / b:.4f} | "
                      f"{t / t_floor:.2f} {extra}", flush=True)
                rows.append(row)
    return rows


if __name__ == "__main__":
    main()
