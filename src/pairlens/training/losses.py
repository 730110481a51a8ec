"""Contrastive losses: supervised contrastive (SupCon / ExCon, ExConB) and NT-Xent (SimCLR).

One function, :func:`supcon_loss`, implements eq. 2 of the ExCon paper (seed 003, §3.2, after
Khosla et al. 2020) and its ExConB extension, eq. 3 (§3.4). NT-Xent (SimCLR, Chen et al. 2020) is
the special case in which the labels identify the source image of each view (:func:`nt_xent`).

Conventions (fixed, tested against a brute-force loop in ``tests/test_losses.py``):

* ``features`` is (N, D), one row per view, already L2-normalised (the caller normalises; the
  function does not, so that ``e_i · e_p`` is exactly the dot product of eq. 2);
* logits are ``e_i · e_a / τ`` with no further rescaling (the SupCon reference code multiplies the
  loss by ``τ / τ_base``; we do not);
* positives of anchor ``i`` are the other non-background rows with the same label; the denominator
  of anchor ``i`` runs over every other row ``a ≠ i``, background rows included (eq. 3);
* background rows (``background[i] = True``) are never anchors and never positives, whatever their
  label; their only influence is through the denominators;
* the loss is the mean over anchors that have at least one positive of
  ``-1/|P(i)| Σ_p log softmax_i(p)`` (eq. 2 writes a sum over anchors; the mean makes the scale
  independent of the batch size, as in the reference code). Anchors without a positive are skipped;
  with no such anchor at all the loss is an exact 0 that still carries a (zero) gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def supcon_loss(
    features: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    background: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss, eq. 2 (and eq. 3 with ``background``) of seed 003.

    Args:
        features: (N, D) L2-normalised embeddings, one row per view.
        labels: (N,) integer labels; rows with equal labels are positives of each other.
        temperature: τ in ``exp(e_i · e_a / τ)``.
        background: optional (N,) bool; True marks ExConB background rows, which are only ever
            in denominators (never anchors, never positives).

    Returns:
        Scalar loss: mean over anchors with at least one positive (0 when there is none).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D); got {tuple(features.shape)}")
    n = features.shape[0]
    labels = labels.reshape(-1).to(features.device)
    if labels.shape[0] != n:
        raise ValueError(f"labels must have {n} entries; got {labels.shape[0]}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if background is None:
        background = torch.zeros(n, dtype=torch.bool, device=features.device)
    else:
        background = background.reshape(-1).to(features.device, torch.bool)
        if background.shape[0] != n:
            raise ValueError(f"background must have {n} entries; got {background.shape[0]}")

    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    foreground = ~background
    positives = (labels[:, None] == labels[None, :]) & ~eye
    positives &= foreground[:, None] & foreground[None, :]
    n_pos = positives.sum(dim=1)
    anchors = foreground & (n_pos > 0)
    if not bool(anchors.any()):
        return features.sum() * 0.0

    # only anchor rows are computed: each has a non-empty denominator, so no -inf / NaN appears
    logits = features[anchors] @ features.T / temperature  # (A, N)
    logits = logits.masked_fill(eye[anchors], float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives[anchors]
    per_anchor = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_pos[anchors]
    return per_anchor.mean()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent of SimCLR for two views (B, D) each, L2-normalised: :func:`supcon_loss` on the
    2B rows with label = index of the source image, so each view's only positive is the other
    view of the same image and the other 2B - 2 views are its negatives."""
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have equal shapes; got {tuple(z1.shape)}, "
                         f"{tuple(z2.shape)}")
    b = z1.shape[0]
    labels = torch.arange(b, device=z1.device).repeat(2)
    return supcon_loss(torch.cat([z1, z2]), labels, temperature=temperature)
