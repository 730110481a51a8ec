"""RISE on a COCOA target: seconds per explicand and the ratio to the forward-pass floor.

The floor is the time the same model takes to encode the same number of images (one per mask)
with plain no-grad PyTorch code in batches of the same size: RISE cannot avoid these passes, so
``ratio = RISE time / floor`` measures everything PairLens adds (mask generation on the device,
blending with the blurred baseline, scoring, accumulation). Also shown: the reference
implementation's loop (one explicand-sized forward pass per mask), measured on a few masks and
extrapolated, for scale.

Usage:  python benchmarks/corpus.py [--models digits,resnet50] [--n-masks 5000] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torchvision

import pairlens
from pairlens import targets
from pairlens.attribution import rise_maps
from pairlens.attribution.baselines import blur
from pairlens.attribution.rise import auto_batch_size


def resnet50_model() -> pairlens.SimilarityModel:
    torch.manual_seed(0)
    enc = torchvision.models.resnet50()
    enc.fc = torch.nn.Identity()
    return pairlens.SimilarityModel(
        enc, feature_layer="layer4", input_size=(224, 224), name="resnet50"
    )


def load(name: str) -> pairlens.SimilarityModel:
    if name == "resnet50":
        return resnet50_model()
    return pairlens.load_model(name)


def timed(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, n_masks: int, repeats: int) -> dict:
    model = load(name)
    h, w = model.input_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, h, w, generator=g)
    corpus = torch.randn(8, 3, h, w, generator=g)
    foil = torch.randn(16, 3, h, w, generator=g)
    target = targets.ContrastiveCorpus(model, corpus, foil)
    base = blur(x)
    batch = auto_batch_size(h, w, n_masks)
    images = torch.randn(batch, 3, h, w, generator=g)

    def floor() -> None:
        with torch.no_grad():
            for start in range(0, n_masks, batch):
                model.embed(images[: min(batch, n_masks - start)])

    def rise() -> None:
        rise_maps(
            target,
            x,
            base,
            n_masks=n_masks,
            batch_size=batch,
            generator=torch.Generator().manual_seed(1),
        )

    floor()  # warm-up
    t_floor = timed(floor, repeats)
    t_rise = timed(rise, repeats)
    # the reference loop: one forward pass of one image per mask, on a few masks
    few = 20
    t_loop = (
        timed(lambda: [rise_maps(target, x, base, n_masks=1, batch_size=1) for _ in range(few)], 1)
        * n_masks
        / few
    )
    return {
        "model": name,
        "size": f"{h}x{w}",
        "masks": n_masks,
        "batch": batch,
        "rise_s": t_rise,
        "floor_s": t_floor,
        "ratio": t_rise / t_floor,
        "loop_s": t_loop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet50")
    parser.add_argument("--n-masks", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(
        "| model | input | masks | batch | RISE (s) | forward floor (s) | ratio | "
        "one-mask-per-pass loop (s, extrapolated) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = bench(name.strip(), args.n_masks, args.repeats)
        print(
            f"| {r['model']} | {r['size']} | {r['masks']} | {r['batch']} | {r['rise_s']:.2f} | "
            f"{r['floor_s']:.2f} | {r['ratio']:.2f} | {r['loop_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
