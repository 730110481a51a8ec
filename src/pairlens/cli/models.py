"""``pairlens models``, ``pairlens models info NAME`` and ``pairlens download NAME``."""

from __future__ import annotations

import argparse
import re
import sys

from pairlens.cli.options import (
    Output,
    UsageError,
    add_output_options,
    add_run_options,
    usage,
)


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
    add_output_options(info, None, out=False)
    info.set_defaults(func=_info)
    add_output_options(p, None, out=False)
    p.set_defaults(func=_list)

    d = subparsers.add_parser(
        "download",
        help="download a model's published checkpoint into the cache (explicit, never implicit)",
        description="Download the published checkpoint of NAME into CACHE/NAME/FILE, resuming a "
        "partial download and verifying its SHA-256 checksum when known or given. Prints the "
        "path to pass to --checkpoint.",
        epilog="examples:\n  pairlens download simsiam-r50\n"
        "  pairlens download dino-vit-s16 --cache /data/weights --sha256 SHA256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("name", help="model name, e.g. simsiam-r50")
    d.add_argument("--sha256", help="expected SHA-256 of the file (64 hex digits)")
    d.add_argument(
        "--cache", help="cache directory (default: $PAIRLENS_CACHE or ~/.cache/pairlens)"
    )
    d.add_argument("--url", help="download from this address instead (a mirror)")
    add_output_options(d, None, out=False)
    add_run_options(d, seed=False, threads=False)
    d.set_defaults(func=_download)


def _list(args: argparse.Namespace) -> int:
    from pairlens.models.registry import list_models, model_info

    out = Output(args, "models")
    names = list_models()
    width = max(len(n) for n in names)
    lines, models = [], []
    for n in names:
        info = model_info(n)
        tag = "bundled" if info.bundled else f"embedding: {info.default_embedding}"
        lines.append(f"{n:<{width}}  {info.summary}  [{tag}]")
        models.append({"name": n, "summary": info.summary, "bundled": info.bundled,
                       "default_embedding": info.default_embedding})
    lines.append("\npairlens models info NAME for details; pairlens download NAME for published "
                 "weights")
    out.add(models=models)
    return out.finish("\n".join(lines))


def info_rows(name: str) -> list[tuple[str, str]]:
    """The fields shown by ``pairlens models info NAME``."""
    from pairlens.models.registry import model_info

    info = usage(model_info, name)
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
    return [(k, v) for k, v in rows if v]


def format_info(name: str) -> str:
    """The text shown by ``pairlens models info NAME``."""
    rows = info_rows(name)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _info(args: argparse.Namespace) -> int:
    out = Output(args, "models info")
    out.add(model={k.replace(" ", "_"): v for k, v in info_rows(args.name)})
    return out.finish(format_info(args.name))


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

    from pairlens.models.registry import model_info

    out = Output(args, "download")
    usage(model_info, args.name)
    if args.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        raise UsageError(f"--sha256 expects 64 hex digits, got {args.sha256!r}")
    path = download_model(
        args.name, cache_dir=args.cache, sha256=args.sha256, url=args.url, progress=progress
    )
    if not args.quiet:
        sys.stderr.write("\n")
    if not args.sha256 and not model_info(args.name).sha256:
        digest = sha256_of(path)
        out.add(sha256=digest)
        if not args.quiet:
            sys.stderr.write(f"no checksum known for {args.name}; sha256 of the file: {digest}\n")
    out.wrote(path, f"checkpoint of {args.name}: pass it to --checkpoint")
    out.add(path=str(path))
    if out.json:
        return out.finish()
    if not args.quiet:
        sys.stderr.write(f"wrote {path} (the checkpoint of {args.name}; pass it to "
                         "--checkpoint)\n")
    print(path)  # the path alone on stdout, for scripts: $(pairlens download NAME)
    return 0
