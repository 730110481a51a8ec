"""Issue 12's numbered failures, each through the path a user takes (store keys, limits,
parameters, images and checkpoints, folders with bad files, file modes).

The killed-and-resumed evaluation and training stay bit-identical: tests/test_runner.py and
tests/test_training.py. The table of single bad inputs is tests/test_bad_inputs.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bomb_png, pair_batch, square_model
from PIL import Image

import pairlens
from pairlens.cli import main
from pairlens.io import BadFiles
from pairlens.models import bundled
from pairlens.study import PairSet, ResultStore, parse_methods
from pairlens.study.identity import IdentityMismatch
from pairlens.study.loop import run_evaluation

EVAL = ["evaluate", "--model", "digits", "--data", "digits", "--methods", "grad-cam",
        "--step", "128", "--batch-size", "4", "--device", "cpu", "--quiet"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def image_folder(root: Path, n: int, seed: int = 0, size: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"img{i}.png")
    return root


# ---------------------------------------------------------------- 1. store keys
def test_adding_metrics_pairs_and_methods_computes_exactly_what_is_missing(tmp_path):
    model = square_model()
    pairs = PairSet(model, "digits", "augmented", n=4, seed=0)
    grad_cam = parse_methods("grad-cam")
    with ResultStore(tmp_path / "m.db") as store:
        first = run_evaluation(model, "square", pairs, grad_cam, ["SI"], store, step=128,
                               pairs_per_batch=4, progress=False)
        assert (first.computed_pairs, first.computed_values) == (4, 4)
        # today's bug: "0 computed, 4 already" and SD, CI never stored
        second = run_evaluation(model, "square", pairs, grad_cam, ["SI", "SD", "CI"], store,
                                step=128, pairs_per_batch=4, progress=False)
        assert (second.computed_pairs, second.computed_values) == (4, 8)
        assert second.missing_metrics == {"SD", "CI"}
        third = run_evaluation(model, "square", pairs, grad_cam, ["SI", "SD", "CI"], store,
                               step=128, pairs_per_batch=4, progress=False)
        assert (third.computed_values, third.skipped_pairs) == (0, 4)
        # more pairs and another method: only the new (pair, method) cells
        more = PairSet(model, "digits", "augmented", n=6, seed=0)
        fourth = run_evaluation(model, "square", more, parse_methods("grad-cam,random"),
                                ["SI", "SD", "CI"], store, step=128, pairs_per_batch=4,
                                progress=False)
        assert (fourth.computed_pairs, fourth.computed_values) == (2 + 6, 3 * 8)
    counts = dict(rows(tmp_path / "m.db", "SELECT metric, COUNT(*) FROM results "
                                          "WHERE method='grad-cam' GROUP BY metric"))
    assert counts == {"SI": 6, "SD": 6, "CI": 6}


def test_every_parameter_and_the_seed_are_in_the_key(tmp_path):
    model = square_model()
    pairs = PairSet(model, "digits", "augmented", n=2, seed=0)
    with ResultStore(tmp_path / "k.db") as store:
        for seed in ("0", "1"):
            specs = parse_methods(f"random[seed={seed}]")
            run_evaluation(model, "square", pairs, specs, ["SI"], store, step=128,
                           progress=False)
    params = sorted(r[0] for r in rows(tmp_path / "k.db", "SELECT DISTINCT params FROM results"))
    assert params == ['{"seed":0}', '{"seed":1}']
    smooth = parse_methods("smoothgrad[guided=no]")[0]
    assert smooth.params == {"n_samples": 50, "noise_level": 0.15, "noise": "shared",
                             "noise_scale": "divide", "guided": False, "batch_size": None,
                             "seed": 0} and smooth.label == "smoothgrad"


def test_batch_size_is_not_part_of_the_key_a_pair_explained_at_two_sizes_is_one_row(tmp_path):
    """Images per forward pass change no result (per-pair generators): the pair explained at
    batch size 2 is found, not recomputed, at batch size 6, and its stored values are the ones a
    fresh run at batch size 6 computes."""
    model = square_model()
    pairs = PairSet(model, "digits", "augmented", n=2, seed=0)
    metrics = ["SI", "SD"]
    for name in ("smoothgrad[n_samples=4]", "grad-cam"):  # a stochastic and a gradient method
        with ResultStore(tmp_path / "b.db") as store:
            first = run_evaluation(model, "square", pairs,
                                   parse_methods(name, [f"{name.split('[')[0]}.batch_size=2"]),
                                   metrics, store, step=128, progress=False)
            assert first.computed_pairs == 2
            again = run_evaluation(model, "square", pairs,
                                   parse_methods(name, [f"{name.split('[')[0]}.batch_size=6"]),
                                   metrics, store, step=128, progress=False)
            loop_level = run_evaluation(model, "square", pairs, parse_methods(name), metrics,
                                        store, step=128, batch_size=6, progress=False)
        assert (again.computed_pairs, again.skipped_pairs) == (0, 2)
        assert (loop_level.computed_pairs, loop_level.skipped_pairs) == (0, 2)
        with ResultStore(tmp_path / f"fresh-{len(name)}.db") as store:
            run_evaluation(model, "square", pairs, parse_methods(name), metrics, store,
                           step=128, batch_size=6, progress=False)
        sql = "SELECT method, params, pair_id, metric, value FROM results ORDER BY 1, 2, 3, 4"
        stored = [r for r in rows(tmp_path / "b.db", sql) if name.startswith(r[0])]
        fresh = rows(tmp_path / f"fresh-{len(name)}.db", sql)
        assert [r[:4] for r in stored] == [r[:4] for r in fresh]
        np.testing.assert_allclose([r[4] for r in stored], [r[4] for r in fresh], rtol=1e-4,
                                   atol=1e-6)
    assert {r[0] for r in rows(tmp_path / "b.db", "SELECT DISTINCT label FROM pairs_done")} == {
        "smoothgrad[n_samples=4]", "grad-cam"}
    assert all('"batch_size":null' in r[0]
               for r in rows(tmp_path / "b.db", "SELECT DISTINCT params FROM results"))
    # variants that differ only in batch_size are one variant
    assert len(parse_methods("grad-cam[batch_size=2],grad-cam[batch_size=4],grad-cam")) == 1


def _bundle_with_offset(src: Path, dst: Path, offset: float) -> Path:
    state = torch.load(src, weights_only=True)
    state["projector"] = {k: v + offset if v.is_floating_point() else v
                          for k, v in state["projector"].items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return dst


def test_two_checkpoints_named_model_pt_are_two_models_and_a_changed_one_is_refused(
        tmp_path, capsys):
    digits = bundled.weights_path("digits")
    a = _bundle_with_offset(digits, tmp_path / "A" / "model.pt", 0.0)
    b = _bundle_with_offset(digits, tmp_path / "B" / "model.pt", 0.05)
    db = tmp_path / "s.db"
    for ckpt in (a, b):
        code, _, err = cli(capsys, *EVAL, "--pairs", "2", "--metrics", "SI", "--checkpoint",
                           str(ckpt), "--store", str(db))
        assert code == 0, err
    per_model = rows(db, "SELECT model, SUM(value) FROM results GROUP BY model ORDER BY model")
    assert [m for m, _ in per_model] == [f"digits@{a}", f"digits@{b}"]
    assert per_model[0][1] != per_model[1][1]  # B's report shows B's numbers
    a.write_bytes(b.read_bytes())  # same path, other weights
    code, _, err = cli(capsys, *EVAL, "--pairs", "2", "--metrics", "SI", "--checkpoint", str(a),
                       "--store", str(db))
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert f"holds results of another model under the label 'digits@{a}'" in err


def test_a_changed_image_folder_is_refused_naming_the_files(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", 4)
    args = [*EVAL, "--data", str(data), "--pairs", "4", "--metrics", "SI",
            "--store", str(tmp_path / "f.db")]
    assert cli(capsys, *args)[0] == 0
    image_folder(tmp_path / "more", 1, seed=9)
    os.replace(tmp_path / "more" / "img0.png", data / "new.png")
    code, _, err = cli(capsys, *args)
    assert code != 0 and "1 added (new.png)" in err and "use another --store" in err
    (data / "new.png").unlink()
    assert cli(capsys, *args)[0] == 0  # back as it was: accepted again
    os.utime(data / "img2.png", ns=(1, 1))
    code, _, err = cli(capsys, *args)
    assert code != 0 and "1 modified (img2.png)" in err


def test_stochastic_maps_do_not_depend_on_the_batch():
    """Issue 12 item 1, second bullet (per-pair generators, built by the issue-13 engineer):
    a pair explained inside a batch equals the same pair explained alone."""
    from pairlens.methods import common

    if not hasattr(common, "pair_generators"):
        pytest.xfail("per-pair generators (methods.common.pair_generators) not merged yet")
    model = square_model()
    x1, x2 = pair_batch(3)
    for method, params in (("pairwise-occlusion", {"n_samples": 4}),
                           ("smoothgrad", {"n_samples": 4}), ("random", {})):
        batch = pairlens.explain(model, x1, x2, method=method, **params)
        alone = pairlens.explain(model, x1[1:2], x2[1:2], method=method, **params)
        assert torch.allclose(batch.maps[0][1], alone.maps[0][0], atol=1e-6), method


# ---------------------------------------------------------------- 2. limits
def test_huge_small_png_is_refused_before_decoding_in_every_path(tmp_path, capsys):
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    good = image_folder(tmp_path / "one", 1) / "img0.png"
    code, _, err = cli(capsys, "explain", str(good), str(bomb), "--out", str(tmp_path / "o"),
                       "--quiet")
    assert code != 0 and "bomb.png: image is 784.0 megapixels; the limit is 100.0" in err
    folder = image_folder(tmp_path / "imgs", 3)
    os.replace(bomb, folder / "bomb.png")
    # training: stops naming the file and the way out, then skips it
    train = ["train", "simclr", "--data", str(folder), "--arch", "digits-cnn", "--epochs", "1",
             "--batch-size", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    code, _, err = cli(capsys, *train)
    assert code != 0 and "bomb.png" in err and "--on-error skip" in err
    code, out, err = cli(capsys, *train, "--on-error", "skip")
    assert code == 0 and "skipped 1 unreadable file" in err
    assert "bomb.png" in (tmp_path / "run" / "skipped.json").read_text()
    # corpus: the bomb in the corpus folder is skipped and listed
    code, _, err = cli(capsys, "corpus", str(folder / "img0.png"), "--corpus", str(folder),
                       "--target", "corpus", "--n-masks", "8", "--device", "cpu",
                       "--on-error", "skip", "--out", str(tmp_path / "c"))
    assert code == 0 and "bomb.png" in err and (tmp_path / "c" / "skipped.json").is_file()


def test_demo_refuses_a_huge_upload_before_decoding_and_memory_stays_at_baseline(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    # VmHWM, not ru_maxrss: a subprocess inherits its parent's (the test session's) ru_maxrss,
    # which could hide a 2.4 GB decode behind an even larger parent peak.
    script = f"""
