"""Seconds per pair of every method, and its ratio to the method's floor, measured in one run.

The floor of a method is the time the same model takes for the forward / backward passes the
method cannot avoid, run as plain PyTorch code with the same batch sizes:

* input-x-gradient, smoothgrad: forward + backward to the input of the two images, once per
  noise sample;
* averaged-transforms: forward + backward of image 1 and its views of image 2 (Z - 1 with the
  default ``interpolation="paper"``, Z with ``"strength"``);
* conditional-occlusion: no-grad forwards of the two images and of every occluded image;
* pairwise-occlusion: no-grad forwards of the two images and of the 2 x n_samples occluded images;
* grad-cam, interaction-cam: forward of the two images + backward to the feature layer;
* deep-similarity: one no-grad forward of the two images.

Usage:  python benchmarks/methods.py [--models digits,resnet50] [--batch 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torchvision

import pairlens
from pairlens.methods.common import scaled
from pairlens.methods.registry import get_method, method_infos


def resnet50_model() -> pairlens.SimilarityModel:
    torch.manual_seed(0)
    enc = torchvision.models.resnet50()
    enc.fc = torch.nn.Identity()
    return pairlens.SimilarityModel(
        enc, feature_layer="layer4", input_size=(224, 224), name="resnet50"
    )


def timed(fn, repeats: int, min_total: float = 2.0) -> float:
    """Best of ``repeats`` timed calls after a warm-up; fast functions are repeated until
    ``min_total`` seconds have been spent, so that millisecond timings are not one noisy shot."""
    start = time.perf_counter()
    fn()  # warm-up
    fast = time.perf_counter() - start < min_total / 20
    best, spent, runs = math.inf, 0.0, 0
    while runs < repeats or (fast and spent < min_total):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return best


def floor_fn(model, name: str, params: dict, x1, x2):
    """A plain-PyTorch function doing exactly the passes the method needs."""
    b, _, h, w = x1.shape

    def fwd_bwd_input(a, c):
        x = torch.cat([a, c]).requires_grad_(True)
        z = model.embed(x)
        torch.autograd.grad(z[: len(a)].mul(z[len(a) :]).sum(), x)

    def no_grad_images(n: int, bs: int):
        with torch.no_grad():
            model.embed(torch.cat([x1, x2]))
            for k in range(0, n, bs):
                model.embed(x1[:1].expand(min(bs, n - k), -1, -1, -1).clone())

    if name == "input-x-gradient":
        return lambda: fwd_bwd_input(x1, x2)
    if name == "smoothgrad":
        n, bs = params["n_samples"], params["batch_size"]

        def run():  # batch_size counts images: bs // 2 noisy pairs per pass
            per = max(1, bs // 2)
            for k in range(0, n * b, per):
                m = min(per, n * b - k)
                fwd_bwd_input(
                    x1[:1].expand(m, -1, -1, -1).clone(), x2[:1].expand(m, -1, -1, -1).clone()
                )

        return run
    if name == "averaged-transforms":
        z = params["steps"] - (params["interpolation"] == "paper")  # paper mode: Z - 1 views
        return lambda: fwd_bwd_input(x1, x2[:1].expand(z * b, -1, -1, -1).clone())
    if name == "conditional-occlusion":
        side = min(h, w)
        win, stride = scaled(64, side), scaled(8, side)
        n = (((h - win) // stride) + 1) * (((w - win) // stride) + 1)
        return lambda: no_grad_images(2 * n * b, params["batch_size"])
    if name == "pairwise-occlusion":
        return lambda: no_grad_images(2 * params["n_samples"] * b, params["batch_size"])
    if name in ("grad-cam", "interaction-cam"):

        def run():
            z, a = model.embed_with_features(torch.cat([x1, x2]).requires_grad_(True))
            torch.autograd.grad(z[:b].mul(z[b:]).sum(), a)

        return run
    if name == "deep-similarity":
        return lambda: torch.no_grad()(model.embed)(torch.cat([x1, x2]))
    if name == "random":
        return lambda: None
    raise KeyError(name)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="digits,resnet50")
    ap.add_argument("--batch", type=int, default=1, help="pairs per call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [i.name for i in method_infos() if i.name != "random"]
    if args.methods != "all":
        names = args.methods.split(",")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} pair(s)"
    )
    print("| model | method | s / pair | floor s / pair | ratio |")
    print("|---|---|---:|---:|---:|")
    for model_name in args.models.split(","):
        model = resnet50_model() if model_name == "resnet50" else pairlens.load_model(model_name)
        h, w = model.input_size
        g = torch.Generator().manual_seed(0)
        x1 = torch.randn(args.batch, 3, h, w, generator=g)
        x2 = torch.randn(args.batch, 3, h, w, generator=g)
        for name in names:
            params = get_method(name).params
            t_method = timed(
                lambda name=name, m=model, a=x1, c=x2: pairlens.explain(m, a, c, method=name),
                args.repeats,
            )
            t_floor = timed(floor_fn(model, name, params, x1, x2), args.repeats)
            print(
                f"| {model_name} | {name} | {t_method / args.batch:.4f} | "
                f"{t_floor / args.batch:.4f} | {t_method / t_floor:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
