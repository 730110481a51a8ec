"""``composites``: a pair benchmark whose right answer is known.

A *scene* is a textured background with a few *objects* pasted on it; a *pair* is two scenes that
share exactly one object (at a different position and scale, with a different augmentation, among
different distractors, on a different background). The shared object's mask in each scene is the
ground truth of a pair explanation: the bundled ``composites`` model was trained so that its
similarity depends on that object (``pairlens/models/weights/composites.md``), and
:mod:`pairlens.metrics.ground_truth` scores maps against the masks.

Everything is built from content that ships inside installed packages (no download):

* **Objects** (:func:`object_library`, :data:`N_OBJECTS` = 75), each an RGB patch and an alpha mask:

  - 15 cut from scikit-image / scikit-learn images: regions whose mask is part of the data (the
    ``horse`` silhouette, drawn in brown; the non-zero part of ``shepp_logan_phantom``), computed
    by thresholding where the object stands out (six ``coins``: Otsu threshold, opening with a
    disk of radius 2, holes filled, the six largest components with solidity > 0.95; the
    ``flower``: red minus blue > 0.15 in a box around the dahlia; ``logo`` and ``colorwheel``:
    pixels that are not white; each the largest component with holes filled) or, for regions with
    no clear colour edge, a fixed ellipse drawn around the object (astronaut's face and mission
    patch, the coffee cup, the cat's face; coordinates in :data:`ELLIPSES`);
  - 60 digits: the first :data:`DIGITS_PER_CLASS` (6) images of each class in scikit-learn's
    ``load_digits`` order, upsampled to 32 px (as :func:`pairlens.data.bundled.digits`); the
    stroke intensity is the alpha, the colour a fixed hue per object (60 hues evenly spaced on
    the HSV circle, saturation 0.85, value 1).

* **Backgrounds** (:data:`BACKGROUNDS`): scikit-image's textures ``grass``, ``gravel``,
  ``brick``, ``moon``, ``immunohistochemistry`` and ``hubble_deep_field``.

Construction of one scene of side ``S`` (all random numbers from one CPU ``torch.Generator``, in a
fixed order, so a seed gives the same scene everywhere):

1. background: a uniformly chosen texture, a random square crop of side ``U{96..256}`` px (of the
   texture at its own resolution), resized to ``S`` (bilinear, antialiased), multiplied by a
   brightness ``U(0.45, 0.85)`` so that the objects stand out;
2. each object: its longest side becomes ``U(0.3, 0.5)·S`` px (aspect ratio kept; bilinear,
   antialiased), photo objects are mirrored with probability 0.5 (digits never), its colour is
   multiplied by ``U(0.8, 1.2)`` (clamped to [0, 1]); its top-left corner is uniform among the
   positions where its box lies inside the image and does not overlap (with a 1 px gap) the box
   of an object already placed (200 tries, then the whole layout is redrawn);
3. the objects are alpha-blended in order: ``image = (1 - a)·image + a·colour``.

The boxes never overlap, so no object hides another: the **mask** of an object is exactly the
pixels where its resized alpha is >= 0.5 (:attr:`Scene.masks`). A :class:`Layout` keeps every
choice, so a scene can be re-rendered without one of its objects (the background shows through):
that is how :func:`pairlens.training.composites.removal_drops` measures that the model's
similarity depends on the shared object.

Pairs (:func:`composite_pair`): pair ``i`` of seed ``s`` is drawn from a generator seeded with a
hash of ``("composites", s, i)``: a shared object and ``2·k`` distinct distractors (``k =
n_distractors``, 2 by default) drawn uniformly without replacement, ``k`` per scene, then the two
scenes. Pair ``i`` does not depend on how many pairs are drawn nor on the batch it is in.

Training batches (:func:`shared_object_batch`): for ``B`` anchor objects, two scenes each with the
anchor and ``k`` distractors; **all** distractors of the batch are distinct and none is an anchor,
so two scenes of a batch share an object exactly when they have the same anchor (positives for
SupCon / NT-Xent labels = anchor id). This needs ``B·(1 + 2k) <= 75`` distinct objects.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DIGITS_PER_CLASS = 6
#: fixed ellipses (centre row, centre col, radius rows, radius cols) in the source photo's pixels
ELLIPSES = {
    "astronaut-face": ("astronaut", (95, 225, 78, 66)),
    "astronaut-patch": ("astronaut", (386, 170, 38, 38)),
    "coffee-cup": ("coffee", (112, 290, 92, 118)),
    "cat-face": ("chelsea", (160, 245, 135, 185)),
}
BACKGROUNDS = ("grass", "gravel", "brick", "moon", "immunohistochemistry", "hubble_deep_field")
N_COINS = 6
OBJECT_SIDE = (0.3, 0.5)  # longest side as a fraction of the scene side
BACKGROUND_CROP = (96, 256)
BACKGROUND_BRIGHTNESS = (0.45, 0.85)
OBJECT_BRIGHTNESS = (0.8, 1.2)
MASK_THRESHOLD = 0.5
DEFAULT_SIZE = 64
DEFAULT_DISTRACTORS = 2


@dataclass(frozen=True)
class CompositeObject:
    """One pasteable object: ``rgb`` (3, h, w) and ``alpha`` (h, w), both float32 in [0, 1]."""

    name: str
    kind: str  # "photo" or "digit"
    rgb: Tensor
    alpha: Tensor

    @property
    def mirrorable(self) -> bool:
        return self.kind == "photo"


# ---------------------------------------------------------------------- objects
def _to_float_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[:, :, :3]


def _crop_to_mask(name: str, kind: str, rgb: np.ndarray, alpha: np.ndarray) -> CompositeObject:
    rows, cols = np.nonzero(alpha >= MASK_THRESHOLD)
    if len(rows) == 0:
        raise RuntimeError(f"composites object {name!r} has an empty mask")
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb[r0:r1, c0:c1])).permute(2, 0, 1)
    alpha_t = torch.from_numpy(np.ascontiguousarray(alpha[r0:r1, c0:c1], dtype=np.float32))
    return CompositeObject(name, kind, rgb_t.float().contiguous(), alpha_t)


def _ellipse_alpha(shape: tuple[int, int], centre_radii: tuple[int, int, int, int]) -> np.ndarray:
    from skimage.draw import ellipse

    alpha = np.zeros(shape, dtype=np.float32)
    rr, cc = ellipse(*centre_radii, shape=shape)
    alpha[rr, cc] = 1.0
    return alpha


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage import measure

    lab = measure.label(mask)
    if lab.max() == 0:
        return mask
    areas = np.bincount(lab.ravel())
    areas[0] = 0
    return ndi.binary_fill_holes(lab == int(areas.argmax()))


def _photo_objects() -> list[CompositeObject]:
    import skimage.data as skd
    from scipy import ndimage as ndi
    from skimage import filters, measure, morphology
    from sklearn.datasets import load_sample_images

    out: list[CompositeObject] = []
    for name, (photo, centre_radii) in ELLIPSES.items():
        rgb = _to_float_rgb(getattr(skd, photo)())
        out.append(_crop_to_mask(name, "photo", rgb, _ellipse_alpha(rgb.shape[:2], centre_radii)))

    logo = _to_float_rgb(skd.logo())  # opaque everywhere: the logo is what is not white
    alpha = _largest_component(logo.min(axis=2) < 0.95).astype(np.float32)
    out.append(_crop_to_mask("logo", "photo", logo, alpha))

    horse = ~skd.horse()  # True on the horse
    colour = np.array([0.45, 0.28, 0.14], dtype=np.float32)
    rgb = np.broadcast_to(colour, (*horse.shape, 3)).copy()
    out.append(_crop_to_mask("horse", "photo", rgb, horse.astype(np.float32)))

    phantom = skd.shepp_logan_phantom()
    out.append(_crop_to_mask("phantom", "photo", _to_float_rgb(phantom),
                             (phantom > 0).astype(np.float32)))

    flower = _to_float_rgb(load_sample_images().images[1])  # flower.jpg
    box = (slice(70, 370), slice(150, 470))
    alpha = np.zeros(flower.shape[:2], dtype=np.float32)
    alpha[box] = _largest_component(flower[box][:, :, 0] - flower[box][:, :, 2] > 0.15)
    out.append(_crop_to_mask("flower", "photo", flower, alpha))

    wheel = _to_float_rgb(skd.colorwheel())
    alpha = _largest_component(wheel.min(axis=2) < 0.95).astype(np.float32)
    out.append(_crop_to_mask("colorwheel", "photo", wheel, alpha))

    coins = skd.coins()
    mask = coins > filters.threshold_otsu(coins)
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, structure=morphology.disk(2)))
    lab = measure.label(mask)
    props = [p for p in measure.regionprops(lab) if p.solidity > 0.95]
    props = sorted(props, key=lambda p: (-p.area, p.label))[:N_COINS]
    coins_rgb = _to_float_rgb(coins)
    for k, p in enumerate(sorted(props, key=lambda p: p.bbox)):
        out.append(_crop_to_mask(f"coin-{k + 1}", "photo", coins_rgb,
                                 (lab == p.label).astype(np.float32)))
    return out


def _digit_objects() -> list[CompositeObject]:
    from sklearn.datasets import load_digits

    from pairlens.data.bundled import DIGITS_SIZE

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0)[:, 0]
    chosen = [i for c in range(10) for i in np.flatnonzero(data.target == c)[:DIGITS_PER_CLASS]]
    n = len(chosen)
    out = []
    for k, i in enumerate(sorted(chosen)):
        r, g, b = colorsys.hsv_to_rgb(k / n, 0.85, 1.0)
        alpha = x[i].numpy()
        rgb = np.broadcast_to(np.array([r, g, b], dtype=np.float32), (*alpha.shape, 3)).copy()
        out.append(_crop_to_mask(f"digit-{int(data.target[i])}-{i}", "digit", rgb, alpha))
    return out


N_OBJECTS = len(ELLIPSES) + 5 + N_COINS + 10 * DIGITS_PER_CLASS


@functools.lru_cache(maxsize=1)
def object_library() -> tuple[CompositeObject, ...]:
    """The 75 objects (15 photo objects, then 60 digits), in a fixed order; object id = index."""
    lib = tuple(_photo_objects() + _digit_objects())
    if len(lib) != N_OBJECTS:  # e.g. a scikit-image release whose coins segment differently
        raise RuntimeError(f"composites: built {len(lib)} objects, expected {N_OBJECTS}")
    return lib


@functools.lru_cache(maxsize=1)
def background_textures() -> tuple[Tensor, ...]:
    """The :data:`BACKGROUNDS` textures as (3, H, W) float tensors in [0, 1]."""
    import skimage.data as skd

    return tuple(
        torch.from_numpy(_to_float_rgb(getattr(skd, n)())).permute(2, 0, 1).contiguous()
        for n in BACKGROUNDS
    )


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """sha256 of everything scenes are made of: every object's and texture's pixels and the
    construction constants (a different scikit-image release or a changed rule changes it)."""
    h = hashlib.sha256()
    constants = (OBJECT_SIDE, BACKGROUND_CROP, BACKGROUND_BRIGHTNESS, OBJECT_BRIGHTNESS,
                 MASK_THRESHOLD, ELLIPSES, BACKGROUNDS, N_COINS, DIGITS_PER_CLASS)
    h.update(repr(constants).encode())
    for obj in object_library():
        h.update(obj.name.encode())
        h.update(obj.rgb.numpy().tobytes())
        h.update(obj.alpha.numpy().tobytes())
    for tex in background_textures():
        h.update(tex.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- layouts and scenes
@dataclass(frozen=True)
class Placement:
    """One pasted object: id, top-left corner and size in scene pixels, mirror, brightness."""

    object_id: int
    top: int
    left: int
    height: int
    width: int
    mirror: bool
    brightness: float


@dataclass(frozen=True)
class Layout:
    """Every choice behind one scene (enough to re-render it, with or without some objects)."""

    size: int
    texture: int
    crop_top: int
    crop_left: int
    crop_side: int
    background_brightness: float
    objects: tuple[Placement, ...]

    def without(self, object_ids: Sequence[int]) -> Layout:
        """The same scene with the given objects removed (the background shows through)."""
        drop = set(int(i) for i in object_ids)
        return replace(self, objects=tuple(p for p in self.objects if p.object_id not in drop))


class Scene(NamedTuple):
    """A rendered scene: ``image`` (3, S, S) in [0, 1], ``masks`` (n_objects, S, S) bool in the
    order of ``object_ids``."""

    image: Tensor
    masks: Tensor
    object_ids: tuple[int, ...]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _boxes_overlap(a: Placement, top: int, left: int, h: int, w: int, gap: int = 1) -> bool:
    return not (top >= a.top + a.height + gap or a.top >= top + h + gap
                or left >= a.left + a.width + gap or a.left >= left + w + gap)


def draw_layout(object_ids: Sequence[int], g: torch.Generator, size: int = DEFAULT_SIZE,
                max_tries: int = 200) -> Layout:
    """Draw a random :class:`Layout` of ``object_ids`` (pasted in this order) with generator ``g``.

    Raises ``ValueError`` for a scene smaller than 24 px or an unknown object id, and
    ``RuntimeError`` if 20 layouts in a row cannot place every object without overlap.
    """
    if size < 24:
        raise ValueError(f"composite scenes need a side of at least 24 px; got {size}")
    lib = object_library()
    for oid in object_ids:
        if not 0 <= int(oid) < len(lib):
            raise ValueError(f"unknown composites object id {oid}; ids are 0..{len(lib) - 1}")
    textures = background_textures()
    texture = _randint(g, 0, len(textures) - 1)
    tex_h, tex_w = textures[texture].shape[1:]
    side = _randint(g, BACKGROUND_CROP[0], min(BACKGROUND_CROP[1], tex_h, tex_w))
    crop_top, crop_left = _randint(g, 0, tex_h - side), _randint(g, 0, tex_w - side)
    bg_brightness = _uniform(g, *BACKGROUND_BRIGHTNESS)
    for _attempt in range(20):
        placed: list[Placement] = []
        for oid in object_ids:
            obj = lib[int(oid)]
            longest = max(2, round(_uniform(g, *OBJECT_SIDE) * size))
            h0, w0 = obj.alpha.shape
            scale = longest / max(h0, w0)
            h, w = max(2, round(h0 * scale)), max(2, round(w0 * scale))
            mirror = obj.mirrorable and bool(torch.rand((), generator=g) < 0.5)
            brightness = _uniform(g, *OBJECT_BRIGHTNESS)
            for _try in range(max_tries):
                top, left = _randint(g, 0, size - h), _randint(g, 0, size - w)
                if not any(_boxes_overlap(p, top, left, h, w) for p in placed):
                    placed.append(Placement(int(oid), top, left, h, w, mirror, brightness))
                    break
            else:
                break
        if len(placed) == len(object_ids):
            return Layout(size, texture, crop_top, crop_left, side, bg_brightness, tuple(placed))
    raise RuntimeError(f"could not place {len(object_ids)} objects in a {size} px scene")


def _resize(t: Tensor, h: int, w: int) -> Tensor:
    return F.interpolate(t.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def render(layout: Layout) -> Scene:
    """Render a :class:`Layout` to a :class:`Scene` (deterministic)."""
    tex = background_textures()[layout.texture]
    crop = tex[:, layout.crop_top : layout.crop_top + layout.crop_side,
               layout.crop_left : layout.crop_left + layout.crop_side]
    image = (_resize(crop, layout.size, layout.size) * layout.background_brightness).clamp(0, 1)
    lib = object_library()
    masks = torch.zeros(len(layout.objects), layout.size, layout.size, dtype=torch.bool)
    for k, p in enumerate(layout.objects):
        obj = lib[p.object_id]
        rgb = (_resize(obj.rgb, p.height, p.width) * p.brightness).clamp(0, 1)
        alpha = _resize(obj.alpha[None], p.height, p.width).clamp(0, 1)
        if p.mirror:
            rgb, alpha = rgb.flip(-1), alpha.flip(-1)
        box = (slice(None), slice(p.top, p.top + p.height), slice(p.left, p.left + p.width))
        image[box] = (1 - alpha) * image[box] + alpha * rgb
        masks[k][box[1:]] = alpha[0] >= MASK_THRESHOLD
    return Scene(image.contiguous(), masks, tuple(p.object_id for p in layout.objects))


# ---------------------------------------------------------------------- pairs
class CompositePair(NamedTuple):
    """Two scenes sharing exactly ``shared`` (an object id); their layouts for re-rendering."""

    layout1: Layout
    layout2: Layout
    shared: int

    def render(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(image1, image2, mask1, mask2)``: (3, S, S) in [0, 1] and the shared object's
        (S, S) bool masks."""
        s1, s2 = render(self.layout1), render(self.layout2)
        m1 = s1.masks[s1.object_ids.index(self.shared)]
        m2 = s2.masks[s2.object_ids.index(self.shared)]
        return s1.image, s2.image, m1, m2

    def distractors(self, which: int) -> tuple[int, ...]:
        layout = self.layout1 if which == 1 else self.layout2
        return tuple(p.object_id for p in layout.objects if p.object_id != self.shared)


