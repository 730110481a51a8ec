"""Local worker processes of ``pairlens evaluate --workers N``.

The parent has done everything a single process does before the work itself (options, model,
data, store schema and identity claims, the time estimate); :func:`run_workers` then re-runs the
same command line in ``N`` fresh Python processes (``python -m pairlens evaluate ARGS
--workers 1 --threads T/N --quiet --json``), each with ``PAIRLENS_WORKER=i/N`` in its
environment: :meth:`pairlens.study.loop.Shard.from_env` gives worker ``i`` the units of work
``(method index * units per method + unit) mod N == i`` (:meth:`~pairlens.study.loop.Shard.owns`,
the rule ``torchrun`` ranks follow too), no process group. Every worker writes its units to the
one SQLite store (WAL, busy timeout), so the store after the run is exactly a single process's.

While they run, the parent shows one overall bar (each worker writes the pair count of every
stored unit to a pipe, ``PAIRLENS_PROGRESS_FD``), passes each distinct warning line on once, and
at the end adds up the workers' ``--json`` summaries. If a worker exits non-zero the others are
terminated (units they had stored stay; a re-run resumes) and :class:`WorkerFailed` carries the
worker's exit code and its one error line. Ctrl-C terminates the workers too.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ERROR_PREFIX = "pairlens: error: "
PARENT_ENV = "PAIRLENS_PARENT_PID"


def bind_to_parent() -> None:
    """In a worker (``PAIRLENS_PARENT_PID`` set): end with the parent process. On Linux the
    kernel sends SIGTERM when the parent dies, however it dies (``PR_SET_PDEATHSIG``; SIGKILL
    included); if it already died while this process started, exit now. Elsewhere only the
    start-up check is made. A no-op outside workers."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if str(os.getppid()) != parent:
        raise SystemExit(1)  # orphaned before the death signal was armed


