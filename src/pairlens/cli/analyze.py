"""``pairlens analyze ANALYSIS``: the analyses of seed 000 §VI / appendix and seed 002 §4.2.

One sub-command per module of :mod:`pairlens.analysis`; each writes an output folder (``--out``)
with ``config.json``, ``records.jsonl`` (one line per finished unit of work), ``table.md``,
``table.csv`` and a figure, prints the table, and continues an interrupted run with ``--resume``.
Torch and the analysis modules are imported inside the run functions only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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

EXAMPLES = {
    "augmentations": """examples:
  pairlens analyze augmentations --model digits --pairs 64 --out runs/aug-digits
      # about 6 min of CPU time (twice the measured 186 CPU-s of 32 pairs, one thread)
  pairlens analyze augmentations --model photos --pairs 8 --out runs/aug-photos
      # 6.1 min of CPU time (one thread; about an hour of wall time on this shared machine)
  pairlens analyze augmentations --model digits --pair-mode augmented \\
      --transforms "rotation@0,rotation@45,solarize@0.3" --out runs/aug-custom
  pairlens analyze augmentations --model photos --pairs 8 --out runs/aug-photos --resume
""",
    "invert": """examples:
  pairlens analyze invert --model digits --compare digits-supervised --out runs/invert-digits
  pairlens analyze invert --model photos --images 3 --out runs/invert-photos
  pairlens analyze invert --model photos --layers layer1,layer4 --lr 100 --iterations 400 \\
      --out runs/inv
""",
    "texture": """examples:
  pairlens analyze texture --model photos --pairs 50 --out runs/texture-photos
      # 2.3 min of CPU time (one thread)
  pairlens analyze texture --model digits --methods "interaction-cam[reduction=max],random" \\
      --out runs/texture-digits
""",
    "harmful-augmentations": """examples:
  pairlens analyze harmful-augmentations --model digits --pairs 50 --out runs/harmful-digits
  pairlens analyze harmful-augmentations --model photos --brightness 0.2 --blur-sigma 2 \\
      --out runs/harmful-photos
""",
    "cocoa-augmentations": """examples:
  pairlens analyze cocoa-augmentations --model digits --images 6 --out runs/cocoa-aug-digits
      # about 2 min of CPU time (twice the measured 62 CPU-s of the default 3 images)
  pairlens analyze cocoa-augmentations --model photos --images 2 --param n_masks=2000 \\
      --out runs/cp      # 1.8 min of CPU time (one thread)
