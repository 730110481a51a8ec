"""Scalar explanation targets for representation models (COCOA, seed 002 §3).

A target is a callable mapping an input batch (N, 3, H, W) in model-input space to scores (N,).
Every target here is *linear in the represented embedding* (Proposition 3.3):

    target(x) = phi(f(x)) . direction,   phi(z) = z / ||z||  (similarity="cosine")
                                          phi(z) = z          (similarity="dot")

The similarity is the model's (``model.similarity_name``) unless given: cosine (the paper's
default) or dot. A model comparing embeddings otherwise (``neg-l2``, a callable) has no such
linear form, so its targets need ``similarity="cosine"`` or ``"dot"`` explicitly (an error says so).

so the corpus and foil means are computed once, at construction, and every perturbed input costs
exactly one encoder pass whatever the corpus and foil sizes.

=========================  ==================================================  =================
target                     direction                                           paper name
=========================  ==================================================  =================
LabelFree                  phi(f(x_e))                                         label-free (dot),
                                                                               RELAX (cosine)
ContrastiveLabelFree       phi(f(x_e)) - mean_v phi(f(x_v))                    contrastive
                                                                               label-free
Corpus                     mean_c phi(f(x_c))                                  corpus
ContrastiveCorpus          mean_c phi(f(x_c)) - mean_v phi(f(x_v))   (eq. 3)   COCOA
TextCorpus                 mean_c phi(g(t_c)) - mean_v phi(g(t_v))   (eq. 6)   COCOA with CLIP
=========================  ==================================================  =================

``f`` is the image encoder (``model.embed``) and ``g`` a text encoder living in the same space.
Targets built from explicands (``LabelFree``, ``ContrastiveLabelFree``) hold one direction per
explicand: called on a batch of the same size they score row ``i`` against explicand ``i``; to
score many perturbations of explicand ``i`` use ``target.select(i)``.

Foils (§3.1, Appendix C) are a finite sample of a foil distribution. Give them as a tensor of
images, a folder (or list) of image files, or ``random_images(dataset, n)``; Proposition C.2 gives
the foil size needed for a given accuracy: :func:`foil_size`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pairlens.io import IMAGE_SUFFIXES, scan_images
from pairlens.models.similarity import COSINE_EPS, check_finite, evaluating

SIMILARITIES = ("cosine", "dot")

# images: a (N, 3, H, W) tensor in model-input space, a folder, an image path, or a list of paths /
# PIL images / arrays; a (N, D) tensor is taken as precomputed embeddings.
ImageSource = Tensor | str | Path | Sequence[Any]


# ----------------------------------------------------------------------------- foil size
def foil_size(delta: float = 0.01, epsilon: float = 0.05, nonnegative: bool = False) -> int:
    """Smallest foil size ``m`` for which P(|estimate - truth| >= epsilon) <= delta.

    Proposition C.2 (Hoeffding): ``m >= 2 log(2/delta) / epsilon**2`` for cosine similarities in
    [-1, 1]; ``m >= log(2/delta) / (2 epsilon**2)`` when the embeddings are non-negative (ReLU
    outputs), so that similarities lie in [0, 1]. ``foil_size(0.01, 0.05, True) == 1060``; the
    paper rounds this up to 1500.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1); got {delta}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive; got {epsilon}")
    log_term = math.log(2.0 / delta)
    bound = log_term / (2 * epsilon**2) if nonnegative else 2 * log_term / epsilon**2
    return int(math.ceil(bound - 1e-9))


# ----------------------------------------------------------------------------- helpers
def represent(z: Tensor, similarity: str = "cosine") -> Tensor:
    """``phi(z)``: unit-normalised rows for cosine (a zero row stays zero), ``z`` for dot."""
    _check_similarity(similarity)
    if similarity == "dot":
        return z
    return z / z.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}; got {similarity!r}")


def target_similarity(model: Any, similarity: str | None) -> str:
    """The similarity of a target on ``model``: ``similarity`` if given (cosine or dot), else the
    model's own when it is cosine or dot (plain modules: cosine)."""
    if similarity is not None:
        _check_similarity(similarity)
        return similarity
    own = getattr(model, "similarity_name", "cosine")
    if own not in SIMILARITIES:
        raise ValueError(
            f"COCOA targets are linear in the represented embedding (cosine or dot, Proposition "
            f"3.3); model {getattr(model, 'name', '')!r} compares embeddings with {own!r}: pass "
            "similarity='cosine' or 'dot' explicitly (CLI: --similarity)"
        )
    return own


