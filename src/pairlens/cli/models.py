"""``pairlens models``, ``pairlens models info NAME`` and ``pairlens download NAME``."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the registered models, or show one (models info NAME)",
        description="List the registered models (bundled ones first). 'pairlens models info NAME' "
        "shows architecture, input size, normalisation, embeddings, CAM layer, checkpoint format "
        "and where to download it.",
        epilog="examples:\n  pairlens models\n  pairlens models info mocov3-vit-b",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="models_command", metavar="info")
    info = sub.add_parser(
        "info",
        help="details of one model",
        description="Architecture, input size, normalisation, embeddings, CAM layer, checkpoint "
        "format, expected file name and download address of one registered model.",
        epilog="example:\n  pairlens models info simsiam-r50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("name", help="model name, e.g. mocov3-vit-b")
    info.set_defaults(func=_info)
    p.set_defaults(func=_list)

    d = subparsers.add_parser(
        "download",
        help="download a model's published checkpoint into the cache (explicit, never implicit)",
        description="Download the published checkpoint of NAME into CACHE/NAME/FILE, resuming a "
        "partial download and verifying its SHA-256 checksum when known or given. Prints the "
        "path to pass to --checkpoint.",
        epilog="examples:\n  pairlens download simsiam-r50\n"
        "  pairlens download dino-vit-s16 --cache /data/weights --sha256 <64 hex digits>",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("name", help="model name, e.g. simsiam-r50")
    d.add_argument("--sha256", help="expected SHA-256 of the file (64 hex digits)")
    d.add_argument(
        "--cache", help="cache directory (default: $PAIRLENS_CACHE or ~/.cache/pairlens)"
    )
    d.add_argument("--url", help="download from this address instead (a mirror)")
    d.add_argument("--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=_download)


def _list(args: argparse.Namespace) -> int:
    from pairlens.models.registry import list_models, model_info

    names = list_models()
    width = max(len(n) for n in names)
    for n in names:
        info = model_info(n)
        tag = "bundled" if info.bundled else f"embedding: {info.default_embedding}"
        print(f"{n:<{width}}  {info.summary}  [{tag}]")
    print("\npairlens models info NAME for details; pairlens download NAME for published weights")
    return 0


def format_info(name: str) -> str:
    """The text shown by ``pairlens models info NAME``."""
    from pairlens.models.registry import model_info

    info = model_info(name)
    rows = [
        ("name", info.name),
        ("summary", info.summary),
        ("architecture", info.architecture),
        ("input size", f"{info.input_size[0]}x{info.input_size[1]}"),
        ("normalisation", info.normalization),
        ("embeddings", ", ".join(info.embeddings) + f" (default: {info.default_embedding})"),
        ("CAM layer", info.feature_layer or "-"),
        ("checkpoint format", info.checkpoint_format or ("bundled" if info.bundled else "-")),
        ("expected file", info.checkpoint_name or "-"),
        ("download", info.download_url or "-"),
        ("sha256", info.sha256 or "-"),
    ]
    rows += [(k.replace("_", " "), str(v)) for k, v in info.extras.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows if v)


def _info(args: argparse.Namespace) -> int:
    print(format_info(args.name))
    return 0


def _download(args: argparse.Namespace) -> int:
    from pairlens.models.download import download_model, sha256_of

    def progress(done: int, total: int | None) -> None:
        if args.quiet:
            return
        if total:
            sys.stderr.write(f"\r{done / 2**20:8.1f} / {total / 2**20:.1f} MiB")
        else:
            sys.stderr.write(f"\r{done / 2**20:8.1f} MiB")
        sys.stderr.flush()

    path = download_model(
        args.name, cache_dir=args.cache, sha256=args.sha256, url=args.url, progress=progress
    )
    if not args.quiet:
        sys.stderr.write("\n")
        if not args.sha256:
            from pairlens.models.registry import model_info

            if not model_info(args.name).sha256:
                sys.stderr.write(
                    f"no checksum known for {args.name}; sha256 of the file: {sha256_of(path)}\n"
                )
    print(path)
    return 0
