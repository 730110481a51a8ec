"""The paper's reference code, re-written as plain batch-1 loops for timing comparisons only.

Source: the seed-000 authors' repository (github.com/fawazsammani/explain-cl), files
``methods.py`` (explanation methods) and ``evaluation.py`` (metrics), as called in its
``xai.ipynb`` (occlusion and pairwise occlusion with ``batch_size=32``). Each function below names
the function it follows. They were written from reading that code, not copied; they keep its
structure and, above all, its amount of work: one pair at a time, each image of a pair through the
model separately, the conditional image re-encoded at every insertion/deletion step, occluded
images embedded 32 at a time, the pairwise-occlusion masks accumulated pair by pair on the CPU.

Gradient passes call ``score.backward()`` as the original does, so they also compute every
parameter's gradient (for Grad-CAM the backward pass runs through the whole network, not only
down to the feature layer): that is the reference's cost. Deliberate differences, all in the
reference's favour (so PairLens / reference ratios are if anything pessimistic for PairLens):

* inference passes run under ``torch.no_grad`` (the original builds autograd graphs in several
  of them, e.g. every step of the single-pair insertion / deletion loops);
* the Averaged Transforms views are the pixel-space blend of the image with a brightness-scaled
  copy (the original builds them with torchvision's PIL colour jitter, which costs more);
* Deep Similarity is not in that repository; :func:`deep_similarity` is a batch-1 loop written
  from its definition (Stylianou et al., 2019), one no-grad forward per image.

``model`` is a :class:`pairlens.SimilarityModel`: ``model.embed`` plays the role of the
original's ``ssl_model(img)`` and ``model.embed_with_features`` of its ``GradCAM`` feature hook.
Images are (1, 3, H, W) tensors in model-input space; every function returns two maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF

# --------------------------------------------------------------------------- methods.py


def _cos(a, b):
    return F.cosine_similarity(a, b, dim=-1)


def _backward_to_inputs(model, a, c):
    """``score.backward()`` as in the original (parameter gradients included); input grads."""
    model.zero_grad()
    a, c = a.clone().requires_grad_(True), c.clone().requires_grad_(True)
    score = _cos(model.embed(a), model.embed(c))
    score.sum().backward()
    return a.grad, c.grad


def saliency(model, img1, img2):
    """methods.py ``sailency``: one forward per image, ``score.backward()``."""
    g1, g2 = _backward_to_inputs(model, img1, img2)
    return (img1 * g1).abs().amax(1), (img2 * g2).abs().amax(1)


def smooth_grad(model, img1, img2, steps: int = 50, noise_level: float = 0.15):
    """methods.py ``smooth_grad``: ``steps`` noisy copies (the same noise on both images), one
    forward per image and one backward per step. The original divides ``noise_level`` by the
    range; the cost does not depend on it."""
    sigma = noise_level * float(img1.max() - img1.min())
    g1 = torch.zeros_like(img1)
    g2 = torch.zeros_like(img2)
    for _ in range(steps):
        noise = torch.zeros_like(img1).normal_(0, sigma)
        d1, d2 = _backward_to_inputs(model, img1 + noise, img2 + noise)
        g1 += d1
        g2 += d2
    return (img1 * g1 / steps).abs().amax(1), (img2 * g2 / steps).abs().amax(1)


def mixed_images(img, steps: int = 10):
    """methods.py ``create_mixed_images``: lam * pure + (1 - lam) * transformed for the ``steps``
    values lam = 1, 1 - 1/steps, ..., 1/steps (here the transform is a brightness change)."""
    strong = img * 0.6
    return [lam * img + (1 - lam) * strong for lam in np.arange(steps, 0, -1) / steps]


def averaged_transforms(model, img1, img2, steps: int = 10):
    """methods.py ``averaged_transforms``: for each of the ``steps - 1`` views after the first,
    one forward of image 1 and one of the view, one backward."""
    views = mixed_images(img2, steps)
    g1 = torch.zeros_like(img1)
    g2 = torch.zeros_like(img2)
    for view in views[1:]:
        d1, d2 = _backward_to_inputs(model, img1, view)
        g1 += d1
        g2 += d2
    return (img1 * g1 / (steps - 1)).abs().amax(1), (views[-1] * g2 / (steps - 1)).abs().amax(1)


@torch.no_grad()
def occlusion(model, img1, img2, w_size: int = 64, stride: int = 8, batch_size: int = 32):
    """methods.py ``occlusion``: every window position occluded in clones of both images, the
    occluded images embedded ``batch_size`` at a time, each compared with the other whole image."""
    side = img2.shape[-1]
    out = int((side - w_size) / stride + 1)
    z1, z2 = model.embed(img1), model.embed(img2)
    images1, images2 = [], []
    for i in range(out):
        for j in range(out):
            a, c = img1.clone(), img2.clone()
            a[:, :, i * stride : i * stride + w_size, j * stride : j * stride + w_size] = 0
            c[:, :, i * stride : i * stride + w_size, j * stride : j * stride + w_size] = 0
            images1.append(a)
            images2.append(c)
    images1, images2 = torch.cat(images1), torch.cat(images2)
    s1, s2 = [], []
    for b in range(0, len(images1), batch_size):
        s1.append(_cos(model.embed(images1[b : b + batch_size]), z2))
        s2.append(_cos(z1, model.embed(images2[b : b + batch_size])))
    base = float(_cos(z1, z2))
    return base - torch.cat(s1).view(out, out), base - torch.cat(s2).view(out, out)


@torch.no_grad()
def pairwise_occlusion(model, img1, img2, batch_size: int = 32, num_erases: int = 100,
                       erase_scale=(0.1, 0.3), erase_ratio=(1.0, 1.5)):
    """methods.py ``pairwise_occlusion``: ``num_erases`` torchvision ``RandomErasing`` copies of
    each image, embedded ``batch_size`` at a time; softmax of the drops; each sample's weight
    added, on the CPU with NumPy, to the zero pixels of the image with the lower embedding norm."""
    baseline = _cos(model.embed(img1), model.embed(img2))
    erase = T.RandomErasing(p=1.0, scale=erase_scale, ratio=erase_ratio)
    images1 = torch.cat([erase(img1) for _ in range(num_erases)])
    images2 = torch.cat([erase(img2) for _ in range(num_erases)])
    sims, n1, n2 = [], [], []
    for b in range(0, len(images1), batch_size):
        o1, o2 = model.embed(images1[b : b + batch_size]), model.embed(images2[b : b + batch_size])
        sims.append(_cos(o1, o2))
        n1.append(o1.norm(dim=-1))
        n2.append(o2.norm(dim=-1))
    weights = torch.softmax(baseline - torch.cat(sims), dim=-1).cpu().numpy()
    n1, n2 = torch.cat(n1).cpu().numpy(), torch.cat(n2).cpu().numpy()
    h, w = img1.shape[-2:]
    a1, a2 = np.zeros((h, w)), np.zeros((h, w))
    for n in range(num_erases):
        im1 = images1[n].cpu().numpy().transpose((1, 2, 0)).sum(axis=-1)
        im2 = images2[n].cpu().numpy().transpose((1, 2, 0)).sum(axis=-1)
        if n1[n] < n2[n]:
            a1[im1 == 0] += weights[n]
        else:
            a2[im2 == 0] += weights[n]
    return a1 / (a1.max() + 1e-9), a2 / (a2.max() + 1e-9)


def _features_and_grads(model, img1, img2):
    """methods.py ``GradCAM.forward`` and ``get_gradcam``: each image through the feature
    extractor separately, the similarity of the heads' outputs, ``score.backward()`` (through the
    whole network, for the parameters' gradients) with hooks keeping the feature maps' gradients."""
    model.zero_grad()
    z1, f1 = model.embed_with_features(img1)
    z2, f2 = model.embed_with_features(img2)
    f1.retain_grad()
    f2.retain_grad()
    _cos(z1, z2).sum().backward()
    g1, g2 = f1.grad, f2.grad
    hw = tuple(img1.shape[-2:])
    return (model.to_grid(f1.detach(), hw), model.to_grid(f2.detach(), hw),
            model.to_grid(g1, hw), model.to_grid(g2, hw))


def grad_cam(model, img1, img2):
    """methods.py ``get_gradcam``: sum_k A^k * relu(dS/dA^k)."""
    f1, f2, g1, g2 = _features_and_grads(model, img1, img2)
    return (f1 * F.relu(g1)).sum(1), (f2 * F.relu(g2)).sum(1)


def interaction_cam(model, img1, img2, reduction: str = "mean", grad_interact: bool = True):
    """methods.py ``get_interactioncam`` (mean / max reduction, gradient interaction)."""
    f1, f2, g1, g2 = _features_and_grads(model, img1, img2)
    if grad_interact:
        b, d, h, w = g1.shape
        gram = torch.bmm(g1.view(b, d, h * w), g2.view(b, d, h * w).transpose(1, 2))
        g1 = gram.amax(-1)[:, :, None, None]
        g2 = gram.amax(1)[:, :, None, None]
    if reduction == "mean":
        joint = f1.mean((2, 3)) * f2.mean((2, 3))
    else:
        joint = (F.max_pool2d(f1, f1.shape[2:]).flatten(1)
                 * F.max_pool2d(f2, f2.shape[2:]).flatten(1))
    joint = joint[:, :, None, None]
    return (f1 * joint * F.relu(g1)).sum(1), (f2 * joint * F.relu(g2)).sum(1)


@torch.no_grad()
def deep_similarity(model, img1, img2):
    """Not in the reference repository: Stylianou et al.'s decomposition, one no-grad forward
    per image, written from the definition."""
    _, f1 = model.embed_with_features(img1)
    _, f2 = model.embed_with_features(img2)
    hw = tuple(img1.shape[-2:])
    f1, f2 = model.to_grid(f1, hw), model.to_grid(f2, hw)
    p1, p2 = f1.mean((2, 3)), f2.mean((2, 3))
    return torch.einsum("bchw,bc->bhw", f1, p2), torch.einsum("bchw,bc->bhw", f2, p1)


METHODS = {
    "input-x-gradient": saliency,
    "smoothgrad": smooth_grad,
    "averaged-transforms": averaged_transforms,
    "conditional-occlusion": occlusion,
    "pairwise-occlusion": pairwise_occlusion,
    "grad-cam": grad_cam,
    "interaction-cam": interaction_cam,
    "deep-similarity": deep_similarity,
}

# --------------------------------------------------------------------------- evaluation.py


def blur_image(img):
    """evaluation.py ``blur_image``: torchvision Gaussian blur, kernel 11, sigma 5."""
    return TF.gaussian_blur(img, kernel_size=[11, 11], sigma=[5, 5])


def _order(explanation, hw):
    return torch.flip(explanation.reshape(-1, hw).argsort(), dims=[-1])[0]


def _auc(scores):
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)


@torch.no_grad()
def insertion_deletion_simult_single(model, img1, img2, expl1, expl2, mode: str, step: int):
    """evaluation.py ``insertion_deletion_simult_single``: N+1 steps, each one forward of each
    altered image; pixels moved ``step`` at a time along the saliency order."""
    h, w = img1.shape[-2:]
    hw = h * w
    n = math.ceil(hw / step)
    if mode == "del":
        start1, start2 = img1.clone(), img2.clone()
        finish1, finish2 = torch.zeros_like(img1), torch.zeros_like(img2)
    else:
        start1, start2 = blur_image(img1), blur_image(img2)
        finish1, finish2 = img1.clone(), img2.clone()
    start1, start2 = start1.reshape(1, 3, hw), start2.reshape(1, 3, hw)
    finish1, finish2 = finish1.reshape(1, 3, hw), finish2.reshape(1, 3, hw)
    o1, o2 = _order(expl1, hw), _order(expl2, hw)
    scores = np.empty(n + 1)
    for i in range(n + 1):
        s = _cos(model.embed(start1.view(1, 3, h, w)), model.embed(start2.view(1, 3, h, w)))
        scores[i] = s[0].item()
        if i < n:
            c1, c2 = o1[step * i : step * (i + 1)], o2[step * i : step * (i + 1)]
            start1[:, :, c1] = finish1[:, :, c1]
            start2[:, :, c2] = finish2[:, :, c2]
    return _auc(scores)


@torch.no_grad()
def insertion_deletion_cond_single(model, img, cond_img, expl, mode: str, step: int):
    """evaluation.py ``insertion_deletion_cond_single``: as above with one image altered; the
    conditioning image is re-encoded at every step, as in the original."""
    h, w = img.shape[-2:]
    hw = h * w
    n = math.ceil(hw / step)
    if mode == "del":
        start, finish = img.clone(), torch.zeros_like(img)
    else:
        start, finish = blur_image(img), img.clone()
    start, finish = start.reshape(1, 3, hw), finish.reshape(1, 3, hw)
    order = _order(expl, hw)
    scores = np.empty(n + 1)
    for i in range(n + 1):
        scores[i] = _cos(model.embed(start.view(1, 3, h, w)), model.embed(cond_img))[0].item()
        if i < n:
            c = order[step * i : step * (i + 1)]
            start[:, :, c] = finish[:, :, c]
    return _auc(scores)


def _minmax(e):
    return (e - e.min()) / (e.max() - e.min())


@torch.no_grad()
def average_drop_increase_simult(model, img1, img2, expl1, expl2):
    """evaluation.py ``average_drop_increase_simult``: four forwards."""
    base = _cos(model.embed(img1), model.embed(img2))
    score = _cos(model.embed(_minmax(expl1) * img1), model.embed(_minmax(expl2) * img2))
    return (base - score).clamp(min=0) / base, (score > base).sum()


@torch.no_grad()
def average_drop_increase_cond(model, img, cond_img, expl):
    """evaluation.py ``average_drop_increase_cond``: four forwards."""
    base = _cos(model.embed(img), model.embed(cond_img))
    score = _cos(model.embed(_minmax(expl) * img), model.embed(cond_img))
    return (base - score).clamp(min=0) / base, (score > base).sum()


def six_metrics(model, img1, img2, expl1, expl2, step: int) -> dict[str, float]:
    """SI, SD, CI, CD (both directions averaged), SAD, CAD of one pair with the functions above,
    called as the paper's evaluation does (one pair at a time)."""
    e1, e2 = expl1.reshape(1, 1, *expl1.shape[-2:]), expl2.reshape(1, 1, *expl2.shape[-2:])
    out = {}
    for mode, letter in (("ins", "I"), ("del", "D")):
        out[f"S{letter}"] = insertion_deletion_simult_single(model, img1, img2, e1, e2, mode, step)
        one = insertion_deletion_cond_single(model, img1, img2, e1, mode, step)
        two = insertion_deletion_cond_single(model, img2, img1, e2, mode, step)
        out[f"C{letter}"] = (one + two) / 2
    out["SAD"] = float(average_drop_increase_simult(model, img1, img2, e1, e2)[0])
    out["CAD"] = float(average_drop_increase_cond(model, img1, img2, e1)[0]
                       + average_drop_increase_cond(model, img2, img1, e2)[0]) / 2
    return out