def pair_seed(*parts: object) -> int:
    """A 63-bit seed from a hash of ``parts`` (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _shuffled(ids: list[int], g: torch.Generator) -> list[int]:
    return [ids[int(i)] for i in torch.randperm(len(ids), generator=g)]


def composite_pair(pair_id: int, seed: int = 0, size: int = DEFAULT_SIZE,
                   n_distractors: int = DEFAULT_DISTRACTORS) -> CompositePair:
    """Pair ``pair_id`` of the benchmark with ``seed``: two scenes of side ``size`` sharing exactly
    one object, each with ``n_distractors`` other objects (all distinct), on its own background.
    The paste order within each scene is random, so the shared object is not always on top."""
    if n_distractors < 0 or 1 + 2 * n_distractors > N_OBJECTS:
        raise ValueError(f"n_distractors must be in 0..{(N_OBJECTS - 1) // 2}")
    g = torch.Generator().manual_seed(pair_seed("composites", int(seed), int(pair_id)))
    ids = torch.randperm(N_OBJECTS, generator=g)[: 1 + 2 * n_distractors].tolist()
    shared, d1, d2 = ids[0], ids[1 : 1 + n_distractors], ids[1 + n_distractors :]
    layout1 = draw_layout(_shuffled([shared, *d1], g), g, size)
    layout2 = draw_layout(_shuffled([shared, *d2], g), g, size)
    return CompositePair(layout1, layout2, int(shared))


def pair_batch(pair_ids: Sequence[int], seed: int = 0, size: int = DEFAULT_SIZE,
               n_distractors: int = DEFAULT_DISTRACTORS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pairs ``pair_ids`` stacked: images (B, 3, S, S) in [0, 1] and shared-object masks (B, S, S)
    bool: ``(x1, x2, mask1, mask2)``."""
    parts = [composite_pair(i, seed, size, n_distractors).render() for i in pair_ids]
    return tuple(torch.stack([p[k] for p in parts]) for k in range(4))  # type: ignore[return-value]