from pairlens.demo import core
def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
baseline = peak_kb()
try:
    core.load_upload({{"path": {str(bomb)!r}, "orig_name": "b.png"}}, "image 1",
                     [{str(tmp_path)!r}])
except core.DemoError as err:
    print("refused:", err)
print("grew_kb", peak_kb() - baseline)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused: image 1 (b.png): image is 784.0 megapixels; the limit is 40.0 megapixels" \
        in res.stdout
    grew = int(res.stdout.split("grew_kb")[1])
    assert grew < 50_000, f"peak memory grew by {grew} KB"  # decoding would take 2.4 GB


def test_demo_inputs_hand_the_upload_over_undecoded():
    from types import SimpleNamespace

    from pairlens.demo.app import _undecoded

    class Payload:  # what Gradio passes (its ImageData): it must not be opened
        def model_dump(self):
            return {"path": "/nowhere/x.png", "url": None, "orig_name": "x.png", "size": 3}

    # gr.Image's own preprocess would open and convert the file; ours replaces it
    component = _undecoded(SimpleNamespace(preprocess=None))
    assert component.preprocess(Payload()) == {"path": "/nowhere/x.png", "url": None,
                                               "orig_name": "x.png"}
    assert component.preprocess(None) is None


# ---------------------------------------------------------------- 3. parameters
def test_bad_parameters_exit_non_zero_and_store_nothing(tmp_path, capsys):
    db = tmp_path / "p.db"
    code, _, err = cli(capsys, *EVAL, "--pairs", "2", "--methods",
                       "conditional-occlusion[window=-8]", "--store", str(db))
    assert code != 0 and "parameter window must be an integer >= 1" in err
    assert not db.exists() or rows(db, "SELECT COUNT(*) FROM results") == [(0,)]
    code, out, err = cli(capsys, "explain", "--param", "guided=no", "--methods",
                         "input-x-gradient", "--model", "digits", "--out", str(tmp_path / "g"),
                         "--quiet")
    assert code == 0, err
    import json

    assert json.loads((tmp_path / "g" / "input-x-gradient.json").read_text())["params"] == \
        {"guided": False, "batch_size": None}