def _embed(model: Any, x: Tensor) -> Tensor:
    """Embedding (N, D) of a batch, keeping autograd (one encoder pass)."""
    return model.embed(x) if hasattr(model, "embed") else model(x)


@torch.no_grad()
def embed_images(model: Any, images: Tensor, batch_size: int = 256) -> Tensor:
    """Embeddings (N, D) of many images without autograd, ``batch_size`` at a time, with the
    model in eval mode (its own mode restored)."""
    device = _device(model)
    with evaluating(model if isinstance(model, torch.nn.Module) else None):
        out = [
            _embed(model, images[i : i + batch_size].to(device))
            for i in range(0, len(images), batch_size)
        ]
    if not out:
        raise ValueError("no images to embed")
    return torch.cat(out).float()


def _device(model: Any) -> torch.device:
    if hasattr(model, "device"):
        return torch.device(model.device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (:func:`pairlens.io.scan_images`, not recursive:
    the same suffixes as everywhere, sub-folders never taken for images), sorted by name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = scan_images(folder, recursive=False)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_images(model: Any, source: ImageSource, what: str = "images") -> Tensor:
    """Images (N, 3, H, W) in model-input space on the model's device from any ``ImageSource``.

    Tensors are taken as already preprocessed; paths, folders, PIL images and arrays go through
    ``model.preprocess``.
    """
    if isinstance(source, Tensor):
        x = source.unsqueeze(0) if source.dim() == 3 else source
        channels = getattr(model, "in_channels", 3)
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{what} must have shape (N, {channels}, H, W); got {tuple(source.shape)}"
            )
        if len(x) == 0:
            raise ValueError(f"{what} is empty")
        return check_finite(x.to(_device(model), torch.float32), what)
    if not hasattr(model, "preprocess"):
        raise TypeError(f"{what}: give a tensor, the model has no preprocess() for files")
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        files = list_image_files(path) if path.is_dir() else [path]
        return model.preprocess(files)
    items = list(source)
    if not items:
        raise ValueError(f"{what} is empty")
    expanded: list[Any] = []
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).expanduser().is_dir():
            expanded.extend(list_image_files(item))
        else:
            expanded.append(item)
    return model.preprocess(expanded)


def mean_representation(
    model: Any, source: ImageSource, similarity: str, what: str, batch_size: int = 256
) -> tuple[Tensor, int]:
    """Mean of ``phi(f(x))`` over the images (or (N, D) embeddings) of ``source``, and N."""
    if isinstance(source, Tensor) and source.dim() == 2:
        z = check_finite(source.to(_device(model), torch.float32), what)
    else:
        z = embed_images(model, load_images(model, source, what), batch_size)
    check_finite(z, f"embeddings of the {what}")
    if len(z) == 0:
        raise ValueError(f"{what} is empty")
    return represent(z, similarity).mean(dim=0), len(z)


