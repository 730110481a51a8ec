"""Logic of the web demo, free of any web framework (so it is testable and reusable).

The page (:mod:`pairlens.demo.app`) only moves values between widgets and these functions:

* :func:`model_choices` / :class:`ModelPool`: which models the page offers and their cache;
* :func:`param_specs` / :func:`coerce_params`: each method's keyword parameters as widgets, with
  the defaults, kinds and ranges read from the method's signature (the paper's defaults) and the
  values checked by the library's one validation layer (:mod:`pairlens.validation`);
* :func:`load_upload`: an uploaded or pasted file to an RGB image, refusing files outside the
  app's own folders, oversized files and non-images with a one-line :class:`DemoError`;
* :func:`run_pair`: preprocess, optionally make image 2 an augmentation of image 1
  (seed 000, §III-A2), and explain with :func:`pairlens.explain`;
* :func:`faithfulness`: SI / SD / CI / CD and the insertion / deletion curves (seed 000, §IV-B)
  of the shown explanation, through :func:`pairlens.metrics.evaluate`;
* :func:`compare_grid`, :func:`curves_image`, :func:`display_overlays`: pictures;
* :func:`match_views` / :func:`click_point`: for a correspondence method, the region of one image
  under a click and the map of the other image's regions it is matched with;
* :func:`save_downloads`: the figure, raw maps and metadata of a run, for download.

Every error meant for the user is a :class:`DemoError` (or a ``ValueError`` from the library)
with a one-line message; the page shows it instead of failing.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pairlens.explanation import PairCorrespondence, PairExplanation, explain
from pairlens.io import MAX_PIXELS_ENV, ImageError, load_image, open_image, pixel_limit
from pairlens.methods.registry import get_method, method_infos
from pairlens.methods.transforms import FAMILIES, apply_transform
from pairlens.models.similarity import SimilarityModel
from pairlens.validation import ParamError, Spec, validate_call

#: largest upload accepted, in bytes (the page also tells Gradio, which refuses bigger files).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: largest image accepted by the demo, in pixels: stricter than the library's limit
#: (:func:`pairlens.io.pixel_limit`) because the server is shared. Checked on the file's header,
#: before any pixel is decoded (:func:`pairlens.io.load_image` with ``max_pixels``).
MAX_IMAGE_PIXELS = 40_000_000
#: the metrics shown on request (seed 000, §IV-B).
FAITHFULNESS_METRICS = ("SI", "SD", "CI", "CD")
#: demo-only bounds on parameters that set the amount of work, so that one request cannot hold
#: the shared queue for minutes. The library itself accepts any value.
PARAM_BOUNDS: dict[str, tuple[float, float]] = {
    "n_samples": (1, 500),
    "steps": (1, 100),
    "k": (2, 256),
    "batch_size": (1, 256),
    "window": (1, 1024),
    "stride": (4, 1024),
    "noise_level": (0.0, 5.0),
    "temperature": (1e-4, 100.0),
}
PARAM_HELP = {
    "reduction": "spatial reduction of the joint activation J (§III-C2)",
    "grad_interaction": "gradient interaction G instead of the point-wise gradient (§III-C2)",
    "window": "occlusion window side in pixels (empty: 64, scaled for small inputs)",
    "stride": "window stride in pixels (empty: 8, scaled for small inputs)",
    "fill": "value of occluded pixels in model-input space",
    "batch_size": "images per forward pass",
    "n_samples": "number of random samples",
    "area": "occluded area range as a fraction of the image: lo, hi",
    "ratio": "aspect ratio range of the rectangles: lo, hi",
    "seed": "random seed (empty: a new draw every run)",
    "guided": "guided backpropagation through every ReLU (variant G)",
    "noise_level": "noise level; sigma follows noise_scale",
    "transform": "augmentation family (§III-A2)",
    "steps": "number of transform strengths Z",
    "strength": "strength range lo, hi (empty: the family's default range)",
    "interpolation": "paper: views rho*image1 + (1-rho)*T(image2), as the authors' code "
    "(photometric transforms only); strength: sweep the transform's strength on image 2",
    "noise": "averaged-transforms: add noise to the views (variant N); smoothgrad: shared "
    "(one sample on both images, the authors' code) or independent",
    "noise_scale": "divide: sigma = level/(max-min) (the authors' code); multiply: "
    "sigma = level*(max-min) (Smilkov et al.)",
    "temperature": "softmax temperature of the similarity drops (1 = the authors' code)",
    "grid": "g: the correspondence on g x g regions (empty: the model's feature grid)",
    "k": "embedding directions, i.e. backward passes per image (empty: all, exact)",
    "gamma": "LRP gamma rule in convolutions",
    "epsilon": "LRP epsilon rule stabiliser in linear layers",
    "reference": "path start: the blurred image, black pixels or zero in model-input space",
}
#: help texts of parameters whose meaning depends on the method
METHOD_PARAM_HELP = {
    ("integrated-jacobians", "steps"): "points on the path from the reference (more: smaller "
    "completeness error)",
}


class DemoError(ValueError):
    """An error whose one-line message is shown in the page."""


# ---------------------------------------------------------------------- models
@dataclass
class ModelChoice:
    """A model offered in the picker: its label and how to build it."""

    label: str
    load: Callable[[], SimilarityModel]
    detail: str = ""


def parse_checkpoint_args(items: Iterable[str]) -> list[tuple[str, Path]]:
    """``["NAME=PATH", ...]`` from ``--checkpoint`` to (registered name, existing file) pairs."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise DemoError(f"--checkpoint expects NAME=PATH, got {item!r}")
        p = Path(path.strip()).expanduser()
        if not p.is_file():
            raise DemoError(f"--checkpoint {item}: no such file {p}")
        out.append((name.strip(), p))
    return out