def _raise_on_signal(signum, _frame):
    import signal

    print(f"pairlens: stopped by {signal.Signals(signum).name}; finished units are stored, "
          "re-run to resume", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


class WorkerFailed(Exception):
    """A worker exited with ``code`` (non-zero); ``str(self)`` is its one-line error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def worker_command(argv: Sequence[str], threads: int) -> list[str]:
    """The command line of one worker: the parent's arguments (``evaluate ...``) with one
    process per worker, ``threads`` torch threads, no progress bar and a JSON summary (later
    options win in argparse)."""
    return [sys.executable, "-m", "pairlens", *argv, "--workers", "1", "--threads",
            str(threads), "--quiet", "--json"]


def run_workers(args: argparse.Namespace, n: int, total_pairs: int, specs: Sequence[Any]):
    """Run ``n`` workers of the command in ``args`` (``args.argv``: its arguments) and wait.

    Args:
        args: the parsed ``evaluate`` arguments, with ``argv``.
        n: number of workers (>= 2).
        total_pairs: (pair, method) evaluations pending, the overall bar's total.
        specs: the method variants, in ``--methods`` order (the summary's order).

    Returns:
        ``(summary, peak_rss_mb)``: a :class:`~pairlens.study.loop.RunSummary` adding up the
        workers' (``seconds`` is the wall time of the workers), and each worker's peak resident
        memory in MB as it reports it (:func:`pairlens.runtime.peak_memory`).

    Raises:
        WorkerFailed: a worker exited non-zero (the others were terminated).
        KeyboardInterrupt: after terminating the workers.
    """
    from tqdm.auto import tqdm

    from pairlens.runtime import release_free_memory, thread_budget
    from pairlens.study.loop import WORKER_ENV, RunSummary

    budget = thread_budget(args.threads)
    threads = max(1, budget // n)
    src = str(Path(__file__).resolve().parents[2])  # the pairlens this process runs
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    release_free_memory()  # the parent's estimate step may have grown its heap
    debug = bool(os.environ.get("PAIRLENS_DEBUG"))
    procs: list[subprocess.Popen] = []
    sel = selectors.DefaultSelector()
    buffers: dict[tuple[int, str], bytes] = {}
    outputs: list[bytes] = [b""] * n
    errors: list[list[str]] = [[] for _ in range(n)]
    seen: set[str] = set()
    codes: dict[int, int] = {}
    failures: list[int] = []  # workers that exited non-zero, in the order they did
    bar = tqdm(total=total_pairs, disable=bool(args.quiet), unit="pair", dynamic_ncols=True,
               desc=f"evaluate ({n} workers)")
    start = time.perf_counter()
    # SIGTERM / SIGHUP (kill, a closed terminal, a scheduler) end the run like Ctrl-C: the
    # workers are terminated before the parent exits (128 + signal number)
    import signal

    handled = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
               if s is not None]
    previous = {s: signal.signal(s, _raise_on_signal) for s in handled}
    try:
        for i in range(n):
            read_fd, write_fd = os.pipe()
            proc = subprocess.Popen(
                worker_command(args.argv, threads), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(write_fd,),
                env={**env, WORKER_ENV: f"{i}/{n}", "PAIRLENS_PROGRESS_FD": str(write_fd),
                     PARENT_ENV: str(os.getpid())})
            os.close(write_fd)
            procs.append(proc)
            sel.register(proc.stdout, selectors.EVENT_READ, (i, "out"))
            sel.register(proc.stderr, selectors.EVENT_READ, (i, "err"))
            sel.register(os.fdopen(read_fd, "rb", buffering=0), selectors.EVENT_READ,
                         (i, "progress"))
        while sel.get_map() or len(codes) < n:
            for key, _ in sel.select(timeout=0.5):
                i, kind = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    chunk = b"\n"  # flush a last line without newline
                if kind == "out":
                    outputs[i] += chunk
                    continue
                data = buffers.get((i, kind), b"") + chunk
                *lines, rest = data.split(b"\n")
                buffers[(i, kind)] = rest
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    if kind == "progress":
                        bar.update(int(line) if line.strip().isdigit() else 0)
                    elif line.startswith(ERROR_PREFIX) or line == "pairlens: interrupted":
                        errors[i].append(line)
                    elif line.strip() and (debug or line not in seen):
                        seen.add(line)
                        (bar.write if not args.quiet else _print_err)(line, file=sys.stderr)
            for i, proc in enumerate(procs):
                if i not in codes:
                    code = proc.poll()
                    if code is not None:
                        codes[i] = code
                        if code != 0 and not failures:
                            failures.append(i)
                            _terminate(procs, codes)
    except BaseException:
        _terminate(procs, codes)
        for i, proc in enumerate(procs):
            if i not in codes:
                proc.wait()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        bar.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    wall = time.perf_counter() - start
    if failures:
        i = failures[0]  # the first to fail; the others were terminated (or failed alike)
        line = next((e for e in errors[i] if e.startswith(ERROR_PREFIX)), None)
        message = line[len(ERROR_PREFIX):] if line else _ended(i, n, codes[i])
        raise WorkerFailed(codes[i] if codes[i] > 0 else 1, message)
    summary = RunSummary(seconds=wall, stages={})
    per_method: dict[str, float] = {}
    rss: list[float] = []
    for i in range(n):
        report = _last_json(outputs[i])
        summary.computed_pairs += int(report.get("computed", 0))
        summary.skipped_pairs += int(report.get("already_complete", 0))
        summary.missing_metrics.update(report.get("metrics_computed", []))
        summary.skipped_files.update(report.get("skipped_files", {}))
        for label, seconds in report.get("explain_seconds", {}).items():
            per_method[label] = per_method.get(label, 0.0) + float(seconds)
        for stage, seconds in report.get("stage_seconds", {}).items():
            summary.stages[stage] = summary.stages.get(stage, 0.0) + float(seconds)
        if "peak_rss_mb" in report:  # the worker's own (VmHWM), see runtime.peak_memory
            rss.append(float(report["peak_rss_mb"]))
    order = [spec.label for spec in specs]
    summary.per_method = {label: per_method[label] for label in
                          sorted(per_method, key=lambda x: order.index(x) if x in order else 0)}
    return summary, rss


def _ended(i: int, n: int, code: int) -> str:
    """How worker ``i`` of ``n`` ended without an error line of its own."""
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {i}/{n} was killed by {name} (finished units are stored; re-run to resume)"
    return f"worker {i}/{n} exited with code {code} (finished units are stored; re-run to resume)"


def _print_err(line: str, file: Any = None) -> None:
    print(line, file=file or sys.stderr, flush=True)


def _terminate(procs: list[subprocess.Popen], codes: dict[int, int]) -> None:
    for i, proc in enumerate(procs):
        if i not in codes and proc.poll() is None:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass


def _last_json(output: bytes) -> dict[str, Any]:
    for line in reversed(output.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}
