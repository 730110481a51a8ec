"""Shared option groups of the ``pairlens`` command line, and the helpers that read them.

Every command builds its options from these groups, so a concept has one spelling everywhere:

============  =================================================================================
group         options
============  =================================================================================
model         ``--model NAME``, ``--checkpoint PATH``, ``--embedding NAME``, ``--device DEV``;
              with ``execution=True`` also ``--amp bf16|fp16`` and ``--channels-last``
methods       ``--methods LIST`` (comma list, ``all``, variants ``name[key=value;...]``),
              ``--param [METHOD.]KEY=VALUE`` (repeatable; see :mod:`pairlens.params`)
store         ``--store FILE`` (the SQLite results file)
output        ``--out DIR`` (always a folder), ``--json`` (one JSON object on stdout)
run           ``--seed N`` or ``--seeds LIST`` (``0,1,2`` or ``0-4``), ``--threads N``,
              ``--batch-size N`` (images per forward pass), ``--quiet``, ``--yes``
============  =================================================================================

Old spellings (``--method``, ``--db``, ``--all-methods``, ...) are registered with
:func:`add_deprecated`: hidden from ``--help``, still accepted until pairlens 0.3, and announced
with a one-line warning. Nothing here imports torch at parse time.

Errors: raise :class:`UsageError` for a bad command line (exit code 2); anything else raised by
a command is a runtime error (exit code 1). :class:`Output` collects what a command wrote and
prints the closing list (or, with ``--json``, one JSON object).

A new command is one module in ``pairlens/cli/`` listed in ``COMMAND_MODULES``::

    EXAMPLES = '''examples:
      pairlens analyze a.jpg --model digits --seeds 0-2 --out out/
    '''  # every example runs in tests/test_cli_examples.py; say so if it takes > 1 min

    def add_parser(sub):
        p = command_parser(sub, "analyze", "one line for pairlens --help", "description",
                           EXAMPLES)
        p.add_argument("images", nargs="+", metavar="IMAGE")
        add_model_options(p)
        add_output_options(p, "pairlens-analyze")
        add_run_options(p, seeds="0-2", batch_size=64)
        p.set_defaults(func=run)

    def run(args):  # heavy imports here, never at module level
        out = Output(args, "analyze")
        seeds = seeds_of(args)
        apply_threads(args)
        model = load_model(args)
        ...  # one overall bar: pairlens.progress.overall(total, "analyze")
        out.wrote(path, "what it is")
        return out.finish()

Use :func:`usage` around library calls whose ``ValueError`` means a bad option, and
:func:`add_deprecated` to keep an old spelling working for one release.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: the release in which deprecated spellings disappear
REMOVED_IN = "0.3"
#: the bundled model used when ``--model`` is not given (``digits`` for the digits data sets)
DEFAULT_MODEL = "photos"
#: the results store used when ``--store`` is not given
DEFAULT_STORE = "pairlens-results.db"
#: runs estimated longer than this many seconds stop before starting unless ``--yes`` is given
CONFIRM_SECONDS = 15 * 60


class UsageError(Exception):
    """A bad command line: shown as one line, exit code 2."""


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"pairlens: warning: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- deprecation
class _Deprecated(argparse.Action):
    """An old spelling: warns, converts the value and stores it under the new option's dest."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        new: str = "",
        convert: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.new = new
        self.convert = convert
        kwargs["help"] = argparse.SUPPRESS
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        old = option_string or self.dest
        warn(f"{old} is deprecated and will be removed in pairlens {REMOVED_IN}; use {self.new}")
        if self.convert is not None:
            values = self.convert(values)
        setattr(namespace, self.dest, values)


def add_deprecated(
    parser: argparse.ArgumentParser | Any,
    old: str,
    new: str,
    dest: str,
    convert: Callable[[Any], Any] | None = None,
    nargs: int | str | None = None,
    **kwargs: Any,
) -> None:
    """Accept the old option ``old`` for one more release: its value, through ``convert``, goes
    to ``dest`` (the new option's), with a warning naming ``new``. Hidden from ``--help``."""
    parser.add_argument(
        old, dest=dest, action=_Deprecated, new=new, convert=convert, nargs=nargs, **kwargs
    )


def is_deprecated(action: argparse.Action) -> bool:
    """Whether ``action`` is an old spelling registered with :func:`add_deprecated`."""
    return isinstance(action, _Deprecated)