def model_choices(
    names: Sequence[str] = (),
    checkpoints: Sequence[tuple[str, Path]] = (),
    device: str = "auto",
    warn: Callable[[str], None] | None = None,
) -> list[ModelChoice]:
    """The models the page offers.

    With no ``names``, every registered model that loads without a checkpoint (the bundled ones);
    a bundled model that fails to load is left out with a warning. With ``names``, exactly those
    (each must load without a checkpoint, or come with ``--checkpoint NAME=PATH``). Each
    ``checkpoints`` entry adds ``NAME (file)``. Every model is built once here, so a broken
    checkpoint is reported at start-up, not in the page.
    """
    from pairlens.models.registry import list_models, load_model, model_info

    warn = warn or (lambda msg: None)
    checkpointed = {name for name, _ in checkpoints}
    choices: list[ModelChoice] = []
    if names:
        wanted = [n for n in names if n not in checkpointed]
        explicit = True
    else:
        wanted = [n for n in list_models() if model_info(n).bundled]
        explicit = False
    for name in wanted:
        try:
            model = load_model(name, device=device)
        except Exception as err:  # noqa: BLE001 - reported, and the model is left out
            msg = f"model {name!r} cannot be loaded without a checkpoint ({_one_line(err)})"
            if explicit:
                raise DemoError(msg + f"; give one with --checkpoint {name}=PATH") from err
            warn(msg + "; left out")
            continue
        choices.append(ModelChoice(name, _constant(model), model_info(name).summary))
    for name, path in checkpoints:
        try:
            model = load_model(name, checkpoint=str(path), device=device)
        except Exception as err:  # noqa: BLE001 - start-up error with the reason
            raise DemoError(f"--checkpoint {name}={path}: {_one_line(err)}") from err
        choices.append(ModelChoice(f"{name} ({path.name})", _constant(model), str(path)))
    seen: dict[str, int] = {}
    for c in choices:  # make labels unique: "name", "name #2", ...
        seen[c.label] = seen.get(c.label, 0) + 1
        if seen[c.label] > 1:
            c.label = f"{c.label} #{seen[c.label]}"
    if not choices:
        raise DemoError(
            "no model to show: no bundled model loads here; "
            "give one with --model NAME --checkpoint NAME=PATH"
        )
    return choices


