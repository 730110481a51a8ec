"""``pairlens correspond``: which part of image 1 the model matches with which part of image 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CORRESPOND_EXAMPLES = """examples:
  pairlens correspond                                # bundled example pair, bundled 'photos' model
  pairlens correspond a.jpg b.jpg --methods bilrp --grid 14 --out out/
  pairlens correspond a.jpg b.jpg --methods feature-grid,integrated-jacobians \\
      --param integrated-jacobians.steps=64 --top 30
  pairlens correspond a.jpg b.jpg --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth --json

Methods: feature-grid (exact for an affine head on average-pooled features), bilrp (LRP, CNNs),
integrated-jacobians (any differentiable model). Each writes METHOD.png (the top matches as lines
and the two marginal maps), METHOD.npz (relevance, maps, grids) and METHOD.json.
"""

CORRESPONDENCE_DEFAULT = "feature-grid"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correspond",
        help="which region of image 1 the model matches with which region of image 2",
        description="Second-order explanations: the contribution of every (region of image 1, "
        "region of image 2) pair to the similarity. Writes a figure with the strongest matches "
        "drawn as lines, the raw pair relevance (.npz) and metadata (JSON). With no images, the "
        "bundled example pair is explained with the bundled default model.",
        epilog=CORRESPOND_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="two image files (or none)")
    p.add_argument("--model", default=None, help="registered model name (default: photos)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for --model")
    p.add_argument("--embedding", default=None, help="which embedding of the model to explain")
    p.add_argument("--methods", default=CORRESPONDENCE_DEFAULT, metavar="LIST",
                   help="comma-separated correspondence methods (default: %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method parameter, repeatable (e.g. k=16, bilrp.gamma=0.5)")
    p.add_argument("--grid", default=None, metavar="G",
                   help="G x G regions (default: the model's feature grid)")
    p.add_argument("--top", type=int, default=20, metavar="N",
                   help="matches drawn in the figure and listed (default: %(default)s)")
    p.add_argument("--out", default="pairlens-out", metavar="DIR",
                   help="output folder (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_correspond)


def method_params(names: list[str], items: list[str]) -> dict[str, dict]:
    """``--param`` items per method: ``key=value`` applies to every method that has ``key``,
    ``method.key=value`` to that method only (an unknown key is an error)."""
    from pairlens.cli.explain import parse_params
    from pairlens.methods.registry import get_method

    out: dict[str, dict] = {name: {} for name in names}
    for item in items:
        head = item.split("=", 1)[0]
        if "." in head:
            method, _, kv = item.partition(".")
            name = get_method(method).name
            if name not in out:
                raise ValueError(f"--param given for {name}, which is not in --methods")
            targets, values = [name], parse_params([kv])
        else:
            values = parse_params([item])
            targets = [n for n in names if set(values) <= set(get_method(n).params)]
            if not targets:
                raise ValueError(f"no selected method has parameter {', '.join(values)}")
        for name in targets:
            unknown = sorted(set(values) - set(get_method(name).params))
            if unknown:
                raise ValueError(f"method {name!r} has no parameter {', '.join(unknown)}")
            out[name].update(values)
    return out


def run_correspond(args: argparse.Namespace) -> int:
    import pairlens
    from pairlens.cli.explain import load_cli_model, load_pair
    from pairlens.explanation import correspondence_methods
    from pairlens.io import load_image
    from pairlens.methods.registry import get_method
    from pairlens.progress import progress_bars, track

    if len(args.images) not in (0, 2):
        raise ValueError(f"correspond takes two images or none; got {len(args.images)}")
    if args.top < 1:
        raise ValueError("--top must be >= 1")
    names = [get_method(n.strip()).name for n in args.methods.split(",") if n.strip()]
    wrong = [n for n in names if n not in correspondence_methods()]
    if not names or wrong:
        raise ValueError(f"not a correspondence method: {', '.join(wrong) or '(none)'}; choose "
                         f"from {', '.join(correspondence_methods())}")
    grid = None if args.grid is None else get_method(names[0]).specs["grid"].coerce(
        args.grid, "--grid")
    params = method_params(names, args.param)
    if grid is not None and any("grid" in p for p in params.values()):
        raise ValueError("give the grid once: --grid G or --param [METHOD.]grid=G, not both")
    images = [load_image(path) for path in args.images]  # fail early on a bad file
    model = load_cli_model(args.model, args.checkpoint, args.embedding, args.device)
    x1, x2, sources = load_pair(model, images, args.images)
    out = Path(args.out)
    report = {"out": str(out), "model": model.name, "sources": list(sources), "methods": {}}
    with progress_bars(not (args.quiet or args.json)):
        for name in track(names, desc="methods"):
            given = {"grid": grid, **params[name]}  # --param grid=G: that method's grid
            exp = pairlens.correspond(model, x1, x2, method=name, sources=sources, **given)
            written = exp.save(out, stem=name, top=args.top)
            top = exp.top_matches(k=args.top)
            report["methods"][name] = {
                "similarity": float(exp.score[0]),
                "grid": [list(g) for g in exp.grids],
                "target": float(exp.extras["target"][0]),
                "completeness_error": float(exp.extras["completeness_error"][0]),
                "seconds": exp.seconds,
                "files": [str(p) for p in written],
                "top": [{"region1": i, "region2": j, "relevance": v} for i, j, v in top],
            }
            if not args.json:
                (h1, w1), (h2, w2) = exp.grids
                print(f"{name:22s} similarity {float(exp.score[0]):.4f}  target "
                      f"{float(exp.extras['target'][0]):.4f}  completeness error "
                      f"{float(exp.extras['completeness_error'][0]):+.4f}  {exp.seconds:6.2f} s  "
                      f"-> {out / (name + '.png')}")
                for i, j, v in top[:5]:
                    print(f"{'':22s} (row {i // w1}, col {i % w1}) of image 1 <-> "
                          f"(row {j // w2}, col {j % w2}) of image 2: {v:+.4f}")
    if args.json:
        print(json.dumps(report))
    return 0
