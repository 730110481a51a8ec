"""Explicit download of published checkpoints: ``pairlens download NAME``.

Never called implicitly: :func:`pairlens.load_model` only reads local files. A download goes to
``CACHE/NAME/FILE`` (``CACHE`` is ``--cache``, else ``$PAIRLENS_CACHE``, else
``~/.cache/pairlens``) through a ``FILE.part`` file that is resumed with an HTTP ``Range`` request
when a previous attempt was interrupted, checked against a SHA-256 checksum when one is known or
given, and renamed into place only when complete (and verified).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed or its checksum did not match."""


def default_cache_dir() -> Path:
    env = os.environ.get("PAIRLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pairlens"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` is kept (and verified when ``sha256`` is given). Data goes to
    ``dest.part`` first; an existing ``.part`` is resumed with ``Range: bytes=N-`` (a server that
    ignores the range sends the whole file again, which then replaces the partial one). With
    ``sha256`` a mismatch deletes the downloaded data and raises :class:`DownloadError`.
    ``progress(done, total)`` is called after every chunk.
    """
    dest = Path(dest).expanduser()
    expected = sha256.strip().lower() if sha256 else None
    if expected is not None and (
        len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)
    ):
        raise DownloadError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if dest.exists():
        _verify(dest, expected, remove=False)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pairlens"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - explicit user URL
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is already complete
            return _finish(part, dest, expected)
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: cannot connect ({getattr(err, 'reason', err)})") from None
    with response:
        status = getattr(response, "status", 200)
        if offset and status != 206:
            offset = 0  # the server ignored the range and sends the whole file
        elif offset and not _range_starts_at(response.headers.get("Content-Range"), offset):
            raise DownloadError(
                f"{url}: the server resumed at the wrong position "
                f"({response.headers.get('Content-Range')!r}, expected byte {offset}); "
                f"delete {part} and try again"
            )
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        done = offset
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as err:
            raise DownloadError(
                f"{url}: download interrupted after {done} bytes ({err}); run the same command "
                "again to resume"
            ) from None
    if total is not None and done < total:
        raise DownloadError(
            f"{url}: download interrupted after {done} of {total} bytes; run the same command "
            "again to resume"
        )
    return _finish(part, dest, expected)


def _range_starts_at(content_range: str | None, offset: int) -> bool:
    # "bytes 1000-4999/5000"
    if not content_range or not content_range.startswith("bytes "):
        return False
    first = content_range[6:].split("-", 1)[0].strip()
    return first.isdigit() and int(first) == offset


def _finish(part: Path, dest: Path, expected: str | None) -> Path:
    _verify(part, expected, remove=True, name=dest)
    os.replace(part, dest)
    return dest


def _verify(path: Path, expected: str | None, remove: bool, name: Path | None = None) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        if remove:
            path.unlink(missing_ok=True)
        raise DownloadError(
            f"{name or path}: SHA-256 mismatch (expected {expected}, got {actual})"
            + ("; the downloaded data was deleted" if remove else "")
        )


def download_model(
    name: str,
    cache_dir: str | Path | None = None,
    sha256: str | None = None,
    url: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download the published checkpoint of the registered model ``name`` into the cache and
    return its path (``CACHE/NAME/FILE``). ``sha256`` overrides the registry's checksum; ``url``
    overrides the registry's address (for mirrors)."""
    from pairlens.models.registry import model_info

    info = model_info(name)
    url = url or info.download_url
    if not url:
        source = info.extras.get("source")
        how = f"; get it from {source}" if source else ""
        convert = info.extras.get("convert")
        how += f" and convert it ({convert})" if convert else ""
        raise DownloadError(f"model {info.name!r} has no single published PyTorch file{how}")
    filename = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or f"{info.name}.pth"
    dest = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return download_file(
        url, dest / info.name / filename, sha256 or info.sha256 or None, progress=progress
    )
