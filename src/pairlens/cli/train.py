"""``pairlens train MODE``: contrastive training from the command line.

``train`` has one sub-command per training mode (a positional ``MODE``); this module registers
``simclr``. Further modes (``supcon``, ``supcon-ori``, ``excon``, ``exconb``: issue 5) register
theirs with :func:`add_mode`, reusing :func:`add_common_arguments` and :func:`load_training_data`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pairlens.validation import argtype, field_argtype

TRAIN_EXAMPLES = """examples:
  pairlens train simclr --data digits --arch digits-cnn --epochs 30 --out runs/digits
  pairlens train simclr --data photos --arch resnet-mini --epochs 40 --steps-per-epoch 25 \\
      --batch-size 32 --out runs/photos
  pairlens train simclr --data my_images/ --arch resnet18 --epochs 100 --device cuda --out runs/mine
  pairlens train simclr --data digits --arch digits-cnn --epochs 30 --out runs/digits --resume
  pairlens train simclr --data composites --epochs 40 --steps-per-epoch 100 --batch-size 24 \
      --distractors 1 --out runs/composites   (positives = two scenes sharing an object)
  pairlens train cross-entropy --data digits --arch digits-cnn --epochs 15 --out runs/digits-ce
"""

_train_sub: argparse._SubParsersAction | None = None


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pairlens train`` and its ``simclr`` mode."""
    global _train_sub
    p = sub.add_parser(
        "train",
        help="train a contrastive encoder (simclr; more modes may be installed)",
        description="Train a contrastive image encoder with PairLens's resumable trainer. "
        "Checkpoints (every epoch), a per-epoch CSV log and the final model.pt go to --out.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _train_sub = p.add_subparsers(dest="mode", metavar="MODE")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    simclr = add_mode(
        "simclr",
        run_simclr,
        help="SimCLR: NT-Xent on two augmented views per image (no labels)",
        description="Self-supervised SimCLR training (Chen et al. 2020): two SimCLR-augmented "
        "views per image, NT-Xent loss on the projection head. With labelled data (digits, or a "
        "folder with one sub-folder per class) a k-NN validation accuracy is logged every epoch "
        "and a linear probe on the backbone features is fitted at the end and stored in model.pt. "
        "With --data composites the positives are two scenes that share an object instead "
        "(shared-object pairs; --batch-size counts anchor objects, at most 75 / (1 + 2 K) "
        "with K = --distractors; --steps-per-epoch is required), and the similarity drop when "
        "the shared object or a distractor is removed is measured at the end and stored in "
        "model.pt.",
    )
    simclr.add_argument("--distractors", type=argtype("int", 0, 37), default=2, metavar="K",
                        help="composites only: distractor objects per training scene "
                        "(default: %(default)s)")
    from pairlens.cli.excon import add_modes  # supcon, supcon-ori, excon, exconb

    add_modes(_train_sub)
    ce = add_mode(
        "cross-entropy",
        run_cross_entropy,
        help="supervised classifier (cross-entropy, crop-only views): a contrastive model's twin",
        description="Plain supervised training: backbone + linear classifier, cross-entropy on "
        "one random resized crop per image (no colour jitter, grayscale or blur). Used for the "
        "supervised twin of a contrastive model (same --arch), e.g. for pairlens analyze invert. "
        "model.pt holds the classifier; its only embedding is the backbone.",
    )
    for action in ce._actions:
        if action.dest == "data":
            action.help = ("digits | cluttered-digits | photos (one class per training photo) | "
                           "DIR (one sub-folder per class)")
    ce.add_argument("--data-seed", type=argtype("int", 0), default=0,
                    help="seed of the train / val / test split (default: %(default)s)")