# ----------------------------------------------------------------------------- groups
def add_model_options(
    parser: argparse.ArgumentParser,
    default: str | None = None,
    default_help: str = DEFAULT_MODEL,
    embedding: bool = True,
    embedding_default: str | None = None,
    execution: bool = False,
) -> argparse._ArgumentGroup:
    """``--model``, ``--checkpoint``, ``--embedding`` and ``--device``; with ``execution``,
    ``--amp`` and ``--channels-last`` (speed options that :func:`load_model` applies; see
    docs/performance.md)."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model", default=default, metavar="NAME",
        help=f"registered model (pairlens models; default: {default_help})",
    )
    g.add_argument(
        "--checkpoint", default=None, metavar="PATH",
        help="local weights file for --model (its published format), or a model.pt written by "
        "pairlens train",
    )
    if embedding:
        g.add_argument(
            "--embedding", default=embedding_default, metavar="NAME",
            help="which embedding of the model to use (pairlens models info NAME; default: "
            f"{embedding_default or 'the model’s default'})",
        )
    add_device_option(g)
    if execution:
        g.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                       help="run the model under autocast in this precision (maps and scores "
                       "stay float32; checked against float32 in docs/performance.md)")
        g.add_argument("--channels-last", action="store_true",
                       help="channels-last memory layout for convolutional models (faster on "
                       "most CPUs and GPUs; same results up to float rounding)")
    return g


def add_device_option(parser: argparse.ArgumentParser | Any, default: str = "auto") -> None:
    """``--device`` alone (for commands that take no ``--model``)."""
    parser.add_argument(
        "--device", default=default, metavar="DEVICE",
        help="auto | cpu | cuda | cuda:N (default: %(default)s, CUDA when available)",
    )


def add_method_options(
    parser: argparse.ArgumentParser,
    default: str = "interaction-cam",
    what: str = "pairlens methods",
    space_list: bool = False,
) -> argparse._ArgumentGroup:
    """``--methods`` (comma list) and ``--param [METHOD.]KEY=VALUE`` (repeatable).

    ``space_list``: also accept the old space-separated list (``--methods a b``), with a warning;
    only for commands without positional arguments.
    """
    g = parser.add_argument_group("methods")
    g.add_argument(
        "--methods", default=default, metavar="LIST", nargs="+" if space_list else None,
        help=f"comma-separated method names ({what}), 'all', or variants "
        f"name[key=value;key=value] (default: {default})",
    )
    g.add_argument(
        "--param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
        help="method parameter, repeatable; without METHOD. it applies to every selected method "
        "that has KEY. Values are Python literals: 0.5, true, 0,90, max",
    )
    return g


def add_store_option(parser: argparse.ArgumentParser, default: str | None = DEFAULT_STORE,
                     several: bool = False, required: bool = False) -> None:
    """``--store FILE``, the SQLite results file (``several``: repeatable, stores are merged)."""
    g = parser.add_argument_group("store")
    if several:
        g.add_argument(
            "--store", action="append", default=[], metavar="FILE", required=required,
            help="results file(s) of pairlens evaluate / corpus-eval, repeatable or "
            "comma-separated; several are merged",
        )
    else:
        g.add_argument(
            "--store", default=default, metavar="FILE",
            help="SQLite results file; re-running the same command resumes "
            "(default: %(default)s)",
        )


def add_output_options(
    parser: argparse.ArgumentParser,
    default: str | None,
    out: bool = True,
    out_help: str = "output folder",
    required: bool = False,
) -> None:
    """``--out DIR`` (always a folder) and ``--json``."""
    g = parser.add_argument_group("output")
    if out:
        suffix = "" if required or default is None else " (default: %(default)s)"
        g.add_argument(
            "--out", default=default, metavar="DIR", required=required,
            help=out_help + suffix,
        )
    g.add_argument(
        "--json", action="store_true",
        help="print one JSON object on stdout (files written, scores, timings) instead of text",
    )


def add_run_options(
    parser: argparse.ArgumentParser,
    seed: bool = True,
    seeds: str | None = None,
    threads: bool = True,
    quiet: bool = True,
    batch_size: int | None | bool = False,
    batch_help: str = "images per forward pass",
    yes: bool = False,
    seed_default: int = 0,
) -> argparse._ArgumentGroup:
    """``--seed`` (or ``--seeds LIST`` when ``seeds`` is its default text), ``--threads``,
    ``--batch-size`` (unless ``batch_size`` is False; else its default, None allowed),
    ``--quiet`` and ``--yes``."""
    from pairlens.validation import argtype

    g = parser.add_argument_group("run")
    if seeds is not None:
        g.add_argument(
            "--seeds", default=seeds, metavar="LIST", nargs="+",
            help="seeds: comma-separated or a range A-B (default: %(default)s)",
        )
    elif seed:
        g.add_argument("--seed", type=argtype("int", 0), default=seed_default, metavar="N",
                       help="random seed (default: %(default)s)")
    if batch_size is not False:
        g.add_argument("--batch-size", type=argtype("int", 1), default=batch_size, metavar="N",
                       help=batch_help + ("" if batch_size is None else " (default: %(default)s)"))
    if threads:
        g.add_argument("--threads", type=argtype("int", 1), default=None, metavar="N",
                       help="torch CPU threads (default: torch's choice)")
    if quiet:
        g.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    if yes:
        g.add_argument(
            "--yes", action="store_true",
            help="start even when the run is estimated to take longer than "
            f"{CONFIRM_SECONDS // 60} min",
        )
    return g


def add_on_error_option(parser: argparse.ArgumentParser | Any, what: str) -> None:
    """``--on-error stop|skip``: what an unreadable image does (:class:`pairlens.io.BadFiles`).
    ``parser`` is the run group that :func:`add_run_options` returns."""
    parser.add_argument(
        "--on-error", choices=("stop", "skip"), default="stop",
        help=f"an unreadable image: stop (default), or skip {what}, report each bad file once "
        "and list them at the end",
    )


def bad_files(args: argparse.Namespace, hint: str = "pass --on-error skip to go on without it"):
    """The :class:`pairlens.io.BadFiles` policy of ``--on-error``, logging to stderr."""
    from pairlens.io import BadFiles

    return BadFiles(getattr(args, "on_error", "stop"),
                    log=lambda line: warn(line), hint=hint)


def command_parser(
    sub: argparse._SubParsersAction, name: str, help: str, description: str, examples: str
) -> argparse.ArgumentParser:
    """A sub-command parser with the shared formatting (examples verbatim in the epilog)."""
    return sub.add_parser(
        name, help=help, description=description, epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ----------------------------------------------------------------------------- readers
def usage(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a ValueError it raises becomes a :class:`UsageError` (exit code 2)."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from None


def store_of(args: argparse.Namespace) -> Path:
    """``--store``; when it is the default and absent but an old default file exists, say so."""
    path = Path(args.store)
    if args.store == DEFAULT_STORE and not path.exists():
        for old in ("results.db", "pairlens-results.sqlite"):
            if Path(old).exists():
                warn(f"the default results file is now {DEFAULT_STORE}; {old} (the old default) "
                     f"exists here: pass --store {old} to resume it")
    return path


def seeds_of(args: argparse.Namespace, count_ok: bool = False) -> list[int]:
    """The ``--seeds`` list. Space-separated values are deprecated (commas now). With
    ``count_ok``, a lone integer N keeps its old meaning of seeds 0..N-1, with a warning."""
    values = args.seeds if isinstance(args.seeds, list) else [args.seeds]
    if len(values) > 1:
        warn(f"space-separated --seeds is deprecated and will be removed in pairlens "
             f"{REMOVED_IN}; use --seeds {','.join(values)}")
    text = ",".join(values)
    if count_ok and text.strip().isdigit() and int(text) > 1:
        n = int(text)
        warn(f"--seeds {n} as a count is deprecated and will be removed in pairlens "
             f"{REMOVED_IN}: it means seeds 0-{n - 1} (write --seeds 0-{n - 1}); to run only "
             f"seed {n}, write --seeds {n}-{n}")
        return list(range(n))
    from pairlens.params import parse_int_list

    return usage(parse_int_list, text)


def method_list(args: argparse.Namespace, family: str = "pair") -> list[tuple[str, dict]]:
    """``--methods`` and ``--param`` as ``[(method, given parameters), ...]``.

    ``family="pair"``: the registered pair methods (:func:`pairlens.methods`);
    ``"attribution"``: the single-target methods of :mod:`pairlens.attribution`.
    """
    from pairlens.params import parse_method_list

    methods = args.methods
    if isinstance(methods, list):
        if len(methods) > 1:
            warn(f"space-separated --methods is deprecated and will be removed in pairlens "
                 f"{REMOVED_IN}; use --methods {','.join(methods)}")
        methods = ",".join(methods)
    if family == "pair":
        import pairlens.methods  # noqa: F401  (registers every method)
        from pairlens.methods.registry import parse_methods

        return usage(parse_methods, methods, args.param)
    from pairlens.attribution import attribution_params, validate_params

    variants = usage(parse_method_list, methods, attribution_params(), args.param)
    return [(name, usage(validate_params, name, given)) for name, given in variants]


def apply_threads(args: argparse.Namespace) -> None:
    """``torch.set_num_threads(--threads)`` when given (checked >= 1 by its argtype)."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def model_name(args: argparse.Namespace, data: str | None = None) -> str:
    """``--model``, or the bundled model matching the data (``digits`` for the digits data
    sets, ``composites`` for the composites benchmark, else :data:`DEFAULT_MODEL`)."""
    if args.model:
        return args.model
    if data is not None and data.split(":", 1)[0] in ("digits", "cluttered-digits"):
        return "digits"
    if data == "composites" and not Path(data).exists():  # the ground-truth benchmark
        return "composites"
    return DEFAULT_MODEL


