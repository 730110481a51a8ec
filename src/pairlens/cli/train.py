"""``pairlens train MODE``: contrastive training (``simclr``; the supervised ``supcon``,
``supcon-ori``, ``excon`` and ``exconb`` of seed 003)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pairlens.cli.options import (
    Output,
    UsageError,
    add_device_option,
    add_on_error_option,
    add_output_options,
    add_run_options,
    apply_threads,
    bad_files,
    command_parser,
    usage,
    warn,
)
from pairlens.validation import argtype, field_argtype

TRAIN_EXAMPLES = """examples:
  pairlens train simclr --data digits --epochs 30 --batch-size 64 --out runs/digits
      # the bundled digits model: 6 min of CPU time, 24 min wall on a shared 2-core machine
  pairlens train simclr --data photos --arch resnet-mini --epochs 24 --steps-per-epoch 25 \\
      --batch-size 24 --temperature 0.2 --out runs/photos
      # the bundled photos model: 10-15 min of CPU time, 64 min wall on a shared 2-core machine
  pairlens train simclr --data digits --epochs 30 --batch-size 64 --out runs/digits --resume
  pairlens train simclr --data my_images/ --arch resnet18 --epochs 100 --device cuda \\
      --out runs/mine                                                   # a GPU job
  pairlens train excon --data cluttered-digits --epochs 6 --batch-size 32 --start-epoch 2 \\
      --out runs/excon
      # 3.5 min of CPU time (9 min wall on this 2-core machine while shared)
  pairlens train supcon --data digits --epochs 6 --batch-size 32 --out runs/supcon
      # 3.6 min of CPU time (11 min wall on this 2-core machine while shared)
  pairlens train exconb --data my_classes/ --arch resnet-mini --epochs 100 --device cuda \\
      --out runs/mine-exconb                                            # a GPU job
  pairlens train simclr --data composites --epochs 40 --steps-per-epoch 100 --batch-size 24 \\
      --distractors 1 --out runs/composites     # positives: two scenes sharing an object
      # the bundled composites model (with --lr 2e-3 --temperature 0.1): 74 min wall, shared
  pairlens train cross-entropy --data digits --arch digits-cnn --epochs 15 --out runs/digits-ce

