"""Measurements behind the "paper's form or the alternative" section of docs/methods.md.

On ``--pairs`` augmented pairs of a bundled model (the pairs of ``pairlens evaluate``, seed 0):

1. Pairwise Occlusion: the range of the softmax weights over the ``--po-samples`` samples of a
   pair at temperature 1 (the authors' value) and 0.01, their effective number exp(entropy)
   (equal to the number of samples for uniform weights), and the Spearman correlation of each map
   with the map made with uniform weights (a count of how often each pixel was erased and
   credited to its image). The weights are recomputed from the same rectangles as the method
   draws, and the script checks that they give the method's own map.
2. SmoothGrad / Averaged Transforms (N): sigma of ``noise_scale="multiply"`` over sigma of
   ``"divide"`` for the model's inputs, i.e. ``(max - min)**2``.
3. Maximum sensitivity of ``--ms-methods`` with ``noise="shared"`` (the authors' code) and
   ``"independent"``.
4. Averaged Transforms (color jitter): Spearman correlation of the maps made with
   ``interpolation="paper"`` and ``"strength"``.

Usage:  python benchmarks/conventions.py --model photos --data photos --pairs 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics

import torch


def _spearman(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    from pairlens.metrics import spearman

    return [float(v) for v in spearman(a.cpu(), b.cpu())]


def pairwise_occlusion_weights(model, x1, x2, n_samples: int, temperature: float):
    """Per pair: the softmax weights (n_samples,) of the method's own rectangles, and the map
    pair rebuilt from them and from uniform weights."""
    from pairlens.methods.common import pair_generators
    from pairlens.methods.perturbation import random_rectangles

    b, _, h, w = x1.shape
    gens = pair_generators(0, x1, x2)
    weights, rebuilt, uniform = [], [], []
    with torch.no_grad():
        for k in range(b):
            m1 = random_rectangles(n_samples, h, w, (0.1, 0.3), (1.0, 1.5), gens[k])
            m2 = random_rectangles(n_samples, h, w, (0.1, 0.3), (1.0, 1.5), gens[k])
            o1 = x1[k:k + 1].masked_fill(m1[:, None], 0.0)
            o2 = x2[k:k + 1].masked_fill(m2[:, None], 0.0)
            za, zb = model.embed(o1), model.embed(o2)
            base = model.similarity(x1[k:k + 1], x2[k:k + 1])
            drops = base - model.embedding_similarity(za, zb)
            wgt = torch.softmax(drops / temperature, 0)
            first = (za.norm(dim=1) < zb.norm(dim=1)).float()
            weights.append(wgt)
            for dest, ww in ((rebuilt, wgt), (uniform, torch.full_like(wgt, 1 / n_samples))):
                dest.append((torch.einsum("n,nhw->hw", ww * first, m1.float()),
                             torch.einsum("n,nhw->hw", ww * (1 - first), m2.float())))
    return weights, rebuilt, uniform


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="photos")
    p.add_argument("--data", default="photos")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--po-samples", type=int, default=100)
    p.add_argument("--ms-samples", type=int, default=10)
    p.add_argument("--ms-methods", default="input-x-gradient,interaction-cam")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import pairlens
    from pairlens.methods.common import noise_sigma
    from pairlens.metrics import max_sensitivity
    from pairlens.study.pairs import PairSet

    model = pairlens.load_model(args.model)
    pairs = PairSet(model, args.data, "augmented", n=args.pairs, seed=0)
    x1, x2 = pairs.batch(list(range(len(pairs))))
    lines = [f"model {args.model}, {len(pairs)} augmented pairs of {args.data} (seed 0), "
             f"input {tuple(model.input_size)}", ""]

    lines += ["1. Pairwise Occlusion, softmax weights and agreement with uniform weights",
              "", "| temperature | weight min | weight max | effective samples exp(H) (mean) | "
              "Spearman with uniform weights (mean, min) |", "|---:|---:|---:|---:|---:|"]
    for t in (1.0, 0.01):
        weights, rebuilt, uniform = pairwise_occlusion_weights(model, x1, x2, args.po_samples, t)
        exp = pairlens.explain(model, x1, x2, method="pairwise-occlusion",
                               n_samples=args.po_samples, temperature=t)
        for k, (r1, r2) in enumerate(rebuilt):  # the recomputed weights are the method's
            torch.testing.assert_close(exp.maps[0][k], r1, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(exp.maps[1][k], r2, atol=1e-5, rtol=1e-4)
        w = torch.stack(weights)
        entropy = -(w * w.clamp_min(1e-30).log()).sum(1)
        rho = [v for i in range(2) for v in _spearman(
            exp.maps[i], torch.stack([u[i] for u in uniform])) if v == v]
        lines.append(f"| {t:g} | {float(w.min()):.4f} | {float(w.max()):.4f} | "
                     f"{float(entropy.exp().mean()):.1f} of {args.po_samples} | "
                     f"{statistics.mean(rho):.3f}, {min(rho):.3f} |")

    span = (x1.flatten(1).amax(1) - x1.flatten(1).amin(1))
    ratio = (noise_sigma(x1, 0.15, "multiply") / noise_sigma(x1, 0.15, "divide")).flatten()
    lines += ["", "2. SmoothGrad noise: sigma(multiply) / sigma(divide) = (max - min)^2",
              "", f"input range max - min: mean {float(span.mean()):.2f}; sigma ratio: mean "
              f"{float(ratio.mean()):.1f}, min {float(ratio.min()):.1f}, max "
              f"{float(ratio.max()):.1f}"]

    lines += ["", f"3. Maximum sensitivity ({args.ms_samples} samples)", "",
              "| method | MS shared (mean) | MS independent (mean) | independent / shared |",
              "|---|---:|---:|---:|"]
    for method in [m.strip() for m in args.ms_methods.split(",") if m.strip()]:
        ms = {n: max_sensitivity(model, x1, x2, method, n_samples=args.ms_samples, noise=n)
              for n in ("shared", "independent")}
        a, b = float(ms["shared"].nanmean()), float(ms["independent"].nanmean())
        lines.append(f"| {method} | {a:.3f} | {b:.3f} | {b / a:.2f} |")

    paper = pairlens.explain(model, x1, x2, method="averaged-transforms")
    strength = pairlens.explain(model, x1, x2, method="averaged-transforms",
                                interpolation="strength")
    lines += ["", "4. Averaged Transforms (color-jitter), Spearman of paper vs strength maps", ""]
    for i in range(2):
        rho = _spearman(paper.maps[i], strength.maps[i])
        lines.append(f"image {i + 1}: mean {statistics.mean(rho):.3f}, min {min(rho):.3f}, "
                     f"max {max(rho):.3f}")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
