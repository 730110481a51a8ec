"""Seconds per pair of every method and of the six metrics: PairLens / floor and PairLens / the
reference code, all measured in one run (so machine load affects every side alike).

* **PairLens**: ``pairlens.explain`` with default parameters (default ``batch_size`` for the
  device), and ``pairlens.evaluate`` with the six metrics SI, SD, CI, CD, SAD, CAD (default step).
* **floor**: plain PyTorch code doing only the passes the method needs, with the same images per
  forward pass: forward + backward of the model's similarity to the input (saliency methods) or
  to the feature layer (CAM methods), or no-grad forwards (occlusion, metrics; Deep Similarity's
  capture the feature-layer maps it decomposes, as the CAM methods' do), plus the unaltered
  pair's similarity where the method returns it. (The similarity and its backward are part
  of every gradient method's work: on the digits model the cosine's forward and backward cost
  about 0.06 ms of a 1.2 ms call.)
* **reference**: ``benchmarks/reference_impl.py``, the paper's code re-written as plain batch-1
  loops (see its docstring for where each loop comes from). It always runs in float32 with the
  default memory layout, as the paper's code does: with ``--amp`` / ``--channels-last`` (applied
  to PairLens and the floor) "/ reference" is the option's whole gain over the paper's code.

The three sides of a row are timed in interleaved blocks of calls (``common.timed_together``),
so that a change of machine load during the run affects them alike. The metrics are timed on a
random (tie-free) map, and PairLens's six values are checked against the reference's (they must
agree to 1e-3). Peak RSS is that of the whole process at the end of each
model (the methods run in the order printed).

``--pairs-per-call B`` times calls of B pairs (as ``pairlens evaluate`` explains its units of
``--pairs-per-unit`` pairs) and prints seconds per pair: the fixed cost of a call is shared by
B pairs; the reference code still explains one pair at a time.

Usage:  python benchmarks/methods.py [--models digits,resnet50] [--repeats 3] [--threads 2]
        [--methods all] [--no-tune] [--channels-last] [--amp bf16] [--pairs-per-call 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_impl as ref  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    add_clock_option,
    load_benchmark_model,
    machine_line,
    pair,
    peak_rss_mb,
    positive_int,
    set_clock,
    timed_together,
)

import pairlens  # noqa: E402
from pairlens.methods.common import scaled  # noqa: E402
from pairlens.methods.registry import get_method, method_infos  # noqa: E402
from pairlens.metrics.faithfulness import default_step, n_steps  # noqa: E402
from pairlens.runtime import default_batch_size, tune_cpu_runtime  # noqa: E402

METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD")
# methods whose floor is written for several pairs per call (--pairs-per-call)
BATCHABLE = ("grad-cam", "interaction-cam", "deep-similarity", "input-x-gradient")


def floor_fn(model, name: str, params: dict, x1, x2, step: int | None = None):
    """A plain-PyTorch function doing exactly the passes the method needs (one pair; the
    methods of :data:`BATCHABLE` also ``b`` pairs at once)."""
    h, w = x1.shape[-2:]
    b = len(x1)
    grad_bs = default_batch_size(x1.device, (h, w), grad=True)
    bs = default_batch_size(x1.device, (h, w), grad=False)

    def fwd_bwd_input(x, other=None):
        # the gradient of the model's similarity: image rows 0..n-1 against rows n..2n-1, or
        # every row against the (detached) embedding ``other``
        x = x.detach().requires_grad_(True)
        z = model.embed(x)
        n = len(z) // 2
        s = (model.embedding_similarity(z[:n], z[n:]) if other is None
             else model.embedding_similarity(other.expand_as(z), z))
        torch.autograd.grad(s.sum(), x)

    def no_grad_images(n: int, size: int):
        with torch.no_grad():
            model.embed(torch.cat([x1, x2]))
            for k in range(0, n, size):
                model.embed(x1[:1].expand(min(size, n - k), -1, -1, -1).clone())

    if name == "input-x-gradient":
        return lambda: fwd_bwd_input(torch.cat([x1, x2]))
    if name == "smoothgrad":
        n, per = params["n_samples"], max(1, grad_bs // 2)

        def run():
            for k in range(0, n, per):
                fwd_bwd_input(torch.cat([x1, x2])[[0] * min(per, n - k) + [1] * min(per, n - k)])
            with torch.no_grad():
                model.embed(torch.cat([x1, x2]))

        return run
    if name == "averaged-transforms":
        z = params["steps"] - (params["interpolation"] == "paper")  # paper mode: Z - 1 views

        def run():
            with torch.no_grad():
                z2 = model.embed(x2)
            fwd_bwd_input(x1, z2)
            for k in range(0, z, grad_bs):
                fwd_bwd_input(x2.expand(min(grad_bs, z - k), -1, -1, -1).clone(), z2)

        return run
    if name == "conditional-occlusion":
        side = min(h, w)
        win, stride = scaled(64, side), scaled(8, side)
        n = (((h - win) // stride) + 1) * (((w - win) // stride) + 1)
        return lambda: no_grad_images(2 * n, bs)
    if name == "pairwise-occlusion":
        return lambda: no_grad_images(2 * params["n_samples"], 2 * max(1, bs // 2))
    if name in ("grad-cam", "interaction-cam"):

        def run():
            z, a = model.embed_with_features(torch.cat([x1, x2]).requires_grad_(True))
            torch.autograd.grad(model.embedding_similarity(z[:b], z[b:]).sum(), a)

        return run
    if name == "deep-similarity":

        @torch.no_grad()
        def run():  # the method decomposes the feature-layer maps: the pass must capture them
            z, _ = model.embed_with_features(torch.cat([x1, x2]))
            model.embedding_similarity(z[:b], z[b:])

        return run
    if name == "metrics":
        n = n_steps(h, w, step or default_step(h, w))
        return lambda: no_grad_images(4 * n + 2, bs)
    raise KeyError(name)


def check_metrics(model, x1, x2, maps, step) -> None:
    """PairLens's six metrics equal the reference loops' on a tie-free map."""
    ours = pairlens.evaluate(model, x1, x2, maps, metrics=METRICS, step=step)
    theirs = ref.six_metrics(model, x1, x2, maps[0], maps[1], step)
    for k in METRICS:
        if not math.isclose(float(ours[k][0]), theirs[k], abs_tol=1e-3):
            raise AssertionError(f"{k}: pairlens {float(ours[k][0]):.5f}, "
                                 f"reference {theirs[k]:.5f}")


def bench_model(model_name: str, names: list[str], repeats: int, execution: dict,
                step: int | None = None, pairs_per_call: int = 1) -> list[str]:
    model = load_benchmark_model(model_name)
    # The paper's code has no autocast and no channels-last: with --amp / --channels-last the
    # reference loops keep a float32, contiguous copy of the same weights, so "/ reference" is
    # PairLens-with-the-option against the paper's code as it runs (the floor uses the option).
    reference_model = copy.deepcopy(model) if any(execution.values()) else model
    model.set_execution(**execution)
    x1, x2 = pair(model, pairs_per_call)
    h, w = model.input_size
    rows = []
    for name in names:
        if name == "metrics":
            step = step or default_step(h, w)
            g = torch.Generator().manual_seed(1)
            maps = (torch.rand(1, h, w, generator=g), torch.rand(1, h, w, generator=g))
            if not execution.get("amp"):
                check_metrics(model, x1, x2, maps, step)
            params: dict = {}

            def ours(maps=maps, step=step):
                pairlens.evaluate(model, x1, x2, maps, metrics=METRICS, step=step)

            def theirs(maps=maps, step=step):
                ref.six_metrics(reference_model, x1, x2, *maps, step)

            label = "six metrics"
        else:
            params = get_method(name).params
            kw = {}
            if name == "conditional-occlusion":  # the sizes PairLens scales to the image
                kw = {"w_size": scaled(64, min(h, w)), "stride": scaled(8, min(h, w))}

            def ours(name=name):
                pairlens.explain(model, x1, x2, method=name)

            def theirs(name=name, kw=kw):  # the paper's code: one pair at a time
                for i in range(pairs_per_call):
                    ref.METHODS[name](reference_model, x1[i:i + 1], x2[i:i + 1], **kw)

            label = name
        # interleaved (ours, floor, reference, ours, ...): load changes hit all three alike
        t_ours, t_floor, t_ref = (t / pairs_per_call for t in timed_together(
            [ours, floor_fn(model, name, params, x1, x2, step), theirs], repeats))
        row = (f"| {model_name} | {label} | {t_ours:.4f} | {t_floor:.4f} | {t_ref:.4f} | "
               f"{t_ours / t_floor:.2f} | {t_ours / t_ref:.2f} |")
        print(row, flush=True)
        rows.append(row)
    print(f"peak RSS after {model_name}: {peak_rss_mb():.0f} MiB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,resnet50")
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--methods", default="all", help="comma list; 'metrics' = the six metrics")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--no-tune", action="store_true", help="skip pairlens.runtime.tune_cpu_runtime")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--amp", default=None, choices=("bf16", "fp16"))
    ap.add_argument("--step", type=int, default=None,
                    help="metrics: pixels per insertion/deletion step (default: round(H*W/224))")
    ap.add_argument("--pairs-per-call", type=positive_int, default=1,
                    help=f"pairs per explain call (times are per pair); >1 only for "
                    f"{', '.join(BATCHABLE)}")
    add_clock_option(ap)
    args = ap.parse_args(argv)
    set_clock(args.clock)
    applied = {} if args.no_tune else tune_cpu_runtime()
    torch.set_num_threads(args.threads)
    names = [i.name for i in method_infos() if i.name in ref.METHODS] + ["metrics"]
    if args.methods != "all":
        names = args.methods.split(",")
    execution = {"amp": args.amp, "channels_last": args.channels_last}
    known = {i.name for i in method_infos() if i.name in ref.METHODS} | {"metrics"}
    if set(names) - known:
        raise SystemExit(f"methods.py: unknown --methods {', '.join(sorted(set(names) - known))}; "
                         f"choose from {', '.join(sorted(known))}")
    if args.pairs_per_call > 1 and set(names) - set(BATCHABLE):
        raise SystemExit(f"--pairs-per-call > 1 needs --methods from {', '.join(BATCHABLE)}")
    print(machine_line())
    print(f"runtime tuning: {applied or 'none'}; execution: {execution}; best of "
          f"{args.repeats}; clock: {args.clock}; {args.pairs_per_call} pair(s) per call")
    print("| model | method | PairLens s/pair | floor s/pair | reference s/pair | / floor "
          "| / reference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model_name in args.models.split(","):
        bench_model(model_name, names, args.repeats, execution, args.step, args.pairs_per_call)
    print(machine_line())


if __name__ == "__main__":
    main()
