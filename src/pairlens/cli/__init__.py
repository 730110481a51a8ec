"""The ``pairlens`` command line.

Each command module listed in :data:`COMMAND_MODULES` has a function ``add_parser(subparsers)``
that registers its parsers, built from the shared option groups of :mod:`pairlens.cli.options`,
and sets ``func`` (called with the parsed arguments, returning an exit code). Command modules
import nothing heavy at module level: torch is imported inside ``func`` only, so ``--help`` is
fast.

Exit codes: 0 success, 1 runtime error, 2 usage error (a bad command line), 130 interrupted
(Ctrl-C), 141 closed output pipe (``pairlens methods | head``: silent, like other Unix tools).
Errors reach the user as one line, never a traceback (``PAIRLENS_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES = (  # in the order --help lists them: explain first, then the pipeline
    "pairlens.cli.explain",  # explain, methods
    "pairlens.cli.correspond",  # correspond
    "pairlens.cli.models",  # models, models info, download
    "pairlens.cli.evaluate",  # evaluate, report
    "pairlens.cli.corpus",  # corpus, corpus-eval
    "pairlens.cli.train",  # train MODE
    "pairlens.cli.eval_classifier",  # eval-classifier
    "pairlens.cli.study",  # study excon
    "pairlens.cli.demo",  # demo
    "pairlens.cli.analyze",  # analyze augmentations|invert|texture|harmful-augmentations|...
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairlens",
        description="Explain why contrastive / self-supervised vision models find two images "
        "similar, and measure whether the explanations are faithful.",
        epilog="examples:\n  pairlens explain\n  pairlens explain a.jpg b.jpg --methods "
        "conditional-occlusion --out out/\n  pairlens methods\n  pairlens models\n\n"
        "Every command takes --help. Exit codes: 0 success, 1 runtime error, 2 usage error, "
        "130 interrupted,\n141 closed output pipe. PAIRLENS_DEBUG=1 shows tracebacks.",
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


EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pairlens ARGS``; returns the exit code (argparse exits with 2 on a bad command line
    and 0 after ``--help``)."""
    from pairlens.cli.options import UsageError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # evaluate --workers re-runs it
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_OK
        from pairlens.runtime import tune_cpu_runtime

        tune_cpu_runtime()  # before torch is imported: allocator, OpenMP (performance.md)
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except SystemExit:  # argparse: --help (0) or a bad command line (2)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_PIPE
        raise
    except UsageError as err:
        return _error(err, EXIT_USAGE)
    except KeyboardInterrupt:
        print("pairlens: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except Exception as err:  # noqa: BLE001 - the CLI promises one line, not a traceback
        return _error(err, EXIT_RUNTIME)


def _error(err: BaseException, code: int) -> int:
    if os.environ.get("PAIRLENS_DEBUG"):
        raise err
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"pairlens: error: {message}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the final flush at exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (captured in tests)


if __name__ == "__main__":
    sys.exit(main())
