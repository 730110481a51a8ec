"""``pairlens evaluate --workers``: local worker processes give exactly a single process's store,
one summary, one error line on failure; the ``auto`` rule; the static unit assignment."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pairlens.cli import main
from pairlens.runtime import PROCESS_MAX_PIXELS, auto_workers
from pairlens.study.loop import MethodSpec, Shard, plan_units
from pairlens.study.store import ResultStore

FAST = ["--model", "digits", "--methods", "grad-cam,input-x-gradient", "--metrics", "SI,SD,CI,CD",
        "--step", "32", "--pairs-per-unit", "2", "--device", "cpu", "--quiet"]


def rows(db) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        return {
            "results": conn.execute("SELECT model, setting, method, params, pair_id, metric, value "
                                    "FROM results ORDER BY 1,2,3,4,5,6").fetchall(),
            "curves": conn.execute("SELECT model, setting, method, params, pair_id, metric, curve "
                                   "FROM curves ORDER BY 1,2,3,4,5,6").fetchall(),
            "done": conn.execute("SELECT method, pair_id FROM pairs_done").fetchall(),
            "ranks": conn.execute("SELECT DISTINCT rank FROM pairs_done").fetchall(),
        }
    finally:
        conn.close()


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_workers_store_exactly_what_one_process_stores(tmp_path, capsys):
    common = [*FAST, "--data", "digits", "--pairs", "6", "--json"]
    code, out, _ = evaluate(capsys, *common, "--workers", "1", "--threads", "1",
                            "--store", str(tmp_path / "one.db"))
    assert code == 0
    single = json.loads(out)
    code, out, _ = evaluate(capsys, *common, "--workers", "2", "--threads", "2",
                            "--store", str(tmp_path / "two.db"))
    assert code == 0
    multi = json.loads(out)  # one JSON object, not one per worker
    assert single["workers"] == 1 and multi["workers"] == 2
    assert multi["computed"] == single["computed"] == 12  # 6 pairs x 2 methods
    assert multi["already_complete"] == single["already_complete"] == 0
    assert set(multi["explain_seconds"]) == set(single["explain_seconds"])
    assert len(multi["worker_peak_rss_mb"]) == 2
    assert all(50 < mb < 8192 for mb in multi["worker_peak_rss_mb"])  # a torch process's own
    one, two = rows(tmp_path / "one.db"), rows(tmp_path / "two.db")
    assert len(one["results"]) == 6 * 2 * 4
    assert one["results"] == two["results"]  # bit-identical values (floats compared exactly)
    assert one["curves"] == two["curves"]  # and curves (float32 bytes)
    assert sorted(two["done"]) == sorted({(m, p) for m in ("grad-cam", "input-x-gradient")
                                          for p in range(6)})  # every row exactly once
    assert {r for (r,) in two["ranks"]} == {0, 1}  # both workers did work
    code, out, _ = evaluate(capsys, *common, "--workers", "2", "--store", str(tmp_path / "two.db"))
    again = json.loads(out)
    assert code == 0 and again["computed"] == 0 and again["already_complete"] == 12


def test_a_failing_worker_gives_one_line_keeps_its_units_and_a_rerun_completes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    # pair 5 (the third unit of each method) uses the broken file; the estimate's first units
    # run in the parent, the rest in the workers, both of which meet it
    lines = [f"{i}.png {(i + 1) % 8}.png" for i in range(8)]
    lines[5] = "broken.png 6.png"
    (tmp_path / "pairs.txt").write_text("\n".join(lines))
    store = tmp_path / "s.db"
    args = [*FAST, "--data", str(tmp_path / "pairs.txt"), "--pair-mode", "list",
            "--store", str(store), "--workers", "2", "--threads", "2"]
    code, out, err = evaluate(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("pairlens: error: ") and "broken.png" in lines[0]
    assert "Traceback" not in err
    kept = rows(store)["done"]
    assert kept and all(pid != 5 for _, pid in kept)  # completed units stay, none with pair 5
    code, out, err = evaluate(capsys, *args, "--on-error", "skip", "--json", "--workers", "1")
    assert code == 0
    done = {(m, p) for m, p in rows(store)["done"]}
    assert done == {(m, p) for m in ("grad-cam", "input-x-gradient") for p in range(8) if p != 5}
    report = json.loads(out)
    assert any("broken.png" in f for f in report["skipped_files"])
    # skipping inside the workers: the summary names the file (it lost its start once)
    fresh = [a if a != str(store) else str(tmp_path / "fresh.db") for a in args]
    code, out, err = evaluate(capsys, *fresh, "--on-error", "skip")
    line = next(x for x in out.splitlines() if "(recorded in" in x)
    assert code == 0 and line.startswith("skipped 1 unreadable file: ") and "broken.png" in line


def test_auto_workers_rule(monkeypatch):
    small, big = (32, 32), (224, 224)
    assert auto_workers("cpu", small, pending_units=50, threads=2) == 2  # processes beat threads
    assert auto_workers("cpu", small, pending_units=50, threads=64) == 8  # at most 8
    assert auto_workers("cpu", small, pending_units=3, threads=4) == 3  # at most the units
    assert auto_workers("cpu", small, pending_units=1, threads=2) == 1  # too little work
    assert auto_workers("cpu", small, pending_units=50, threads=1) == 1  # --threads 1
    assert auto_workers("cuda", small, pending_units=50, threads=2) == 1  # one device
    assert auto_workers("mps", small, pending_units=50, threads=2) == 1
    assert auto_workers("cpu", small, pending_units=50, threads=2, distributed=True) == 1
    assert auto_workers("cpu", big, pending_units=50, threads=2) == 1  # threads do as well
    side = int(PROCESS_MAX_PIXELS ** 0.5)
    assert auto_workers("cpu", (side, side), 50, threads=2) == 2
    assert auto_workers("cpu", (side + 1, side + 1), 50, threads=2) == 1
    # too little work: the workers' start-up would cost more than they save
    assert auto_workers("cpu", small, 50, threads=2, seconds=30.0) == 1
    assert auto_workers("cpu", small, 50, threads=2, seconds=600.0) == 2
    # a busy machine: only the cores other work leaves idle (processes gain nothing there)
    assert auto_workers("cpu", small, 50, threads=2, idle=1.8) == 2
    assert auto_workers("cpu", small, 50, threads=2, idle=0.9) == 1
    assert auto_workers("cpu", small, 50, threads=2, idle=-3.0) == 1
    # memory: as many workers as fit in 80 % of the available memory
    gib = 1 << 30
    assert auto_workers("cpu", small, 50, threads=8, worker_bytes=gib, available=4 * gib) == 3
    assert auto_workers("cpu", small, 50, threads=8, worker_bytes=gib, available=gib) == 1
    monkeypatch.setattr("pairlens.runtime.usable_cores", lambda: 4)
    assert auto_workers("cpu", small, pending_units=50) == 4  # default: every usable core
    from pairlens.runtime import thread_budget

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's budget when --threads is not given
    assert thread_budget() == 1 and thread_budget(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert thread_budget() == 4


def test_auto_is_one_under_torchrun_and_on_cuda(tmp_path, capsys, monkeypatch):
    from pairlens.cli import evaluate as cli

    seen = []
    monkeypatch.setattr("pairlens.runtime.auto_workers",
                        lambda *a, **k: seen.append((a, k)) or 1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, out, _ = evaluate(capsys, *FAST, "--data", "digits", "--pairs", "4", "--threads", "2",
                            "--json", "--store", str(tmp_path / "t.db"))
    assert code == 0 and json.loads(out)["workers"] == 1
    assert seen and seen[0][1]["distributed"] is True
    monkeypatch.undo()

    class Cuda:
        device = type("D", (), {"type": "cuda"})()
        input_size = (32, 32)

    args = type("A", (), {"workers": "auto", "threads": 2, "pairs_per_unit": 2, "step": None,
                          "ms_samples": 10, "model": None})()
    with ResultStore(tmp_path / "c.db") as store:
        from pairlens.study.pairs import PairSet

        specs = [MethodSpec("grad-cam")]
        pairs = PairSet.__new__(PairSet)  # only len() and key are used by the plan
        monkeypatch.setattr(PairSet, "__len__", lambda self: 8)
        monkeypatch.setattr(PairSet, "key", "digits|test", raising=False)
        plan = cli._plan(args, "m", pairs, specs, ["SI"], store)
        assert cli._workers(args, Cuda(), specs, plan, 600.0) == 1
        Cuda.device = type("D", (), {"type": "cpu"})()
        monkeypatch.setattr("pairlens.runtime.idle_cores", lambda: 2.0)  # an idle machine
        assert cli._workers(args, Cuda(), specs, plan, 600.0) == 2


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_unit_has_exactly_one_rank_and_ranks_are_balanced(world, tmp_path):
    for methods, units in ((1, 1), (3, 25), (12, 25), (2, 7), (5, 4)):
        owners = {(m, j): [r for r in range(world) if Shard(r, world).owns(m, j, units)]
                  for m in range(methods) for j in range(units)}
        assert all(len(o) == 1 for o in owners.values())
        counts = [sum(o == [r] for o in owners.values()) for r in range(world)]
        assert max(counts) - min(counts) <= 1  # odd unit counts alternate across methods
    specs = [MethodSpec("grad-cam"), MethodSpec("random"), MethodSpec("input-x-gradient")]
    with ResultStore(tmp_path / f"{world}.db") as store:
        plans = [plan_units(store, "m", "s", 11, specs, ["SI"], 2, Shard(r, world, "workers"))
                 for r in range(world)]
        whole = plan_units(store, "m", "s", 11, specs, ["SI"], 2)
    key = [(spec.name, tuple(ids)) for plan in plans for spec, _, ids, _ in plan]
    assert sorted(key) == sorted((spec.name, tuple(ids)) for spec, _, ids, _ in whole)
    assert len(key) == len(set(key))


def test_shard_from_the_worker_environment(monkeypatch):
    monkeypatch.setenv("PAIRLENS_WORKER", "1/3")
    monkeypatch.setenv("WORLD_SIZE", "2")  # the worker variable wins
    assert Shard.from_env() == Shard(1, 3, "workers")
    for bad in ("1", "a/b", "3/3", "0/0"):
        monkeypatch.setenv("PAIRLENS_WORKER", bad)
        with pytest.raises(ValueError):
            Shard.from_env()
    monkeypatch.delenv("PAIRLENS_WORKER")
    monkeypatch.setenv("RANK", "1")
    assert Shard.from_env() == Shard(1, 2, "torchrun")


@pytest.mark.slow
def test_workers_benchmark_prints_both_sides_and_the_memory():
    """benchmarks/workers.py makes the table of docs/performance.md; keep it working."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "src"),
                                                        os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "workers.py"), "--cases",
                          "digits", "--pairs", "3", "--pairs-per-unit", "1", "--methods",
                          "grad-cam", "--metrics", "SI"], capture_output=True, text=True,
                         env=env, check=True, timeout=600).stdout
    row = next(line for line in out.splitlines() if line.startswith("| digits |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "32 px" and all(float(v) > 0 for v in cells[2:9])
    assert len(cells[9].split(",")) == 2  # one peak per worker


def test_a_model_registered_in_this_process_runs_in_one_process(monkeypatch):
    """Workers re-run ``python -m pairlens``, which knows only pairlens's own registrations."""
    from pairlens.cli import evaluate as cli
    from pairlens.cli.options import UsageError
    from pairlens.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))  # restored afterwards
    registry.register_model("here-only", summary="toy", input_size=(32, 32))(lambda **kw: None)
    specs = [MethodSpec("grad-cam")]
    args = type("A", (), {"model": "here-only", "workers": "auto"})()
    assert cli._registered_here(args, specs) == "model here-only"
    args.model = "digits"
    assert cli._registered_here(args, specs) is None
    args.model, args.workers, args.threads, args.pairs_per_unit = "here-only", 2, 2, 2
    plan = [(specs[0], "", [0, 1], ["SI"]), (specs[0], "", [2, 3], ["SI"])]  # two units
    with pytest.raises(UsageError, match="--workers 1"):
        cli._workers(args, None, specs, plan)
    args.workers = "auto"
    assert cli._workers(args, None, specs, plan) == 1