def test_train_refuses_zero_epochs_in_the_library_too(tmp_path):
    from pairlens.training.simclr import ContrastiveTrainer, TrainConfig
    from pairlens.validation import ParamError

    config = TrainConfig(epochs=0, out=str(tmp_path / "r"), device="cpu", progress=False)
    with pytest.raises(ParamError, match="parameter epochs must be an integer >= 1; got 0"):
        ContrastiveTrainer(torch.nn.Linear(2, 2), torch.rand(4, 3, 8, 8), None, config,
                           lambda *a: None)
    assert not (tmp_path / "r").exists()  # no untrained model written


# ---------------------------------------------------------------- 4. images and checkpoints
def test_exif_orientation_is_applied_in_the_library_and_the_demo(tmp_path, capsys):
    from pairlens.demo import core

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # a white band on the left of the stored pixels
    im = Image.fromarray(arr)
    tags = im.getexif()
    tags[0x0112] = 6  # displayed rotated 90° clockwise: the band is on top
    path = tmp_path / "phone.jpg"
    im.save(path, exif=tags.tobytes(), quality=95)
    for loaded in (pairlens.io.load_image(path), core.load_upload(str(path), "image 1",
                                                                  [tmp_path])):
        a = np.asarray(loaded)
        assert loaded.size == (20, 40)
        assert a[:8].mean() > 200 and a[12:].mean() < 50
    x = square_model().preprocess(path)
    top, bottom = x[0, :, :4].mean(), x[0, :, -4:].mean()
    assert top > bottom


