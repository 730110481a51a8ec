"""``pairlens eval-classifier``: accuracy and explanation metrics of an encoder + linear
classifier trained by ``pairlens train supcon|supcon-ori|excon|exconb`` (seed 003 §4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pairlens.cli.options import (
    Output,
    UsageError,
    add_device_option,
    add_output_options,
    add_run_options,
    apply_threads,
    command_parser,
    usage,
)
from pairlens.validation import argtype

EVAL_EXAMPLES = """examples:
  pairlens eval-classifier --checkpoint runs/excon/best.pt --data cluttered-digits \\
      --out runs/excon/eval
  pairlens eval-classifier --checkpoint runs/excon/model.pt --data my_classes/ --split all \\
      --no-tsne
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "eval-classifier",
        "accuracy, drop/increase, infidelity and t-SNE of an encoder + linear classifier",
        "Evaluate a checkpoint of pairlens train supcon|supcon-ori|excon|exconb as in ExCon: "
        "top-1 accuracy, drop and increase at q = 0.15 / 0.30 / 0.45 of the predicted class's "
        "Grad-CAM, infidelity of those maps (captum), and a t-SNE figure of originals and masked "
        "views for five classes. With --out, writes metrics.json and tsne.png there.",
        EVAL_EXAMPLES,
    )
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="model.pt / best.pt / checkpoint.pt of a supervised run")
    add_device_option(g)
    p.add_argument("legacy_checkpoint", nargs="?", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", required=True,
                   help="digits | cluttered-digits | DIR (one sub-folder per class)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="(default: %(default)s)")
    p.add_argument("--data-seed", type=argtype("int", 0), default=0, help="(default: %(default)s)")
    p.add_argument("--infidelity-samples", type=argtype("int", 0), default=10,
                   help="perturbations per image, 0 to skip (default: %(default)s)")
    p.add_argument("--noise-std", type=argtype("float", 0), default=0.1,
                   help="σ of the infidelity perturbations, model-input space "
                   "(default: %(default)s)")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figure")
    add_output_options(p, None, out_help="folder for metrics.json and tsne.png (default: none, "
                       "results printed only)")
    add_run_options(p, batch_size=128)
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from pairlens.data.loading import load_labelled_data
    from pairlens.io import atomic_write
    from pairlens.training.excon_eval import (
        evaluate_classifier,
        load_classifier_model,
        plot_tsne,
        tsne_embeddings,
    )

    out = Output(args, "eval-classifier")
    if args.legacy_checkpoint is not None:
        if args.checkpoint is not None:
            raise UsageError("give the checkpoint once, with --checkpoint")
        from pairlens.cli.options import REMOVED_IN, warn

        warn(f"a positional CHECKPOINT is deprecated and will be removed in pairlens "
             f"{REMOVED_IN}; use --checkpoint {args.legacy_checkpoint}")
        args.checkpoint = args.legacy_checkpoint
    if args.checkpoint is None:
        raise UsageError("give the checkpoint to evaluate with --checkpoint PATH")
    apply_threads(args)
    model = load_classifier_model(args.checkpoint, device=args.device)
    size = model.input_size
    images, labels = usage(load_labelled_data, args.data, args.split, args.data_seed,
                           round(size[0] / 0.7))
    n_classes = model.classifier.out_features
    if int(labels.max()) >= n_classes:
        raise UsageError(f"{args.data} has {int(labels.max()) + 1} classes but the classifier "
                         f"of {args.checkpoint} has {n_classes}")
    if tuple(images.shape[-2:]) != tuple(size):
        import torch.nn.functional as F

        images = F.interpolate(images.float() / (255.0 if images.dtype == torch.uint8 else 1.0),
                               size=tuple(size), mode="bilinear", align_corners=False,
                               antialias=True)
    metrics = evaluate_classifier(model, images, labels, batch_size=args.batch_size,
                                  infidelity_samples=args.infidelity_samples,
                                  noise_std=args.noise_std, seed=args.seed,
                                  progress=not args.quiet)
    metrics.update(checkpoint=str(args.checkpoint), data=args.data, split=args.split)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(metrics, indent=2)
        out.wrote(atomic_write(folder / "metrics.json", lambda f: f.write(text.encode())),
                  "metrics")
        if not args.no_tsne:
            result = tsne_embeddings(model, images, labels, seed=args.seed)
            plot_tsne(result, folder / "tsne.png")
            out.wrote(folder / "tsne.png", "t-SNE of originals and masked views")
    out.add(metrics=metrics)
    return out.finish("\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                                for k, v in metrics.items()))
