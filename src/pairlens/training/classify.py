"""Plain supervised training (cross-entropy) with PairLens's trainer: the *supervised twin* of a
contrastive model, same architecture, different objective.

Seed 000's appendix compares feature inversions of a contrastive ResNet-50 (SimCLRv2) with "the
same model trained with a different objective, namely image classification". This mode trains
exactly that for the bundled architectures: the backbone f of a
:class:`~pairlens.models.bundled.ContrastiveNet` plus a linear classifier on the pooled features
h = f(x), end to end, with cross-entropy, on one random view per image per step. The default view
is the contrastive model's augmentation without its photometric part: the same random resized crop
(and flip where the preset flips), **no** colour jitter, grayscale or blur, so that the twin differs
from the contrastive model in its objective and in the photometric augmentations only.

The run uses :class:`~pairlens.training.simclr.ContrastiveTrainer` (resumable, seeded, AdamW with
warm-up and cosine decay); after every epoch the validation accuracy is logged and ``best.pt`` is
written when it improves. ``model.pt`` is in the bundled-weights format with the trained
classifier as ``classifier`` and ``meta["embeddings"] = ["backbone"]``: the projection head of the
architecture is **not trained** (it keeps its seeded initialisation only so the file has the
bundled layout) and must not be used as an embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairlens.models.bundled import ContrastiveNet, bundle_state, get_architecture
from pairlens.models.similarity import pool_features
from pairlens.training.augment import AugmentConfig, SimCLRAugment
from pairlens.training.simclr import ContrastiveTrainer, TrainConfig, _atomic_torch_save

#: the only embedding a cross-entropy model offers (its projector is untrained)
EMBEDDINGS = ("backbone",)


def supervised_augment(base: AugmentConfig) -> AugmentConfig:
    """The contrastive preset ``base`` without its photometric augmentations: the same random
    resized crop (and flip, if ``base`` flips), no colour jitter, grayscale or blur."""
    return replace(base, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


class ClassifierNet(nn.Module):
    """Backbone f and a linear classifier on the pooled features: ``forward(x)`` gives logits."""

    def __init__(self, backbone: nn.Module, classifier: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(pool_features(self.backbone(x)))


class CrossEntropyLoss:
    """Batch loss for :class:`ContrastiveTrainer`: one augmented view per image, cross-entropy of
    the classifier's logits; logs the batch accuracy."""

    def __init__(self, augment: SimCLRAugment):
        self.augment = augment

    def __call__(
        self, trainer: ContrastiveTrainer, images: Tensor, labels: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        views = trainer.normalize(self.augment(images, trainer.generator))
        logits = trainer.net(views)
        loss = F.cross_entropy(logits, labels)
        accuracy = float((logits.detach().argmax(1) == labels).float().mean())
        return loss, {"train_batch_accuracy": accuracy}


@torch.no_grad()
def accuracy(net: ClassifierNet, images01: Tensor, labels: Tensor, mean: Sequence[float],
             std: Sequence[float], batch_size: int = 256,
             size: Sequence[int] | None = None) -> float:
    """Top-1 accuracy of ``net`` (eval mode) on pixel-space images (N, 3, H, W) in [0, 1],
    resized (bilinear, antialiased) to ``size`` first when given and different."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    correct = 0
    for i in range(0, len(images01), batch_size):
        x = images01[i : i + batch_size].to(dev).float()
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                              antialias=True)
        x = (x - m) / s
        correct += int((net(x).argmax(1).cpu() == labels[i : i + batch_size]).sum())
    net.train(was_training)
    return correct / max(1, len(images01))


def train_cross_entropy(
    images: Tensor,
    labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    arch: str,
    config: TrainConfig,
    augment: AugmentConfig | None = None,
    n_classes: int | None = None,
) -> tuple[ContrastiveNet, nn.Linear, list[dict[str, Any]]]:
    """Train backbone + linear classifier of architecture ``arch`` with cross-entropy.

    Args:
        images, labels: training images (N, 3, H, W) in [0, 1] and integer labels (N,).
        val_images, val_labels: validation split (logged per epoch, selects ``best.pt``).
        arch: a name in :data:`pairlens.models.bundled.ARCHITECTURES`.
        config: :class:`TrainConfig` (``temperature`` is unused; ``out`` set: checkpoints,
            ``log.csv``, ``model.pt``, ``best.pt``).
        augment: the training view (default: :func:`supervised_augment` of the digits preset).
        n_classes: number of classes (default: largest label + 1).

    Returns:
        The trained network as a :class:`ContrastiveNet` (trained backbone, untrained projector),
        the classifier (both in eval mode) and the per-epoch log rows.
    """
    spec = get_architecture(arch)
    augment = augment or supervised_augment(AugmentConfig.digits())
    n_classes = n_classes or int(max(labels.max(), val_labels.max())) + 1
    config.arch, config.mode = arch, "cross-entropy"
    config.augment = augment.to_dict()
    torch.manual_seed(config.seed)
    net = spec.build()
    classifier = nn.Linear(spec.backbone_dim, n_classes)
    model = ClassifierNet(net.backbone, classifier)
    out = Path(config.out) if config.out else None
    meta: dict[str, Any] = {"mode": "cross-entropy", "embeddings": list(EMBEDDINGS),
                            "config": config.to_dict()}

    def validate(trainer: ContrastiveTrainer, epoch: int, row: dict[str, Any]) -> None:
        row["val_accuracy"] = accuracy(model, val_images, val_labels, spec.mean, spec.std,
                                       size=spec.input_size)
        previous = [r["val_accuracy"] for r in trainer.log if "val_accuracy" in r]
        row["best"] = not previous or row["val_accuracy"] > max(previous)
        if row["best"] and out is not None:
            _atomic_torch_save(bundle_state(net, arch, classifier=classifier, **meta,
                                            epoch=epoch, val_accuracy=row["val_accuracy"]),
                               out / "best.pt")

    trainer = ContrastiveTrainer(
        model, images, labels, config, CrossEntropyLoss(SimCLRAugment(augment, spec.input_size)),
        mean=spec.mean, std=spec.std, hooks=[validate],
    )
    log = trainer.fit()
    net.eval()
    classifier.eval()
    if out is not None:
        _atomic_torch_save(bundle_state(net.cpu(), arch, classifier=classifier.cpu(), **meta,
                                        epochs_done=trainer.epoch), out / "model.pt")
    return net, classifier, log
