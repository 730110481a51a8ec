"""The ``pairlens`` command line.

Each subsystem contributes its sub-commands through a function ``add_parser(subparsers)`` in the
module listed in :data:`COMMAND_MODULES`; it registers its parsers and sets ``func`` (called with
the parsed arguments, returning an exit code). Errors reach the user as one line, never a traceback
(set ``PAIRLENS_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "pairlens.cli.explain",  # explain, methods
    "pairlens.cli.correspond",  # correspond
    "pairlens.cli.models",  # models, models info, download
    "pairlens.cli.train",  # train
    "pairlens.cli.excon",  # eval-classifier, study
    "pairlens.cli.evaluate",  # evaluate, report
    "pairlens.cli.corpus",  # corpus
    "pairlens.cli.demo",  # demo
    "pairlens.cli.analyze",  # analyze augmentations|invert|texture|harmful-augmentations|...
)


class CLIError(Exception):
    """An error whose message is shown to the CLI user as is."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairlens",
        description="Explain why contrastive / self-supervised vision models find two images "
        "similar, and measure whether the explanations are faithful.",
        epilog="examples:\n  pairlens explain\n  pairlens explain a.jpg b.jpg --method "
        "conditional-occlusion --out out/\n  pairlens methods\n  pairlens models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # that subsystem is not part of this build
            raise
        module.add_parser(sub)
    return parser


def _version() -> str:
    from pairlens import __version__

    return f"pairlens {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from pairlens.runtime import tune_cpu_runtime

    tune_cpu_runtime()  # before torch is imported: allocator and OpenMP settings (performance.md)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pairlens: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI promises one line, not a traceback
        if os.environ.get("PAIRLENS_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"pairlens: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
