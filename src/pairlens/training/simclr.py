"""PairLens's contrastive trainer: a general, resumable epoch loop, and SimCLR on top of it.

:class:`ContrastiveTrainer` knows nothing about SimCLR. Per step it takes a batch of images (and
their labels) and calls a **batch loss** ``batch_loss(trainer, images, labels) -> (loss, metrics)``;
after each epoch it calls the **epoch hooks** ``hook(trainer, epoch, row)`` (which may add columns
to the CSV row, train a linear classifier, evaluate, ...), then writes a checkpoint. Extensions
(SupCon, ExCon, ExConB: issue 5) plug in their own batch loss (for example explanation-driven views
and :func:`~pairlens.training.losses.supcon_loss` with ``background``), register extra modules and
optimizers in ``trainer.extra_state`` so they are checkpointed and restored, and add epoch hooks.

Exactness and resumption: every random number of the loop (batch order, augmentations) comes from
``trainer.generator``, a CPU ``torch.Generator`` seeded with ``config.seed``; the global torch RNG
(dropout etc.) is seeded too. After every epoch the checkpoint ``OUT/checkpoint.pt`` is written
atomically (temporary file + ``os.replace``) with the model, optimizer, scheduler, extra states,
both RNG states (and CUDA RNG states when present), the epoch and the log rows. ``resume=True``
restores all of them and continues with the next epoch, so an interrupted run (even mid-epoch:
that epoch is redone from its start) ends with exactly the weights of an uninterrupted one (tested
on CPU).

Outputs in ``OUT``: ``checkpoint.pt`` (full state), ``log.csv`` (one row per epoch, rewritten
atomically from the rows stored in the checkpoint, so it never holds a half-finished epoch),
``config.json`` and, at the end, ``model.pt``: the trained network in the bundled-weights format
(:func:`pairlens.models.bundled.load_bundle`; load it with :func:`load_trained`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairlens.io import atomic_write
from pairlens.models.bundled import (
    ContrastiveNet,
    bundle_state,
    get_architecture,
    load_bundle,
    similarity_model_from_net,
)
from pairlens.training.augment import AugmentConfig, SimCLRAugment
from pairlens.training.losses import supcon_loss
from pairlens.validation import Annotated, Range, validate_fields

CHECKPOINT_FORMAT = "pairlens-train-v1"
#: the only config keys that may change when resuming; every other key (hyper-parameters, data,
#: its content hash, image size, architecture, augmentation) must match the checkpoint's
RESUME_FREE = ("out", "resume", "device", "progress")


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of a training run (stored in every checkpoint).

    Numeric fields declare their valid ranges (checked by :class:`ContrastiveTrainer` with
    :func:`pairlens.validation.validate_fields`, and by the CLI options with the same rules).
    ``batch_size`` counts source images (each gives two views, so 2·batch_size rows reach the
    loss). ``image_size`` is the side of the images held in memory (CLI data loading) and
    ``data_hash`` the sha256 of the training images and labels, set by the trainer: both are
    checked when resuming. ``steps_per_epoch=None`` means ``len(data) // batch_size`` (one
    pass, last partial batch dropped); a larger value cycles through fresh permutations (for
    tiny data sets). The learning rate follows a linear warm-up over ``warmup_epochs`` then a
    cosine decay to 0, per step (AdamW).
    """

    epochs: Annotated[int, Range(1)] = 30
    batch_size: Annotated[int, Range(1)] = 128
    lr: Annotated[float, Range(0, lo_open=True)] = 1e-3
    weight_decay: Annotated[float, Range(0)] = 1e-4
    temperature: Annotated[float, Range(0, lo_open=True)] = 0.5
    warmup_epochs: Annotated[float, Range(0)] = 1.0
    seed: Annotated[int, Range(0)] = 0
    steps_per_epoch: Annotated[int, Range(1)] | None = None
    image_size: Annotated[int, Range(8)] | None = None
    data_hash: str = ""
    out: str | None = None
    resume: bool = False
    device: str = "auto"
    progress: bool = True
    arch: str = ""
    data: str = ""
    mode: str = "simclr"
    augment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchLoss(Protocol):
    """``(trainer, images, labels, indices) -> (loss, metrics)``: images (b, 3, H, W) in [0, 1]
    on the device, their labels (b,) and their indices in the data set (b,)."""

    def __call__(
        self, trainer: ContrastiveTrainer, images: Tensor, labels: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]: ...


