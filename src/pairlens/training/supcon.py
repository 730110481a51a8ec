"""Supervised contrastive training: SupCon, SupConOri, ExCon and ExConB (seed 003).

All four modes train a :class:`~pairlens.models.bundled.ContrastiveNet` (backbone f, projector g)
with :func:`~pairlens.training.losses.supcon_loss` (eq. 2; eq. 3 for ExConB) on the projector
output, and a linear classifier ``C`` on the pooled backbone features h = f(x), using PairLens's
resumable :class:`~pairlens.training.simclr.ContrastiveTrainer`.

Modes (seed 003, §3 and §4 "Baseline methods"):

* ``supcon-ori`` (Khosla et al. 2020): the encoder is trained for all ``E`` epochs first, then the
  linear classifier for ``E`` epochs on the frozen final encoder;
* ``supcon``: Algorithm 1 with random views only: every epoch one encoder epoch, then one
  linear-classifier epoch on the frozen encoder;
* ``excon``: Algorithm 1 with explanation-driven views from epoch ``start_epoch`` on (0-based, so
  ``start_epoch=0`` uses them from the first epoch, as in the paper);
* ``exconb``: like ``excon``, plus background rows (eq. 3).

Explanation-driven views (``ExConAug``, appendix Fig. 4 and 5), for each source image x with label y
of a batch:

1. two random views (the SimCLR / SupCon augmentation, drawn from the trainer's generator);
2. the Grad-CAM (Selvaraju et al. 2017: ReLU of the feature maps of f weighted by the spatial mean
   of the gradient of C's logit for the **ground-truth class** y) of the un-augmented image, through
   encoder + classifier, upsampled bilinearly to the input size and min-max normalised per image
   (a constant map becomes all zeros);
3. the masked image: pixels whose normalised map is at or below ``threshold`` τ (0.5) are set to 0
   **in model-input space** (i.e. to the normalisation mean), the others are kept unchanged;
4. C classifies the masked image (network in eval mode, as when C is trained). Correct: the masked
   image **replaces the first random view** (so the pair is masked image + one random view).
   Wrong: ExCon keeps the two random views; ExConB keeps them too and appends the masked image with
   the background label :data:`BACKGROUND_LABEL` ``background_copies`` times (2, the pair of the
   paper's Fig. 5) at the end of the batch; these rows are passed to ``supcon_loss`` with
   ``background=True``: never anchors, never positives, in every denominator.

The linear-classifier epoch (Algorithm 1, step 2) runs over the **un-augmented** training images
(encoder frozen, eval mode; features computed once per epoch), minibatches of ``batch_size`` in a
seeded random order, cross-entropy, Adam with ``classifier_lr``. After it the epoch's row gets
``classifier_loss``, ``train_accuracy`` (C on the training images), ``val_accuracy`` and
``val_loss`` (on the validation split); whenever ``val_accuracy`` improves, ``best.pt`` is
written (the paper evaluates the best-validation model of each run).

Outputs in ``OUT`` besides the trainer's (``checkpoint.pt``, ``log.csv``, ``config.json``):
``model.pt`` (final network + classifier, bundled format: load with
:func:`~pairlens.training.simclr.load_trained`), ``best.pt``, ``curves.png`` (loss, accuracies and
fraction of masked images accepted per epoch), ``supervised.json`` (the mode's settings, checked on
``--resume``), and for ``supcon-ori`` the classifier phase's ``classifier_checkpoint.pt`` and
``classifier_log.csv``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairlens.metrics.faithfulness import minmax
from pairlens.models.bundled import ContrastiveNet, bundle_state, get_architecture
from pairlens.models.checkpoint import CheckpointError, read_checkpoint
from pairlens.training import losses
from pairlens.training.augment import AugmentConfig, SimCLRAugment
from pairlens.training.simclr import (
    ContrastiveTrainer,
    TrainConfig,
    _atomic_torch_save,
    _atomic_write_text,
    pooled_features,
    write_log_csv,
)
from pairlens.validation import Annotated, Choices, Range, validate_fields

MODES = ("supcon", "supcon-ori", "excon", "exconb")
EXPLANATION_MODES = ("excon", "exconb")
#: label of ExConB background rows (they are also flagged in ``background``)
BACKGROUND_LABEL = -1


# ---------------------------------------------------------------------- Grad-CAM and masking
def class_gradcam(backbone: nn.Module, classifier: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of class ``target`` for a classifier on pooled features.

    ``backbone(x)`` must give the spatial feature map A (B, C, h, w) whose average pool feeds
    ``classifier``. Map = ReLU(sum_k w_k A_k) with w_k the spatial mean of d logit_target / d A_k,
    upsampled bilinearly (``align_corners=False``) to the input size: (B, H, W), not normalised.
    The modules' train/eval mode is left as it is (callers choose).
    """
    with torch.enable_grad():
        a = backbone(x)
        if a.dim() != 4:
            raise ValueError(f"Grad-CAM needs a (B, C, h, w) feature map; got {tuple(a.shape)}")
        logits = classifier(a.mean(dim=(2, 3)))
        score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, a)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return cam[:, 0]