Times: user + system CPU time measured on this project's 2-core CPU (the bundled models' from
their model cards in src/pairlens/models/weights/); "shared" means other jobs ran meanwhile.
"""

SIMCLR = (
    "SimCLR: NT-Xent on two augmented views per image (no labels)",
    "Self-supervised SimCLR training (Chen et al. 2020): two SimCLR-augmented views per image, "
    "NT-Xent loss on the projection head. With labelled data (digits, or a folder with one "
    "sub-folder per class) a k-NN validation accuracy is logged every epoch and a linear probe "
    "on the backbone features is fitted at the end and stored in model.pt. With --data "
    "composites the positives are two scenes that share an object instead (shared-object pairs; "
    "--batch-size counts anchor objects, at most 75 / (1 + 2 K) with K = --distractors; "
    "--steps-per-epoch is required), and the similarity drop when the shared object or a "
    "distractor is removed is measured at the end and stored in model.pt.",
)

CROSS_ENTROPY = (
    "supervised classifier (cross-entropy, crop-only views): a contrastive model's twin",
    "Plain supervised training: backbone + linear classifier, cross-entropy on one random "
    "resized crop per image (no colour jitter, grayscale or blur). Used for the supervised twin "
    "of a contrastive model (same --arch), e.g. for pairlens analyze invert. model.pt holds the "
    "classifier; its only embedding is the backbone.",
)

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

#: what ``--batch-size`` means in training (the papers' batch size N, not images per pass)
TRAIN_BATCH_HELP = ("source images per optimisation step, the papers' batch size N (not images "
                    "per forward pass, unlike the other commands): the training pass holds their "
                    "2N augmented views; excon and exconb first run N originals through the "
                    "explanation and N masked images through the classifier, and exconb adds up "
                    "to 2N misclassified masked images as background")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "train", "train a contrastive encoder (simclr, supcon, supcon-ori, excon, exconb)",
        "Train a contrastive image encoder with PairLens's resumable trainer. Checkpoints "
        "(every epoch), a per-epoch CSV log and the final model.pt go to --out.",
        TRAIN_EXAMPLES,
    )
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    simclr = command_parser(modes, "simclr", SIMCLR[0], SIMCLR[1], TRAIN_EXAMPLES)
    add_training_options(simclr, data_help="digits | photos | composites (shared-object "
                         "positives) | DIR (images, optionally one sub-folder per class)",
                         temperature=0.5)
    simclr.add_argument("--distractors", type=argtype("int", 0, 37), default=2, metavar="K",
                        help="composites only: distractor objects per training scene "
                        "(default: %(default)s)")
    simclr.set_defaults(func=run_simclr)
    for name, (help_text, description) in SUPERVISED_MODES.items():
        m = command_parser(modes, name, help_text, description, TRAIN_EXAMPLES)
        add_training_options(m, data_help="digits | cluttered-digits | DIR (one sub-folder per "
                             "class)", temperature=0.1)
        add_supervised_options(m)
        m.set_defaults(func=run_supervised, mode=name)
    ce = command_parser(modes, "cross-entropy", CROSS_ENTROPY[0], CROSS_ENTROPY[1],
                        TRAIN_EXAMPLES)
    add_training_options(ce, data_help="digits | cluttered-digits | photos (one class per "
                         "training photo) | DIR (one sub-folder per class)", temperature=None)
    ce.add_argument("--data-seed", type=argtype("int", 0), default=0,
                    help="seed of the train / val / test split (default: %(default)s)")
    ce.set_defaults(func=run_cross_entropy)


def add_training_options(p: argparse.ArgumentParser, data_help: str,
                         temperature: float | None) -> None:
    """The options every training mode shares (``--temperature`` unless ``temperature`` is None:
    a mode without a contrastive loss). Numbers are checked at parse time by the ranges the
    trainer declares (:class:`~pairlens.training.simclr.TrainConfig`)."""
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--arch", default=None,
                   help="architecture: digits-cnn | resnet-mini | resnet-mini-64 | resnet18 "
                   "(default: digits-cnn for the digits data sets, resnet-mini-64 for "
                   "composites, resnet-mini otherwise)")
    p.add_argument("--epochs", type=train_arg("epochs"), default=30,
                   help="epochs (default: %(default)s)")
    p.add_argument("--steps-per-epoch", type=train_arg("steps_per_epoch"), default=None,
                   help="steps per epoch (default: one pass over the data)")
    p.add_argument("--lr", type=train_arg("lr"), default=1e-3,
                   help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=train_arg("weight_decay"), default=1e-4,
                   help="(default: %(default)s)")
    p.add_argument("--warmup-epochs", type=train_arg("warmup_epochs"), default=1.0,
                   help="linear warm-up, then cosine decay (default: %(default)s)")
    if temperature is not None:
        p.add_argument("--temperature", type=train_arg("temperature"), default=temperature,
                       help="τ of the contrastive loss (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out exactly where it stopped")
    p.add_argument("--image-size", type=train_arg("image_size"), default=None,
                   help="side of the square images held in memory for photos / DIR "
                   "(default: input size / 0.7)")
    add_device_option(p)
    add_output_options(p, None, required=True, out_help="output folder (checkpoints, log.csv, "
                       "model.pt)")
    g = add_run_options(p, batch_size=128, batch_help=TRAIN_BATCH_HELP)
    add_on_error_option(g, "it (DIR; listed in OUT/skipped.json)")
    for action in g._group_actions:  # the trainer's own ranges for its seed and batch size
        if action.dest in ("seed", "batch_size"):
            action.type = train_arg(action.dest)


def train_arg(field: str):
    """The argparse converter of a :class:`~pairlens.training.simclr.TrainConfig` field."""
    return field_argtype("pairlens.training.simclr:TrainConfig", field)


def settings_arg(field: str):
    """The argparse converter of a :class:`~pairlens.training.supcon.SupervisedSettings` field."""
    return field_argtype("pairlens.training.supcon:SupervisedSettings", field)


def add_supervised_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start-epoch", type=settings_arg("start_epoch"), default=0,
                   help="0-based epoch from which explanation-driven views are used "
                   "(excon, exconb; default: %(default)s)")
    p.add_argument("--threshold", type=settings_arg("threshold"), default=0.5,
                   help="Grad-CAM threshold τ: pixels at or below it are masked "
                   "(default: %(default)s)")
    p.add_argument("--classifier-lr", type=settings_arg("classifier_lr"), default=5e-2,
                   help="Adam learning rate of the linear classifier (default: %(default)s)")
    p.add_argument("--data-seed", type=argtype("int", 0), default=0,
                   help="seed of the train / val / test split (default: %(default)s)")


def _train_config(args: argparse.Namespace):
    from pairlens.training.simclr import TrainConfig

    if (Path(args.out) / "checkpoint.pt").exists() and not args.resume:
        raise UsageError(f"{Path(args.out) / 'checkpoint.pt'} exists; pass --resume to continue "
                         "it or choose another --out")
    loss = {"temperature": args.temperature} if hasattr(args, "temperature") else {}
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, **loss,
        warmup_epochs=args.warmup_epochs, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
        out=args.out, resume=args.resume, device=args.device, progress=not args.quiet,
        data=args.data, image_size=args.image_size,
    )


def run_simclr(args: argparse.Namespace) -> int:
    from pairlens.data.loading import load_training_data
    from pairlens.training.augment import AugmentConfig
    from pairlens.training.probes import attach_probe, attach_view_cosines, knn_hook
    from pairlens.training.simclr import train_simclr

    out, config, arch_name, arch, load_size, bad = _prepare(args, "train simclr")
    if args.data == "composites" and not Path(args.data).exists():
        return _run_shared_object(args, out, config, arch_name)
    images, labels, described = load_training_data(args.data, load_size, "train", args.seed,
                                                    bad=bad)
    _record_skipped(out, args.out, bad)
    augment = AugmentConfig.digits() if args.data == "digits" else AugmentConfig.photos()
    hooks = []
    val = None
    if args.data == "digits":
        val = load_training_data("digits", load_size, "val", args.seed)[:2]
        hooks.append(knn_hook(images, labels, *val, arch.mean, arch.std))
    out.say(f"training {arch_name} with SimCLR on {described}; output in {args.out}")
    net, log = train_simclr(images, arch_name, config, augment=augment, labels=labels, hooks=hooks)
    summary: dict[str, Any] = {"epochs": len(log), "final_loss": log[-1]["loss"] if log else None}
    model_path = Path(args.out) / "model.pt"
    if labels is not None and args.data != "photos":
        summary.update(attach_probe(model_path, net, arch, images, labels, val, args.data,
                                    args.seed))
    else:
        summary.update(attach_view_cosines(model_path, images, augment))
    return _finish(out, args.out, summary)


def _run_shared_object(args: argparse.Namespace, out: Output, config: Any, arch_name: str) -> int:
    """``pairlens train simclr --data composites``: positives = scenes sharing an object."""
    from pairlens.training.composites import train_shared_object
    from pairlens.training.probes import attach_removal_drops

    out.say(f"training {arch_name} on composites scenes (positives share an object); output in "
            f"{args.out}")
    _, log = train_shared_object(arch_name, config, n_distractors=args.distractors)
    summary: dict[str, Any] = {"epochs": len(log), "final_loss": log[-1]["loss"] if log else None}
    summary.update(attach_removal_drops(Path(args.out) / "model.pt"))
    return _finish(out, args.out, summary)


def run_supervised(args: argparse.Namespace) -> int:
    """``pairlens train supcon|supcon-ori|excon|exconb``."""
    from pairlens.data.loading import DIGITS_LIKE, load_labelled_data
    from pairlens.training.augment import AugmentConfig
    from pairlens.training.supcon import SupervisedSettings, train_supervised

    out, config, arch_name, arch, load_size, bad = _prepare(args, f"train {args.mode}")
    images, labels = usage(load_labelled_data, args.data, "train", args.data_seed, load_size, bad)
    val_images, val_labels = load_labelled_data(args.data, "val", args.data_seed, load_size, bad)
    _record_skipped(out, args.out, bad)
    augment = AugmentConfig.digits() if args.data in DIGITS_LIKE else AugmentConfig.photos()
    n_classes = int(max(labels.max(), val_labels.max())) + 1
    settings = SupervisedSettings(mode=args.mode, start_epoch=args.start_epoch,
                                  threshold=args.threshold, classifier_lr=args.classifier_lr,
                                  n_classes=n_classes)
    out.say(f"training {arch_name} with {args.mode} on {args.data} ({len(images)} train, "
            f"{len(val_images)} val images); output in {args.out}")
    _, _, log = train_supervised(images, labels, val_images, val_labels, arch_name, config,
                                 settings, augment=augment)
    scored = [r for r in log if "val_accuracy" in r]
    best = max(scored, key=lambda r: r["val_accuracy"]) if scored else {}
    summary = {"mode": args.mode, "epochs": args.epochs,
               "best_val_accuracy": best.get("val_accuracy"), "best_epoch": best.get("epoch"),
               "final_loss": next((r["loss"] for r in reversed(log) if "loss" in r), None)}
    return _finish(out, args.out, summary)


def _prepare(args: argparse.Namespace, command: str):
    """What every training mode starts with: ``(output report, TrainConfig, architecture name,
    architecture, load size, bad-file policy)``."""
    from pairlens.data.loading import default_arch
    from pairlens.models.bundled import get_architecture

    out = Output(args, command)
    config = _train_config(args)
    apply_threads(args)
    arch_name = args.arch or default_arch(args.data)
    arch = usage(get_architecture, arch_name)
    load_size = args.image_size or round(arch.input_size[0] / 0.7)
    return out, config, arch_name, arch, load_size, bad_files(
        args, hint="pass --on-error skip to train without it")


def _record_skipped(out: Output, folder: str, bad) -> None:
    """Write ``OUT/skipped.json`` (file -> reason) when files were skipped."""
    if not bad.skipped:
        return
    import json

    from pairlens.io import atomic_write

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    text = json.dumps(bad.skipped, indent=2)
    out.wrote(atomic_write(path / "skipped.json", lambda f: f.write(text.encode())),
              "the unreadable files skipped")
    out.add(skipped_files=dict(bad.skipped))
    warn(f"{bad.summary()} (listed in {path / 'skipped.json'})")


def _finish(out: Output, folder: str, summary: dict[str, Any]) -> int:
    out.wrote_new(folder)
    out.add(summary=summary)
    text = "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                     for k, v in summary.items() if v is not None)
    return out.finish(text)


def run_cross_entropy(args: argparse.Namespace) -> int:
    """``pairlens train cross-entropy``: the supervised twin of a contrastive model."""
    import torch

    from pairlens.data.loading import DIGITS_LIKE, load_labelled_data, load_training_data
    from pairlens.training.augment import AugmentConfig
    from pairlens.training.classify import (
        ClassifierNet,
        accuracy,
        supervised_augment,
        train_cross_entropy,
    )

    out, config, arch_name, arch, load_size, bad = _prepare(args, "train cross-entropy")
    if args.data == "photos":  # instance classification: one class per training photo
        from pairlens.data import bundled

        images, labels, _ = load_training_data("photos", load_size)
        # the held-out stereo view of motorcycle_left is the only unseen image of a class
        val_images = bundled.photos_tensor(load_size, ("motorcycle_right",))[0]
        val_labels = torch.tensor([bundled.TRAIN_PHOTOS.index("motorcycle_left")])
        test_images, test_labels = val_images, val_labels
    else:
        images, labels = usage(load_labelled_data, args.data, "train", args.data_seed,
                               load_size, bad)
        val_images, val_labels = load_labelled_data(args.data, "val", args.data_seed, load_size,
                                                    bad)
        test_images, test_labels = load_labelled_data(args.data, "test", args.data_seed,
                                                      load_size, bad)
    _record_skipped(out, args.out, bad)
    digits_like = args.data.split(":", 1)[0] in DIGITS_LIKE
    out.say(f"training {arch_name} with cross-entropy on {args.data} ({len(images)} train, "
            f"{len(val_images)} val images); output in {args.out}")
    net, classifier, log = train_cross_entropy(
        _float01(images), labels, _float01(val_images), val_labels, arch_name, config,
        augment=supervised_augment(AugmentConfig.digits() if digits_like
                                   else AugmentConfig.photos()),
    )
    test_acc = accuracy(ClassifierNet(net.backbone, classifier), _float01(test_images),
                        test_labels, arch.mean, arch.std, size=arch.input_size)
    summary: dict[str, Any] = {
        "epochs": len(log), "final_loss": log[-1]["loss"] if log else None,
        "val_accuracy": log[-1].get("val_accuracy") if log else None, "test_accuracy": test_acc}
    return _finish(out, args.out, summary)


def _float01(images):
    import torch

    return images.float() / 255.0 if images.dtype == torch.uint8 else images