def load_model(args: argparse.Namespace, data: str | None = None, device: str | None = None):
    """The model of the model group: ``--model`` (default: :func:`model_name`) with
    ``--checkpoint`` and ``--embedding``; ``--checkpoint`` alone loads a model.pt written by
    ``pairlens train``. ``--amp`` / ``--channels-last``, when the command has them, are applied
    (:meth:`~pairlens.models.similarity.SimilarityModel.set_execution`). Unknown names and
    embeddings are usage errors; missing files runtime errors."""
    model = _load_model(args, data, device)
    amp, channels_last = getattr(args, "amp", None), getattr(args, "channels_last", False)
    if amp or channels_last:
        model.set_execution(amp=amp, channels_last=channels_last)
    return model


def _load_model(args: argparse.Namespace, data: str | None, device: str | None):
    from pairlens.models.registry import model_info

    checkpoint = getattr(args, "checkpoint", None)
    embedding = getattr(args, "embedding", None)
    device = device or getattr(args, "device", "auto")
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    if args.model is None and checkpoint is not None:  # a model.pt written by `pairlens train`
        from pairlens.training.simclr import load_trained

        return load_trained(checkpoint, device=device)
    name = model_name(args, data)
    info = usage(model_info, name)
    if embedding is not None and embedding not in info.embeddings:
        raise UsageError(f"model {info.name!r} has no embedding {embedding!r}; choose from "
                         f"{', '.join(info.embeddings)}")
    usage(_check_device, device)
    from pairlens.models import load_model as load

    return load(name, checkpoint=checkpoint, embedding=embedding, device=device)