def explanation_mask(maps: Tensor, threshold: float = 0.5) -> Tensor:
    """Boolean (B, H, W) keep-mask: min-max normalised map strictly above ``threshold``."""
    return minmax(maps) > threshold


def mask_images(x: Tensor, keep: Tensor) -> Tensor:
    """Model-input-space images (B, C, H, W) with every pixel outside ``keep`` (B, H, W) set to 0
    in all channels."""
    return x * keep.unsqueeze(1).to(x.dtype)


def explanation_masked(
    backbone: nn.Module, classifier: nn.Module, x: Tensor, target: Tensor, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """ExCon's masked images: ``(masked x, keep mask)`` from the Grad-CAM of class ``target``."""
    keep = explanation_mask(class_gradcam(backbone, classifier, x, target), threshold)
    return mask_images(x, keep), keep


# ---------------------------------------------------------------------- views and batch loss
@dataclass
class ViewBatch:
    """What reaches the loss: model-input views (N, 3, H, W), labels (N,), background (N,) bool,
    and per source image whether its masked image was accepted (correctly classified) or None
    when no explanation-driven views were made."""

    views: Tensor
    labels: Tensor
    background: Tensor
    accepted: Tensor | None


class SupervisedContrastiveLoss:
    """Batch loss of the four modes for :class:`ContrastiveTrainer` (see the module docstring)."""

    def __init__(
        self,
        mode: str,
        augment: SimCLRAugment,
        classifier: nn.Linear,
        temperature: float = 0.1,
        threshold: float = 0.5,
        start_epoch: int = 0,
        input_size: tuple[int, int] = (32, 32),
        background_copies: int = 2,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        self.mode = mode
        self.augment = augment
        self.classifier = classifier
        self.temperature = temperature
        self.threshold = threshold
        self.start_epoch = start_epoch
        self.input_size = tuple(input_size)
        self.background_copies = background_copies

    def uses_explanations(self, completed_epochs: int) -> bool:
        """Explanation-driven views in the epoch after ``completed_epochs`` (0-based index)."""
        return self.mode in EXPLANATION_MODES and completed_epochs >= self.start_epoch

    def originals(self, trainer: ContrastiveTrainer, images: Tensor) -> Tensor:
        """Un-augmented images at the input size, in model-input space."""
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear",
                                   align_corners=False, antialias=True)
        return trainer.normalize(images)

    def make_views(self, trainer: ContrastiveTrainer, images: Tensor, labels: Tensor) -> ViewBatch:
        g = trainer.generator
        v1 = trainer.normalize(self.augment(images, g))
        v2 = trainer.normalize(self.augment(images, g))
        b = images.shape[0]
        lab = torch.cat([labels, labels])
        bg = torch.zeros(2 * b, dtype=torch.bool, device=images.device)
        if not self.uses_explanations(trainer.epoch):
            return ViewBatch(torch.cat([v1, v2]), lab, bg, None)
        net = trainer.net
        was_training = net.training
        net.eval()
        try:
            x0 = self.originals(trainer, images)
            masked, _ = explanation_masked(net.backbone, self.classifier, x0, labels,
                                           self.threshold)
            with torch.no_grad():
                pred = self.classifier(net(masked)[0]).argmax(dim=1)
        finally:
            net.train(was_training)
        accepted = pred == labels
        v1 = torch.where(accepted.view(-1, 1, 1, 1), masked, v1)
        views = [v1, v2]
        if self.mode == "exconb" and bool((~accepted).any()):
            rejected = masked[~accepted]
            n_bg = rejected.shape[0] * self.background_copies
            views += [rejected] * self.background_copies
            lab = torch.cat([lab, torch.full((n_bg,), BACKGROUND_LABEL, dtype=lab.dtype,
                                             device=lab.device)])
            bg = torch.cat([bg, torch.ones(n_bg, dtype=torch.bool, device=bg.device)])
        return ViewBatch(torch.cat(views), lab, bg, accepted)

    def __call__(
        self, trainer: ContrastiveTrainer, images: Tensor, labels: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        batch = self.make_views(trainer, images, labels)
        _, z = trainer.net(batch.views)
        z = F.normalize(z, dim=1)
        background = batch.background if self.mode == "exconb" else None
        loss = losses.supcon_loss(z, batch.labels, temperature=self.temperature,
                                  background=background)
        metrics: dict[str, float] = {}
        if batch.accepted is not None:
            metrics["masked_accepted"] = float(batch.accepted.float().mean())
            if self.mode == "exconb":
                metrics["background_rows"] = float(batch.background.sum())
        return loss, metrics


# ---------------------------------------------------------------------- linear classifier
def _float01(images: Tensor) -> Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


class ClassifierEpochs:
    """Epoch hook: one linear-classifier epoch on frozen features, then evaluation (see module
    docstring). For ``supcon-ori`` the trainer gets no such hook; :func:`train_supervised` calls
    :meth:`run_epoch` after the encoder phase instead."""

    def __init__(
        self,
        classifier: nn.Linear,
        optimizer: torch.optim.Optimizer,
        train_images: Tensor,
        train_labels: Tensor,
        val_images: Tensor,
        val_labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        arch: str,
        out: Path | None,
        meta: dict[str, Any],
    ):
        self.classifier = classifier
        self.optimizer = optimizer
        self.train_images, self.train_labels = train_images, train_labels.long()
        self.val_images, self.val_labels = val_images, val_labels.long()
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.arch = arch
        self.out = out
        self.meta = meta

    def features(self, net: ContrastiveNet, images: Tensor) -> Tensor:
        return pooled_features(net, _float01(images), self.mean, self.std)

    def run_epoch(
        self, net: ContrastiveNet, generator: torch.Generator, row: dict[str, Any],
        history: Sequence[dict[str, Any]], train_f: Tensor | None = None,
        val_f: Tensor | None = None,
    ) -> None:
        """Train C for one epoch on frozen features, evaluate, update ``row``, maybe save best."""
        dev = next(self.classifier.parameters()).device
        train_f = self.features(net, self.train_images) if train_f is None else train_f
        val_f = self.features(net, self.val_images) if val_f is None else val_f
        train_f, val_f = train_f.to(dev), val_f.to(dev)
        yt, yv = self.train_labels.to(dev), self.val_labels.to(dev)
        order = torch.randperm(len(train_f), generator=generator).to(dev)
        self.classifier.train()
        total, steps = 0.0, 0
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            loss = F.cross_entropy(self.classifier(train_f[idx]), yt[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        self.classifier.eval()
        with torch.no_grad():
            train_acc = float((self.classifier(train_f).argmax(1) == yt).float().mean())
            val_logits = self.classifier(val_f)
            val_acc = float((val_logits.argmax(1) == yv).float().mean())
            val_loss = float(F.cross_entropy(val_logits, yv))
        row.update(classifier_loss=total / max(steps, 1), train_accuracy=train_acc,
                   val_accuracy=val_acc, val_loss=val_loss)
        previous = [r["val_accuracy"] for r in history if "val_accuracy" in r]
        row["best"] = not previous or val_acc > max(previous)
        if row["best"] and self.out is not None:
            meta = dict(self.meta, epoch=row["epoch"], val_accuracy=val_acc)
            _atomic_torch_save(bundle_state(net, self.arch, classifier=self.classifier, **meta),
                               self.out / "best.pt")

    def __call__(self, trainer: ContrastiveTrainer, epoch: int, row: dict[str, Any]) -> None:
        self.run_epoch(trainer.net, trainer.generator, row, trainer.log)


# ---------------------------------------------------------------------- training entry point
@dataclass
class SupervisedSettings:
    """Settings of the supervised modes that :class:`TrainConfig` does not hold (stored in
    ``supervised.json`` and checked when resuming)."""

    mode: Annotated[str, Choices("supcon", "supcon-ori", "excon", "exconb")] = "supcon"
    start_epoch: Annotated[int, Range(0)] = 0
    threshold: Annotated[float, Range(0, 1)] = 0.5
    classifier_lr: Annotated[float, Range(0, lo_open=True)] = 5e-2
    background_copies: Annotated[int, Range(0)] = 2
    n_classes: Annotated[int, Range(1)] = 10


def train_supervised(
    images: Tensor,
    labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    arch: str,
    config: TrainConfig,
    settings: SupervisedSettings,
    augment: AugmentConfig | None = None,
    plot: bool = True,
) -> tuple[ContrastiveNet, nn.Linear, list[dict[str, Any]]]:
    """Train one of :data:`MODES` (see the module docstring).

    Args:
        images, labels: training images (N, 3, H, W) in [0, 1] (float or uint8) and labels (N,).
        val_images, val_labels: validation split (model selection, curves).
        arch: a name in :data:`pairlens.models.bundled.ARCHITECTURES`.
        config: :class:`TrainConfig` (``temperature`` is τ of eq. 2; ``out`` set: checkpoints,
            logs, ``model.pt``, ``best.pt``, ``curves.png``).
        settings: :class:`SupervisedSettings` (mode, start epoch, τ threshold, ...).
        augment: random-view augmentation (default :meth:`AugmentConfig.digits`).
        plot: write ``curves.png`` at the end (when ``config.out`` is set).

    Returns:
        The trained network (eval mode), the linear classifier and the per-epoch log rows
        (for ``supcon-ori`` the encoder rows followed by the classifier-phase rows).
    """
    validate_fields(settings)
    mode = settings.mode
    spec = get_architecture(arch)
    augment = augment or AugmentConfig.digits()
    config.arch, config.mode = arch, mode
    config.augment = augment.to_dict()
    out = Path(config.out) if config.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _check_settings(out / "supervised.json", settings, config.resume)
    torch.manual_seed(config.seed)
    net = spec.build()
    classifier = nn.Linear(spec.backbone_dim, settings.n_classes)
    from pairlens.models.similarity import resolve_device

    classifier.to(resolve_device(config.device))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=settings.classifier_lr)
    meta = {"mode": mode, "settings": asdict(settings), "config": config.to_dict()}
    epochs = ClassifierEpochs(classifier, optimizer, images, labels, val_images, val_labels,
                              spec.mean, spec.std, config.batch_size, arch, out, meta)
    loss = SupervisedContrastiveLoss(
        mode, SimCLRAugment(augment, out_size=spec.input_size), classifier,
        temperature=config.temperature, threshold=settings.threshold,
        start_epoch=settings.start_epoch, input_size=spec.input_size,
        background_copies=settings.background_copies,
    )
    hooks = [] if mode == "supcon-ori" else [epochs]
    trainer = ContrastiveTrainer(
        net, images, labels, config, loss, mean=spec.mean, std=spec.std, hooks=hooks,
        extra_state={"classifier": classifier, "classifier_optimizer": optimizer},
    )
    log = trainer.fit()
    if mode == "supcon-ori":
        log = log + _classifier_phase(trainer, epochs, config)
    net.eval()
    classifier.eval()
    if out is not None:
        meta.update(epochs_done=trainer.epoch)
        _atomic_torch_save(bundle_state(net, arch, classifier=classifier, **meta),
                           out / "model.pt")
        if plot:
            plot_training_curves(log, out / "curves.png", title=f"{mode} ({arch})")
    return net, classifier, log


def _check_settings(path: Path, settings: SupervisedSettings, resume: bool) -> None:
    now = asdict(settings)
    if path.exists() and resume:
        saved = json.loads(path.read_text())
        diff = [k for k in now if saved.get(k) != now[k]]
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
            raise ValueError(f"cannot resume {path.parent}: settings differ ({detail})")
    _atomic_write_text(path, json.dumps(now, indent=2))


def _classifier_phase(trainer: ContrastiveTrainer, epochs: ClassifierEpochs,
                      config: TrainConfig) -> list[dict[str, Any]]:
    """SupConOri's second stage: ``config.epochs`` classifier epochs on the frozen final encoder,
    resumable from ``classifier_checkpoint.pt`` (classifier, optimizer, generator, rows)."""
    out = trainer.out
    generator = torch.Generator().manual_seed(config.seed + 1)
    rows: list[dict[str, Any]] = []
    ckpt = out / "classifier_checkpoint.pt" if out is not None else None
    if ckpt is not None and ckpt.exists():
        state = read_checkpoint(ckpt, "the classifier checkpoint of a supcon-ori run")
        if not isinstance(state, dict) or not {"classifier", "optimizer", "generator",
                                               "rows"} <= set(state):
            raise CheckpointError(f"{ckpt}: not a classifier checkpoint of pairlens train "
                                  "supcon-ori")
        epochs.classifier.load_state_dict(state["classifier"])
        epochs.optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        rows = list(state["rows"])
    train_f = epochs.features(trainer.net, epochs.train_images)
    val_f = epochs.features(trainer.net, epochs.val_images)
    start = config.epochs + len(rows)
    for epoch in range(start + 1, 2 * config.epochs + 1):
        row: dict[str, Any] = {"epoch": epoch, "phase": "classifier"}
        epochs.run_epoch(trainer.net, generator, row, rows, train_f, val_f)
        rows.append(row)
        if ckpt is not None:
            _atomic_torch_save({"classifier": epochs.classifier.state_dict(),
                                "optimizer": epochs.optimizer.state_dict(),
                                "generator": generator.get_state(), "rows": rows}, ckpt)
            write_log_csv(out / "classifier_log.csv", rows)
    return rows


# ---------------------------------------------------------------------- plots
def plot_training_curves(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """PNG of the per-epoch curves: contrastive loss, train / val accuracy and val loss, and the
    fraction of masked images accepted (when present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"], float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(*series("loss"), marker="o", label="contrastive loss")
    axes[0].plot(*series("val_loss"), marker="o", label="val cross-entropy")
    axes[0].set_title("losses")
    axes[1].plot(*series("train_accuracy"), marker="o", label="train")
    axes[1].plot(*series("val_accuracy"), marker="o", label="validation")
    axes[1].set_title("linear-classifier accuracy")
    axes[2].plot(*series("masked_accepted"), marker="o", color="C2")
    axes[2].set_title("fraction of masked images accepted")
    axes[2].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
