"""``pairlens explain`` and ``pairlens methods``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pairlens.validation import argtype, parse_assignments

EXPLAIN_EXAMPLES = """examples:
  pairlens explain                                   # bundled example pair, bundled 'photos' model
  pairlens explain a.jpg b.jpg --method conditional-occlusion --out out/
  pairlens explain a.jpg b.jpg --method interaction-cam --param reduction=max
  pairlens explain a.jpg b.jpg --method averaged-transforms --param transform=rotation \\
      --param strength=0,90 --param interpolation=strength --param guided=true
  pairlens explain a.jpg b.jpg --all-methods --out out/
  pairlens explain a.jpg b.jpg --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth
  pairlens explain cat.jpg --text "a photo of a cat" --model clip:ViT-B-32-quickgelu \
      --checkpoint open_clip_pytorch_model.bin --method grad-cam
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="explain why a model finds two images similar",
        description="Explain the similarity of two images with a pair explanation method and "
        "write a figure (PNG), the raw maps (.npz) and metadata (JSON). With no images, the "
        "bundled example pair is explained with the bundled default model.",
        epilog=EXPLAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "images", nargs="*", metavar="IMAGE", help="two image files (or none; one with --text)"
    )
    p.add_argument(
        "--text",
        default=None,
        help="explain one image against this caption (image-text models: clip:ARCH, hf:PATH)",
    )
    p.add_argument("--model", default=None, help="registered model name (default: photos)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for --model")
    p.add_argument("--embedding", default=None, help="which embedding of the model to explain")
    p.add_argument("--method", default="interaction-cam", help="method name (pairlens methods)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, repeatable (values are Python literals: 0.5, true, 0,90, max)",
    )
    p.add_argument("--all-methods", action="store_true", help="run every method (default params)")
    p.add_argument("--out", default="pairlens-out", help="output directory (default: %(default)s)")
    p.add_argument("--smooth", type=argtype("float", 0), default=0.0,
                   help="display-only blur sigma in pixels")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    add_execution_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_explain)

    m = sub.add_parser(
        "methods",
        help="list the explanation methods with their parameters",
        description="List the registered pair explanation methods, their paper sections, "
        "parameters and defaults.",
        epilog="example:\n  pairlens methods",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.set_defaults(func=run_methods)


def add_execution_options(p: argparse.ArgumentParser) -> None:
    """``--amp`` and ``--channels-last`` (speed options; see docs/performance.md)."""
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="run the model under autocast in this precision (maps and scores stay "
                   "float32; checked against float32 in docs/performance.md)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory layout for convolutional models (faster on most "
                   "CPUs and GPUs; same results up to float rounding)")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` to ``{k: "v"}``; the text values are converted and checked by the
    method's declared types and ranges (:meth:`MethodInfo.validate`: ``guided=no``,
    ``strength=0,90``, ``window=none``)."""
    return parse_assignments(items)


def run_methods(args: argparse.Namespace) -> int:
    from pairlens.methods.registry import method_infos

    for info in method_infos():
        print(f"{info.name:24s} {info.section:14.14s} {info.summary}")
        for key, default in info.params.items():
            print(f"{'':24s}   --param {key}={default!r}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    import pairlens
    from pairlens.io import load_image
    from pairlens.methods.registry import NotApplicableError, get_method, method_infos
    from pairlens.progress import progress_bars, track
    from pairlens.viz import grid_figure

    text = args.text.strip() if args.text is not None else None
    if text is not None and (len(args.images) != 1 or not text):
        raise ValueError("--text explains one image against a caption: give one image and a "
                         "non-empty --text")
    if text is None and len(args.images) not in (0, 2):
        raise ValueError(f"explain takes two images or none; got {len(args.images)}")
    params = parse_params(args.param)
    if args.all_methods and params:
        raise ValueError("--param cannot be combined with --all-methods")
    infos = method_infos() if args.all_methods else [get_method(args.method)]
    for info in infos:
        info.validate(params)  # fail early on a typo or a bad value
    if text is not None:
        if not args.all_methods and infos[0].pairs_only:
            raise ValueError(f"{infos[0].name} needs two images; with --text use another method")
        infos = [info for info in infos if not info.pairs_only]
    names = [info.name for info in infos]
    images = [load_image(path) for path in args.images]  # fail early on a bad file
    model = load_cli_model(args.model, args.checkpoint, args.embedding, args.device)
    model.set_execution(amp=args.amp, channels_last=args.channels_last)
    if text is not None:
        if not model.has_text_tower:
            raise ValueError(f"--text needs an image-text model (clip:ARCH, hf:PATH of a CLIP "
                             f"or SigLIP folder); {model.name!r} has no text tower")
        x1, x2 = model.preprocess(images[0]), None
        sources = (args.images[0], text)
    else:
        x1, x2, sources = load_pair(model, images, args.images)
    out = Path(args.out)
    results = []
    with progress_bars(not args.quiet):
        for name in track(names, desc="methods"):
            try:
                exp = pairlens.explain(model, x1, x2, method=name, sources=sources, target=text,
                                       **params)
            except NotApplicableError as err:
                if not args.all_methods:
                    raise
                print(f"{name:24s} skipped: {err}")
                continue
            exp.save(out, stem=name, smooth=args.smooth)
            results.append(exp)
            print(
                f"{name:24s} similarity {float(exp.score[0]):.4f}  {exp.seconds:7.2f} s  "
                f"-> {out / (name + '.png')}"
            )
    if len(results) > 1:
        fig = grid_figure(results, smooth=args.smooth)
        fig.savefig(out / "all-methods.png", dpi=120)
        plt.close(fig)
        print(f"grid of all methods -> {out / 'all-methods.png'}")
    return 0


def load_cli_model(name: str | None, checkpoint: str | None, embedding: str | None, device: str):
    """The model a CLI command asked for: ``--model`` (default ``photos``) with ``--checkpoint``."""
    import pairlens

    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    if name is None and checkpoint is not None:  # a checkpoint written by `pairlens train`
        from pairlens.training.simclr import load_trained

        return load_trained(checkpoint, device=device)
    return pairlens.load_model(
        name or "photos", checkpoint=checkpoint, embedding=embedding, device=device
    )


def load_pair(model, images: list, names: list[str]):
    """Two model-input tensors and their source names; the bundled example pair when no images."""
    if images:
        x1, x2 = (model.preprocess(image) for image in images)
        return x1, x2, (names[0], names[1])
    from pairlens.data.bundled import example_pairs

    name1, img1, name2, img2 = example_pairs("digits" if model.name == "digits" else "photos")[0]
    return model.preprocess(img1), model.preprocess(img2), (name1, name2)
