"""Why BiLRP lets batch norms pass relevance instead of merging them into the preceding layer.

For each image of the bundled example pair, the LRP relevance of the embedding direction
``u = z / |z|`` (started, as BiLRP starts, from ``z * u``, which sums to ``u.z = |z|``) is
propagated to the pixels with PairLens's rules (:mod:`pairlens.models.lrp`), once with batch norms
passing relevance through (PairLens) and once with zennit's ``SequentialMergeBatchNorm`` merging
each batch norm into the convolution before it (part of zennit's ``ResNetCanonizer``). Printed:
the share of the embedding's relevance that reaches the pixels (1 = conserved).

Usage:  python benchmarks/bilrp_batchnorm.py [--model photos]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def pixel_share(model, x: torch.Tensor, merge: bool) -> float:
    """Sum of the pixel relevance over the sum of the embedding relevance, for one image."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox

    from pairlens.models.lrp import _canonizers, _View

    view = _View(model).eval()
    for p in view.parameters():
        p.requires_grad_(False)
    channels = model.mean.shape[1]
    low = model.normalize(torch.zeros(1, channels, 1, 1))
    high = model.normalize(torch.ones(1, channels, 1, 1))
    canonizers = _canonizers() + ([SequentialMergeBatchNorm()] if merge else [])
    composite = EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    with composite.context(view) as hooked:
        xx = x.clone().requires_grad_(True)
        z = hooked(xx)
        start = z.detach() * z.detach() / z.detach().norm(dim=1, keepdim=True)
        (r,) = torch.autograd.grad(z, xx, grad_outputs=start)
    return float(r.sum() / start.sum())


def main(argv: list[str] | None = None) -> list[dict]:
    import pairlens
    from pairlens.data.bundled import example_pairs

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="photos")
    args = ap.parse_args(argv)
    model = pairlens.load_model(args.model, device="cpu")
    name1, img1, name2, img2 = example_pairs(args.model)[0]
    print("| image | batch norms | share of the embedding's relevance at the pixels |")
    print("|---|---|---:|")
    rows = []
    for name, img in ((name1, img1), (name2, img2)):
        x = model.preprocess(img)
        for merge in (False, True):
            share = pixel_share(model, x, merge)
            label = "merged (zennit ResNetCanonizer)" if merge else "pass (PairLens)"
            print(f"| {Path(name).name} | {label} | {share:.3f} |", flush=True)
            rows.append({"image": name, "merge": merge, "share": share})
    return rows


if __name__ == "__main__":
    main()