def _check_device(device: str) -> None:
    from pairlens.models.similarity import resolve_device

    resolve_device(device)


def confirm_long_run(args: argparse.Namespace, seconds: float, what: str) -> None:
    """Say how long the run is estimated to take; stop (usage error) when it exceeds
    :data:`CONFIRM_SECONDS` and ``--yes`` was not given."""
    text = format_duration(seconds)
    if seconds > CONFIRM_SECONDS and not getattr(args, "yes", False):
        raise UsageError(f"{what} is estimated to take {text} on this machine; add --yes to "
                         "start it, or make it smaller")
    if seconds > 60 and not getattr(args, "quiet", False):
        print(f"pairlens: {what}: estimated {text}", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"7 min"``, ``"2.3 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------- output
class Output:
    """What a command wrote and found, reported once at its end.

    ``say`` prints progress and result lines (stdout; stderr under ``--json``; nothing under
    ``--quiet``). ``wrote`` records a file or folder with a short description. ``finish`` ends
    the command: a list of what was written, one line each, or with ``--json`` one JSON object
    ``{"command", "written": [{"path", "what"}], "seconds", ...fields}`` on stdout.
    """

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        self.command = command
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))
        self.written: list[tuple[Path, str]] = []
        self.fields: dict[str, Any] = {}
        self.start = time.perf_counter()

    def say(self, message: str) -> None:
        if self.quiet:
            return
        stream = sys.stderr if self.json else sys.stdout
        from pairlens.progress import active_bar

        bar = active_bar()
        if bar is not None:  # above the progress bar, not through it
            bar.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)

    def wrote(self, path: str | Path, what: str = "") -> Path:
        path = Path(path)
        if all(p != path for p, _ in self.written):
            self.written.append((path, what))
        return path

    def wrote_new(self, folder: str | Path, what: str = "") -> None:
        """Record every file under ``folder`` created or changed since the command started: the
        files directly inside one by one, each sub-folder as one entry with its count."""
        root = Path(folder)
        if not root.is_dir():
            return
        wall_start = time.time() - (time.perf_counter() - self.start) - 1.0
        for path in sorted(root.iterdir()):
            if path.is_file() and path.stat().st_mtime >= wall_start:
                self.wrote(path, what)
            elif path.is_dir():
                n = sum(1 for f in path.rglob("*")
                        if f.is_file() and f.stat().st_mtime >= wall_start)
                if n:
                    self.wrote(path, f"folder, {n} new {'file' if n == 1 else 'files'}")

    def add(self, **fields: Any) -> None:
        self.fields.update(fields)

    def finish(self, text: str | None = None) -> int:
        """Print the closing report (``text``, if given, before the list of files); return 0."""
        seconds = round(time.perf_counter() - self.start, 3)
        if self.json:
            obj = {"command": self.command,
                   "written": [{"path": str(p), "what": w} for p, w in self.written],
                   "seconds": seconds, **self.fields}
            print(json.dumps(obj, default=_json_default))
            return 0
        if text:
            print(text)
        if self.written:
            width = max(len(str(p)) for p, _ in self.written)
            print(f"wrote {len(self.written)} {'file' if len(self.written) == 1 else 'files'}:")
            for path, what in self.written:
                print(f"  {str(path):<{width}}  {what}".rstrip())
        return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