def test_checkpoint_of_another_bundled_model_is_refused_by_the_cli(tmp_path, capsys):
    code, _, err = cli(capsys, "explain", "--model", "digits", "--checkpoint",
                       str(bundled.weights_path("photos")), "--out", str(tmp_path), "--quiet")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "not the 'digits-cnn' network of model 'digits'" in err and "--model photos" in err


def test_resume_names_every_setting_that_differs(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", 4)
    args = ["train", "simclr", "--data", str(data), "--arch", "digits-cnn", "--epochs", "1",
            "--batch-size", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    assert cli(capsys, *args, "--image-size", "40")[0] == 0
    code, _, err = cli(capsys, *args, "--image-size", "48", "--resume")
    assert code != 0 and "image_size: 40 -> 48" in err and "data_hash" in err
    image_folder(tmp_path / "imgs", 5, seed=3)  # the data changed (and one more image)
    code, _, err = cli(capsys, *args, "--image-size", "40", "--resume")
    assert code != 0 and "data_hash" in err and "image_size" not in err


# ---------------------------------------------------------------- 5. folders with bad files
def test_evaluate_stops_or_skips_a_bad_file_and_lists_it(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", 4)
    (data / "img1.png").write_bytes(b"broken")
    (data / "x.png").mkdir()  # a folder with an image name is never an image
    db = tmp_path / "b.db"
    args = [*EVAL, "--data", str(data), "--pairs", "4", "--metrics", "SI", "--store", str(db)]
    code, _, err = cli(capsys, *args)
    assert code != 0 and "img1.png" in err and "--on-error skip" in err
    code, out, err = cli(capsys, *args, "--on-error", "skip")
    assert code == 0
    assert err.count("skipped") == 1 and "img1.png" in err  # logged once
    assert "skipped 1 unreadable file: " in out and "img1.png" in out
    assert rows(db, "SELECT file FROM skipped") == [(str(data / "img1.png"),)]
    assert rows(db, "SELECT COUNT(DISTINCT pair_id) FROM results") == [(3,)]


def test_every_file_written_respects_the_umask(tmp_path):
    from pairlens.io import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        exp = pairlens.explain(square_model(), *pair_batch(1), method="grad-cam")
        written = exp.save(tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
    assert written and all(p.stat().st_mode & 0o777 == 0o640 for p in written)


def test_bad_files_policy_is_shared():
    assert BadFiles("skip").summary() == ""
    with pytest.raises(ValueError):
        BadFiles("maybe")


def test_store_written_with_identities_cannot_mix_models(tmp_path):
    model = square_model()
    pairs = PairSet(model, "digits", "augmented", n=2, seed=0)
    specs = parse_methods("random")
    with ResultStore(tmp_path / "i.db") as store:
        run_evaluation(model, "square", pairs, specs, ["SI"], store, step=128, progress=False)
        other = square_model(size=40)  # same weights, other input size
        with pytest.raises(IdentityMismatch, match="input_size"):
            run_evaluation(other, "square", PairSet(other, "digits", n=2), specs, ["SI"],
                           store, step=128, progress=False)


# ---------------------------------------------------------------- issue 16: pairs the model refuses
def identical_pair_list(root: Path) -> tuple[Path, Path]:
    """Six pairs of distinct random images, the fifth of which is one file twice (its cosine
    similarity is stationary: every gradient map would be blank), and the same list without it."""
    image_folder(root, 6)
    lines = [(0, 1), (2, 3), (4, 5), (1, 2), (1, 1), (3, 4)]
    text = [f"{root / f'img{a}.png'} {root / f'img{b}.png'}" for a, b in lines]
    with_bad, without = root / "pairs6.txt", root / "pairs5.txt"
    with_bad.write_text("\n".join(text) + "\n")
    without.write_text("\n".join(text[:4] + text[5:]) + "\n")
    return with_bad, without


def test_evaluate_names_a_refused_pair_and_skip_scores_the_rest_of_its_unit(tmp_path, capsys):
    with_bad, without = identical_pair_list(tmp_path / "imgs")
    bad = f"{tmp_path / 'imgs' / 'img1.png'} + {tmp_path / 'imgs' / 'img1.png'}"
    args = ["evaluate", "--model", "digits", "--pair-mode", "list", "--methods", "grad-cam",
            "--metrics", "SI", "--step", "128", "--device", "cpu", "--quiet", "--workers", "1",
            "--pairs-per-unit", "3"]  # units: pairs 0-2, then 3-5 with the refused pair 4
    db = tmp_path / "r.db"
    code, _, err = cli(capsys, *args, "--data", str(with_bad), "--store", str(db))
    assert code != 0 and err.count("\n") == 1 and bad in err and "stationary" in err
    assert "--on-error skip" in err and "pair(s)" not in err  # no index relative to a unit
    assert rows(db, "SELECT DISTINCT pair_id FROM results ORDER BY 1") == [(0,), (1,), (2,)]
    for _ in range(2):  # and a re-run does not fail forever
        code, out, err = cli(capsys, *args, "--data", str(with_bad), "--store", str(db),
                             "--on-error", "skip")
        assert code == 0 and bad in err and "skipped 1 pair that could not be explained" in out
    assert [r[0] for r in rows(db, "SELECT file FROM skipped")] == [bad]
    ref = tmp_path / "ref.db"
    assert cli(capsys, *args, "--data", str(without), "--store", str(ref))[0] == 0
    got = rows(db, "SELECT pair_id, value FROM results ORDER BY pair_id")
    want = rows(ref, "SELECT pair_id, value FROM results ORDER BY pair_id")
    assert [p for p, _ in got] == [0, 1, 2, 3, 5]
    assert [v for _, v in got] == [v for _, v in want]  # the good pairs, as without the bad one
    # worker processes report what they skipped to the parent, which names the pair as a pair
    args[args.index("--workers") + 1] = "2"
    code, out, err = cli(capsys, *args, "--data", str(with_bad), "--store", str(tmp_path / "w.db"),
                         "--on-error", "skip")
    assert code == 0 and f"skipped 1 pair that could not be explained: {bad}" in out
    assert rows(tmp_path / "w.db", "SELECT pair_id, value FROM results ORDER BY 1") == got



def test_evaluate_fails_when_every_pair_is_skipped(tmp_path, capsys):
    """A list of refused pairs only, under --on-error skip: the run says nothing could be
    evaluated and exits 1 (it once exited 0 and suggested a report with nothing in it)."""
    image_folder(tmp_path / "imgs", 2)
    listing = tmp_path / "same.txt"
    listing.write_text("".join(f"{tmp_path / 'imgs' / f'img{k}.png'} "
                               f"{tmp_path / 'imgs' / f'img{k}.png'}\n" for k in range(2)))
    args = ["evaluate", "--model", "digits", "--data", str(listing), "--methods", "grad-cam",
            "--metrics", "SI", "--step", "128", "--device", "cpu", "--quiet", "--workers", "1",
            "--store", str(tmp_path / "s.db"), "--on-error", "skip"]
    code, out, err = cli(capsys, *args)
    assert code == 1 and "nothing could be evaluated: every pair was skipped" in err
    assert "skipped 2 pairs" in out and "next: pairlens report" not in out

def test_explain_pairs_writes_the_good_pairs_of_a_unit_with_a_refused_pair(tmp_path, capsys):
    with_bad, _ = identical_pair_list(tmp_path / "imgs")
    args = ["explain", "--model", "digits", "--pairs", str(with_bad), "--methods", "grad-cam",
            "--device", "cpu", "--quiet", "--pairs-per-unit", "3"]
    code, _, err = cli(capsys, *args, "--out", str(tmp_path / "stop"))
    assert code != 0 and "img1.png + " in err and "stationary" in err and err.count("\n") == 1
    done = sorted(p.name[:4] for p in (tmp_path / "stop").glob("000*"))
    assert done == ["0001", "0002", "0003", "0004"]  # pair 4 shares the failing unit
    code, _, err = cli(capsys, *args, "--out", str(tmp_path / "skip"), "--on-error", "skip")
    assert code == 0
    index = (tmp_path / "skip" / "index.csv").read_text().splitlines()
    assert len(index) == 7 and "stationary" in index[5] and "grad-cam.npz" in index[6]
    assert all("grad-cam.npz" in line for line in index[1:5])


@pytest.mark.parametrize("raised", ["feature-layer", "other"])
def test_only_per_pair_guards_are_skipped(tmp_path, monkeypatch, raised):
    from pairlens.models.similarity import FeatureLayerError, is_pair_error
    from pairlens.study import loop

    err = FeatureLayerError("layer") if raised == "feature-layer" else RuntimeError("boom")
    assert not is_pair_error(err)

    def explain(*a, **k):
        raise err

    monkeypatch.setattr(loop, "_explain", explain)
    model = square_model()
    with ResultStore(tmp_path / "o.db") as store, pytest.raises(type(err)):
        run_evaluation(model, "square", PairSet(model, "digits", n=2), parse_methods("grad-cam"),
                       ["SI"], store, step=128, progress=False, bad_files=BadFiles("skip"))


def test_a_store_that_cannot_be_opened_or_written_is_named(tmp_path, capsys, monkeypatch):
    from pairlens.study import store as store_module

    (tmp_path / "file").write_text("x")
    args = [*EVAL, "--pairs", "2", "--metrics", "SI", "--workers", "1"]
    code, _, err = cli(capsys, *args, "--store", str(tmp_path / "file" / "s.db"))
    assert code != 0 and err.count("\n") == 1
    assert f"cannot open results store {tmp_path / 'file' / 's.db'}: " in err
    assert "is a file, not a folder" in err
    db = tmp_path / "ro.db"
    ResultStore(db).close()
    connect = sqlite3.connect  # a read-only database (chmod does not stop root; mode=ro does)
    monkeypatch.setattr(store_module.sqlite3, "connect",
                        lambda p, **kw: connect(f"file:{p}?mode=ro", uri=True, **kw))
    code, _, err = cli(capsys, *args, "--store", str(db))
    assert code != 0 and err.count("\n") == 1
    assert f"results store {db}: attempt to write a readonly database" in err