""",
}

#: CPU time at the default size, measured with /usr/bin/time on one thread (--threads 1) for the
#: runs of docs/analyses.md; wall time on the loaded shared 2-core machine was 10-15 times longer
TIMES = {
    "augmentations": "digits 0.8 CPU-min (a quarter of the 32-pair run's 3.1), photos 6.1 CPU-min",
    "invert": "digits with --compare 0.2 CPU-min, photos with --compare 0.7 CPU-min",
    "texture": "digits 0.6 CPU-min, photos 2.3 CPU-min",
    "harmful-augmentations": "digits 0.1 CPU-min, photos 0.15 CPU-min",
    "cocoa-augmentations": "digits 1.0 CPU-min, photos 6.3 CPU-min",
}

DESCRIPTIONS = {
    "augmentations": (
        "augmentation dissection: Averaged Transforms per transform (Table VII, Figs. 4-6)",
        "Seed 000 §VI-3, Table VII: for each transform (colour jitter, blur, grayscale, "
        "solarisation, rotations 30/60/90/180, flip by default; any family@strength), explain "
        "each pair (image, transformed image) with Averaged Transforms, non-guided and guided, "
        "and score the maps with SI, SD and SAD (mean and 95 % bootstrap interval). Also draws "
        "the dissection strip (dissection.png).",
    ),
    "invert": (
        "feature inversion from chosen layers, contrastive vs supervised (appendix, Fig. 19)",
        "Seed 000 appendix: reconstruct images from the features of three layers (ResNet stages "
        "3-5 by default) by minimising feature MSE + total variation + alpha-norm from noise "
        "(the paper's settings by default; a diverging run is redone with lr/10 and the lr used "
        "is reported), and measure saturation, colourfulness, luma and chroma correlation of "
        "each reconstruction against its original. --compare adds a second model of the same "
        "architecture (e.g. the supervised twin digits-supervised).",
    ),
    "texture": (
        "shared-texture probe: how often explanations rest on a shared texture (§VI-1)",
        "Seed 000 §VI-1: pairs of two different objects (bundled photographs, or digits of "
        "different classes) with the same texture patch (brick / grass / gravel) pasted on both; "
        "per method, the fraction of pairs whose maps put most of their mass on the patch, next "
        "to the paper's 64 %.",
    ),
    "harmful-augmentations": (
        "blur + blackening probe: similarity drop and scattered explanations (§VI-2)",
        "Seed 000 §VI-2: clean pairs (image, crop of it) and harmful pairs (image, blurred and "
        "darkened crop); per method the similarity, the entropy of the maps, their mass on the "
        "main object (digit strokes; without masks, the clean map's top 20 %) and the fraction "
        "flagged (mass below chance), next to the paper's 94 %.",
    ),
    "cocoa-augmentations": (
        "COCOA with each image as corpus: what survives each augmentation (seed 002 §4.2)",
        "Seed 002 §4.2: for each image, its augmentations (flip, crop, crop+flip, grayscale, "
        "colour jitter, cutout, rotation 90) are explained with COCOA + RISE, the image itself "
        "as corpus and other images as foil; class predictions (when the model has a "
        "classifier), cosine and COCOA score to the original, and the agreement of each map "
        "with the original's map, next to the control 'remasked' (the original explained with "
        "other RISE masks: the agreement that mask noise alone allows).",
    ),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pairlens analyze`` and its sub-commands."""
    p = command_parser(
        sub, "analyze",
        "analyses of contrastive models: augmentations, invert, texture, "
        "harmful-augmentations, cocoa-augmentations",
        "Analyses of contrastive models from seed 000 §VI and its appendix and seed 002 §4.2. "
        "Each writes a resumable output folder with a table and a figure.",
        "examples:\n" + "".join(_first_example(e) for e in EXAMPLES.values()),
    )
    analyses = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    parsers = {}
    for name, (short, long) in DESCRIPTIONS.items():
        parsers[name] = a = command_parser(
            analyses, name, short,
            f"{long} Time at the default size, measured on one CPU thread: {TIMES[name]} "
            "(see docs/analyses.md).",
            EXAMPLES[name])
        _common(a, name)
    a = parsers["augmentations"].add_argument_group("analysis")
    a.add_argument("--pairs", type=argtype("int", 1), default=8, metavar="N",
                   help="pairs (default: %(default)s)")
    a.add_argument("--pair-mode", default="self", choices=("self", "augmented", "same-class"),
                   help="self: an image and its transformed copy (the paper); augmented / "
                   "same-class: the transform is applied to the second image of pairlens "
                   "evaluate's pairs (default: %(default)s)")
    a.add_argument("--transforms", default=None,
                   help="comma-separated family@strength (default: Table VII's rows: "
                   "color-jitter@0.8, gaussian-blur@5 (px at 224 px), grayscale@1, solarize@0.5, "
                   "rotation@30/60/90/180, horizontal-flip@1)")
    a.add_argument("--metrics", default="SI,SD,SAD", help="pair metrics (default: %(default)s)")
    a.add_argument("--variants", default="non-guided,guided",
                   help="Averaged Transforms variants (default: %(default)s)")
    a.add_argument("--dissection-steps", type=argtype("int", 1), default=10,
                   metavar="Z", help="dissection steps Z (default: 10)")
    a.add_argument("--step", type=argtype("int", 1), default=None, metavar="L",
                   help="pixels per insertion/deletion step (default: round(H*W/224))")
    parsers["augmentations"].set_defaults(func=run_augmentations)

    a = parsers["invert"].add_argument_group("analysis")
    a.add_argument("--compare", default=None, metavar="MODEL",
                   help="a second registered model of the same architecture shown side by side "
                   "(e.g. digits-supervised)")
    a.add_argument("--compare-checkpoint", default=None, help="checkpoint for --compare")
    a.add_argument("--images", type=argtype("int", 1), default=3, metavar="N",
                   help="images (default: %(default)s)")
    a.add_argument("--layers", default=None,
                   help="comma-separated encoder layers, 'input' for the image itself "
                   "(default: three stages, e.g. layer2,layer3,layer4)")
    for flag, key in (("--iterations", "steps"), ("--lr", "lr"), ("--momentum", "momentum"),
                      ("--lr-step", "lr_step"), ("--lr-gamma", "lr_gamma"),
                      ("--init-std", "init_std"), ("--tv-weight", "tv_weight"),
                      ("--tv-beta", "tv_beta"), ("--alpha", "alpha"),
                      ("--alpha-weight", "alpha_weight")):
        kind = "int" if key in ("steps", "lr_step") else "float"
        positive = key not in ("momentum", "tv_weight", "alpha_weight")
        a.add_argument(flag, dest=key, type=argtype(kind, 0, lo_open=positive), default=None,
                       help=f"(default: the paper's {_paper(key)})")
    a.add_argument("--max-backoffs", type=argtype("int", 0), default=4,
                   help="retries with lr/10 after a divergence (default: %(default)s)")
    parsers["invert"].set_defaults(func=run_invert)

    from pairlens.analysis import HARMFUL_METHODS, TEXTURE_METHODS  # torch-free

    for name, methods in (("texture", TEXTURE_METHODS), ("harmful-augmentations",
                                                         HARMFUL_METHODS)):
        add_method_options(parsers[name], default=methods)
        parsers[name].add_argument_group("analysis").add_argument(
            "--pairs", type=argtype("int", 1), default=50, metavar="N",
            help="pairs (default: %(default)s, as the paper)")
    parsers["texture"].set_defaults(func=run_texture)
    a = _group(parsers["texture"], "analysis")
    a.add_argument("--patch", type=argtype("float", 0, 1, True, True), default=0.35,
                   help="patch side as a fraction of the image side (default: %(default)s)")
    a.add_argument("--threshold", type=argtype("float", 0, 1), default=0.5,
                   help="mass on the patch above which a pair is explained by texture "
                   "(default: %(default)s)")
    parsers["harmful-augmentations"].set_defaults(func=run_harmful)
    a = _group(parsers["harmful-augmentations"], "analysis")
    a.add_argument("--brightness", type=argtype("float", 0, 1, lo_open=True), default=0.3,
                   help="blackening: brightness factor in (0, 1] (default: %(default)s)")
    a.add_argument("--blur-sigma", type=argtype("float", 0), default=None,
                   help="blur sigma in px (default: 2 px at 224 px scaled, at least 1)")
    a.add_argument("--proxy", type=argtype("float", 0, 1, True, True), default=0.2,
                   help="without object masks: top fraction of the clean map taken as the "
                   "subject (default: %(default)s)")

    add_method_options(parsers["cocoa-augmentations"], default="rise",
                       what="rise, the method of seed 002 §4.2")
    a = parsers["cocoa-augmentations"].add_argument_group("analysis")
    a.add_argument("--images", type=argtype("int", 1), default=3, metavar="N",
                   help="images (default: %(default)s)")
    a.add_argument("--augmentations", default=None,
                   help="comma-separated (default: original,flip,crop,crop-flip,grayscale,"
                   "jitter,cutout,rotate-90,remasked; remasked is the control: the original "
                   "explained with other RISE masks)")
    a.add_argument("--foil-size", type=argtype("int", 1), default=1000, metavar="M",
                   help="foil images (default: %(default)s, or all available); RISE masks: "
                   "--param n_masks=N (default: 5000)")
    parsers["cocoa-augmentations"].set_defaults(func=run_cocoa)


