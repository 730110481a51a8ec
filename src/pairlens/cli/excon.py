"""CLI of the supervised contrastive modes (issue 5, seed 003).

* :func:`add_modes` adds ``supcon``, ``supcon-ori``, ``excon`` and ``exconb`` to ``pairlens train``
  (the sub-parsers of :mod:`pairlens.cli.train`, reusing its common arguments);
* :func:`add_parser` registers ``pairlens eval-classifier CHECKPOINT --data ...`` and
  ``pairlens study excon ...`` (:mod:`pairlens.training.study`).

Data (``--data``): ``digits`` and ``cluttered-digits`` (bundled, with fixed train / val / test
splits chosen by ``--data-seed``), or a directory with one sub-folder per class, split 70 / 15 / 15
(stratified when every class has enough images) with ``--data-seed``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pairlens.validation import argtype, field_argtype

_TRAIN = "pairlens.training.simclr:TrainConfig"  # options checked by these classes' fields
_SETTINGS = "pairlens.training.supcon:SupervisedSettings"

SUPERVISED_MODES = {
    "supcon": (
        "SupCon (Algorithm 1 with random views): per epoch one encoder epoch, then one "
        "linear-classifier epoch",
        "Supervised contrastive learning (Khosla et al. 2020, eq. 2 of ExCon) trained as in "
        "ExCon's Algorithm 1: every epoch one encoder epoch on two random views per image, then "
        "one linear-classifier epoch on the frozen encoder.",
    ),
    "supcon-ori": (
        "SupConOri: encoder for all epochs first, then the linear classifier (Khosla et al.)",
        "Supervised contrastive learning as in Khosla et al. 2020: the encoder is trained for "
        "all epochs, then the linear classifier for as many epochs on the frozen encoder.",
    ),
    "excon": (
        "ExCon: explanation-driven masked views (Grad-CAM of the true class) replace a random view",
        "Explanation-driven supervised contrastive learning (ExCon, Algorithm 1): from "
        "--start-epoch on, the Grad-CAM of the ground-truth class through encoder + classifier "
        "masks each image (pixels at or below --threshold set to 0); a correctly classified masked "
        "image replaces one random view, a misclassified one falls back to two random views.",
    ),
    "exconb": (
        "ExConB: like ExCon, misclassified masked images join the batch as background negatives",
        "ExConB (eq. 3 of ExCon): like excon, but a misclassified masked image is added to the "
        "batch (twice, as in the paper's Fig. 5) with the background label: never an anchor, "
        "never a positive, in every denominator.",
    ),
}

TRAIN_EXAMPLES = """examples:
  pairlens train excon --data cluttered-digits --epochs 10 --batch-size 64 --start-epoch 3 \\
      --out runs/excon
  pairlens train supcon --data digits --epochs 20 --out runs/supcon
  pairlens train exconb --data my_classes/ --arch resnet-mini --epochs 100 --device cuda \\
      --out runs/mine
  pairlens train excon --data cluttered-digits --epochs 10 --out runs/excon --resume
"""

EVAL_EXAMPLES = """examples:
  pairlens eval-classifier runs/excon/best.pt --data cluttered-digits --out runs/excon/eval
  pairlens eval-classifier runs/excon/model.pt --data my_classes/ --split all --no-tsne
"""

STUDY_EXAMPLES = """examples:
  pairlens study excon --data cluttered-digits --seeds 3 --epochs 6 --batch-size 32 \\
      --lr 1e-3 --start-epoch 2 --threads 1 --out runs/study
  pairlens study excon --out runs/study --report-only
