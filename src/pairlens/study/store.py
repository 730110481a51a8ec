"""SQLite results store of ``pairlens evaluate``.

Layout (one row per fact, every table keyed so that a fact can be stored only once):

* ``results(model, setting, method, params, pair_id, metric, value)``: one metric value of one
  pair; ``value`` is NULL for a skipped pair (average drop with a non-positive similarity);
* ``pairs_done(model, setting, method, params, pair_id, label, explain_seconds, metric_seconds,
  rank, finished)``: the pair was explained for that method variant; its time taken (Table VI);
* ``curves(model, setting, method, params, pair_id, metric, curve)``: insertion / deletion curves
  (float32 bytes) for the report's curve plots;
* ``identities(kind, label, fingerprint, detail)``: the one model (``kind='model'``) or data
  (``kind='data'``) each label in the other tables stands for: the fingerprint of its weights
  and preprocessing, or of its files (:mod:`pairlens.study.identity`); :meth:`ResultStore.claim`
  refuses a command whose model or data has a known label but another fingerprint;
* ``skipped(data, file, reason, seen)``: files that could not be read (``--on-error skip``);
* ``meta(key, value)``: ``schema`` = :data:`SCHEMA_VERSION`.

The key of a value is therefore: the model (label, bound to its weights), ``setting`` (data label
bound to its files, pair mode, pair seed, insertion/deletion step, max-sensitivity samples), the
method, ``params`` (the canonical JSON of *every* parameter of the method after defaults,
validated, seeds included; execution parameters that change results only by float
rounding, ``batch_size``, at their defaults), the pair and the metric. Work is resumed, and
metrics, pairs or methods added to a store are computed, by asking which (pair, metric) values
are missing (:meth:`ResultStore.present`).

All rows of a batch of pairs are written in **one transaction**, so a process killed at any moment
(SIGKILL included) leaves either the whole batch or none of it. Inserts use ``INSERT OR IGNORE`` on
the primary keys, so nothing is ever stored twice. The database runs in WAL mode with a busy
timeout, so several processes (``torchrun`` ranks) can write to one file on a local file system.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL, setting TEXT NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL,
    pair_id INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (model, setting, method, params, pair_id, metric)
);
CREATE TABLE IF NOT EXISTS pairs_done (
    model TEXT NOT NULL, setting TEXT NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL,
    pair_id INTEGER NOT NULL, label TEXT NOT NULL, explain_seconds REAL, metric_seconds REAL,
    rank INTEGER, finished REAL,
    PRIMARY KEY (model, setting, method, params, pair_id)
);
CREATE TABLE IF NOT EXISTS curves (
    model TEXT NOT NULL, setting TEXT NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL,
    pair_id INTEGER NOT NULL, metric TEXT NOT NULL, curve BLOB NOT NULL,
    PRIMARY KEY (model, setting, method, params, pair_id, metric)
);
CREATE TABLE IF NOT EXISTS identities (
    kind TEXT NOT NULL, label TEXT NOT NULL, fingerprint TEXT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (kind, label)
);
CREATE TABLE IF NOT EXISTS skipped (
    data TEXT NOT NULL, file TEXT NOT NULL, reason TEXT NOT NULL, seen REAL,
    PRIMARY KEY (data, file)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA_VERSION = "2"


class StoreError(ValueError):
    """The file is not a results store this version of PairLens can extend."""


def _reason(err: BaseException) -> str:
    """The cause of an OS or SQLite error without the path (the message names it once)."""
    return getattr(err, "strerror", None) or str(err)


def canonical_params(params: Mapping[str, Any]) -> str:
    """Canonical JSON of method parameters (sorted keys; tuples become lists)."""
    return json.dumps(_plain(dict(params)), sort_keys=True, separators=(",", ":"))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


@dataclass(frozen=True)
class PairResult:
    """Everything produced for one pair by one method."""

    pair_id: int
    metrics: dict[str, float]
    curves: dict[str, np.ndarray]
    explain_seconds: float
    metric_seconds: float


class ResultStore:
    """An open results database (see the module docstring)."""

    def __init__(self, path: str | Path, timeout: float = 600.0) -> None:
        self.path = Path(path)
        try:
            self._open(timeout)
        except (OSError, sqlite3.Error) as err:  # e.g. /proc/x.db, a parent that is a file
            conn = getattr(self, "conn", None)
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open results store {self.path}: {_reason(err)}") from None

    def _open(self, timeout: float) -> None:
        for folder in (self.path.parent, *self.path.parent.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise NotADirectoryError(0, f"{folder} is a file, not a folder")
                break
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a results store")
        self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:
            self._check_version()  # before anything is written, even the journal mode
        except BaseException:
            self.conn.close()
            raise
        try:
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise StoreError(f"{self.path}: not a PairLens results store ({err})") from None
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: could not switch the database to WAL mode")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self._write("".join(SCHEMA), script=True)
        self._write(f"INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}')")

    def _check_version(self) -> None:
        try:
            tables = {r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: not a PairLens results store ({err})") from None
        known = {"results", "pairs_done", "curves", "identities", "skipped", "meta"}
        foreign = sorted(tables - known)
        if not foreign and "results" in tables:
            columns = {r[1] for r in self.conn.execute("PRAGMA table_info(results)")}
            foreign = [] if "model" in columns else ["results"]
        if not foreign and "meta" in tables:
            columns = {r[1] for r in self.conn.execute("PRAGMA table_info(meta)")}
            foreign = [] if {"key", "value"} <= columns else ["meta"]
        if foreign:  # never write PairLens's tables into somebody else's database
            raise StoreError(
                f"{self.path}: an SQLite database that is not a PairLens results store (its "
                f"table(s) {', '.join(foreign[:5])}); use another --store")
        if "results" in tables and "meta" not in tables:
            raise StoreError(
                f"{self.path}: written by an older PairLens whose keys did not hold the model's "
                "weights or the data's files; it cannot be extended safely: use a new --store "
                "(pairlens report still reads it)")
        if "meta" in tables:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row and row[0] != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: results store schema {row[0]}; this PairLens "
                                 f"writes schema {SCHEMA_VERSION}: use a new --store")

    def claim(self, kind: str, label: str, fingerprint: str, detail: Mapping[str, Any],
              explain: Callable[[str, Mapping[str, Any], Mapping[str, Any], str], str]) -> None:
        """Bind ``label`` (of kind ``model`` or ``data``) to ``fingerprint`` in this store, or
        raise :class:`~pairlens.study.identity.IdentityMismatch` with ``explain(label, stored
        detail, detail, store path)`` if the label is already bound to another fingerprint."""
        from pairlens.study.identity import IdentityMismatch

        text = json.dumps(_plain(dict(detail)), sort_keys=True)
        with self._writing():
            for attempt in range(20):
                try:
                    self.conn.execute("INSERT OR IGNORE INTO identities VALUES (?,?,?,?)",
                                      (kind, label, fingerprint, text))
                    break
                except sqlite3.OperationalError as err:  # pragma: no cover - contention only
                    if "locked" not in str(err) or attempt == 19:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        stored_fp, stored_detail = self.conn.execute(
            "SELECT fingerprint, detail FROM identities WHERE kind=? AND label=?", (kind, label)
        ).fetchone()
        if stored_fp != fingerprint:
            raise IdentityMismatch(explain(label, json.loads(stored_detail), _plain(dict(detail)),
                                           str(self.path)))

    def add_skipped(self, data: str, skipped: Mapping[str, str]) -> None:
        """Record unreadable files of ``data`` (file -> reason); a file is listed once."""
        now = time.time()
        rows = [(data, f, r, now) for f, r in skipped.items()]
        if rows:
            with self._writing(), self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO skipped VALUES (?,?,?,?)", rows)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write (a read-only or immutable file, a full disk) into a
        :class:`StoreError` naming the store; a lock held too long stays an OperationalError."""
        try:
            yield
        except sqlite3.OperationalError as err:
            if "locked" in str(err):
                raise
            raise StoreError(f"cannot write results store {self.path}: {_reason(err)}") \
                from None

    def _write(self, sql: str, script: bool = False) -> None:
        for attempt in range(20):
            try:
                if script:
                    self.conn.executescript(sql)
                else:
                    self.conn.execute(sql)
                return
            except sqlite3.OperationalError as err:  # pragma: no cover - contention only
                if "locked" not in str(err) or attempt == 19:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def done_pairs(self, model: str, setting: str, method: str, params: str) -> set[int]:
        """Pair ids explained (at least one metric stored) for this model, setting and method
        variant."""
        rows = self.conn.execute(
            "SELECT pair_id FROM pairs_done WHERE model=? AND setting=? AND method=? AND params=?",
            (model, setting, method, params),
        )
        return {int(r[0]) for r in rows}

    def present(self, model: str, setting: str, method: str, params: str) -> dict[int, set[str]]:
        """The metrics stored for each pair of this model, setting and method variant."""
        out: dict[int, set[str]] = {}
        for pid, metric in self.conn.execute(
            "SELECT pair_id, metric FROM results WHERE model=? AND setting=? AND method=? "
            "AND params=?", (model, setting, method, params),
        ):
            out.setdefault(int(pid), set()).add(str(metric))
        return out

    def add_batch(self, model: str, setting: str, method: str, params: str, label: str,
                  results: Iterable[PairResult], rank: int = 0) -> None:
        """Store the results of a batch of pairs in one transaction (all or nothing)."""
        results = list(results)
        now = time.time()
        rows, curve_rows, done_rows = [], [], []
        for r in results:
            key = (model, setting, method, params, int(r.pair_id))
            for name, value in r.metrics.items():
                v = None if value is None or (isinstance(value, float) and math.isnan(value)) \
                    else float(value)
                rows.append(key + (name, v))
            for name, curve in r.curves.items():
                curve_rows.append(key + (name, np.asarray(curve, dtype="<f4").tobytes()))
            done_rows.append(key + (label, r.explain_seconds, r.metric_seconds, rank, now))
        with self._writing():
            self._add_rows(rows, curve_rows, done_rows)

    def _add_rows(self, rows: list, curve_rows: list, done_rows: list) -> None:
        cur = self.conn.cursor()
        for attempt in range(20):
            try:
                cur.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as err:  # pragma: no cover - contention only
                if "locked" not in str(err) or attempt == 19:
                    raise
                time.sleep(0.2 * (attempt + 1))
        try:
            cur.executemany("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?)", rows)
            cur.executemany("INSERT OR IGNORE INTO curves VALUES (?,?,?,?,?,?,?)", curve_rows)
            cur.executemany("INSERT OR IGNORE INTO pairs_done VALUES (?,?,?,?,?,?,?,?,?,?)",
                            done_rows)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise


