"""What a stored result depends on, as fingerprints: the model's weights and preprocessing, and
the data the pairs are made of (:meth:`pairlens.study.pairs.PairSet.fingerprint`).

A results store maps each *label* shown in reports (a model label such as ``toy@runs/a/model.pt``,
a data label such as ``imgs/``) to exactly one fingerprint; a command whose model or data has the
same label but another fingerprint is refused (:class:`IdentityMismatch`) with a line naming what
differs, so results of two different models or of a changed folder are never mixed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from pairlens.models.similarity import SimilarityModel


class IdentityMismatch(ValueError):
    """A store already holds results for this label, computed from another model or data."""


def model_fingerprint(model: SimilarityModel) -> tuple[str, dict[str, Any]]:
    """``(sha256, description)`` of everything a model contributes to a result: every parameter
    and buffer (name, dtype, shape and bytes, so the same weights from a renamed or re-saved file
    give the same fingerprint, and other weights under the same file name do not) plus its
    preprocessing and similarity (:meth:`SimilarityModel.describe`, crop fraction, patch size)."""
    detail = dict(model.describe())
    detail["crop_fraction"] = float(model.crop_fraction)
    detail["patch_size"] = model.patch_size
    detail["embedding"] = getattr(model, "embedding", None)
    h = hashlib.sha256(json.dumps(detail, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            flat = t.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest(), detail


def explain_model_difference(label: str, stored: Mapping[str, Any], now: Mapping[str, Any],
                             store: str) -> str:
    """One line saying how the model under ``label`` differs from the one stored."""
    keys = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    if keys:
        what = "; ".join(f"{k} {stored.get(k)!r} in the store, {now.get(k)!r} now" for k in keys)
    else:
        what = "other weights"
    return (f"{store} holds results of another model under the label {label!r} ({what}); "
            "use another --store, or give the checkpoint by another path")


def explain_data_difference(label: str, stored: Mapping[str, Any], now: Mapping[str, Any],
                            store: str) -> str:
    """One line listing the files added, removed and modified since ``store`` was written."""
    added = sorted(set(now) - set(stored))
    removed = sorted(set(stored) - set(now))
    changed = sorted(k for k in set(now) & set(stored) if now[k] != stored[k])
    parts = []
    for word, names in (("added", added), ("removed", removed), ("modified", changed)):
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} {word} ({shown})")
    what = "; ".join(parts) or "other content"
    return (f"{store} holds results for data {label!r} as it was before: since then {what}; "
            "use another --store for the changed data")