"""


# ---------------------------------------------------------------------- data
def load_labelled_data(data: str, split: str, data_seed: int = 0, load_size: int = 160,
                       bad=None):
    """``(images, labels)`` of ``split`` (train / val / test / all) for ``--data``; unreadable
    files of a folder follow ``bad`` (a :class:`pairlens.io.BadFiles`, default: stop)."""
    import torch

    if data == "digits":
        from pairlens.data.bundled import digits

        return digits(split, seed=data_seed)
    if data == "cluttered-digits":
        from pairlens.data.cluttered import cluttered_digits

        return cluttered_digits(split, seed=data_seed)
    from pairlens.cli.train import load_training_data

    if data == "photos" or not Path(data).expanduser().is_dir():
        raise ValueError(f"{data}: not digits, cluttered-digits or a directory of class "
                         "sub-folders")
    images, labels, _ = load_training_data(data, load_size, bad=bad)
    if labels is None:
        raise ValueError(f"{data}: supervised training needs one sub-folder per class")
    if split == "all":
        return images, labels
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    y = labels.numpy()
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 4 else None
    train, rest = train_test_split(idx, train_size=0.70, stratify=stratify,
                                   random_state=data_seed)
    val, test = train_test_split(rest, test_size=0.5,
                                 stratify=None if stratify is None else y[rest],
                                 random_state=data_seed)
    chosen = {"train": train, "val": val, "test": test}[split]
    sel = torch.from_numpy(np.sort(chosen))
    return images[sel], labels[sel]


def default_arch(data: str) -> str:
    return "digits-cnn" if data in ("digits", "cluttered-digits") else "resnet-mini"


# ---------------------------------------------------------------------- pairlens train MODE
def add_modes(train_sub: argparse._SubParsersAction) -> None:
    """Add the supervised modes to the ``pairlens train`` sub-parsers ``train_sub``."""
    from pairlens.cli.train import add_common_arguments

    existing = set(train_sub.choices)
    for name, (help_text, description) in SUPERVISED_MODES.items():
        if name in existing:
            continue
        p = train_sub.add_parser(name, help=help_text, description=description,
                                 epilog=TRAIN_EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_arguments(p)
        add_supervised_arguments(p)
        p.set_defaults(func=run_mode, mode=name, temperature=0.1)


def add_supervised_arguments(p: argparse.ArgumentParser) -> None:
    for action in p._actions:  # the common --data help names the unsupervised data sets
        if action.dest == "data":
            action.help = "digits | cluttered-digits | DIR (one sub-folder per class)"
        if action.dest == "temperature":
            action.help = "τ of the supervised contrastive loss (default: 0.1)"
    p.add_argument("--start-epoch", type=field_argtype(_SETTINGS, "start_epoch"), default=0,
                   help="0-based epoch from which explanation-driven views are used "
                   "(excon, exconb; default: %(default)s)")
    p.add_argument("--threshold", type=field_argtype(_SETTINGS, "threshold"), default=0.5,
                   help="Grad-CAM threshold τ: pixels at or below it are masked "
                   "(default: %(default)s)")
    p.add_argument("--classifier-lr", type=field_argtype(_SETTINGS, "classifier_lr"), default=5e-2,
                   help="Adam learning rate of the linear classifier (default: %(default)s)")
    p.add_argument("--data-seed", type=argtype("int", 0), default=0,
                   help="seed of the train / val / test split (default: %(default)s)")


def run_mode(args: argparse.Namespace) -> int:
    summary = train_from_args(args)
    print(json.dumps(summary, indent=2))
    return 0


def train_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.mode`` (the ``pairlens train supcon|supcon-ori|excon|exconb`` options);
    returns a summary (best validation accuracy and epoch)."""
    import torch

    from pairlens.models.bundled import get_architecture
    from pairlens.training.augment import AugmentConfig
    from pairlens.training.simclr import TrainConfig
    from pairlens.training.supcon import SupervisedSettings, train_supervised

    if args.threads:
        torch.set_num_threads(args.threads)
    arch_name = args.arch or default_arch(args.data)
    arch = get_architecture(arch_name)
    load_size = args.image_size or round(arch.input_size[0] / 0.7)
    from pairlens.cli.train import bad_files, record_skipped

    bad = bad_files(args)
    images, labels = load_labelled_data(args.data, "train", args.data_seed, load_size, bad)
    val_images, val_labels = load_labelled_data(args.data, "val", args.data_seed, load_size, bad)
    record_skipped(args.out, bad)
    digits_like = args.data in ("digits", "cluttered-digits")
    augment = AugmentConfig.digits() if digits_like else AugmentConfig.photos()
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, temperature=args.temperature,
        warmup_epochs=args.warmup_epochs, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
        out=args.out, resume=args.resume, device=args.device, progress=not args.quiet,
        data=args.data, image_size=args.image_size,
    )
    n_classes = int(max(labels.max(), val_labels.max())) + 1
    settings = SupervisedSettings(mode=args.mode, start_epoch=args.start_epoch,
                                  threshold=args.threshold, classifier_lr=args.classifier_lr,
                                  n_classes=n_classes)
    if not args.quiet:
        print(f"training {arch_name} with {args.mode} on {args.data} ({len(images)} train, "
              f"{len(val_images)} val images); output in {args.out}")
    _, _, log = train_supervised(images, labels, val_images, val_labels, arch_name, config,
                                 settings, augment=augment)
    scored = [r for r in log if "val_accuracy" in r]
    best = max(scored, key=lambda r: r["val_accuracy"]) if scored else {}
    return {"mode": args.mode, "epochs": args.epochs, "best_val_accuracy": best.get("val_accuracy"),
            "best_epoch": best.get("epoch"), "final_loss": next(
                (r["loss"] for r in reversed(log) if "loss" in r), None)}