def add_mode(
    name: str, func: Callable[[argparse.Namespace], int], help: str, description: str
) -> argparse.ArgumentParser:
    """Add ``pairlens train NAME`` with the common arguments; returns its parser."""
    if _train_sub is None:
        raise RuntimeError("pairlens.cli.train.add_parser must run first")
    p = _train_sub.add_parser(
        name, help=help, description=description, epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(p)
    p.set_defaults(func=func)
    return p


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="digits | photos | composites (simclr only) | DIR (images, optionally "
                   "one sub-folder per class)")
    p.add_argument("--arch", default=None,
                   help="architecture: digits-cnn | resnet-mini | resnet-mini-64 | resnet18 "
                   "(default: digits-cnn for digits, resnet-mini-64 for composites, resnet-mini "
                   "otherwise)")
    arg = config_argtypes()
    p.add_argument("--epochs", type=arg["epochs"], default=30,
                   help="epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=arg["batch_size"], default=128,
                   help="source images per step; each gives two views (default: %(default)s)")
    p.add_argument("--steps-per-epoch", type=arg["steps_per_epoch"], default=None,
                   help="steps per epoch (default: one pass over the data)")
    p.add_argument("--lr", type=arg["lr"], default=1e-3,
                   help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=arg["weight_decay"], default=1e-4,
                   help="(default: %(default)s)")
    p.add_argument("--warmup-epochs", type=arg["warmup_epochs"], default=1.0,
                   help="linear warm-up, then cosine decay (default: %(default)s)")
    p.add_argument("--temperature", type=arg["temperature"], default=0.5,
                   help="τ (default: %(default)s)")
    p.add_argument("--seed", type=arg["seed"], default=0, help="(default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out exactly where it stopped")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--threads", type=argtype("int", 1), default=None, help="torch CPU threads")
    p.add_argument("--image-size", type=arg["image_size"], default=None,
                   help="side of the square images held in memory for photos / DIR "
                   "(default: input size / 0.7)")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="an unreadable image in DIR: stop (default), or skip it, report each "
                   "bad file once and list them at the end and in OUT/skipped.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_argtypes() -> dict:
    """argparse converters for the numeric training options: the declared ranges of
    :class:`pairlens.training.simclr.TrainConfig`, the rules the trainer itself checks."""
    fields = ("epochs", "batch_size", "lr", "weight_decay", "temperature", "warmup_epochs",
              "seed", "steps_per_epoch", "image_size")
    return {f: field_argtype("pairlens.training.simclr:TrainConfig", f) for f in fields}


def load_training_data(data: str, load_size: int, split: str = "train", seed: int = 0,
                       bad=None):
    """``(images, labels or None, description)`` for ``--data``.

    ``digits``: the ``split`` of :func:`pairlens.data.bundled.digits` (float, 32 px).
    ``photos``: :data:`~pairlens.data.bundled.TRAIN_PHOTOS` as ``load_size`` squares (labels =
    photo index). ``DIR``: every image under DIR (:func:`pairlens.io.scan_images`), shorter side
    resized to ``load_size`` and centre-cropped, stored as uint8 in memory; labels from the
    first-level sub-folder names when every image is in one, else None. Unreadable files follow
    ``bad`` (a :class:`pairlens.io.BadFiles`; default: stop at the first).
    """
    import torch

    from pairlens.data import bundled

    if data == "digits":
        x, y = bundled.digits(split, seed=seed)
        return x, y, f"digits ({split} split, seed {seed})"
    if data == "photos":
        x, names = bundled.photos_tensor(load_size, bundled.TRAIN_PHOTOS)
        return x, torch.arange(len(names)), f"{len(names)} bundled photos"
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{data}: not digits, photos or an existing directory")
    from pairlens.io import BadFiles, scan_images

    bad = bad or BadFiles("stop")
    imgs, files = [], []
    for f in scan_images(root):
        image = bad.load(f)
        if image is not None:
            imgs.append((bundled.square_tensor(image, load_size) * 255).round().to(torch.uint8))
            files.append(f)
    if not files:
        raise ValueError(f"{data}: no readable image files found")
    parts = [f.relative_to(root).parts for f in files]
    classes = sorted({p[0] for p in parts if len(p) > 1})
    labels = None
    if classes and all(len(p) > 1 for p in parts):
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in files])
    return torch.stack(imgs), labels, f"{len(files)} images from {root}"


def run_simclr(args: argparse.Namespace) -> int:
    import torch

    from pairlens.models.bundled import get_architecture
    from pairlens.training.augment import AugmentConfig
    from pairlens.training.simclr import train_simclr

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data == "composites" and not Path(args.data).exists():
        return run_shared_object(args)
    arch_name = args.arch or ("digits-cnn" if args.data == "digits" else "resnet-mini")
    arch = get_architecture(arch_name)
    load_size = args.image_size or round(arch.input_size[0] / 0.7)
    bad = bad_files(args)
    images, labels, described = load_training_data(args.data, load_size, "train", args.seed,
                                                    bad=bad)
    augment = AugmentConfig.digits() if args.data == "digits" else AugmentConfig.photos()
    config = train_config(args)
    record_skipped(args.out, bad)
    hooks = []
    val = None
    if args.data == "digits":
        val = load_training_data("digits", load_size, "val", args.seed)[:2]
        hooks.append(knn_hook(images, labels, *val, arch.mean, arch.std))
    print(f"training {arch_name} with SimCLR on {described}; output in {args.out}")
    net, log = train_simclr(images, arch_name, config, augment=augment, labels=labels, hooks=hooks)
    summary: dict[str, Any] = {"epochs": len(log), "final_loss": log[-1]["loss"] if log else None}
    if labels is not None and args.data != "photos":
        summary.update(attach_probe(Path(args.out) / "model.pt", net, arch, images, labels, val,
                                    args.data, args.seed))
    else:
        summary.update(attach_view_cosines(Path(args.out) / "model.pt", images, augment))
    if bad.skipped:
        summary["skipped_files"] = dict(bad.skipped)
    print(json.dumps(summary, indent=2))
    if bad.skipped:
        print(f"pairlens: {bad.summary()} (listed in {Path(args.out) / 'skipped.json'})",
              file=sys.stderr)
    return 0


