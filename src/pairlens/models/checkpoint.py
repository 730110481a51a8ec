"""Reading published checkpoints safely, with one-line errors that name the file.

Every real-model loader in :mod:`pairlens.models.zoo` goes through these helpers:

* :func:`read_checkpoint` opens a file with ``torch.load(..., weights_only=True)`` (or safetensors)
  and turns every failure (missing, empty, truncated, corrupt, not a checkpoint, pickled Python
  objects) into a :class:`CheckpointError` whose message is one line naming the file and what was
  expected. It never passes on torch's advice to retry with ``weights_only=False`` (which would
  run the code a malicious file carries). Every checkpoint PairLens reads, published or written by
  its own trainer, goes through it;
* :func:`find_state_dict`, :func:`strip_prefix`, :func:`sub_state_dict` unwrap the nesting used by
  training scripts (``{'state_dict': ...}``, ``{'model': ...}``, ``module.`` prefixes of
  DistributedDataParallel);
* :func:`load_strict` loads a state dict into a module whose layout mirrors the published one and,
  on any difference, reports the missing keys, unexpected keys and shape mismatches readably.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]

_SHOW = 4  # keys shown per category in an error message


class CheckpointError(ValueError):
    """A checkpoint file could not be read or does not match the requested model."""


def read_checkpoint(path: str | Path, expected: str = "a PyTorch checkpoint") -> Any:
    """Load ``path`` on the CPU with ``weights_only=True`` (``.safetensors`` through safetensors).

    Raises :class:`CheckpointError` with a one-line message naming the file and ``expected`` for a
    missing, empty, truncated or corrupt file, a file that is not a checkpoint, or one holding
    Python objects that cannot be loaded safely.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file (expected {expected})")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a checkpoint file (expected {expected})")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{p}: file is empty (expected {expected})")
    if p.suffix == ".safetensors":
        return _read_safetensors(p, expected)
    try:
        # argparse.Namespace (the ``args`` entry of DINO-style training checkpoints) only holds
        # attributes: allowing it keeps weights_only's guarantee
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raw = str(err)
        text = _one_line(err)
        if "weights_only" in raw or "Unsupported global" in raw or "GLOBAL" in raw:
            raise CheckpointError(
                f"{p}: holds pickled Python objects that PairLens does not load, because loading "
                f"them could run code (expected {expected}); if you trust the file, re-save only "
                "its tensors (its state_dict) and load that"
            ) from None
        raise CheckpointError(
            f"{p}: not a PyTorch checkpoint or corrupt ({_short(text)}); expected {expected}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        text = _one_line(err)
        lowered = text.lower()
        if isinstance(err, EOFError) or any(
            s in lowered
            for s in ("central directory", "eof", "truncat", "failed finding", "invalid header")
        ):
            what = "truncated or corrupt file"
        else:
            what = "not a readable PyTorch checkpoint"
        raise CheckpointError(
            f"{p}: {what} ({size} bytes; torch.load said: {_short(text)}); expected {expected}"
        ) from None


def _read_safetensors(p: Path, expected: str) -> StateDict:
    try:
        from safetensors.torch import load_file
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            f"{p}: reading .safetensors files needs the 'safetensors' package"
        ) from err
    try:
        return load_file(str(p), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises several private error types
        raise CheckpointError(
            f"{p}: truncated or corrupt safetensors file ({_short(_one_line(err))}); "
            f"expected {expected}"
        ) from None


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty mapping of string keys to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def find_state_dict(
    obj: Any, path: str | Path, expected: str, keys: Iterable[str] = ("state_dict", "model")
) -> StateDict:
    """The state dict inside a loaded checkpoint: ``obj`` itself or ``obj[k]`` for ``k`` in ``keys``
    (first match). Raises :class:`CheckpointError` describing what the file holds otherwise."""
    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for k in keys:
            if k in obj and is_state_dict(obj[k]):
                return dict(obj[k])
    raise CheckpointError(f"{path}: {describe_object(obj)}; expected {expected}")


def strip_prefix(sd: Mapping[str, Tensor], prefix: str = "module.") -> StateDict:
    """Remove ``prefix`` from every key that starts with it (DDP's ``module.`` by default)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in sd.items()}


def sub_state_dict(sd: Mapping[str, Tensor], prefix: str) -> StateDict:
    """The entries under ``prefix`` (for example ``"base_encoder."``), with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def key_summary(keys: Iterable[str], depth: int = 2, limit: int = 6) -> str:
    """Short description of a key set by its leading components (``'module.encoder.* (320)'``)."""
    counts: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        counts[head] += 1
    items = [f"{h} ({c})" if c > 1 else h for h, c in counts.most_common(limit)]
    more = len(counts) - len(items)
    return ", ".join(items) + (f", and {more} more groups" if more > 0 else "")


def describe_object(obj: Any) -> str:
    """One phrase saying what a loaded checkpoint object holds."""
    if is_state_dict(obj):
        return f"file holds a state dict with {len(obj)} keys: {key_summary(obj)}"
    if isinstance(obj, Mapping):
        parts = []
        for k, v in list(obj.items())[:8]:
            kind = f"state dict of {len(v)} keys" if is_state_dict(v) else type(v).__name__
            parts.append(f"{k!r} ({kind})")
        return "file holds a dict with entries " + ", ".join(parts)
    return f"file holds a {type(obj).__name__}, not a state dict"


def load_strict(
    module: nn.Module,
    sd: Mapping[str, Tensor],
    path: str | Path,
    expected: str,
    optional: Iterable[str] = (),
    assign: bool = False,
) -> None:
    """Load ``sd`` into ``module`` requiring the key sets and shapes to match exactly.

    Keys listed in ``optional`` (exact names) may be absent from or extra in the file. Any other
    difference raises :class:`CheckpointError` with one line naming the file, ``expected`` and up
    to four missing keys, unexpected keys and shape mismatches each. ``assign=True`` makes the
    file's tensors the module's parameters (for modules built on the ``meta`` device).
    """
    optional = set(optional)
    own = module.state_dict()
    sd = {k: v for k, v in sd.items() if not (k in optional and k not in own)}
    missing = [k for k in own if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(_list(f"{len(missing)} missing keys", missing))
        if unexpected:
            problems.append(_list(f"{len(unexpected)} unexpected keys", unexpected))
        if mismatched:
            problems.append(_list(f"{len(mismatched)} shape mismatches", mismatched))
        raise CheckpointError(
            f"{path}: does not match {expected}: "
            + "; ".join(problems)
            + f" (the file's keys: {key_summary(sd)})"
        )
    to_load = {k: v for k, v in sd.items() if k in own}
    module.load_state_dict(to_load, strict=not optional, assign=assign)


def _list(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return f"{label} ({shown}{', ...' if len(items) > _SHOW else ''})"


_UNSAFE_ADVICE = re.compile(r"[^.;()]*weights_only[^.;]*[.;]?", re.IGNORECASE)


def _one_line(err: BaseException) -> str:
    """The error as one line, without any sentence about ``weights_only`` (torch advises
    ``weights_only=False``, which would execute a malicious pickle)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return " ".join(_UNSAFE_ADVICE.sub(" ", text).split()) or type(err).__name__


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