# ---------------------------------------------------------------------- eval-classifier, study
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pairlens eval-classifier`` and ``pairlens study``."""
    p = sub.add_parser(
        "eval-classifier",
        help="accuracy, drop/increase, infidelity and t-SNE of an encoder + linear classifier",
        description="Evaluate a checkpoint of pairlens train supcon|supcon-ori|excon|exconb as in "
        "ExCon: top-1 accuracy, drop and increase at q = 0.15 / 0.30 / 0.45 of the predicted "
        "class's Grad-CAM, infidelity of those maps (captum), and a t-SNE figure of originals "
        "and masked views for five classes. Prints JSON; with --out writes metrics.json and "
        "tsne.png.",
        epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="model.pt / best.pt / checkpoint.pt of a supervised run")
    p.add_argument("--data", required=True,
                   help="digits | cluttered-digits | DIR (one sub-folder per class)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="(default: %(default)s)")
    p.add_argument("--data-seed", type=argtype("int", 0), default=0, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=argtype("int", 1), default=128,
                   help="(default: %(default)s)")
    p.add_argument("--infidelity-samples", type=argtype("int", 1), default=10,
                   help="perturbations per image, 0 to skip (default: %(default)s)")
    p.add_argument("--noise-std", type=argtype("float", 0), default=0.1,
                   help="σ of the infidelity perturbations, model-input space "
                   "(default: %(default)s)")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figure")
    p.add_argument("--seed", type=argtype("int", 0), default=0, help="(default: %(default)s)")
    p.add_argument("--out", default=None, help="directory for metrics.json and tsne.png")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--threads", type=argtype("int", 1), default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)

    study = sub.add_parser(
        "study", help="comparison studies (excon: SupCon / SupConOri / ExCon / ExConB)",
        description="Reproducible comparison studies.",
        epilog="example:\n"
        "  pairlens study excon --data cluttered-digits --seeds 3 --out runs/study",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study_sub = study.add_subparsers(dest="study", metavar="STUDY")
    study.set_defaults(func=lambda args: (study.print_help(), 0)[1])
    s = study_sub.add_parser(
        "excon",
        help="train supcon, supcon-ori, excon, exconb over several seeds; tables and curves",
        description="Train the four supervised contrastive variants with the same budget for "
        "each seed, evaluate each run's best-validation model on the test split, and write "
        "results.csv, table.md (mean ± std over seeds, like ExCon's Tables 1-4), the validation "
        "curves with their spread (Fig. 3) and t-SNE figures. Interrupted studies continue where "
        "they stopped.",
        epilog=STUDY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--data", default="cluttered-digits",
                   help="digits | cluttered-digits | DIR (default: %(default)s)")
    s.add_argument("--seeds", type=argtype("int", 1), default=3,
                   help="seeds 0..N-1 (default: %(default)s)")
    s.add_argument("--modes", default="supcon,supcon-ori,excon,exconb",
                   help="comma-separated (default: %(default)s)")
    s.add_argument("--arch", default=None, help="(default: digits-cnn for the digits data sets)")
    s.add_argument("--epochs", type=field_argtype(_TRAIN, "epochs"), default=6,
                   help="(default: %(default)s)")
    s.add_argument("--batch-size", type=field_argtype(_TRAIN, "batch_size"), default=32,
                   help="(default: %(default)s)")
    s.add_argument("--lr", type=field_argtype(_TRAIN, "lr"), default=1e-3,
                   help="(default: %(default)s)")
    s.add_argument("--classifier-lr", type=field_argtype(_SETTINGS, "classifier_lr"), default=5e-2,
                   help="(default: %(default)s)")
    s.add_argument("--temperature", type=field_argtype(_TRAIN, "temperature"), default=0.1,
                   help="(default: %(default)s)")
    s.add_argument("--start-epoch", type=field_argtype(_SETTINGS, "start_epoch"), default=2,
                   help="(default: %(default)s)")
    s.add_argument("--threshold", type=field_argtype(_SETTINGS, "threshold"), default=0.5,
                   help="(default: %(default)s)")
    s.add_argument("--data-seed", type=argtype("int", 0), default=0, help="(default: %(default)s)")
    s.add_argument("--out", required=True, help="study directory")
    s.add_argument("--device", default="auto", help="(default: %(default)s)")
    s.add_argument("--threads", type=argtype("int", 1), default=1,
                   help="torch CPU threads (default: 1)")
    s.add_argument("--report-only", action="store_true",
                   help="only aggregate the runs already finished in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=run_study)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from pairlens.training.excon_eval import (
        evaluate_classifier,
        load_classifier_model,
        plot_tsne,
        tsne_embeddings,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_classifier_model(args.checkpoint, device=args.device)
    size = model.input_size
    images, labels = load_labelled_data(args.data, args.split, args.data_seed,
                                        round(size[0] / 0.7))
    n_classes = model.classifier.out_features
    if int(labels.max()) >= n_classes:
        raise ValueError(f"{args.data} has {int(labels.max()) + 1} classes but the classifier of "
                         f"{args.checkpoint} has {n_classes}")
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
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if not args.no_tsne:
            result = tsne_embeddings(model, images, labels, seed=args.seed)
            plot_tsne(result, out / "tsne.png")
            metrics["tsne"] = str(out / "tsne.png")
    print(json.dumps(metrics, indent=2))
    return 0


def run_study(args: argparse.Namespace) -> int:
    from pairlens.training.study import StudyConfig, run_excon_study

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in SUPERVISED_MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(SUPERVISED_MODES)}")
    config = StudyConfig(
        data=args.data, seeds=args.seeds, modes=modes, arch=args.arch or default_arch(args.data),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        classifier_lr=args.classifier_lr, temperature=args.temperature,
        start_epoch=args.start_epoch, threshold=args.threshold, data_seed=args.data_seed,
        out=args.out, device=args.device, threads=args.threads, progress=not args.quiet,
    )
    summary = run_excon_study(config, report_only=args.report_only)
    print(summary)
    return 0