def _first_example(examples: str) -> str:
    """The first example of an epilog with the comment lines that follow it (its measured time)."""
    lines = examples.split("\n")[1:]
    keep = lines[:1]
    for line in lines[1:]:
        if not line.strip().startswith("#"):
            break
        keep.append(line)
    return "".join(line + "\n" for line in keep)


def _group(parser: argparse.ArgumentParser, title: str) -> Any:
    """The argument group ``title`` of ``parser`` (created on first use)."""
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def _paper(key: str) -> str:
    from pairlens.analysis import INVERSION_PAPER_SETTINGS  # torch-free

    return f"{INVERSION_PAPER_SETTINGS[key]:g}"


def _common(a: argparse.ArgumentParser, name: str) -> None:
    add_model_options(a, default="digits", default_help="digits")
    a.add_argument_group("data").add_argument(
        "--data", default=None,
        help="digits[:split] | photos | image folder | list file (default: digits for 32-px "
        "digits models, photos otherwise)")
    add_output_options(a, f"pairlens-{name}")
    g = add_run_options(
        a, batch_size=None if name != "invert" else False,  # inversion: one batch, no chunks
        batch_help="images per forward pass; changes speed and memory, results only by "
        "float rounding "
        "(default: chosen from the device and image size)")
    g.add_argument("--resume", action="store_true",
                   help="continue the results in --out (settings must match)")


