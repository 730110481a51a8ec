"""Pairs, the results store, resumable evaluation (SIGKILL), torchrun sharding."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pairlens.models.similarity import SimilarityModel
from pairlens.study import PairSet, ResultStore, parse_methods, parse_metrics
from pairlens.study.store import PairResult

TOY_SCRIPT = '''
"""A registered toy model (random seeded weights, 32 px) and the pairlens CLI."""
import sys
import torch
from torch import nn
from pairlens.models.registry import register_model, _MODELS
from pairlens.models.similarity import SimilarityModel


def build(checkpoint=None, embedding="default", **kw):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                        nn.ReLU())
    return SimilarityModel(enc, head=nn.Linear(16, 8), feature_layer="2", input_size=(32, 32),
                           mean=(0.5,) * 3, std=(0.25,) * 3, crop_fraction=1.0, name="toy")


if "toy" not in _MODELS:
    register_model("toy", summary="toy", input_size=(32, 32))(build)

if __name__ == "__main__":
    torch.set_num_threads(1)
    from pairlens.cli import main
    sys.exit(main(sys.argv[1:]))
'''

RUN_ARGS = ["--model", "toy", "--data", "digits", "--methods", "grad-cam,random",
            "--step", "64", "--pairs-per-unit", "4", "--device", "cpu", "--quiet"]


def toy_model() -> SimilarityModel:
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2))
    return SimilarityModel(enc, head=nn.Linear(16, 8), feature_layer="2", input_size=(32, 32),
                           mean=(0.5,) * 3, std=(0.25,) * 3, crop_fraction=1.0, name="toy")


@pytest.fixture(scope="module")
def toy_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "toy_cli.py"
    path.write_text(TOY_SCRIPT)
    return path


def run_cli(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def register_toy(script: Path) -> None:
    """Register the toy model in this process too (the CLI then runs in-process)."""
    sys.path.insert(0, str(script.parent))
    try:
        import toy_cli  # noqa: F401
    finally:
        sys.path.pop(0)


def report_without_timings(out: Path) -> str:
    """report.md minus the Table VI sections (wall-clock times differ between runs)."""
    lines, keep = [], True
    for line in (out / "report.md").read_text().splitlines():
        if line.startswith("## "):
            keep = not line.startswith("## Time per method")
        if keep:
            lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- pairs
def test_augmented_pairs_are_seeded_prefix_stable_and_batch_independent():
    model = toy_model()
    a = PairSet(model, "digits", "augmented", n=10, seed=3)
    b = PairSet(model, "digits", "augmented", n=20, seed=3)
    c = PairSet(model, "digits", "augmented", n=10, seed=4)
    xa1, xa2 = a.batch(range(10))
    xb1, xb2 = b.batch([7, 2])
    assert torch.equal(xa1[[7, 2]], xb1) and torch.equal(xa2[[7, 2]], xb2)
    xc1, _ = c.batch(range(10))
    assert not torch.equal(xa1, xc1)  # another seed selects other images
    assert not torch.equal(xa1, xa2)  # the second image is an augmented view
    assert xa1.shape == (10, 3, 32, 32)
    assert a.key != c.key


def test_same_class_pairs_share_the_label_and_differ(tmp_path):
    model = toy_model()
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "lonely"):
        (root / cls).mkdir(parents=True)
        for k in range(1 if cls == "lonely" else 3):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{k}.png")
    pairs = PairSet(model, str(root), "same-class", n=8, seed=1)
    for i in range(8):
        n1, n2 = pairs.describe(i)
        assert n1 != n2 and n1.split("/")[0] == n2.split("/")[0] != "lonely"
    x1, x2 = pairs.batch(range(8))
    assert x1.shape == (8, 3, 32, 32) and torch.isfinite(x2).all()
    with pytest.raises(ValueError, match="labelled"):
        PairSet(model, "photos", "same-class", n=2)


def test_list_pairs_and_image_list_source(tmp_path):
    model = toy_model()
    for k in range(3):
        Image.fromarray(np.full((10, 10, 3), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
    (tmp_path / "pairs.txt").write_text("# pairs\n0.png 1.png\n2.png,0.png\n")
    pairs = PairSet(model, str(tmp_path / "pairs.txt"), "list")
    assert len(pairs) == 2
    x1, x2 = pairs.batch([1])
    assert torch.allclose(model.denormalize(x1), torch.full_like(x1, 80 / 255), atol=1e-6)
    assert torch.allclose(model.denormalize(x2), torch.zeros_like(x2), atol=1e-6)
    (tmp_path / "images.txt").write_text("0.png a\n1.png a\n2.png b\n")
    same = PairSet(model, str(tmp_path / "images.txt"), "same-class", n=4)
    assert all(set(same.describe(i)) == {"0.png", "1.png"} for i in range(4))
    with pytest.raises(ValueError, match="asks for more"):
        PairSet(model, str(tmp_path / "pairs.txt"), "list", n=5)


def test_a_pair_list_is_never_read_as_images_with_labels(tmp_path):
    """A tester's list of pairs ('a.png b.png') was read as images with labels in the default
    augmented mode: the second image silently ignored. Such a file defaults to the list mode, and
    asking for an image mode with it is refused in one line."""
    from pairlens.study.pairs import default_pair_mode

    for k in range(2):
        Image.fromarray(np.full((10, 10, 3), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
    (tmp_path / "pairs.txt").write_text("# pairs\n0.png 1.png\n1.png,0.png\n")
    (tmp_path / "images.txt").write_text("0.png cat\n1.png dog\n")
    assert default_pair_mode(str(tmp_path / "pairs.txt")) == "list"
    assert default_pair_mode(str(tmp_path / "images.txt")) == "augmented"
    assert default_pair_mode("digits") == "augmented"
    with pytest.raises(ValueError, match="names two images, a pair.*--pair-mode list"):
        PairSet(toy_model(), str(tmp_path / "pairs.txt"), "augmented", n=2)


def test_parse_methods_variants_and_params():
    specs = parse_methods("input-x-gradient,input-x-gradient[guided=true],interaction-cam",
                          ["interaction-cam.reduction=max"])
    assert [s.label for s in specs] == ["input-x-gradient", "input-x-gradient[guided=true]",
                                        "interaction-cam[reduction=max]"]
    assert specs[1].params["guided"] is True
    everything = {s.name for s in parse_methods("all")}
    assert {"random", "grad-cam", "conditional-occlusion"} <= everything
    with pytest.raises(ValueError, match="no parameter"):
        parse_methods("grad-cam[nope=1]")
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("gradcamm")
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("SI,XX")


# ---------------------------------------------------------------- store
def test_store_batches_are_atomic_and_never_duplicated(tmp_path):
    path = tmp_path / "r.db"
    res = [PairResult(i, {"SI": 0.5 + i, "SAD": float("nan")}, {"SI": np.arange(3.0)}, 0.1, 0.2)
           for i in range(3)]
    with ResultStore(path) as store:
        store.add_batch("m", "s", "grad-cam", "{}", "grad-cam", res)
        store.add_batch("m", "s", "grad-cam", "{}", "grad-cam", res)  # again: ignored
        assert store.done_pairs("m", "s", "grad-cam", "{}") == {0, 1, 2}

        # a label sqlite cannot bind fails on the last statement of the transaction, after the
        # results and curves rows of the batch were inserted: all of it must be rolled back
        with pytest.raises(sqlite3.Error):
            store.add_batch("m", "s", "random", "{}", object(), res)  # type: ignore[arg-type]
        assert store.done_pairs("m", "s", "random", "{}") == set()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 6
    assert conn.execute("SELECT COUNT(*) FROM results WHERE value IS NULL").fetchone()[0] == 3
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---------------------------------------------------------------- resume after SIGKILL
def test_sigkill_then_rerun_gives_the_same_report_as_an_uninterrupted_run(toy_script, tmp_path):
    args = [*RUN_ARGS, "--pairs", "60"]
    killed_db = tmp_path / "killed.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(toy_script), "evaluate", *args, "--store",
                             str(killed_db)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if killed_db.exists():
            try:
                conn = sqlite3.connect(killed_db, timeout=5)
                done = conn.execute("SELECT COUNT(*) FROM pairs_done").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                continue
            if done >= 12:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(killed_db)
    done = conn.execute("SELECT COUNT(*) FROM pairs_done").fetchone()[0]
    rows = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    orphans = conn.execute(
        "SELECT COUNT(*) FROM results r WHERE NOT EXISTS (SELECT 1 FROM pairs_done d WHERE "
        "d.model=r.model AND d.setting=r.setting AND d.method=r.method AND d.params=r.params "
        "AND d.pair_id=r.pair_id)").fetchone()[0]
    conn.close()
    assert 0 < done < 120, "the run was not interrupted part-way"
    assert rows == 6 * done and orphans == 0  # whole pairs only, no partial rows

    register_toy(toy_script)
    from pairlens.cli import main

    assert main(["evaluate", *args, "--store", str(killed_db)]) == 0  # resume
    full_db = tmp_path / "full.db"
    assert main(["evaluate", *args, "--store", str(full_db)]) == 0  # uninterrupted
    conn = sqlite3.connect(full_db)
    first = conn.execute("SELECT MAX(finished) FROM pairs_done").fetchone()[0]
    conn.close()
    assert main(["evaluate", *args, "--store", str(full_db)]) == 0  # nothing left to do
    conn = sqlite3.connect(full_db)
    assert conn.execute("SELECT MAX(finished) FROM pairs_done").fetchone()[0] == first
    conn.close()

    for db in (killed_db, full_db):
        assert main(["report", "--store", str(db), "--out", str(tmp_path / db.stem)]) == 0
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 6 * 120
        conn.close()
    assert report_without_timings(tmp_path / "killed") == report_without_timings(tmp_path / "full")
    for name in ("metrics.csv", "heatmap.csv"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "full" / name).read_text()


# ---------------------------------------------------------------- torchrun sharding
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_two_process_torchrun_equals_single_process(toy_script, tmp_path):
    args = [*RUN_ARGS, "--pairs", "20", "--metrics", "SI,SD,CI,CD,SAD,CAD,SAI,CAI"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(toy_script),
                            "evaluate", *args, "--store", str(tmp_path / "multi.db")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert "rank 0/2" in multi.stdout and "rank 1/2" in multi.stdout
    register_toy(toy_script)
    from pairlens.cli import main

    assert main(["evaluate", *args, "--store", str(tmp_path / "single.db")]) == 0
    conn = sqlite3.connect(tmp_path / "multi.db")
    ranks = dict(conn.execute("SELECT rank, COUNT(*) FROM pairs_done GROUP BY rank").fetchall())
    conn.close()
    assert set(ranks) == {0, 1}  # both processes did work
    from pairlens.report import write_report

    write_report([tmp_path / "multi.db"], tmp_path / "multi")
    write_report([tmp_path / "single.db"], tmp_path / "single")
    assert report_without_timings(tmp_path / "multi") == report_without_timings(tmp_path / "single")
    assert (tmp_path / "multi" / "metrics.csv").read_text() == \
        (tmp_path / "single" / "metrics.csv").read_text()