def run_shared_object(args: argparse.Namespace) -> int:
    """``pairlens train simclr --data composites``: positives = scenes sharing an object."""
    from pairlens.training.composites import train_shared_object

    arch_name = args.arch or "resnet-mini-64"
    config = train_config(args)
    print(f"training {arch_name} on composites scenes (positives share an object); "
          f"output in {args.out}")
    _, log = train_shared_object(arch_name, config, n_distractors=args.distractors)
    summary: dict[str, Any] = {"epochs": len(log), "final_loss": log[-1]["loss"] if log else None}
    summary.update(attach_removal_drops(Path(args.out) / "model.pt"))
    print(json.dumps(summary, indent=2))
    return 0


def attach_removal_drops(model_path: Path, n_pairs: int = 200, seed: int = 1) -> dict:
    """Similarity drops when the shared object / a distractor is removed
    (:func:`pairlens.training.composites.removal_drops`, benchmark pairs of seed 1, never used in
    training), for both embeddings, stored in the ``meta`` of ``model_path``."""
    from pairlens.models.checkpoint import read_checkpoint
    from pairlens.training.composites import removal_drops
    from pairlens.training.simclr import _atomic_torch_save, load_trained

    out: dict[str, Any] = {}
    for embedding in ("projector", "backbone"):
        r = removal_drops(load_trained(model_path, embedding), n_pairs=n_pairs, seed=seed)
        r.pop("per_pair")
        out.update({f"{k}_{embedding}": v for k, v in r.items() if k not in ("n_pairs", "seed")})
    out.update(removal_pairs=n_pairs, removal_seed=seed)
    state = read_checkpoint(model_path, "model.pt of pairlens train")
    state.setdefault("meta", {}).update(out)
    _atomic_torch_save(state, model_path)
    return out


def train_config(args: argparse.Namespace):
    """The :class:`~pairlens.training.simclr.TrainConfig` of the common training options."""
    from pairlens.training.simclr import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, temperature=args.temperature,
        warmup_epochs=args.warmup_epochs, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
        out=args.out, resume=args.resume, device=args.device, progress=not args.quiet,
        data=args.data, image_size=args.image_size,
    )


def run_cross_entropy(args: argparse.Namespace) -> int:
    import torch

    from pairlens.cli.excon import default_arch, load_labelled_data
    from pairlens.models.bundled import get_architecture
    from pairlens.training.augment import AugmentConfig
    from pairlens.training.classify import supervised_augment, train_cross_entropy

    if args.threads:
        torch.set_num_threads(args.threads)
    arch_name = args.arch or default_arch(args.data)
    arch = get_architecture(arch_name)
    load_size = args.image_size or round(arch.input_size[0] / 0.7)
    if args.data == "photos":  # instance classification: one class per training photo
        from pairlens.data import bundled

        images, labels, _ = load_training_data("photos", load_size)
        # the held-out stereo view of motorcycle_left is the only unseen image of a class
        val_images = bundled.photos_tensor(load_size, ("motorcycle_right",))[0]
        val_labels = torch.tensor([bundled.TRAIN_PHOTOS.index("motorcycle_left")])
        test_images, test_labels = val_images, val_labels
    else:
        images, labels = load_labelled_data(args.data, "train", args.data_seed, load_size)
        val_images, val_labels = load_labelled_data(args.data, "val", args.data_seed, load_size)
        test_images, test_labels = load_labelled_data(args.data, "test", args.data_seed,
                                                      load_size)
    digits_like = args.data in ("digits", "cluttered-digits")
    config = train_config(args)
    print(f"training {arch_name} with cross-entropy on {args.data} ({len(images)} train, "
          f"{len(val_images)} val images); output in {args.out}")
    net, classifier, log = train_cross_entropy(
        _float01(images), labels, _float01(val_images), val_labels, arch_name, config,
        augment=supervised_augment(AugmentConfig.digits() if digits_like
                                   else AugmentConfig.photos()),
    )
    from pairlens.training.classify import ClassifierNet, accuracy

    test_acc = accuracy(ClassifierNet(net.backbone, classifier), _float01(test_images),
                        test_labels, arch.mean, arch.std, size=arch.input_size)
    print(json.dumps({"epochs": len(log), "final_loss": log[-1]["loss"] if log else None,
                      "val_accuracy": log[-1].get("val_accuracy") if log else None,
                      "test_accuracy": test_acc}, indent=2))
    return 0