def read_tables(paths: Iterable[str | Path]) -> dict[str, list[tuple]]:
    """All rows of ``results``, ``pairs_done`` and ``curves`` from one or more stores (merged;
    a row present in several stores is kept once)."""
    out: dict[str, set[tuple]] = {"results": set(), "pairs_done": set(), "curves": set()}
    columns = {
        "results": "model, setting, method, params, pair_id, metric, value",
        "pairs_done": "model, setting, method, params, pair_id, label, explain_seconds, "
        "metric_seconds",
        "curves": "model, setting, method, params, pair_id, metric, curve",
    }
    seen_keys: dict[str, set[tuple]] = {k: set() for k in out}
    key_len = {"results": 6, "pairs_done": 5, "curves": 6}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such results store")
        conn = sqlite3.connect(str(p), timeout=60)
        try:
            for table, cols in columns.items():
                for row in conn.execute(f"SELECT {cols} FROM {table}"):
                    k = row[: key_len[table]]
                    if k in seen_keys[table]:
                        continue
                    seen_keys[table].add(k)
                    out[table].add(row)
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{p}: not a PairLens results store ({err})") from err
        finally:
            conn.close()
    return {k: sorted(v, key=lambda r: tuple(str(x) for x in r[:6])) for k, v in out.items()}