def _constant(model: SimilarityModel) -> Callable[[], SimilarityModel]:
    return lambda: model


class ModelPool:
    """Models by label, built on first use and kept (the picker offers a handful)."""

    def __init__(self, choices: Sequence[ModelChoice]) -> None:
        if not choices:
            raise DemoError("no model to show")
        self.choices = {c.label: c for c in choices}
        self._models: dict[str, SimilarityModel] = {}
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.choices)

    def get(self, label: str | None) -> SimilarityModel:
        if label not in self.choices:
            raise DemoError(f"unknown model {label!r}; choose from {', '.join(self.choices)}")
        with self._lock:
            if label not in self._models:
                try:
                    self._models[label] = self.choices[label].load().eval()
                except Exception as err:  # noqa: BLE001 - shown in the page
                    raise DemoError(f"model {label!r} failed to load: {_one_line(err)}") from err
            return self._models[label]


# ---------------------------------------------------------------------- method parameters
ParamKind = Literal["bool", "int", "float", "choice", "pair", "text"]


@dataclass(frozen=True)
class ParamSpec:
    """One keyword parameter of a method, as the page shows it."""

    name: str
    default: Any
    kind: ParamKind
    optional: bool = False
    choices: tuple[Any, ...] = ()
    bounds: tuple[float, float] | None = None
    help: str = ""

    def display_default(self) -> Any:
        """The default as the widget holds it (pairs and optional values as text)."""
        if self.default is None:
            return ""
        if self.kind == "pair":
            return ", ".join(f"{v:g}" for v in self.default)
        if self.kind == "text":
            return str(self.default)
        return self.default


def param_specs(method: str) -> list[ParamSpec]:
    """The keyword parameters of ``method`` with their defaults, kinds and ranges, read from the
    method's signature (:attr:`MethodInfo.specs`); numeric bounds are the declared range narrowed
    by the demo's :data:`PARAM_BOUNDS`."""
    info = get_method(method)
    specs = [_spec(spec) for spec in info.specs.values()]
    return [replace(s, help=METHOD_PARAM_HELP[(info.name, s.name)])
            if (info.name, s.name) in METHOD_PARAM_HELP else s for s in specs]


def _spec(spec: Spec) -> ParamSpec:
    kind: ParamKind = "text" if spec.kind == "str" else spec.kind
    bounds = None
    if spec.kind in ("int", "float"):
        lo, hi = PARAM_BOUNDS.get(spec.name, (-math.inf, math.inf))
        if spec.range is not None:
            lo = max(lo, spec.range.lo if spec.range.lo is not None else -math.inf)
            hi = min(hi, spec.range.hi if spec.range.hi is not None else math.inf)
        bounds = (lo, hi) if math.isfinite(lo) or math.isfinite(hi) else None
    return ParamSpec(spec.name, spec.default, kind, optional=spec.optional,
                     choices=tuple(spec.choices), bounds=bounds,
                     help=PARAM_HELP.get(spec.name, ""))


