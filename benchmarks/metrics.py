"""Speed of the pair metrics (seed 000, §IV).

Prints, in one run:

1. the time of the conditional metrics (CI + CD) of :func:`pairlens.evaluate` against a naive
   implementation that re-encodes the fixed, unaltered image at every step (the paper's code
   computes ``similarity(altered, fixed)`` per step, one pair at a time), and their ratio; also
   against the same naive loop with the pairs of a step batched. All run without autograd and
   must give the same values (checked);
2. pairs per second of the full six-metric evaluation (SI, SD, CI, CD, SAD, CAD, default step) of
   one method (``grad-cam``), explanation included and excluded, on the bundled ``digits`` model and
   on a ResNet-50 at 224 px with random weights.

Usage: ``python benchmarks/metrics.py [--pairs-digits 16] [--pairs-resnet 1] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import resnet50_model  # noqa: E402

import pairlens  # noqa: E402
from pairlens.metrics.faithfulness import (  # noqa: E402
    auc,
    default_step,
    gaussian_blur,
    n_steps,
    pixel_ranks,
)
from pairlens.models.similarity import SimilarityModel  # noqa: E402


@torch.no_grad()
def naive_conditional(model: SimilarityModel, x1, x2, m1, m2, step: int,
                      per_pair: bool = True) -> dict[str, torch.Tensor]:
    """CI and CD the straightforward way: for every step and direction, build the altered image
    and compute ``model.similarity(altered, fixed)``, re-encoding the fixed image each time.

    ``per_pair=True`` walks the pairs one at a time like the paper's code (each step one forward
    pass of the altered and the fixed image); ``per_pair=False`` batches the pairs of a step.
    """
    if per_pair and x1.shape[0] > 1:
        parts = [naive_conditional(model, x1[i : i + 1], x2[i : i + 1], m1[i : i + 1],
                                   m2[i : i + 1], step, per_pair=False)
                 for i in range(x1.shape[0])]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    b, _, h, w = x1.shape
    n = n_steps(h, w, step)
    out = {}
    for kind, letter in (("insertion", "I"), ("deletion", "D")):
        curves = []
        for alter, fixed, m in ((x1, x2, m1), (x2, x1, m2)):
            ranks = pixel_ranks(m)
            blurred = gaussian_blur(alter)
            scores = []
            for k in range(n + 1):
                top = (ranks < k * step).view(b, 1, h, w)
                if kind == "insertion":
                    img = torch.where(top, alter, blurred)
                else:
                    img = torch.where(top, torch.zeros_like(alter), alter)
                scores.append(model.similarity(img, fixed))
            curves.append(torch.stack(scores, 1))
        out[f"C{letter}"] = auc((curves[0] + curves[1]) / 2)
    return out


def timed(fn, repeat: int = 1):
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_model(name: str, model: SimilarityModel, pairs: int, forward_batch: int,
                compare_naive: bool = True) -> None:
    h, w = model.input_size
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(pairs, 3, h, w, generator=g).to(model.device)
    x2 = (x1 + 0.3 * torch.randn(pairs, 3, h, w, generator=g)).to(model.device)
    if name == "digits":
        from pairlens.data.bundled import digits

        x, _ = digits("test")
        x1 = model.normalize(x[:pairs])
        x2 = model.normalize(x[pairs : 2 * pairs])
    step = default_step(h, w)
    print(f"\n== {name}: {pairs} pair(s) at {h}x{w}, L={step}, N={n_steps(h, w, step)} steps, "
          f"{torch.get_num_threads()} thread(s)")
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    maps = exp.maps
    t_ours, ours = timed(lambda: pairlens.evaluate(model, x1, x2, maps, metrics=("CI", "CD"),
                                                   batch_size=forward_batch))
    if not compare_naive:
        print(f"conditional metrics (CI+CD): pairlens {t_ours:8.2f} s")
    t_naive, naive = timed(lambda: naive_conditional(model, x1, x2, *maps, step)) \
        if compare_naive else (0.0, None)
    if compare_naive:
        report_naive(ours, naive, t_ours, t_naive, model, x1, x2, maps, step)
    t_explain, exp = timed(lambda: pairlens.explain(model, x1, x2, method="grad-cam"))
    t_metrics, _ = timed(lambda: pairlens.evaluate(model, x1, x2, exp, batch_size=forward_batch))
    print(f"six metrics (SI,SD,CI,CD,SAD,CAD) of grad-cam: {pairs / t_metrics:.4g} pairs/s "
          f"= {t_metrics / pairs:.3g} s/pair (metrics only), "
          f"{pairs / (t_metrics + t_explain):.4g} pairs/s (explanation + metrics)")


def report_naive(ours, naive, t_ours, t_naive, model, x1, x2, maps, step) -> None:
    t_batched, batched = timed(lambda: naive_conditional(model, x1, x2, *maps, step,
                                                         per_pair=False))
    for k in ("CI", "CD"):
        assert torch.allclose(ours[k], naive[k], atol=1e-4), (k, ours[k], naive[k])
        assert torch.allclose(ours[k], batched[k], atol=1e-4), (k, ours[k], batched[k])
    print(f"conditional metrics (CI+CD), same values from all three:\n"
          f"  pairlens (fixed image embedded once, steps and pairs batched) {t_ours:8.2f} s\n"
          f"  naive, pair by pair, re-encoding the fixed image per step   {t_naive:8.2f} s"
          f"   ratio {t_ours / t_naive:.3f}\n"
          f"  naive, pairs batched per step, re-encoding the fixed image   {t_batched:8.2f} s"
          f"   ratio {t_ours / t_batched:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs-digits", type=int, default=16)
    p.add_argument("--pairs-resnet", type=int, default=1)
    p.add_argument("--forward-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-resnet", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pairlens.models.similarity.resolve_device(args.device)
    bench_model("digits", pairlens.load_model("digits", device=device), args.pairs_digits,
                args.forward_batch)
    if not args.skip_resnet:
        bench_model("resnet50@224 (random weights)", resnet50_model().to(device),
                    args.pairs_resnet, min(args.forward_batch, 64), compare_naive=False)


if __name__ == "__main__":
    main()