def random_images(
    dataset: Any,
    n: int,
    seed: int = 0,
    exclude: Sequence[int] | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """``n`` images drawn uniformly without replacement from ``dataset`` (a foil sample, §3.1).

    ``dataset`` is a (N, 3, H, W) tensor, an ``(images, labels)`` pair, or a map-style dataset whose
    items are images or ``(image, label)`` tuples. ``exclude`` drops images whose label is listed
    (needs labels). If ``n`` exceeds what is available, all available images are returned.
    """
    if n < 1:
        raise ValueError(f"the number of random images must be positive; got {n}")
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and isinstance(dataset[0], Tensor):
        dataset, labels = dataset
    generator = torch.Generator().manual_seed(int(seed))
    if isinstance(dataset, Tensor):
        index = torch.arange(len(dataset))
        if exclude is not None:
            if labels is None:
                raise ValueError("exclude= needs labels")
            keep = ~torch.isin(torch.as_tensor(labels).cpu(), torch.as_tensor(list(exclude)))
            index = index[keep]
        chosen = index[torch.randperm(len(index), generator=generator)[:n]]
        return dataset[chosen.to(dataset.device)]
    order = torch.randperm(len(dataset), generator=generator).tolist()
    picked: list[Tensor] = []
    for i in order:
        item = dataset[i]
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        if exclude is not None and label is not None and int(label) in set(exclude):
            continue
        picked.append(torch.as_tensor(image))
        if len(picked) == n:
            break
    if not picked:
        raise ValueError("no images left to draw from the dataset")
    return torch.stack(picked)


# ----------------------------------------------------------------------------- targets
class Target:
    """A scalar explanation target ``x -> phi(f(x)) . direction`` (see the module docstring).

    Attributes:
        model: the image encoder (a :class:`SimilarityModel` or any module with ``embed``).
        direction: (D,) for a single direction, or (B, D) with one direction per explicand; this
            is the contrastive direction of Proposition 3.3.
        similarity: ``"cosine"`` or ``"dot"`` (given, or the model's).
        name: short name used in tables (``"cocoa"``, ``"label-free"``, ...).
        info: sizes and settings, JSON-friendly.
    """

    name = "target"

    def __init__(
        self,
        model: Any,
        direction: Tensor,
        similarity: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        similarity = target_similarity(model, similarity)
        self.model = model
        self.direction = direction.detach()
        self.similarity = similarity
        self.info = dict(info or {})

    # -- evaluation
    def __call__(self, x: Tensor) -> Tensor:
        return self.score_embeddings(_embed(self.model, x))

    def score_embeddings(self, z: Tensor) -> Tensor:
        """Scores (N,) of embeddings (N, D) (no encoder pass)."""
        u = represent(z, self.similarity)
        d = self.direction.to(u.device, u.dtype)
        if d.dim() == 1:
            return u @ d
        if len(d) == 1:
            return u @ d[0]
        if len(d) != len(u):
            raise ValueError(
                f"this target holds {len(d)} explicands but got a batch of {len(u)} inputs; "
                "use target.select(i) to score perturbations of explicand i"
            )
        return (u * d).sum(dim=-1)

    # -- per-explicand targets
    @property
    def n_explicands(self) -> int | None:
        """Number of explicands a per-explicand target holds (None for a shared direction)."""
        return None if self.direction.dim() == 1 else len(self.direction)

    def select(self, i: int) -> Target:
        """The target restricted to explicand ``i`` (itself if the direction is shared)."""
        if self.direction.dim() == 1:
            return self
        t = object.__new__(type(self))
        Target.__init__(t, self.model, self.direction[i], self.similarity, self.info)
        return t

    def __len__(self) -> int:
        return self.n_explicands or 1

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.info.items())
        return (
            f"{type(self).__name__}(similarity={self.similarity!r}{', ' if extra else ''}{extra})"
        )

    def describe(self) -> dict[str, Any]:
        return {"target": self.name, "similarity": self.similarity, **self.info}


class LabelFree(Target):
    """Similarity to the explicand's own representation: ``s_f(x, x_e)`` (§3.1, §4.1).

    With ``similarity="cosine"`` this is RELAX's target; with ``"dot"`` it is label-free feature
    importance's ``f(x) . f(x_e)``. ``explicand`` is (B, 3, H, W): one direction per explicand.
    """

    name = "label-free"

    def __init__(self, model: Any, explicand: Tensor, similarity: str | None = None) -> None:
        similarity = target_similarity(model, similarity)
        x = load_images(model, explicand, "explicand")
        direction = represent(embed_images(model, x), similarity)
        super().__init__(model, direction, similarity, {"explicands": len(x)})


class ContrastiveLabelFree(Target):
    """``s_f(x, x_e) - mean_v s_f(x, x_v)``: label-free with a foil (the §4.1 ablation)."""

    name = "contrastive-label-free"

    def __init__(
        self, model: Any, explicand: Tensor, foil: ImageSource, similarity: str | None = None
    ) -> None:
        similarity = target_similarity(model, similarity)
        x = load_images(model, explicand, "explicand")
        own = represent(embed_images(model, x), similarity)
        foil_mean, m = mean_representation(model, foil, similarity, "foil")
        super().__init__(model, own - foil_mean, similarity, {"explicands": len(x), "foil": m})


class Corpus(Target):
    """Corpus similarity ``mean_c s_f(x, x_c)``: COCOA without a foil (the §4.1 ablation)."""

    name = "corpus"

    def __init__(self, model: Any, corpus: ImageSource, similarity: str | None = None) -> None:
        similarity = target_similarity(model, similarity)
        corpus_mean, c = mean_representation(model, corpus, similarity, "corpus")
        super().__init__(model, corpus_mean, similarity, {"corpus": c})


class ContrastiveCorpus(Target):
    """COCOA's contrastive corpus similarity, eq. (3):

    ``mean_c s_f(x, x_c) - (1/m) sum_i s_f(x, x^(i))``, computed as
    ``phi(f(x)) . (mean_c phi(f(x_c)) - mean_i phi(f(x^(i))))`` (Proposition 3.3).
    """

    name = "cocoa"

    def __init__(
        self, model: Any, corpus: ImageSource, foil: ImageSource, similarity: str | None = None
    ) -> None:
        similarity = target_similarity(model, similarity)
        corpus_mean, c = mean_representation(model, corpus, similarity, "corpus")
        foil_mean, m = mean_representation(model, foil, similarity, "foil")
        super().__init__(model, corpus_mean - foil_mean, similarity, {"corpus": c, "foil": m})
        self.corpus_mean, self.foil_mean = corpus_mean, foil_mean


# ----------------------------------------------------------------------------- text corpora
CAPTION_TEMPLATE = "This is a photo of a {}"  # §4.3


def cifar100_classes() -> list[str]:
    """The 100 CIFAR-100 class names (shipped with PairLens; no dataset download)."""
    path = Path(__file__).parents[1] / "data" / "cifar100_classes.txt"
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != 100:
        raise RuntimeError(f"{path}: expected 100 class names, found {len(names)}")
    return names


def cifar100_foil_captions(
    corpus_captions: Sequence[str], template: str = CAPTION_TEMPLATE
) -> list[str]:
    """Foil captions of §4.3 (i): one caption per CIFAR-100 class, without the corpus class P.

    A class counts as the corpus class when its name (underscores read as spaces) appears as
    whole words in a corpus caption, for example "zebra" isn't a CIFAR-100 class (nothing is
    excluded) but "a photo of a bicycle" excludes "bicycle".
    """
    text = " ".join(c.lower() for c in corpus_captions)
    out = []
    for name in cifar100_classes():
        words = name.replace("_", " ")
        if re.search(rf"\b{re.escape(words)}\b", text):
            continue
        out.append(template.format(words))
    return out


TextSource = Tensor | Sequence[str] | str


class TextCorpus(Target):
    """COCOA for image-text models, eq. (6): an image explicand against a caption corpus and a
    caption foil. ``model`` is the image tower (its ``embed`` maps images to the joint space);
    ``corpus`` and ``foil`` are captions (needs ``text_encoder``: list[str] -> (N, D)) or (N, D)
    text embeddings. Build one from a local open_clip checkpoint with :meth:`from_open_clip`.
    """

    name = "text-cocoa"

    def __init__(
        self,
        model: Any,
        corpus: TextSource,
        foil: TextSource | None = None,
        text_encoder: Callable[[list[str]], Tensor] | None = None,
        similarity: str | None = None,
    ) -> None:
        similarity = target_similarity(model, similarity)
        if text_encoder is None and getattr(model, "has_text_tower", False):
            text_encoder = model.embed_text
        corpus_mean, c = self._text_mean(corpus, text_encoder, similarity, "corpus captions")
        direction, info = corpus_mean, {"corpus": c}
        if foil is not None:
            foil_mean, m = self._text_mean(foil, text_encoder, similarity, "foil captions")
            direction, info = corpus_mean - foil_mean, {"corpus": c, "foil": m}
        super().__init__(model, direction.to(_device(model)), similarity, info)
        self.corpus_text = None if isinstance(corpus, Tensor) else _as_captions(corpus)
        self.foil_text = None if foil is None or isinstance(foil, Tensor) else _as_captions(foil)

    @staticmethod
    def _text_mean(
        source: TextSource, encoder: Callable | None, similarity: str, what: str
    ) -> tuple[Tensor, int]:
        if isinstance(source, Tensor):
            z = source.float()
        else:
            captions = _as_captions(source)
            if encoder is None:
                raise ValueError(f"{what} are text: give text_encoder= (or use from_open_clip)")
            with torch.no_grad():
                z = encoder(captions).float()
        if z.dim() != 2 or len(z) == 0:
            raise ValueError(f"{what} must be non-empty (N, D) embeddings; got {tuple(z.shape)}")
        check_finite(z, what)
        return represent(z, similarity).mean(dim=0), len(z)

    @classmethod
    def from_open_clip(
        cls,
        checkpoint: str | Path,
        corpus: TextSource,
        foil: TextSource | None = None,
        arch: str = "ViT-B-32",
        similarity: str | None = None,
        device: str = "cpu",
    ) -> TextCorpus:
        """Load an open_clip model from a local file (:func:`pairlens.models.zoo.clip.load_clip`)
        and build the target. ``foil="cifar100"`` uses the CIFAR-100 captions minus the corpus
        class (§4.3)."""
        from pairlens.models.zoo.clip import load_clip

        image_model = load_clip(checkpoint, arch=arch, device=device)
        if isinstance(foil, str) and foil.strip().lower() == "cifar100":
            foil = cifar100_foil_captions(_as_captions(corpus))
        return cls(image_model, corpus, foil, similarity=similarity)


def _as_captions(source: str | Sequence[str]) -> list[str]:
    captions = [source] if isinstance(source, str) else [str(s) for s in source]
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        raise ValueError("no captions given")
    return captions
