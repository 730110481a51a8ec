"""``pairlens study excon``: SupCon, SupConOri, ExCon and ExConB compared over seeds (seed 003 §4).

For every seed 0..N-1 (outer loop, so an interrupted study has complete seeds) and every mode
(inner loop) the study trains one run with the **same budget** (epochs, batch size, learning rates,
temperature; explanation-driven views from ``start_epoch`` for ExCon / ExConB; SupConOri gets as
many classifier epochs after its encoder epochs) into ``OUT/MODE/seedS``, then evaluates the run's
best-validation model (``best.pt``, as the paper does) on the **test** split with
:func:`~pairlens.training.excon_eval.evaluate_classifier` into ``metrics.json``. Finished runs are
skipped and unfinished ones resumed, so rerunning the same command continues a study.

After every run the report is rewritten from whatever has finished:

* ``results.csv``: one row per run (mode, seed, best epoch, test metrics, training time);
* ``table.md``: mean ± std over seeds (sample std, ``ddof=1``; 0 with one seed) of top-1 accuracy,
  infidelity and drop / increase at q = 0.15, 0.30, 0.45, one column per mode (Tables 1-4);
* ``val_curves.png``: mean ± std band over seeds of the validation accuracy and loss per epoch
  (Fig. 3) for the modes with a classifier every epoch (supcon, excon, exconb); SupConOri has
  none while its encoder trains;
* ``tsne_MODE.png``: t-SNE of originals and masked views on the test split, seed 0 (Fig. 1).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pairlens.models.checkpoint import read_checkpoint

MODE_TITLES = {"excon": "ExCon", "exconb": "ExConB", "supcon-ori": "SupConOri",
               "supcon": "SupCon"}
TABLE_ORDER = ("excon", "exconb", "supcon-ori", "supcon")


@dataclass
class StudyConfig:
    data: str = "cluttered-digits"
    seeds: int = 3
    modes: tuple[str, ...] = ("supcon", "supcon-ori", "excon", "exconb")
    arch: str = "digits-cnn"
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    classifier_lr: float = 5e-2
    temperature: float = 0.1
    start_epoch: int = 2
    threshold: float = 0.5
    data_seed: int = 0
    out: str = "runs/study"
    device: str = "auto"
    threads: int | None = 1
    progress: bool = True


def run_excon_study(config: StudyConfig, report_only: bool = False) -> str:
    """Train and evaluate every (seed, mode) run not yet finished, then write the report;
    returns the markdown table."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if not report_only:
        if config.threads:
            torch.set_num_threads(config.threads)
        (out / "study.json").write_text(json.dumps(asdict(config), indent=2))
        data = _load(config)
        for seed in range(config.seeds):
            for mode in config.modes:
                run_dir = out / mode / f"seed{seed}"
                if (run_dir / "metrics.json").exists():
                    continue
                _train_and_evaluate(config, mode, seed, run_dir, data)
                write_report(out)
    return write_report(out)


def _load(config: StudyConfig) -> dict[str, Any]:
    from pairlens.cli.excon import load_labelled_data
    from pairlens.models.bundled import get_architecture

    size = round(get_architecture(config.arch).input_size[0] / 0.7)
    return {split: load_labelled_data(config.data, split, config.data_seed, size)
            for split in ("train", "val", "test")}