EpochHook = Callable[["ContrastiveTrainer", int, dict[str, Any]], None]


class TrainingInterrupted(RuntimeError):
    """Raised (by tests) to simulate a crash; the last complete epoch's checkpoint survives."""


class ContrastiveTrainer:
    """General resumable training loop (see the module docstring).

    Args:
        net: the trained module (for SimCLR a :class:`ContrastiveNet`); moved to the device.
        images: (N, 3, H, W) images in [0, 1] (pixel space; float, or uint8 0..255 to save
            memory), kept on the CPU; batches are moved to the device.
        labels: (N,) integer labels passed to the batch loss (SimCLR ignores them and uses the
            source index), or None.
        config: :class:`TrainConfig`.
        batch_loss: called once per step with the batch on the device.
        mean, std: the model's normalisation; batch losses call :meth:`normalize` on their views.
        hooks: epoch hooks, called after each epoch in order, before the checkpoint is written.
        extra_state: name -> object with ``state_dict``/``load_state_dict`` (extra modules,
            optimizers) saved in and restored from the checkpoint.
    """

    def __init__(
        self,
        net: nn.Module,
        images: Tensor,
        labels: Tensor | None,
        config: TrainConfig,
        batch_loss: BatchLoss,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        hooks: Sequence[EpochHook] = (),
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        from pairlens.models.similarity import resolve_device

        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W); got {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError("no training images")
        validate_fields(config)
        config.data_hash = data_digest(images, labels)
        self.config = config
        self.device = resolve_device(config.device)
        self.net = net.to(self.device)
        self.images = images
        self.labels = (
            labels.long() if labels is not None else torch.zeros(len(images), dtype=torch.long)
        )
        self.batch_loss = batch_loss
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.hooks = list(hooks)
        self.extra_state = dict(extra_state or {})
        n = len(images)
        self.steps_per_epoch = config.steps_per_epoch or n // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch size {config.batch_size} is larger than the data set ({n} images); "
                "lower --batch-size or set steps_per_epoch"
            )
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.net.parameters() if p.requires_grad],
            lr=config.lr, weight_decay=config.weight_decay,
        )
        total = config.epochs * self.steps_per_epoch
        warmup = round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _warmup_cosine(step, warmup, total)
        )
        self.epoch = 0  # completed epochs
        self.step = 0
        self.log: list[dict[str, Any]] = []
        self.out = Path(config.out) if config.out else None

    # ------------------------------------------------------------------ helpers for batch losses
    def normalize(self, x01: Tensor) -> Tensor:
        """Pixel-space views to model-input space (the model's mean / std)."""
        return (x01 - self.mean) / self.std

    # ------------------------------------------------------------------ loop
    def fit(self) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs (continuing a checkpoint when ``config.resume``);
        returns the per-epoch log rows."""
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt = self.out / "checkpoint.pt"
            if ckpt.exists():
                if not self.config.resume:
                    raise FileExistsError(
                        f"{ckpt} exists; pass --resume to continue it or choose another --out"
                    )
                self.load_checkpoint(ckpt)
            config_json = json.dumps(self.config.to_dict(), indent=2)
            _atomic_write_text(self.out / "config.json", config_json)
        from pairlens.progress import overall, progress_bars

        remaining = (self.config.epochs - self.epoch) * self.steps_per_epoch
        with progress_bars(self.config.progress), overall(remaining, "train", "step") as bar:
            for epoch in range(self.epoch + 1, self.config.epochs + 1):
                row = self.train_epoch(epoch, bar)
                for hook in self.hooks:
                    hook(self, epoch, row)
                self.log.append(row)
                self.epoch = epoch
                if self.out is not None:
                    self.save_checkpoint(self.out / "checkpoint.pt")
                    write_log_csv(self.out / "log.csv", self.log)
        return self.log

    def epoch_indices(self) -> Tensor:
        """Sample order of one epoch: fresh permutations, concatenated as needed."""
        n, need = len(self.images), self.steps_per_epoch * self.config.batch_size
        perms = [torch.randperm(n, generator=self.generator) for _ in range(math.ceil(need / n))]
        return torch.cat(perms)[:need]

    def train_epoch(self, epoch: int, bar: Any = None) -> dict[str, Any]:
        """One epoch; ``bar`` (the overall progress bar, optional) advances one step per batch."""
        self.net.train()
        start = time.time()
        order = self.epoch_indices().view(self.steps_per_epoch, self.config.batch_size)
        totals: dict[str, float] = {}
        for i in range(self.steps_per_epoch):
            idx = order[i]
            images = self.images[idx].to(self.device, non_blocking=True)
            if images.dtype == torch.uint8:
                images = images.float() / 255.0
            labels = self.labels[idx].to(self.device)
            loss, metrics = self.batch_loss(self, images, labels, idx.to(self.device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {i}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            metrics = {"loss": float(loss.detach()), **metrics}
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"epoch {epoch}/{self.config.epochs} loss "
                                    f"{metrics['loss']:.4f}", refresh=False)
        row: dict[str, Any] = {"epoch": epoch}
        row.update({k: v / self.steps_per_epoch for k, v in totals.items()})
        row["lr"] = self.scheduler.get_last_lr()[0]
        row["seconds"] = round(time.time() - start, 3)
        return row

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
            "log": self.log,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self, path: Path) -> None:
        _atomic_torch_save(self.state(), path)

    def load_checkpoint(self, path: Path) -> None:
        state = read_training_checkpoint(path)
        saved, now = state["config"], self.config.to_dict()
        keys = sorted((set(saved) | set(now)) - set(RESUME_FREE))
        diff = [k for k in keys if saved.get(k) != now.get(k)]
        if diff:
            detail = ", ".join(f"{k}: {_short(saved.get(k))} -> {_short(now.get(k))}"
                               for k in diff)
            raise ValueError(f"cannot resume {path}: settings differ ({detail}); resume with "
                             "the original settings or choose another --out")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for k, v in self.extra_state.items():
            v.load_state_dict(state["extra"][k])
        self.epoch, self.step, self.log = state["epoch"], state["step"], list(state["log"])


def data_digest(images: Tensor, labels: Tensor | None) -> str:
    """sha256 of the training images (dtype, shape, bytes) and labels: the data a run trained on,
    compared when resuming."""
    import hashlib

    h = hashlib.sha256(f"{images.dtype}|{tuple(images.shape)}|".encode())
    flat = images.detach().cpu().contiguous().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes())
    if labels is not None:
        h.update(labels.detach().cpu().long().contiguous().numpy().tobytes())
    return h.hexdigest()


def _short(v: Any) -> str:
    text = repr(v)
    if isinstance(v, str) and len(v) == 64:  # a digest
        text = repr(v[:12] + "...")
    return text if len(text) <= 80 else text[:77] + "..."


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training ``checkpoint.pt`` read safely (:func:`~pairlens.models.checkpoint.
    read_checkpoint`); one-line :class:`CheckpointError` naming the file otherwise."""
    from pairlens.models.checkpoint import CheckpointError, read_checkpoint

    state = read_checkpoint(path, "a PairLens training checkpoint (pairlens train)")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a PairLens training checkpoint (format "
                              f"{CHECKPOINT_FORMAT})")
    missing = [k for k in ("config", "model", "optimizer", "epoch") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: training checkpoint without {', '.join(missing)}")
    return state


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_log_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the per-epoch rows as CSV (atomically; columns = union of the rows' keys)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_text(Path(path), buf.getvalue())


# ---------------------------------------------------------------------- SimCLR
class SimCLRLoss:
    """SimCLR batch loss: two augmented views per image, NT-Xent on the projector output.

    NT-Xent is :func:`~pairlens.training.losses.supcon_loss` with labels = index of the source
    image in the data set, so when a small data set repeats an image within a batch all of its
    views are positives of each other (with distinct images this is exactly SimCLR's NT-Xent).
    """

    def __init__(self, augment: SimCLRAugment, temperature: float):
        self.augment = augment
        self.temperature = temperature

    def __call__(
        self, trainer: ContrastiveTrainer, images: Tensor, labels: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        v1, v2 = self.augment.two_views(images, trainer.generator)
        x = trainer.normalize(torch.cat([v1, v2]))
        _, z = trainer.net(x)
        z = F.normalize(z, dim=1)
        loss = supcon_loss(z, indices.repeat(2), temperature=self.temperature)
        with torch.no_grad():
            b = images.shape[0]
            pos = (z[:b] * z[b:]).sum(dim=1).mean()
        return loss, {"pos_cosine": float(pos)}


def train_simclr(
    images: Tensor,
    arch: str,
    config: TrainConfig,
    augment: AugmentConfig | None = None,
    labels: Tensor | None = None,
    hooks: Sequence[EpochHook] = (),
    net: ContrastiveNet | None = None,
) -> tuple[ContrastiveNet, list[dict[str, Any]]]:
    """Train a :class:`ContrastiveNet` of architecture ``arch`` with SimCLR on ``images``.

    Args:
        images: (N, 3, H, W) in [0, 1]; views are random resized crops to the architecture's
            input size.
        arch: a name in :data:`pairlens.models.bundled.ARCHITECTURES`.
        config: :class:`TrainConfig` (``config.out`` set: checkpoints, CSV log, ``model.pt``).
        augment: augmentation parameters (default :class:`AugmentConfig`).
        labels: optional labels, only passed to hooks (SimCLR itself uses none).
        hooks: epoch hooks (see :class:`ContrastiveTrainer`).
        net: an already built network (default: ``arch``'s, initialised with ``config.seed``).

    Returns:
        The trained network (in eval mode) and the per-epoch log rows.
    """
    spec = get_architecture(arch)
    augment = augment or AugmentConfig()
    config.arch, config.mode = arch, "simclr"
    config.augment = augment.to_dict()
    if net is None:
        torch.manual_seed(config.seed)
        net = spec.build()
    loss = SimCLRLoss(SimCLRAugment(augment, out_size=spec.input_size), config.temperature)
    trainer = ContrastiveTrainer(
        net, images, labels, config, loss, mean=spec.mean, std=spec.std, hooks=hooks
    )
    return net, fit_and_bundle(trainer, arch)


def fit_and_bundle(trainer: ContrastiveTrainer, arch: str) -> list[dict[str, Any]]:
    """Run ``trainer.fit()``, leave the network in eval mode and, with an output folder, write
    ``model.pt`` (bundled format, the config in its meta); returns the log rows."""
    log = trainer.fit()
    net = trainer.net.eval()
    if trainer.out is not None:
        _atomic_torch_save(
            bundle_state(net.cpu(), arch, config=trainer.config.to_dict(),
                         epochs_done=trainer.epoch),
            trainer.out / "model.pt",
        )
        net.to(trainer.device)
    return log


def load_trained(path: str | Path, embedding: str = "projector", device: str = "cpu"):
    """A :class:`~pairlens.models.similarity.SimilarityModel` from a trainer output: ``model.pt``
    (or any bundled-format file) or a training ``checkpoint.pt``."""
    from pairlens.models.checkpoint import CheckpointError, load_strict, read_checkpoint
    from pairlens.models.similarity import resolve_device

    path = Path(path).expanduser()
    state = read_checkpoint(path, "model.pt or checkpoint.pt of pairlens train")
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = read_training_checkpoint(path)
        name = state["config"].get("arch")
        try:
            arch = get_architecture(name)
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
        net = arch.build()
        load_strict(net, state["model"], path, f"a {name} network")
        classifier = None
    else:
        net, arch, classifier, meta = load_bundle(path)
        offered = meta.get("embeddings")  # e.g. ["backbone"] for pairlens train cross-entropy
        if offered and embedding not in offered:
            raise ValueError(f"{path}: offers only the {', '.join(offered)} embedding (its "
                             f"projector was not trained); got embedding={embedding!r}")
    model = similarity_model_from_net(net.eval(), arch, embedding=embedding, name=path.stem)
    model.classifier = classifier
    return model.to(resolve_device(device)).eval()


# ---------------------------------------------------------------------- evaluation helpers
@torch.no_grad()
def pooled_features(net: ContrastiveNet, images01: Tensor, mean: Sequence[float],
                    std: Sequence[float], batch_size: int = 256) -> Tensor:
    """Backbone representations h (N, D) of pixel-space images, in eval mode, on the CPU."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images01), batch_size):
        x = (images01[i : i + batch_size].to(dev) - m) / s
        out.append(net(x)[0].cpu())
    net.train(was_training)
    return torch.cat(out)


def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, k: int = 20
                 ) -> float:
    """Accuracy of a cosine k-nearest-neighbour vote (majority, ties to the smaller label)."""
    a, b = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    nearest = (b @ a.T).topk(k, dim=1).indices
    votes = train_y[nearest]
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    counts = torch.zeros(len(test_f), n_classes).scatter_add_(1, votes, torch.ones_like(votes,
                                                                 dtype=torch.float32))
    return float((counts.argmax(1) == test_y).float().mean())


def fit_linear_probe(
    train_f: Tensor, train_y: Tensor, val_f: Tensor, val_y: Tensor,
    cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0), seed: int = 0,
) -> tuple[nn.Linear, dict[str, float]]:
    """Multinomial logistic regression on standardised features (scikit-learn, L-BFGS), with the
    inverse regularisation ``C`` chosen on the validation set; the standardisation is folded into
    the returned ``nn.Linear`` (which therefore takes raw features)."""
    from sklearn.linear_model import LogisticRegression

    mu = train_f.mean(0)
    sigma = train_f.std(0).clamp_min(1e-6)
    xt = ((train_f - mu) / sigma).double().numpy()
    xv = ((val_f - mu) / sigma).double().numpy()
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=5000, random_state=seed)
        clf.fit(xt, train_y.numpy())
        acc = float((clf.predict(xv) == val_y.numpy()).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    acc, c, clf = best
    coef = torch.tensor(clf.coef_, dtype=torch.float32)
    intercept = torch.tensor(clf.intercept_, dtype=torch.float32)
    if coef.shape[0] == 1:  # binary: logits (0, w.x + b) give the same softmax as the sigmoid
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    w = coef / sigma
    b = intercept - w @ mu
    linear = nn.Linear(train_f.shape[1], w.shape[0])
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(b)
    return linear.eval(), {"probe_C": c, "probe_val_accuracy": acc}


@torch.no_grad()
def augmented_view_cosines(
    model: Any, images01: Tensor, augment: AugmentConfig, views: int = 8, seed: int = 0
) -> dict[str, float]:
    """Mean cosine similarity of augmented views of the same image vs of different images.

    Every image of ``images01`` (N, 3, H, W) in [0, 1] gets ``views`` SimCLR views (``augment``,
    seeded CPU generator, resized to the model's input size), embedded with ``model.embed`` after
    ``model.normalize``. ``same`` averages the cosine over all pairs of distinct views of one image,
    ``different`` over all pairs of views of two different images; ``gap = same - different``.
    """
    g = torch.Generator().manual_seed(seed)
    aug = SimCLRAugment(augment, out_size=model.input_size)
    n = len(images01)
    batches = [aug(images01, g) for _ in range(views)]  # views x (N, 3, h, w)
    x = torch.stack(batches, dim=1).flatten(0, 1)  # image-major: (N * views, 3, h, w)
    z = torch.cat([
        model.embed(model.normalize(x[i : i + 128].to(model.device))).cpu()
        for i in range(0, len(x), 128)
    ])
    z = F.normalize(z.double(), dim=1)
    sim = z @ z.T
    owner = torch.arange(n).repeat_interleave(views)
    same_img = owner[:, None] == owner[None, :]
    eye = torch.eye(len(z), dtype=torch.bool)
    same = float(sim[same_img & ~eye].mean())
    different = float(sim[~same_img].mean())
    return {"same": same, "different": different, "gap": same - different}
