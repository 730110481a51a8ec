"""What ``pairlens train simclr`` adds to a trained encoder: a k-NN validation hook, a linear
probe on the backbone features (labelled data) or the mean cosines of augmented views
(unlabelled data), stored in the ``meta`` of ``model.pt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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

    from pairlens.data.loading import load_training_data
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


def attach_removal_drops(model_path: Path, n_pairs: int = 200, seed: int = 1) -> dict[str, Any]:
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
