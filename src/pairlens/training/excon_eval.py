"""Evaluation of a trained encoder + linear classifier as in ExCon (seed 003, §4.1, §4.3, §4.4).

``model`` below is a :class:`~pairlens.models.similarity.SimilarityModel` whose ``encoder`` gives
the spatial feature map A (B, C, h, w) (the backbone of PairLens's trainer, e.g. from
:func:`load_classifier_model`) and whose ``classifier`` maps the average-pooled A to logits.
Images enter in pixel space [0, 1] and are normalised with the model's mean / std; every masking is
done in model-input space (a removed pixel becomes 0 there, in all channels).

* **top-1 accuracy** of ``classifier(pool(encoder(x)))`` (§4.1).
* **drop / increase** (§4.3.1, DESIGN.md): p = softmax probability of the predicted class c on the
  image; the Grad-CAM of c (:func:`~pairlens.training.supcon.class_gradcam`) ranks the H·W pixels
  (descending, ties broken by flat pixel index); the top ``round(q·H·W)`` pixels are kept and the
  others set to 0; p' = probability of the same class c on that image. For q in 0.15, 0.30, 0.45:
  ``drop = mean max(0, p − p')/p`` and ``increase = mean 1[p' > p]`` over the images.
* **infidelity** (Yeh et al. 2019, via :func:`captum.metrics.infidelity`) of the same Grad-CAM
  explanations, min-max normalised and repeated over the 3 channels: f = softmax probability of the
  predicted class, perturbations I ~ N(0, ``noise_std``²) i.i.d. per input element in model-input
  space (default σ = 0.1), ``f(x) − f(x − I)`` against ``I·Φ``, ``n_samples`` (10) perturbations
  per image, with the optimal scale β of Yeh et al. (captum ``normalize=True``: Grad-CAM maps are
  only defined up to scale). Lower is better. Reported: the mean over images.
* **t-SNE** (§4.4, Fig. 1): embeddings (the model's embedding, by default the projector output,
  L2-normalised) of originals (crosses) and their explanation-masked views (dots: Grad-CAM of the
  ground-truth class, pixels at or below τ = 0.5 set to 0, as in training) for five equally
  spaced classes, reduced with :class:`sklearn.manifold.TSNE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairlens.metrics.faithfulness import minmax
from pairlens.training.supcon import class_gradcam, explanation_masked

DROP_FRACTIONS = (0.15, 0.30, 0.45)


def load_classifier_model(path: str | Path, device: str = "cpu", embedding: str = "projector"):
    """A trained model with its linear classifier, from ``model.pt`` / ``best.pt`` (bundled
    format) or a training ``checkpoint.pt`` whose extra state holds the classifier."""
    from pairlens.training.simclr import CHECKPOINT_FORMAT, load_trained

    model = load_trained(path, embedding=embedding, device="cpu")
    if model.classifier is None:
        from pairlens.models.checkpoint import read_checkpoint

        state = read_checkpoint(path, "model.pt, best.pt or checkpoint.pt of pairlens train")
        extra = state.get("extra", {}) if state.get("format") == CHECKPOINT_FORMAT else {}
        if "classifier" not in extra:
            raise ValueError(f"{path}: this checkpoint has no linear classifier; train one with "
                             "pairlens train supcon|supcon-ori|excon|exconb")
        w = extra["classifier"]["weight"]
        model.classifier = nn.Linear(w.shape[1], w.shape[0])
        model.classifier.load_state_dict(extra["classifier"])
    from pairlens.models.similarity import resolve_device

    dev = resolve_device(device)
    model.classifier = model.classifier.to(dev).eval()
    return model.to(dev).eval()


def _logits(model, x: Tensor) -> Tensor:
    return model.classifier(model.encoder(x).mean(dim=(2, 3)))


def keep_top_fraction(maps: Tensor, q: float) -> Tensor:
    """Boolean (B, H, W): the top ``round(q·H·W)`` pixels of each map (descending value, ties to
    the lower flat index)."""
    b, h, w = maps.shape
    k = int(round(q * h * w))
    order = torch.sort(-maps.flatten(1), dim=1, stable=True).indices[:, :k]
    keep = torch.zeros(b, h * w, dtype=torch.bool, device=maps.device)
    keep.scatter_(1, order, True)
    return keep.view(b, h, w)


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def gradcam_infidelity(
    model, x: Tensor, maps: Tensor, target: Tensor, n_samples: int = 10, noise_std: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-image infidelity (B,) of ``maps`` (B, H, W) for the softmax probability of ``target``
    at model-input images ``x`` (see the module docstring). Perturbations are drawn on the CPU
    from ``generator``: one ``randn((B·n_samples, C, H, W))`` per call, rows in captum's
    ``repeat_interleave`` order (image-major)."""
    from captum.metrics import infidelity

    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def forward(inp: Tensor) -> Tensor:
        return F.softmax(_logits(model, inp), dim=1)

    def perturb(inp: Tensor) -> tuple[Tensor, Tensor]:
        noise = (torch.randn(inp.shape, generator=g) * noise_std).to(inp.device, inp.dtype)
        return noise, inp - noise

    attributions = minmax(maps).unsqueeze(1).expand_as(x).contiguous()
    with torch.no_grad():
        out = infidelity(forward, perturb, x, attributions, target=target.tolist(),
                         n_perturb_samples=n_samples, normalize=True)
    return out.view(-1)