# ---------------------------------------------------------------------- training batches
def shared_object_batch(anchors: Sequence[int], g: torch.Generator, size: int = DEFAULT_SIZE,
                        n_distractors: int = DEFAULT_DISTRACTORS) -> tuple[Tensor, Tensor]:
    """Two scenes (B, 3, S, S) in [0, 1] per anchor object: scene ``i`` of each tensor holds
    ``anchors[i]`` and ``n_distractors`` distractors. Every distractor of the batch is distinct and
    none is an anchor, so scenes share an object exactly when their anchors are equal.

    Raises ``ValueError`` when the library is too small for the batch
    (``len(set(anchors)) + 2·B·n_distractors > 75``).
    """
    anchors = [int(a) for a in anchors]
    b = len(anchors)
    pool = [i for i in range(N_OBJECTS) if i not in set(anchors)]
    need = 2 * b * n_distractors
    if need > len(pool):
        raise ValueError(
            f"a batch of {b} anchors with {n_distractors} distractors per scene needs "
            f"{len(set(anchors)) + need} distinct objects; the library has {N_OBJECTS}"
        )
    order = torch.randperm(len(pool), generator=g)[:need].tolist()
    distractors = [pool[i] for i in order]
    views: list[list[Tensor]] = [[], []]
    for i, anchor in enumerate(anchors):
        for v in range(2):
            start = (2 * i + v) * n_distractors
            ids = _shuffled([anchor, *distractors[start : start + n_distractors]], g)
            views[v].append(render(draw_layout(ids, g, size)).image)
    return torch.stack(views[0]), torch.stack(views[1])


def thumbnails(size: int = DEFAULT_SIZE) -> Tensor:
    """Every object alone, centred on a mid-grey square of side ``size``: (75, 3, S, S) in
    [0, 1] (the 'images' of the trainer's shared-object mode and a contact sheet for docs)."""
    out = []
    for obj in object_library():
        h0, w0 = obj.alpha.shape
        scale = 0.8 * size / max(h0, w0)
        h, w = max(2, round(h0 * scale)), max(2, round(w0 * scale))
        rgb, alpha = _resize(obj.rgb, h, w).clamp(0, 1), _resize(obj.alpha[None], h, w).clamp(0, 1)
        img = torch.full((3, size, size), 0.5)
        top, left = (size - h) // 2, (size - w) // 2
        box = (slice(None), slice(top, top + h), slice(left, left + w))
        img[box] = (1 - alpha) * img[box] + alpha * rgb
        out.append(img)
    return torch.stack(out)