# ---------------------------------------------------------------------- shared helpers
def _setup(args: argparse.Namespace) -> Any:
    """Threads, an --out that holds results only with --resume, and the model."""
    apply_threads(args)
    if (Path(args.out) / "records.jsonl").exists() and not args.resume:
        raise UsageError(f"{args.out} holds results of an earlier run: pass --resume to continue "
                         "it, or choose another --out")
    return load_model(args)


def _data(args: argparse.Namespace, model: Any) -> str:
    from pairlens.analysis.common import default_data

    return args.data or default_data(model)


def _finish(args: argparse.Namespace, figure: str, out: Output) -> int:
    """Print the table (``--json``: its rows) and list the files of --out."""
    import csv

    root = Path(args.out)
    with open(root / "table.csv", newline="") as f:
        out.add(rows=list(csv.DictReader(f)))
    for name, what in (("table.md", "the table (Markdown)"), ("table.csv", "the table (CSV)"),
                       (figure, "figure"), ("records.jsonl", "one line per finished unit"),
                       ("config.json", "settings (checked by --resume)")):
        if (root / name).exists():
            out.wrote(root / name, what)
    return out.finish(None if out.json else (root / "table.md").read_text().rstrip())


def _methods(args: argparse.Namespace) -> Any:
    from pairlens.study.loop import MethodSpec

    return [MethodSpec(name, given) for name, given in method_list(args)]


def _progress(args: argparse.Namespace):
    from pairlens.progress import progress_bars

    return progress_bars(not args.quiet)


# ---------------------------------------------------------------------- run functions
def run_augmentations(args: argparse.Namespace) -> int:
    from pairlens.analysis.augmentations import (
        PAPER_TRANSFORMS,
        dissect_augmentations,
        parse_transform,
    )

    out = Output(args, f"analyze {args.analysis}")
    variants = {"non-guided": False, "guided": True}
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in chosen if v not in variants]
    if bad or not chosen:
        raise UsageError(f"--variants: choose from non-guided, guided; got {args.variants!r}")
    transforms = (PAPER_TRANSFORMS if args.transforms is None
                  else [t for t in args.transforms.split(",") if t.strip()])
    for text in transforms:  # a typo is a bad option: found before loading anything
        usage(parse_transform, text)
    model = _setup(args)
    data, n = _data(args, model), args.pairs
    if args.pair_mode == "self":
        from pairlens.analysis.common import load_images

        x1, _, names = load_images(model, data, n, args.seed)
        x2 = None
    else:
        from pairlens.study.pairs import PairSet

        pairs = PairSet(model, data, args.pair_mode, n, args.seed)
        x1, x2 = pairs.batch(list(range(n)))
        names = [" / ".join(pairs.describe(i)) for i in range(n)]
    with _progress(args):
        dissect_augmentations(
            model, x1, x2, transforms=transforms, guided=[variants[v] for v in chosen],
            metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
            steps=args.dissection_steps, step=args.step, batch_size=args.batch_size, seed=args.seed,
            out=args.out, resume=args.resume, names=names)
    return _finish(args, "dissection.png", out)


def run_invert(args: argparse.Namespace) -> int:
    from pairlens.analysis.common import load_images
    from pairlens.analysis.inversion import invert_models

    out = Output(args, f"analyze {args.analysis}")
    model = _setup(args)
    models = {model.name: model}
    if args.compare:
        from pairlens.models import load_model, model_info

        # inversion reads encoder layers only; the backbone is every bundled model's embedding
        offered = model_info(args.compare).embeddings
        other = load_model(args.compare, checkpoint=args.compare_checkpoint, device=args.device,
                           embedding="backbone" if "backbone" in offered else None)
        label = other.name
        if args.compare_checkpoint:
            label = f"{label} ({Path(args.compare_checkpoint).expanduser().resolve().parent.name}"\
                    f"/{Path(args.compare_checkpoint).name})"
        if label in models:
            raise UsageError("--compare names the same model as --model; give "
                             "--compare-checkpoint or another model")
        models[label] = other
    x, _, names = load_images(model, _data(args, model), args.images,
                              args.seed)
    keys = ("steps", "lr", "momentum", "lr_step", "lr_gamma", "init_std", "tv_weight",
            "tv_beta", "alpha", "alpha_weight")
    settings: dict[str, Any] = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    settings["max_backoffs"] = args.max_backoffs
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    with _progress(args):
        invert_models(models, model.denormalize(x).clamp(0, 1).cpu(), layers,
                      settings=settings, seed=args.seed, out=args.out, resume=args.resume,
                      names=names)
    return _finish(args, "inversion.png", out)