def _train_and_evaluate(config: StudyConfig, mode: str, seed: int, run_dir: Path,
                        data: dict[str, Any]) -> None:
    from pairlens.training.augment import AugmentConfig
    from pairlens.training.excon_eval import (
        evaluate_classifier,
        load_classifier_model,
        plot_tsne,
        tsne_embeddings,
    )
    from pairlens.training.simclr import TrainConfig
    from pairlens.training.supcon import SupervisedSettings, train_supervised

    (x, y), (xv, yv), (xt, yt) = data["train"], data["val"], data["test"]
    digits_like = config.data in ("digits", "cluttered-digits")
    train_config = TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        temperature=config.temperature, seed=seed, out=str(run_dir),
        resume=(run_dir / "checkpoint.pt").exists(), device=config.device,
        progress=config.progress, data=config.data,
    )
    settings = SupervisedSettings(mode=mode, start_epoch=config.start_epoch,
                                  threshold=config.threshold, classifier_lr=config.classifier_lr,
                                  n_classes=int(max(y.max(), yv.max())) + 1)
    print(f"[study] {mode} seed {seed}: training into {run_dir}", flush=True)
    start = time.time()
    train_supervised(x, y, xv, yv, config.arch, train_config, settings,
                     augment=AugmentConfig.digits() if digits_like else AugmentConfig.photos())
    train_seconds = time.time() - start
    model = load_classifier_model(run_dir / "best.pt", device=config.device)
    size = tuple(model.input_size)
    if tuple(xt.shape[-2:]) != size:
        import torch.nn.functional as F

        xt = F.interpolate(xt.float() / (255.0 if xt.dtype == torch.uint8 else 1.0), size=size,
                           mode="bilinear", align_corners=False, antialias=True)
    metrics = evaluate_classifier(model, xt, yt, seed=seed)
    best = read_checkpoint(run_dir / "best.pt", "best.pt of pairlens train")["meta"]
    metrics.update(mode=mode, seed=seed, best_epoch=best.get("epoch"),
                   best_val_accuracy=best.get("val_accuracy"),
                   train_seconds=round(train_seconds, 1))
    if seed == 0:
        plot_tsne(tsne_embeddings(model, xt, yt, seed=0), run_dir.parent.parent /
                  f"tsne_{mode}.png", title=f"{MODE_TITLES.get(mode, mode)}: originals (x), "
                  "masked views (dots)")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"[study] {mode} seed {seed}: test top-1 {metrics['top1_accuracy']:.4f} "
          f"({train_seconds:.0f} s)", flush=True)


# ---------------------------------------------------------------------- report
def _collect(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(out.glob("*/seed*/metrics.json")):
        rows.append(json.loads(path.read_text()))
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one column per mode, mean ± std over seeds (number of seeds shown)."""
    modes = [m for m in TABLE_ORDER if any(r["mode"] == m for r in rows)]
    if not modes:
        return "(no finished runs)\n"
    metrics = [("top1_accuracy", "top-1 accuracy (%)", 100.0, 2), ("infidelity",
               "infidelity ↓", 1.0, 5)]
    for q in ("0.15", "0.30", "0.45"):
        metrics.append((f"drop@{q}", f"drop @ {q} ↓", 1.0, 3))
        metrics.append((f"increase@{q}", f"increase @ {q} ↑", 1.0, 3))
    metrics.append(("best_epoch", "best validation epoch", 1.0, 1))
    header = "| metric | " + " | ".join(
        f"{MODE_TITLES[m]} (n={sum(r['mode'] == m for r in rows)})" for m in modes) + " |"
    lines = [header, "|---|" + "---|" * len(modes)]
    for key, title, scale, digits in metrics:
        cells = []
        for m in modes:
            vals = [float(r[key]) * scale for r in rows
                    if r["mode"] == m and r.get(key) is not None]
            if not vals:
                cells.append("–")
                continue
            mean, std = _mean_std(vals)
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_validation_curves(out: Path, modes: tuple[str, ...] = ("supcon", "excon", "exconb")
                           ) -> Path | None:
    """Fig. 3-style curves: mean ± std over seeds of validation accuracy and loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    drawn = False
    for i, mode in enumerate(modes):
        logs = [_read_log(p) for p in sorted((out / mode).glob("seed*/log.csv"))
                if (p.parent / "metrics.json").exists()]
        if not logs:
            continue
        n = min(len(log) for log in logs)
        for ax, key, scale in ((axes[0], "val_accuracy", 100.0), (axes[1], "val_loss", 1.0)):
            arr = np.array([[float(r[key]) * scale for r in log[:n]] for log in logs])
            epochs = np.arange(1, n + 1)
            mean, std = arr.mean(0), (arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(n))
            ax.plot(epochs, mean, marker="o", color=f"C{i}",
                    label=f"{MODE_TITLES[mode]} (n={len(arr)})")
            ax.fill_between(epochs, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_title("validation accuracy (%)")
    axes[1].set_title("validation loss (cross-entropy)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "val_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: str | Path) -> str:
    """(Re)write results.csv, table.md and val_curves.png from the finished runs in ``out``."""
    out = Path(out)
    rows = _collect(out)
    if rows:
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
        with open(out / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    table = table_markdown(rows)
    (out / "table.md").write_text(table)
    plot_validation_curves(out)
    return table
