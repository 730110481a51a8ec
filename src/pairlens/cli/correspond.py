"""``pairlens correspond``: which part of image 1 the model matches with which part of image 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from pairlens.cli.options import (
    Output,
    UsageError,
    add_method_options,
    add_model_options,
    add_output_options,
    add_run_options,
    apply_threads,
    command_parser,
    load_model,
    method_list,
    usage,
)
from pairlens.validation import argtype

CORRESPOND_EXAMPLES = """examples:
  pairlens correspond                                # bundled example pair, bundled 'photos' model
  pairlens correspond a.jpg b.jpg --methods bilrp --grid 14 --out out/
  pairlens correspond a.jpg b.jpg --methods feature-grid,integrated-jacobians \\
      --param integrated-jacobians.steps=64 --top 30
  pairlens correspond a.jpg b.jpg --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth --json

Methods: feature-grid (exact for an affine head on average-pooled features), bilrp (LRP, CNNs),
integrated-jacobians (any differentiable model); --methods all runs the three. Each writes
METHOD.png (the top matches as lines and the two marginal maps), METHOD.npz (relevance, maps,
grids) and METHOD.json.
"""

CORRESPONDENCE_DEFAULT = "feature-grid"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "correspond", "which region of image 1 the model matches with which region of image 2",
        "Second-order explanations: the contribution of every (region of image 1, region of "
        "image 2) pair to the similarity. Writes a figure with the strongest matches drawn as "
        "lines, the raw pair relevance (.npz) and metadata (JSON). With no images, the bundled "
        "example pair is explained with the bundled default model.",
        CORRESPOND_EXAMPLES,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="two image files (or none)")
    add_model_options(p)
    add_method_options(p, default=CORRESPONDENCE_DEFAULT,
                       what="feature-grid, bilrp, integrated-jacobians")
    c = p.add_argument_group("correspondence")
    c.add_argument("--grid", default=None, metavar="G",
                   help="G x G regions (default: the model's feature grid)")
    c.add_argument("--top", type=argtype("int", 1), default=20, metavar="N",
                   help="matches drawn in the figure and listed (default: %(default)s)")
    add_output_options(p, "pairlens-out")
    add_run_options(p, batch_size=None, batch_help="images per forward pass (default: each "
                    "method's own, chosen from the device and image size)")
    p.set_defaults(func=run_correspond)


def run_correspond(args: argparse.Namespace) -> int:
    import pairlens
    from pairlens.cli.explain import _all_selected, _single_pair, _with_run_params
    from pairlens.explanation import correspondence_methods
    from pairlens.io import load_image
    from pairlens.methods.common import as_grid
    from pairlens.methods.correspondence import check_grids
    from pairlens.methods.registry import get_method
    from pairlens.progress import overall, progress_bars

    out = Output(args, "correspond")
    if len(args.images) not in (0, 2):
        raise UsageError(f"correspond takes two images or none; got {len(args.images)}")
    variants = method_list(args)
    allowed = correspondence_methods()
    if _all_selected(args):
        variants = [(name, given) for name, given in variants if name in allowed]
    wrong = [name for name, _ in variants if name not in allowed]
    if wrong:
        raise UsageError(f"not a correspondence method: {', '.join(wrong)}; choose from "
                         f"{', '.join(allowed)}")
    grid = None
    if args.grid is not None:
        grid = usage(get_method(variants[0][0]).specs["grid"].coerce, args.grid, "--grid")
        if any("grid" in given for _, given in variants):
            raise UsageError("give the grid once: --grid G or --param [METHOD.]grid=G, not both")
    apply_threads(args)
    for path in args.images:
        load_image(path)  # fail early on a bad file, before loading the model
    model = load_model(args)
    x1, x2, sources = _single_pair(model, args.images)
    for _, given in variants:  # a grid finer than the pixels is a bad option, found before running
        chosen = usage(as_grid, given.get("grid", grid))
        if chosen is not None:
            usage(check_grids, [chosen, chosen], tuple(x1.shape[-2:]))
    root = Path(args.out)
    results = {}
    with progress_bars(not args.quiet), overall(len(variants), "correspond",
                                                 unit="method") as bar:
        for name, given in variants:
            bar.set_postfix_str(name)
            params = {"grid": grid, **_with_run_params(name, given, args)}  # --param grid wins
            exp = pairlens.correspond(model, x1, x2, method=name, sources=sources, **params)
            for path in exp.save(root, stem=name, top=args.top):
                out.wrote(path, {".png": "figure (top matches, marginal maps)",
                                 ".npz": "relevance, marginal maps, grids",
                                 ".json": "metadata"}.get(path.suffix, ""))
            top = exp.top_matches(k=args.top)
            error = float(exp.extras["completeness_error"][0])
            target = float(exp.extras["target"][0])
            results[name] = {
                "similarity": float(exp.score[0]),
                "grid": [list(g) for g in exp.grids],
                "target": target,
                "completeness_error": error,
                "seconds": exp.seconds,
                "top": [{"region1": i, "region2": j, "relevance": v} for i, j, v in top],
            }
            (h1, w1), (h2, w2) = exp.grids
            out.say(f"{name:22s} similarity {float(exp.score[0]):.4f}  target {target:.4f}  "
                    f"completeness error {error:+.4f}  {exp.seconds:6.2f} s")
            for i, j, v in top[:5]:
                out.say(f"{'':22s} (row {i // w1}, col {i % w1}) of image 1 <-> "
                        f"(row {j // w2}, col {j % w2}) of image 2: {v:+.4f}")
            bar.update(1)
    out.add(model=model.name, sources=[str(s) for s in sources], methods=results)
    return out.finish()