def run_texture(args: argparse.Namespace) -> int:
    from pairlens.analysis import texture as T

    out = Output(args, f"analyze {args.analysis}")
    model = _setup(args)
    data = _data(args, model)
    objects, labels, _ = T.bundled_objects(model, data)
    side = 2 * max(model.input_size)
    pairs = T.texture_pairs(objects, T.bundled_textures(side), args.pairs,
                            labels=labels, patch=args.patch, seed=args.seed)
    description = {"data": data, "textures": list(T.TEXTURE_PHOTOS), "texture_side": side,
                   "patch": args.patch, "seed": args.seed}
    with _progress(args):
        T.texture_probe(model, pairs, _methods(args), batch_size=args.batch_size,
                        threshold=args.threshold, out=args.out, resume=args.resume,
                        description=description)
    return _finish(args, "texture.png", out)


def run_harmful(args: argparse.Namespace) -> int:
    from pairlens.analysis import harmful as H
    from pairlens.analysis.common import load_images

    out = Output(args, f"analyze {args.analysis}")
    model = _setup(args)
    data = _data(args, model)
    x, _, names = load_images(model, data, None, args.seed)
    # fewer images than pairs (the 18 photographs): images repeat, each pair with its own crop
    pick = [i % len(x) for i in range(args.pairs)]
    names = [names[i] + (f" #{k // len(x)}" if k >= len(x) else "") for k, i in enumerate(pick)]
    x01 = model.denormalize(x[pick]).clamp(0, 1).cpu()
    masks = H.digit_masks(x01) if data.split(":")[0] == "digits" else None
    views = H.harmful_views(x01, masks, brightness=args.brightness, blur_sigma=args.blur_sigma,
                            seed=args.seed)
    description = {"data": data, "images": names, "brightness": args.brightness,
                   "blur_sigma": args.blur_sigma, "proxy": args.proxy, "seed": args.seed}
    with _progress(args):
        H.harmful_probe(model, x01, views, masks, _methods(args), batch_size=args.batch_size,
                        proxy=args.proxy, out=args.out, resume=args.resume,
                        description=description)
    return _finish(args, "harmful.png", out)


def run_cocoa(args: argparse.Namespace) -> int:
    import torch

    from pairlens.analysis import cocoa_augmentations as C
    from pairlens.analysis.common import load_images

    out = Output(args, f"analyze {args.analysis}")
    model = _setup(args)
    data = _data(args, model)
    n = args.images
    x, labels, names = load_images(model, data, n, args.seed)
    if data.split(":")[0] == "digits":  # explicands from the test split, foil from train
        foil, _, _ = load_images(model, "digits:train", None, args.seed)
    else:
        foil, _, foil_names = load_images(model, data, None, args.seed)
        foil = foil[[i for i, nm in enumerate(foil_names) if nm not in set(names)]]
    foil = foil[torch.randperm(len(foil), generator=torch.Generator().manual_seed(args.seed))
                [: args.foil_size]]
    if len(foil) == 0:
        raise ValueError(f"{data} has no images left for the foil")
    augs = (C.AUGMENTATIONS if args.augmentations is None
            else [a.strip() for a in args.augmentations.split(",") if a.strip()])
    with _progress(args):
        C.cocoa_augmentations(model, model.denormalize(x).clamp(0, 1), foil, labels=labels,
                              augmentations=augs, n_masks=_n_masks(args), seed=args.seed,
                              batch_size=args.batch_size,
                              out=args.out, resume=args.resume, names=names)
    return _finish(args, "cocoa-augmentations.png", out)


def _n_masks(args: argparse.Namespace) -> int:
    """RISE masks of cocoa-augmentations: ``--param n_masks=N`` (default 5000, as seed 002)."""
    variants = method_list(args, family="attribution")
    if [name for name, _ in variants] != ["rise"]:
        raise UsageError("cocoa-augmentations explains with RISE only (--methods rise)")
    return int(variants[0][1].get("n_masks", 5000))
