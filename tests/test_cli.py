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
    assert (out_dir / "all-methods.png").is_file()


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
    assert proc.returncode == 2
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
    assert "--param reduction='mean'" in out and "--param n_samples=100" in out


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