def _float01(images):
    import torch

    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def bad_files(args: argparse.Namespace):
    """The :class:`pairlens.io.BadFiles` policy of ``--on-error``, logging to stderr."""
    from pairlens.io import BadFiles

    return BadFiles(getattr(args, "on_error", "stop"),
                    log=lambda line: print(f"pairlens: {line}", file=sys.stderr),
                    hint="pass --on-error skip to train without it")


def record_skipped(out: str, bad) -> None:
    """Write ``OUT/skipped.json`` (file -> reason) when files were skipped."""
    if not bad.skipped:
        return
    from pairlens.io import atomic_write

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    text = json.dumps(bad.skipped, indent=2)
    atomic_write(path / "skipped.json", lambda f: f.write(text.encode()))


def knn_hook(train_x, train_y, val_x, val_y, mean, std):
    """Epoch hook logging ``val_knn_accuracy`` (cosine 20-NN on backbone features)."""
    from pairlens.training.simclr import knn_accuracy, pooled_features

    def hook(trainer, epoch: int, row: dict) -> None:
        ft = pooled_features(trainer.net, train_x, mean, std)
        fv = pooled_features(trainer.net, val_x, mean, std)
        row["val_knn_accuracy"] = knn_accuracy(ft, train_y, fv, val_y)

    return hook


def attach_probe(model_path: Path, net, arch, images, labels, val, data: str, seed: int) -> dict:
    """Fit the linear probe on backbone features, store it in ``model_path``; test accuracy for
    digits (the test split is never used for training or model selection)."""
    import torch

    from pairlens.models.bundled import bundle_state
    from pairlens.models.checkpoint import read_checkpoint
    from pairlens.training.simclr import _atomic_torch_save, fit_linear_probe, pooled_features

    net = net.cpu().eval()
    ft = pooled_features(net, images.float() / 255 if images.dtype == torch.uint8 else images,
                         arch.mean, arch.std)
    if val is None:  # folder data: hold out nothing, select C on the training set itself
        fv, yv = ft, labels
    else:
        fv, yv = pooled_features(net, val[0], arch.mean, arch.std), val[1]
    probe, info = fit_linear_probe(ft, labels, fv, yv, seed=seed)
    out: dict[str, Any] = dict(info)
    if data == "digits":
        xt, yt = load_training_data("digits", 0, "test", seed)[:2]
        with torch.no_grad():
            pred = probe(pooled_features(net, xt, arch.mean, arch.std)).argmax(1)
        out["probe_test_accuracy"] = float((pred == yt).float().mean())
    state = read_checkpoint(model_path, "model.pt of pairlens train")
    meta = dict(state.get("meta", {}))
    meta.update(out)
    _atomic_torch_save(bundle_state(net, arch.name, classifier=probe, **meta), model_path)
    return out


def attach_view_cosines(model_path: Path, images, augment, max_images: int = 64) -> dict:
    """Mean cosine of two augmented views of the same image vs of different images (first
    ``max_images`` training images, 8 views each, seed 0; projector and backbone embeddings),
    stored in the ``meta`` of ``model_path``."""
    import torch

    from pairlens.models.checkpoint import read_checkpoint
    from pairlens.training.simclr import _atomic_torch_save, augmented_view_cosines, load_trained

    x = images[:max_images]
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    out: dict[str, Any] = {}
    for embedding in ("projector", "backbone"):
        cos = augmented_view_cosines(load_trained(model_path, embedding), x, augment, 8, seed=0)
        out.update({f"view_cosine_{k}_{embedding}": v for k, v in cos.items()})
    state = read_checkpoint(model_path, "model.pt of pairlens train")
    state.setdefault("meta", {}).update(out)
    _atomic_torch_save(state, model_path)
    return out
