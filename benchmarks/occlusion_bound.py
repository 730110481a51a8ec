"""How much of a forward pass an exact *incremental* forward would still have to compute for the
occluded images of Conditional and Pairwise Occlusion: the best any "recompute only what the
occluder changes" scheme (e.g. Nakandala et al., SIGMOD 2019, "Krypton") could do.

An occluded image differs from the unoccluded one only inside the occluder, so an exact
incremental forward may reuse every activation of the unoccluded pass that does not depend on
the occluded pixels and must recompute the others. To find them, the occluded pixels are set to
NaN and the image is run through the model once: NaN spreads along exactly the data dependencies
(through convolutions, normalisation, pooling, residual additions and attention). For every
``Conv2d`` and ``Linear`` module, the multiply-accumulates (MACs) at NaN outputs are those an
incremental forward must redo; their share of all MACs of these modules (about all of a CNN's or
a ViT's arithmetic) is a lower bound on its cost relative to a full forward, before counting the
work of gathering the changed patches. Because the paper's code (``benchmarks/reference_impl.py``)
runs exactly one full forward per occluded image, as PairLens and the floor do, this share is
also the lowest ratio to the reference any exact float32 occlusion could reach.

Conditional Occlusion: every window position of the method's defaults (window 64 and stride 8
at 224 px, scaled to the image). Pairwise Occlusion: its ``n_samples`` random rectangles for one
pair (area 10-30 %), drawn as the method draws them.

Usage:  python benchmarks/occlusion_bound.py [--models digits,resnet50,vit-b16] [--batch 32]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import load_benchmark_model, machine_line, pair, positive_int  # noqa: E402

from pairlens.methods.common import pair_generators, scaled  # noqa: E402
from pairlens.methods.perturbation import _windows, box_masks, random_rectangles  # noqa: E402
from pairlens.methods.registry import get_method  # noqa: E402


def _macs_per_output(module: torch.nn.Module) -> int:
    """Multiply-accumulates per output position (Conv2d) or per output row (Linear)."""
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels // module.groups * kh * kw * module.out_channels
    return module.in_features * module.out_features


@torch.no_grad()
def recompute_share(model, x: torch.Tensor, masks: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Per mask (n,): the share of Conv2d + Linear MACs whose outputs depend on the masked
    pixels of image ``x`` (1, C, H, W), in [0, 1]. ``masks``: (n, H, W) booleans."""
    counts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (changed MACs (b,), all MACs)

    def hook(module, _inputs, out):
        if not isinstance(out, torch.Tensor):
            return
        per = _macs_per_output(module)
        nan = torch.isnan(out)
        if isinstance(module, torch.nn.Conv2d):  # (b, C, h, w): positions with any NaN channel
            changed = nan.any(1).flatten(1).sum(1)
            positions = out.shape[-2] * out.shape[-1]
        else:  # (b, ..., features): rows with any NaN feature
            changed = nan.any(-1).reshape(len(out), -1).sum(1)
            positions = out[0].numel() // out.shape[-1]
        counts.append((changed.double() * per, torch.tensor(float(positions * per))))

    tower = model.tower(1)
    handles = [m.register_forward_hook(hook) for part in (tower.encoder, tower.head)
               for m in part.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    shares = []
    try:
        for k in range(0, len(masks), batch):
            m = masks[k:k + batch]
            images = x.expand(len(m), -1, -1, -1).clone()
            images.masked_fill_(m[:, None], float("nan"))
            counts.clear()
            model.embed(images)
            if not counts:
                raise SystemExit("no Conv2d or Linear module ran: nothing to count")
            changed = torch.stack([c for c, _ in counts]).sum(0)
            total = sum(float(t) for _, t in counts)
            shares.append(changed / total)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(shares)


def occlusion_masks(model, x1, x2) -> dict[str, torch.Tensor]:
    """The occluders of the two methods at their default parameters, as (n, H, W) masks."""
    h, w = model.input_size
    side = min(h, w)
    window, stride = scaled(64, side), scaled(8, side)
    rows = torch.tensor(_windows(h, window, stride))
    cols = torch.tensor(_windows(w, window, stride))
    top, left = torch.meshgrid(rows, cols, indexing="ij")
    top, left = top.flatten(), left.flatten()
    size = torch.full_like(top, window)
    params = get_method("pairwise-occlusion").params
    gen = pair_generators(params["seed"], x1, x2)[0]
    return {
        f"conditional-occlusion (window {window}, stride {stride}, {len(top)} positions)":
            box_masks(top, left, size, size, h, w),
        f"pairwise-occlusion ({params['n_samples']} rectangles, area {params['area']})":
            random_rectangles(params["n_samples"], h, w, params["area"], params["ratio"], gen),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits,resnet50,vit-b16")
    ap.add_argument("--batch", type=positive_int, default=32)
    ap.add_argument("--threads", type=positive_int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    print("| model | occluder | share of a full forward an exact incremental forward must "
          "recompute: mean | min | max |")
    print("|---|---|---:|---:|---:|")
    for name in args.models.split(","):
        model = load_benchmark_model(name).eval()
        x1, x2 = pair(model, 1)
        for label, masks in occlusion_masks(model, x1, x2).items():
            share = recompute_share(model, x1, masks, args.batch)
            print(f"| {name} | {label} | {share.mean():.3f} | {share.min():.3f} | "
                  f"{share.max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