def coerce_params(method: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Widget values to the method's keyword arguments; missing names keep their defaults.

    Values are converted and checked by the library's own rules
    (:meth:`~pairlens.methods.registry.MethodInfo.validate`: strict booleans, declared ranges and
    choices), then against the demo's work bounds (:data:`PARAM_BOUNDS`). Raises
    :class:`DemoError` naming the parameter.
    """
    info = get_method(method)
    given = {}
    for name, spec in info.specs.items():
        if name not in raw:
            continue
        value = raw[name]
        if spec.kind == "bool" and (value is None or value == ""):
            value = False  # a cleared checkbox
        given[name] = value
    try:
        out = validate_call(info.specs, given, f"method {info.name}", defaults=False)
    except ParamError as err:
        raise DemoError(str(err)) from None
    for name, value in out.items():
        lo_hi = PARAM_BOUNDS.get(name)
        if lo_hi is not None and value is not None and not lo_hi[0] <= value <= lo_hi[1]:
            raise DemoError(f"parameter {name} must be between {lo_hi[0]:g} and {lo_hi[1]:g} "
                            f"in the demo, got {value:g}")
    return out


def method_labels() -> dict[str, str]:
    """Method name to a picker label with its paper section."""
    return {m.name: f"{m.name}  ({m.section})" for m in method_infos()}


# ---------------------------------------------------------------------- images
def load_upload(
    payload: Any,
    what: str,
    allowed_roots: Sequence[Path] = (),
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """An uploaded, pasted or example image as an RGB PIL image.

    ``payload`` is what the page sends: a Gradio file dict (``path``, ``orig_name``, maybe a
    ``data:`` ``url``), a path string, or a PIL image / array. Paths must lie inside one of
    ``allowed_roots`` (the app's own temporary and example folders): the page never reads any
    other file. Raises :class:`DemoError` naming ``what`` ("image 1") with the reason.
    """
    if payload is None or payload == "" or payload == {}:
        raise DemoError(f"{what}: upload an image, paste one or pick an example")
    if isinstance(payload, (Image.Image, np.ndarray)):
        try:
            return load_image(payload, max_pixels=_limit(max_pixels))
        except ImageError as err:
            raise DemoError(f"{what}: {_demo_words(str(err))}") from None
    name = what
    path: str | None = None
    url: str | None = None
    if isinstance(payload, Mapping):
        path = payload.get("path")
        url = payload.get("url")
        name = str(payload.get("orig_name") or Path(path or "image").name)
    elif isinstance(payload, (str, Path)):
        path = str(payload)
        name = Path(path).name
    else:
        raise DemoError(f"{what}: cannot read an upload of type {type(payload).__name__}")
    if not path and isinstance(url, str) and url.startswith("data:"):
        return _from_data_url(url, what, max_bytes, max_pixels)
    if not path:
        raise DemoError(f"{what}: the upload carried no file")
    resolved = Path(path).resolve()
    if not any(_inside(resolved, root) for root in allowed_roots):
        raise DemoError(f"{what}: this file is not an upload of this page")
    if not resolved.is_file():
        raise DemoError(f"{what} ({name}): the uploaded file is gone; upload it again")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise DemoError(f"{what} ({name}): file is {size / 2**20:.1f} MB; the limit is "
                        f"{max_bytes / 2**20:.0f} MB")
    try:  # the pixel limit is checked on the header, before decoding
        return load_image(resolved, max_pixels=_limit(max_pixels))
    except ImageError as err:
        message = str(err).replace(str(resolved), "").lstrip(": ")
        raise DemoError(f"{what} ({name}): {_demo_words(message)}") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def _limit(max_pixels: int) -> int:
    """The demo's pixel limit, never above the library's own."""
    return min(int(max_pixels), pixel_limit())


def _demo_words(message: str) -> str:
    return message.replace(f" (set {MAX_PIXELS_ENV} to change it)", " in this demo")


def _from_data_url(url: str, what: str, max_bytes: int, max_pixels: int) -> Image.Image:
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=False)
    except (IndexError, binascii.Error):
        raise DemoError(f"{what}: the pasted data is not a valid image") from None
    if len(data) > max_bytes:
        raise DemoError(f"{what}: pasted image is larger than {max_bytes / 2**20:.0f} MB")
    try:  # header first: the pixel limit holds before decoding
        return open_image(io.BytesIO(data), what, _limit(max_pixels))
    except ImageError as err:
        text = _demo_words(str(err))
        if "not an image" in text or "unreadable" in text:
            raise DemoError(f"{what}: the pasted data is not an image PairLens can read") from None
        raise DemoError(text) from None


def augment(
    model: SimilarityModel, x1: Tensor, family: str, strength: float, seed: int | None
) -> Tensor:
    """Image 2 as an augmentation of image 1 (seed 000, §III-A2).

    ``x1`` (1, 3, H, W) in model-input space is mapped to [0, 1] pixels, transformed with
    :func:`~pairlens.methods.transforms.apply_transform` at ``strength`` (the family's unit,
    within its default range) with random draws fixed by ``seed``, clamped to [0, 1] and
    normalised again.
    """
    if family not in FAMILIES:
        raise DemoError(f"unknown augmentation {family!r}; choose from {', '.join(FAMILIES)}")
    lo, hi = FAMILIES[family][1]
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise DemoError(f"augmentation strength must be a number, got {strength!r}") from None
    if not lo <= s <= hi:
        raise DemoError(f"{family} strength must be between {lo:g} and {hi:g}, got {s:g}")
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
    u = torch.rand(x1.shape[0], 8, generator=gen).to(x1.device)
    with torch.no_grad():
        x01 = model.denormalize(x1).clamp(0, 1)
        y = apply_transform(family, x01, s, u).clamp(0, 1)
        return model.normalize(y)


# ---------------------------------------------------------------------- explanations
@dataclass
class PairRun:
    """One explained pair: the explanation, the two model inputs and the wall time."""

    explanation: PairExplanation
    x1: Tensor
    x2: Tensor
    seconds: float
    sources: tuple[str, str] = ("image 1", "image 2")


@dataclass
class Augmentation:
    family: str
    strength: float
    seed: int | None = 0


def prepare_pair(
    model: SimilarityModel,
    image1: Image.Image,
    image2: Image.Image | None,
    augmentation: Augmentation | None = None,
) -> tuple[Tensor, Tensor]:
    """Both images in model-input space, image 2 made from image 1 when ``augmentation`` is set."""
    x1 = model.preprocess(image1)
    if augmentation is not None:
        return x1, augment(model, x1, augmentation.family, augmentation.strength,
                           augmentation.seed)
    if image2 is None:
        raise DemoError("image 2: upload an image, paste one, pick an example, or choose "
                        "'augmentation of image 1'")
    return x1, model.preprocess(image2)


def run_pair(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    method: str,
    params: Mapping[str, Any],
    sources: tuple[str, str] = ("image 1", "image 2"),
) -> PairRun:
    """Explain the pair with ``method`` (see :func:`pairlens.explain`) and time it."""
    start = time.perf_counter()
    exp = explain(model, x1, x2, method=method, sources=sources, **dict(params))
    return PairRun(exp, x1, x2, time.perf_counter() - start, sources)


def display_overlays(exp: PairExplanation, min_side: int = 256) -> tuple[Image.Image, Image.Image]:
    """The two overlays of :meth:`PairExplanation.overlay`, enlarged (nearest neighbour) so that
    small inputs such as 32 px digits stay visible."""
    return tuple(_enlarge(im, min_side) for im in exp.overlay())  # type: ignore[return-value]


def display_factor(side: int, min_side: int = 256) -> int:
    """Whole enlargement factor of an image whose shorter side is ``side`` pixels."""
    return 1 if side >= min_side else math.ceil(min_side / side)


def _enlarge(im: Image.Image, min_side: int) -> Image.Image:
    factor = display_factor(min(im.size), min_side)
    if factor == 1:
        return im
    return im.resize((im.width * factor, im.height * factor), Image.NEAREST)


def click_point(index: Sequence[float], exp: PairExplanation, min_side: int = 256
                ) -> tuple[int, int]:
    """A click at ``index = (x, y)`` on a view made by :func:`match_views` (same ``min_side``)
    as ``(row, col)`` in model-input pixels, clamped to the image.

    Raises:
        DemoError: ``index`` is not two numbers.
    """
    try:
        x, y = (float(v) for v in index)
    except (TypeError, ValueError):
        raise DemoError(f"could not read the clicked point {index!r}") from None
    h, w = exp.maps[0].shape[-2:]
    factor = display_factor(min(h, w), min_side)
    return (min(max(int(y // factor), 0), h - 1), min(max(int(x // factor), 0), w - 1))


def match_views(
    exp: PairCorrespondence,
    point: tuple[int, int] | None = None,
    image: int = 1,
    min_side: int = 256,
) -> tuple[Image.Image, Image.Image]:
    """(view of image 1, view of image 2) for a click at ``point = (row, col)`` (model-input
    pixels) of image ``image`` (1 or 2): the clicked image with its region outlined, the other
    with the relevance of each of its regions paired with that region
    (:meth:`PairCorrespondence.match_map`) overlaid. ``point=None``: the centre of the image-1
    region of the strongest match.

    Raises:
        DemoError: the explanation is not a correspondence, or a bad ``image``.
    """
    from PIL import ImageDraw

    from pairlens.methods.common import cell_index
    from pairlens.viz import overlay, to_pil

    if not isinstance(exp, PairCorrespondence) or exp.images is None:
        raise DemoError("clicking a point needs a correspondence method (feature-grid, bilrp, "
                        "integrated-jacobians)")
    if image not in (1, 2):
        raise DemoError(f"image must be 1 or 2, got {image!r}")
    h, w = exp.maps[0].shape[-2:]
    if point is None:
        i, _, _ = exp.top_matches(k=1)[0]
        rows, cols = exp.grids[0]
        point, image = (int((i // cols + 0.5) * h / rows), int((i % cols + 0.5) * w / cols)), 1
    here, there = image - 1, 2 - image
    grid = exp.grids[here]
    cell = int(cell_index((h, w), grid)[point[0], point[1]])
    clicked = to_pil(exp.images[here][0]).convert("RGB")
    matched = overlay(exp.images[there][0], exp.match_map(point, image=image), alpha=0.55)
    factor = display_factor(min(h, w), min_side)
    clicked, matched = (_enlarge(im, min_side) for im in (clicked, matched))
    r, c = divmod(cell, grid[1])
    box = (c * w / grid[1] * factor, r * h / grid[0] * factor,
           (c + 1) * w / grid[1] * factor - 1, (r + 1) * h / grid[0] * factor - 1)
    draw = ImageDraw.Draw(clicked)
    draw.rectangle(box, outline=(255, 40, 40), width=max(2, factor // 2))
    cy, cx = (point[0] + 0.5) * factor, (point[1] + 0.5) * factor
    draw.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=(255, 40, 40))
    return (clicked, matched) if image == 1 else (matched, clicked)


def summary_markdown(run: PairRun, model_label: str) -> str:
    exp = run.explanation
    text = (
        f"**Similarity ({exp.model.get('similarity', 'cosine')}): {float(exp.score[0]):.4f}** · "
        f"method `{exp.method}` · "
        f"model `{model_label}` · explained in {exp.seconds:.2f} s "
        f"(total {run.seconds:.2f} s)"
    )
    if isinstance(exp, PairCorrespondence) and "completeness_error" in exp.extras:
        (h1, w1), (h2, w2) = exp.grids
        target = exp.extras.get("target")
        text += (f" · {h1}x{w1} by {h2}x{w2} regions, relevance sum "
                 f"{float(exp.relevance[0].sum()):.4f} ("
                 + (f"target {float(target[0]):.4f}, " if target is not None else "")
                 + f"completeness error {float(exp.extras['completeness_error'][0]):+.4f})")
    return text


# ---------------------------------------------------------------------- metrics
@dataclass
class Faithfulness:
    """SI / SD / CI / CD values and their curves (fraction of pixels -> similarity)."""

    values: dict[str, float]
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = math.nan


def faithfulness(run: PairRun, model: SimilarityModel) -> Faithfulness:
    """Insertion / deletion metrics of the shown explanation (seed 000, §IV-B, DESIGN.md).

    Uses :func:`pairlens.metrics.evaluate` with ``return_curves=True``; raises
    :class:`DemoError` if this build of PairLens has no metrics.
    """
    try:
        from pairlens.metrics import evaluate
    except ImportError:
        raise DemoError("the faithfulness metrics are not available in this build of "
                        "PairLens") from None
    start = time.perf_counter()
    out = evaluate(model, run.x1, run.x2, run.explanation, metrics=FAITHFULNESS_METRICS,
                   return_curves=True)
    values = {k: float(out[k][0]) for k in FAITHFULNESS_METRICS if k in out}
    curves = {k: out[f"{k}_curve"][0].detach().cpu().numpy() for k in FAITHFULNESS_METRICS
              if f"{k}_curve" in out}
    return Faithfulness(values, curves, time.perf_counter() - start)


def metrics_markdown(f: Faithfulness) -> str:
    arrows = {"SI": "↑", "SD": "↓", "CI": "↑", "CD": "↓"}
    names = {"SI": "simultaneous insertion", "SD": "simultaneous deletion",
             "CI": "conditional insertion", "CD": "conditional deletion"}
    rows = "\n".join(f"| {k} {arrows.get(k, '')} | {names.get(k, '')} | {v:.4f} |"
                     for k, v in f.values.items())
    return ("| metric | | AUC |\n|---|---|---|\n" + rows +
            f"\n\n↑ higher is better, ↓ lower is better · computed in {f.seconds:.1f} s")


def curves_image(f: Faithfulness, title: str = "") -> Image.Image:
    """Insertion and deletion curves: similarity against the fraction of pixels inserted or
    deleted (N+1 points from 0 to 1)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.0), dpi=100)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], "insertion", ("SI", "CI")), (axes[1], "deletion", ("SD", "CD")))
    for ax, kind, keys in panels:
        for k in keys:
            if k in f.curves:
                c = f.curves[k]
                ax.plot(np.linspace(0, 1, len(c)), c,
                        label=f"{k} (AUC {f.values.get(k, float('nan')):.3f})")
        ax.set_xlabel(f"fraction of pixels {'inserted' if kind == 'insertion' else 'deleted'}")
        ax.set_ylabel("similarity")
        ax.set_title(kind, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _figure_to_pil(fig)


def _figure_to_pil(fig: Any) -> Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


# ---------------------------------------------------------------------- compare mode
def compare_grid(runs: Sequence[PairRun], model_label: str = "") -> Image.Image:
    """Fig. 12-style grid: a column per method, image 1 on the top row and image 2 below, the
    inputs in the first column; each title gives the method and its time."""
    from matplotlib.figure import Figure

    from pairlens.viz import overlay, to_pil

    if not runs:
        raise DemoError("choose at least one method to compare")
    cols = len(runs) + 1
    fig = Figure(figsize=(2.0 * cols, 4.8), dpi=100)
    axes = fig.subplots(2, cols, squeeze=False)
    first = runs[0].explanation
    assert first.images is not None
    for row in range(2):
        axes[row, 0].imshow(to_pil(first.images[row][0]))
        axes[row, 0].set_title(f"image {row + 1}", fontsize=9)
        for col, run in enumerate(runs, start=1):
            exp = run.explanation
            assert exp.images is not None
            axes[row, col].imshow(overlay(exp.images[row][0], exp.maps[row][0]))
            if row == 0:
                axes[row, col].set_title(f"{exp.method}\n{exp.seconds:.2f} s", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{model_label} · similarity {float(first.score[0]):.4f}", fontsize=10)
    fig.tight_layout()
    return _figure_to_pil(fig)


# ---------------------------------------------------------------------- files
def new_run_dir(root: Path, max_age_seconds: float = 3600.0) -> Path:
    """A fresh folder under ``root`` for one request's files; folders older than
    ``max_age_seconds`` are removed on the way, so the app's temporary files stay bounded."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in root.glob("run-*"):
        try:
            if now - old.stat().st_mtime > max_age_seconds:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    path = root / f"run-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def save_downloads(
    run: PairRun, out_dir: Path, metrics: Faithfulness | None = None
) -> list[Path]:
    """The run's figure (PNG), raw maps (.npz) and metadata (JSON, with the metrics and curves
    when computed) via :meth:`PairExplanation.save`."""
    written = run.explanation.save(out_dir, stem=run.explanation.method)
    if metrics is not None:
        path = out_dir / f"{run.explanation.method}-metrics.json"
        data = {"values": metrics.values,
                "curves": {k: [float(v) for v in c] for k, c in metrics.curves.items()}}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
        written.append(path)
    return written


def save_image(im: Image.Image, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    im.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
