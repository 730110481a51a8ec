"""Scalar explanation targets for representation models (COCOA, seed 002 §3).

A target is a callable mapping an input batch (N, 3, H, W) in model-input space to scores (N,).
Every target here is *linear in the represented embedding* (Proposition 3.3):

    target(x) = phi(f(x)) . direction,   phi(z) = z / ||z||  (similarity="cosine", the default)
                                          phi(z) = z          (similarity="dot")

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
from pairlens.models.similarity import COSINE_EPS, SimilarityModel, check_finite

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


def _embed(model: Any, x: Tensor) -> Tensor:
    """Embedding (N, D) of a batch, keeping autograd (one encoder pass)."""
    return model.embed(x) if hasattr(model, "embed") else model(x)


@torch.no_grad()
def embed_images(model: Any, images: Tensor, batch_size: int = 256) -> Tensor:
    """Embeddings (N, D) of many images without autograd, ``batch_size`` at a time."""
    device = _device(model)
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
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{what} must have shape (N, 3, H, W); got {tuple(source.shape)}")
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
        similarity: ``"cosine"`` or ``"dot"``.
        name: short name used in tables (``"cocoa"``, ``"label-free"``, ...).
        info: sizes and settings, JSON-friendly.
    """

    name = "target"

    def __init__(
        self,
        model: Any,
        direction: Tensor,
        similarity: str = "cosine",
        info: dict[str, Any] | None = None,
    ) -> None:
        _check_similarity(similarity)
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

    def __init__(self, model: Any, explicand: Tensor, similarity: str = "cosine") -> None:
        x = load_images(model, explicand, "explicand")
        direction = represent(embed_images(model, x), similarity)
        super().__init__(model, direction, similarity, {"explicands": len(x)})


class ContrastiveLabelFree(Target):
    """``s_f(x, x_e) - mean_v s_f(x, x_v)``: label-free with a foil (the §4.1 ablation)."""

    name = "contrastive-label-free"

    def __init__(
        self, model: Any, explicand: Tensor, foil: ImageSource, similarity: str = "cosine"
    ) -> None:
        x = load_images(model, explicand, "explicand")
        own = represent(embed_images(model, x), similarity)
        foil_mean, m = mean_representation(model, foil, similarity, "foil")
        super().__init__(model, own - foil_mean, similarity, {"explicands": len(x), "foil": m})


class Corpus(Target):
    """Corpus similarity ``mean_c s_f(x, x_c)``: COCOA without a foil (the §4.1 ablation)."""

    name = "corpus"

    def __init__(self, model: Any, corpus: ImageSource, similarity: str = "cosine") -> None:
        corpus_mean, c = mean_representation(model, corpus, similarity, "corpus")
        super().__init__(model, corpus_mean, similarity, {"corpus": c})


class ContrastiveCorpus(Target):
    """COCOA's contrastive corpus similarity, eq. (3):

    ``mean_c s_f(x, x_c) - (1/m) sum_i s_f(x, x^(i))``, computed as
    ``phi(f(x)) . (mean_c phi(f(x_c)) - mean_i phi(f(x^(i))))`` (Proposition 3.3).
    """

    name = "cocoa"

    def __init__(
        self, model: Any, corpus: ImageSource, foil: ImageSource, similarity: str = "cosine"
    ) -> None:
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
        similarity: str = "cosine",
    ) -> None:
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
        similarity: str = "cosine",
        device: str = "cpu",
    ) -> TextCorpus:
        """Load an open_clip model from local files (:func:`load_open_clip`) and build the target.
        ``foil="cifar100"`` uses the CIFAR-100 captions minus the corpus class (§4.3)."""
        image_model, text_encoder = load_open_clip(checkpoint, arch=arch, device=device)
        if isinstance(foil, str) and foil.strip().lower() == "cifar100":
            foil = cifar100_foil_captions(_as_captions(corpus))
        return cls(image_model, corpus, foil, text_encoder=text_encoder, similarity=similarity)


def _as_captions(source: str | Sequence[str]) -> list[str]:
    captions = [source] if isinstance(source, str) else [str(s) for s in source]
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        raise ValueError("no captions given")
    return captions


# ----------------------------------------------------------------------------- open_clip
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# SimilarityModel's preprocess resizes the shorter side to size / crop_fraction and centre-crops;
# a crop fraction a hair below 1 gives CLIP's "resize shorter side to 224, centre-crop 224".
_CLIP_CROP_FRACTION = 1 - 1e-6


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def load_open_clip(
    checkpoint: str | Path, arch: str = "ViT-B-32", device: str = "cpu"
) -> tuple[SimilarityModel, Callable[[list[str]], Tensor]]:
    """Image tower (as a :class:`SimilarityModel`) and text encoder of a local open_clip model.

    ``arch`` is an open_clip architecture name (``ViT-B-32``; use ``ViT-B-32-quickgelu`` for the
    OpenAI weights) or the path of an open_clip model-config JSON file (its file name without
    ``.json`` becomes the architecture name). ``checkpoint`` is a local state-dict file
    (``.pt``/``.pth``/``.bin``/``.safetensors`` open_clip state dict, or an original OpenAI
    TorchScript ``.pt``, rebuilt by open_clip without JIT). Nothing is
    downloaded: pretrained tags are refused. Needs the extra ``pairlens[clip]``.
    """
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "CLIP models need open_clip: pip install 'pairlens[clip]' (open_clip_torch)"
        ) from err
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{path}: no such CLIP checkpoint file (weights load from local files only)"
        )
    name = str(arch)
    if name.endswith(".json"):
        config = Path(name).expanduser()
        if not config.is_file():
            raise ValueError(f"{config}: no such open_clip model config")
        open_clip.add_model_config(config)
        name = config.stem
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip architecture {arch!r}; give a config .json or one of e.g. "
            f"{', '.join(open_clip.list_models()[:8])}, ..."
        )
    try:
        if _is_torchscript(path):  # an original OpenAI CLIP file (a TorchScript archive)
            clip = open_clip.load_openai_model(str(path), precision="fp32", device=device)
        else:
            clip = open_clip.create_model(
                name, pretrained=str(path), device=device, pretrained_text=False
            )
    except Exception as err:  # noqa: BLE001 - one readable line for any loading failure
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"{path}: cannot load as open_clip {name!r} weights ({reason})") from None
    clip.eval()
    tokenizer = open_clip.get_tokenizer(name)
    size = clip.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean = getattr(clip.visual, "image_mean", None) or OPENAI_CLIP_MEAN
    std = getattr(clip.visual, "image_std", None) or OPENAI_CLIP_STD
    patch = getattr(clip.visual, "patch_size", None)
    image_model = SimilarityModel(
        clip.visual,
        input_size=size,
        mean=mean,
        std=std,
        crop_fraction=_CLIP_CROP_FRACTION,
        patch_size=patch[0] if isinstance(patch, (tuple, list)) else patch,
        name=f"open_clip:{name}",
    ).to(device)
    image_model.clip = clip  # keep the full model reachable (text tower, logit scale)

    @torch.no_grad()
    def text_encoder(captions: list[str]) -> Tensor:
        tokens = tokenizer(list(captions)).to(device)
        return clip.encode_text(tokens).float()

    return image_model, text_encoder
