"""The ``pairlens`` command line, end to end on the bundled models and images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pairlens.cli import main
from pairlens.data.bundled import example_image_paths


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_explain_with_no_arguments_explains_the_bundled_example_pair(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["explain", "--quiet"], capsys)
    assert code == 0, err
    figure = tmp_path / "pairlens-out" / "interaction-cam.png"
    assert figure.is_file() and figure.stat().st_size > 10_000
    meta = json.loads((tmp_path / "pairlens-out" / "interaction-cam.json").read_text())
    assert meta["model"]["name"] == "photos" and meta["method"] == "interaction-cam"
    maps = np.load(tmp_path / "pairlens-out" / "interaction-cam.npz")
    assert maps["map1"].shape == (1, *meta["model"]["input_size"])
    assert np.isfinite(maps["map1"]).all() and maps["map1"].max() > 0


def test_explain_two_images_every_method(tmp_path, capsys):
    a, b = example_image_paths("digits")[:2]
    out_dir = tmp_path / "out"
    code, out, err = run(
        ["explain", a, b, "--model", "digits", "--all-methods", "--out", out_dir, "--quiet"], capsys
    )
    assert code == 0, err
    for name in ("input-x-gradient", "smoothgrad", "averaged-transforms", "conditional-occlusion",
                 "pairwise-occlusion", "grad-cam", "interaction-cam", "deep-similarity"):
        assert (out_dir / f"{name}.png").is_file(), name
        assert name in out
    assert (out_dir / "grid.png").is_file()


def test_explain_params_reach_the_method(tmp_path, capsys):
    a, b = example_image_paths("digits")[:2]
    code, _, err = run(
        ["explain", a, b, "--model", "digits", "--method", "averaged-transforms",
         "--param", "transform=rotation", "--param", "strength=0,90", "--param", "guided=true",
         "--param", "interpolation=strength", "--param", "steps=3", "--out", tmp_path, "--quiet"],
        capsys,
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "averaged-transforms.json").read_text())
    assert meta["params"]["transform"] == "rotation"
    assert meta["params"]["strength"] == [0, 90] and meta["params"]["guided"] is True


def test_images_of_different_sizes_and_modes(tmp_path, capsys):
    gray = tmp_path / "gray.png"
    Image.fromarray((np.arange(40 * 70) % 256).astype(np.uint8).reshape(40, 70)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (13, 9), (200, 10, 10, 128)).save(rgba)
    code, _, err = run(
        ["explain", gray, rgba, "--model", "digits", "--method", "grad-cam", "--out", tmp_path,
         "--quiet"],
        capsys,
    )
    assert code == 0, err


def bad_files(tmp_path):
    good = example_image_paths("digits")[0]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "readme.png"
    text.write_text("not an image")
    return good, {
        "truncated": truncated, "empty": empty, "not-an-image": text,
        "missing": tmp_path / "missing.jpg", "directory": tmp_path,
    }


@pytest.mark.parametrize("kind", ["truncated", "empty", "not-an-image", "missing", "directory"])
def test_bad_files_give_one_line_error_and_nonzero_exit(tmp_path, capsys, kind):
    good, bad = bad_files(tmp_path)
    code, out, err = run(
        ["explain", good, bad[kind], "--model", "digits", "--out", tmp_path / "o"], capsys
    )
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pairlens: error:"), err
    assert str(bad[kind]) in lines[0]
    assert not (tmp_path / "o").exists()  # nothing written


def test_no_traceback_from_the_installed_command(tmp_path):
    _, bad = bad_files(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pairlens", "explain", str(bad["truncated"]),
         str(bad["empty"])],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1  # a runtime error (an unreadable file), not a usage error
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_usage_errors(tmp_path, capsys):
    a = example_image_paths("digits")[0]
    code, _, err = run(["explain", a, "--model", "digits"], capsys)
    assert code == 2 and "two images" in err
    code, _, err = run(["explain", a, a, "--model", "digits", "--method", "nope"], capsys)
    assert code == 2 and "unknown method" in err
    code, _, err = run(["explain", a, a, "--model", "nope"], capsys)
    assert code == 2 and "unknown model" in err
    code, _, err = run(["explain", a, a, "--model", "digits", "--param", "nonsense"], capsys)
    assert code == 2 and "KEY=VALUE" in err


def test_methods_lists_all_methods_with_parameters(capsys):
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    for name in ("input-x-gradient", "smoothgrad", "averaged-transforms", "conditional-occlusion",
                 "pairwise-occlusion", "grad-cam", "interaction-cam", "deep-similarity"):
        assert name in out
    assert "reduction=mean" in out and "n_samples=100" in out
    assert "window=auto" in out and "None" not in out
    import pairlens.methods  # noqa: F401
    from pairlens.methods.registry import method_infos

    for info in method_infos():  # the source column is never cut
        assert info.section in out, info.name


def test_help_everywhere_has_examples(capsys):
    import argparse

    from pairlens.cli import build_parser

    commands: list[list[str]] = [[]]

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    commands.append(path + [name])
                    walk(sub, path + [name])

    walk(build_parser(), [])
    assert len(commands) > 15
    for args in commands:
        with pytest.raises(SystemExit) as info:
            main(args + ["--help"])
        assert info.value.code == 0
        assert "example" in capsys.readouterr().out, args


# ----------------------------------------------------------------------------- many pairs
def test_explain_many_pairs_from_a_list_and_a_folder(tmp_path, capsys):
    """--pairs: one folder per pair, an index, one JSON object. An unreadable image stops the
    run (the index still lists what was done) or, with --on-error skip, its pair is reported,
    skipped and listed; results equal explaining each pair alone."""
    paths = example_image_paths("digits")
    listing = tmp_path / "pairs.txt"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    listing.write_text(f"{paths[0]} {paths[1]}\n# a comment\n{paths[0]} {broken}\n"
                       f"{paths[1]} {paths[2]}\n")
    out = tmp_path / "out"
    args = ["explain", "--pairs", listing, "--model", "digits", "--methods",
            "grad-cam,interaction-cam", "--pairs-per-unit", "1", "--batch-size", "2", "--out",
            out, "--quiet"]
    code, _, err = run(args, capsys)
    assert code == 1 and "broken.png" in err and "--on-error skip" in err
    assert err.count("\n") == 1 and "0001_digit-3a_digit-3b" in (out / "index.csv").read_text()
    code, stdout, err = run(args + ["--json", "--on-error", "skip"], capsys)
    assert code == 0 and "skipped" in err and "1 of 3 pairs" in err
    report = json.loads(stdout)
    assert [p["pair"] for p in report["pairs"]] == [1, 2, 3] and report["failed"] == 1
    assert "not an image" in report["pairs"][1]["error"]
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["0001_digit-3a_digit-3b", "0003_digit-3b_digit-8"]
    for folder in folders:
        for name in ("grad-cam.png", "grad-cam.npz", "interaction-cam.json", "grid.png"):
            assert (folder / name).is_file()
    rows = (out / "index.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 + 1 and "broken.png" in rows[3] and "no such" not in rows[3]
    assert "<img" in (out / "index.html").read_text()
    alone = tmp_path / "alone"
    assert run(["explain", paths[1], paths[2], "--model", "digits", "--methods", "grad-cam",
                "--out", alone, "--quiet"], capsys)[0] == 0
    batch_map = np.load(folders[1] / "grad-cam.npz")["map1"]
    np.testing.assert_allclose(batch_map, np.load(alone / "grad-cam.npz")["map1"], atol=1e-5)

    folder = tmp_path / "pairdirs"
    for name, (a, b) in {"one": paths[:2], "two": paths[1:3]}.items():
        (folder / name).mkdir(parents=True)
        for p in (a, b):
            (folder / name / p.name).write_bytes(p.read_bytes())
    code, stdout, _ = run(["explain", "--pairs", folder, "--model", "digits", "--out",
                           tmp_path / "o2", "--json", "--quiet"], capsys)
    assert code == 0 and len(json.loads(stdout)["pairs"]) == 2


def test_explain_lists_what_it_wrote_and_json_matches(tmp_path, capsys):
    a, b = example_image_paths("digits")[:2]
    code, out, _ = run(["explain", a, b, "--model", "digits", "--out", tmp_path, "--quiet"],
                       capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(str(p) for p in tmp_path.iterdir())
    code, out, _ = run(["explain", a, b, "--model", "digits", "--out", tmp_path, "--json"],
                       capsys)
    report = json.loads(out)
    result = report["pairs"][0]["results"][0]
    meta = json.loads((tmp_path / "interaction-cam.json").read_text())
    assert result["similarity"] == pytest.approx(meta["score"][0])
    assert {w["path"] for w in report["written"]} == {str(p) for p in tmp_path.iterdir()}


def test_deprecated_spellings_still_work_with_a_warning(tmp_path, capsys):
    a, b = example_image_paths("digits")[:2]
    code, _, err = run(["explain", a, b, "--model", "digits", "--method", "grad-cam", "--out",
                        tmp_path, "--quiet"], capsys)
    assert code == 0 and "--method is deprecated" in err and "use --methods" in err
    assert (tmp_path / "grad-cam.png").is_file()


def test_usage_errors_of_the_method_options(capsys):
    a = example_image_paths("digits")[0]
    for args, message in (
        (["--methods", "grad-cam", "--param", "interaction-cam.reduction=max"],
         "not among the selected methods"),
        (["--methods", "grad-cam,smoothgrad", "--param", "reduction=max"],
         "no selected method has a parameter"),
        (["--methods", "grad-cam[", "--param", "x=1"], "unbalanced brackets"),
        (["--methods", "averaged-transforms", "--param", "steps=0"], "steps must be"),
    ):
        code, _, err = run(["explain", a, a, "--model", "digits", *args], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    for args, message in ((["--clip", "0"], "--clip"), (["--batch-size", "0"], "--batch-size")):
        with pytest.raises(SystemExit) as exit:  # checked by argparse: usage, exit code 2
            main(["explain", str(a), str(a), "--model", "digits", *args])
        assert exit.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- file modes
def test_written_files_follow_the_umask(tmp_path, capsys):
    """Collaborators can read what PairLens writes (mode 0666 & ~umask), like any other tool."""
    import os

    old = os.umask(0o022)
    try:
        a, b = example_image_paths("digits")[:2]
        assert run(["explain", a, b, "--model", "digits", "--out", tmp_path / "o", "--quiet"],
                   capsys)[0] == 0
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "o").iterdir()}
        assert set(modes.values()) == {0o644}, modes
        os.umask(0o077)
        assert run(["explain", a, b, "--model", "digits", "--out", tmp_path / "p", "--quiet"],
                   capsys)[0] == 0
        assert {p.stat().st_mode & 0o777 for p in (tmp_path / "p").iterdir()} == {0o600}
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- long runs
def test_evaluate_estimates_first_and_needs_yes_for_long_runs(tmp_path, capsys, monkeypatch):
    """The estimate times the first unit of each method (stored, and the same unit the full
    run would compute, so the results equal a run that never stopped) and stops long runs
    without --yes."""
    import sqlite3

    from pairlens.cli import options

    args = ["evaluate", "--model", "digits", "--data", "digits", "--pairs", "6",
            "--pairs-per-unit", "2", "--methods", "grad-cam,random", "--metrics", "SI",
            "--step", "64", "--device", "cpu", "--quiet"]
    monkeypatch.setattr(options, "CONFIRM_SECONDS", 0.0)
    stopped = tmp_path / "stopped.db"
    code, _, err = run([*args, "--store", stopped], capsys)
    assert code == 2 and "estimated to take" in err and "--yes" in err

    def values(db):
        with sqlite3.connect(db) as conn:
            return sorted(conn.execute("SELECT method, pair_id, metric, value FROM results"))

    assert {(m, p) for m, p, _, _ in values(stopped)} == {
        (m, p) for m in ("grad-cam", "random") for p in (0, 1)}
    code, out, _ = run([*args, "--store", stopped, "--yes", "--json"], capsys)
    assert code == 0 and json.loads(out)["computed"] == 8
    straight = tmp_path / "straight.db"
    assert run([*args, "--store", straight, "--yes"], capsys)[0] == 0
    assert values(stopped) == values(straight) and len(values(straight)) == 12


def test_evaluate_estimate_on_stores_with_methods_partly_or_fully_done(tmp_path, capsys,
                                                                       monkeypatch):
    """Resuming: a finished method is not probed again; a partly done one is probed on its next
    missing unit; when only the last unit is missing nothing is estimated and the run goes on
    without --yes. The end result equals one uninterrupted run."""
    import sqlite3

    from pairlens.cli import options

    args = ["evaluate", "--model", "digits", "--data", "digits", "--pairs", "6",
            "--pairs-per-unit", "2", "--metrics", "SI", "--step", "64", "--device", "cpu",
            "--quiet"]
    monkeypatch.setattr(options, "CONFIRM_SECONDS", 0.0)

    def done(db):
        with sqlite3.connect(db) as conn:
            return sorted(conn.execute("SELECT method, pair_id FROM results"))

    def values(db):
        with sqlite3.connect(db) as conn:
            return sorted(conn.execute("SELECT method, pair_id, metric, value FROM results"))

    db = tmp_path / "resumed.db"
    assert run([*args, "--methods", "grad-cam", "--store", db, "--yes"], capsys)[0] == 0
    finished = values(db)
    code, _, err = run([*args, "--methods", "grad-cam,random", "--store", db], capsys)
    assert code == 2 and "estimated to take" in err
    assert values(db)[: len(finished)] == finished  # grad-cam untouched, not probed again
    assert done(db) == sorted([("grad-cam", p) for p in range(6)] +
                              [("random", p) for p in (0, 1)])
    code, _, err = run([*args, "--methods", "grad-cam,random", "--store", db], capsys)
    assert code == 2  # random's next missing unit (pairs 2, 3) is the probe
    assert [p for m, p in done(db) if m == "random"] == [0, 1, 2, 3]
    code, out, err = run([*args, "--methods", "grad-cam,random", "--store", db, "--json"],
                         capsys)
    assert code == 0 and "estimated" not in err  # only the last unit was missing
    assert json.loads(out)["computed"] == 2
    straight = tmp_path / "straight.db"
    assert run([*args, "--methods", "grad-cam,random", "--store", straight, "--yes"],
               capsys)[0] == 0
    assert values(db) == values(straight)


def test_execution_options_reach_the_model(tmp_path, capsys):
    """--amp / --channels-last (explain, evaluate) are applied by the shared model loader."""
    import argparse

    from pairlens.cli import build_parser
    from pairlens.cli.options import load_model

    for command in (["explain"], ["evaluate"]):
        args = build_parser().parse_args([*command, "--model", "digits", "--amp", "bf16",
                                          "--channels-last", "--device", "cpu"])
        assert args.amp == "bf16" and args.channels_last
    model = load_model(argparse.Namespace(model="digits", checkpoint=None, embedding=None,
                                          device="cpu", amp="bf16", channels_last=True))
    assert model.amp == "bf16" and model.channels_last
    plain = load_model(argparse.Namespace(model="digits", checkpoint=None, embedding=None,
                                          device="cpu"))
    assert plain.amp is None and not plain.channels_last
    code, out, _ = run(["explain", "--model", "digits", "--amp", "bf16", "--device", "cpu",
                        "--out", tmp_path, "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["pairs"][0]["results"][0]["similarity"] > -1


def test_progress_notes_go_to_stderr_even_under_an_overall_bar(capsys):
    """`study excon --json` once printed its '[study]' notes into the JSON on stdout: tqdm's
    write() defaults to stdout."""
    from pairlens.progress import note, overall, progress_bars

    with progress_bars(True), overall(2, "work"):
        note("[study] a note")
    out, err = capsys.readouterr()
    assert "a note" not in out and "[study] a note" in err


def test_pairs_per_unit_without_pairs_is_a_usage_error(capsys):
    code, _, err = run(["explain", "--pairs-per-unit", "3", "--model", "digits"], capsys)
    assert code == 2 and "--pairs-per-unit goes with --pairs" in err