def evaluate_classifier(
    model,
    images: Tensor,
    labels: Tensor,
    fractions: Sequence[float] = DROP_FRACTIONS,
    batch_size: int = 128,
    infidelity_samples: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 accuracy, drop / increase at each q in ``fractions`` and mean infidelity of the
    predicted class's Grad-CAM (module docstring) on pixel-space ``images`` (N, 3, H, W)."""
    dev = model.device
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images
    labels = labels.long()
    g = torch.Generator().manual_seed(seed)
    correct = 0
    drops = {q: [] for q in fractions}
    increases = {q: [] for q in fractions}
    infid: list[Tensor] = []
    chunks = list(_batches(len(images), batch_size))
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="eval-classifier", leave=False, dynamic_ncols=True)
    for sl in chunks:
        x = model.normalize(images[sl].to(dev))
        y = labels[sl].to(dev)
        with torch.no_grad():
            probs = F.softmax(_logits(model, x), dim=1)
        pred = probs.argmax(dim=1)
        correct += int((pred == y).sum())
        p = probs.gather(1, pred[:, None])[:, 0]
        maps = class_gradcam(model.encoder, model.classifier, x, pred)
        for q in fractions:
            masked = x * keep_top_fraction(maps, q).unsqueeze(1).to(x.dtype)
            with torch.no_grad():
                p2 = F.softmax(_logits(model, masked), dim=1).gather(1, pred[:, None])[:, 0]
            drops[q].append((torch.clamp(p - p2, min=0) / p).cpu())
            increases[q].append((p2 > p).float().cpu())
        if infidelity_samples > 0:
            infid.append(gradcam_infidelity(model, x, maps, pred, infidelity_samples, noise_std,
                                            g).cpu())
    out: dict[str, Any] = {"n_images": len(images), "top1_accuracy": correct / len(images)}
    for q in fractions:
        out[f"drop@{q:.2f}"] = float(torch.cat(drops[q]).mean())
        out[f"increase@{q:.2f}"] = float(torch.cat(increases[q]).mean())
    if infid:
        out["infidelity"] = float(torch.cat(infid).mean())
    return out


def tsne_classes(labels: Tensor, n: int = 5) -> list[int]:
    """``n`` equally spaced class indices among the classes present (§4.4: "equal space")."""
    classes = sorted(int(c) for c in labels.unique())
    if len(classes) <= n:
        return classes
    step = len(classes) / n
    return [classes[int(i * step)] for i in range(n)]


def tsne_embeddings(
    model, images: Tensor, labels: Tensor, classes: Sequence[int] | None = None,
    per_class: int = 40, threshold: float = 0.5, seed: int = 0,
) -> dict[str, Any]:
    """t-SNE coordinates of originals and their masked views (module docstring): a dict with
    ``xy`` (2M, 2: first the M originals, then their masked views in the same order), ``labels``
    (M,), ``classes`` and ``accepted`` (M,: masked view classified correctly)."""
    from sklearn.manifold import TSNE

    images = images.float() / 255.0 if images.dtype == torch.uint8 else images
    classes = list(classes) if classes is not None else tsne_classes(labels)
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in classes])
    dev = model.device
    x = model.normalize(images[idx].to(dev))
    y = labels[idx].to(dev)
    masked, _ = explanation_masked(model.encoder, model.classifier, x, y, threshold)
    with torch.no_grad():
        z = F.normalize(model.embed(torch.cat([x, masked])), dim=1).cpu().numpy()
        accepted = (_logits(model, masked).argmax(1) == y).cpu()
    perplexity = float(min(30, max(2, (len(z) - 1) // 3)))
    method = "exact" if len(z) <= 1000 else "barnes_hut"  # exact is faster for a few hundred
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method,
              random_state=seed).fit_transform(z)
    return {"xy": xy, "labels": labels[idx].clone(), "classes": classes, "accepted": accepted,
            "originals": images[idx]}


def plot_tsne(result: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Fig. 1-style scatter: colour = class, ``x`` = original, dot = explanation-masked view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy, labels = result["xy"], result["labels"].numpy()
    m = len(labels)
    fig, ax = plt.subplots(figsize=(6, 5.2))
    for i, c in enumerate(result["classes"]):
        sel = labels == c
        color = f"C{i}"
        ax.scatter(xy[m:][sel, 0], xy[m:][sel, 1], s=12, color=color, alpha=0.55)
        ax.scatter(xy[:m][sel, 0], xy[:m][sel, 1], s=30, marker="x", color=color,
                   label=f"class {c}")
    ax.scatter([], [], s=12, color="gray", label="masked view (dot)")
    ax.scatter([], [], s=30, marker="x", color="gray", label="original (x)")
    ax.legend(fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of embeddings: originals (x) and masked views (dots)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