def _children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_workers_end_with_their_parent_however_it_ends(tmp_path, sig):
    """kill (SIGTERM) or kill -9 of the parent: no worker is left running (a tester found them
    orphaned and still writing to the store)."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "pairlens", "evaluate", "--model", "digits", "--data", "digits",
           "--pairs", "400", "--methods", "grad-cam,random", "--metrics", "SI", "--step", "32",
           "--pairs-per-unit", "2", "--device", "cpu", "--workers", "2", "--threads", "2",
           "--quiet", "--yes", "--store", str(tmp_path / "s.db")]
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = _children(parent.pid)
        assert len(workers) == 2, parent.stderr.read().decode() if parent.poll() else "no workers"
        time.sleep(1.0)  # let them start their work
        parent.send_signal(getattr(signal, sig))
        code = parent.wait(timeout=60)
        assert code == (143 if sig == "SIGTERM" else -9)
        if sig == "SIGTERM":
            assert "stopped by SIGTERM" in parent.stderr.read().decode()
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived its parent"
    finally:  # never leave processes behind, even when the test fails
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_a_worker_ended_by_a_signal_is_named_by_it():
    from pairlens.cli.workers import _ended

    assert _ended(0, 2, -9).startswith("worker 0/2 was killed by SIGKILL")
    assert _ended(1, 2, 3).startswith("worker 1/2 exited with code 3")
    assert "re-run to resume" in _ended(1, 2, -15)
