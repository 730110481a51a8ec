"""Every example in every ``--help`` runs, with ``--json`` appended, and the files its JSON report
lists exist.

Examples are taken verbatim from the parser tree. Placeholders (a.jpg, threes/, a published
checkpoint, /data/imagenet/val, ...) are replaced by bundled images, small folders and random
weights in the published formats (for CLIP, a tiny open_clip architecture instead of ViT-B/32);
work sized for a GPU is shrunk (:data:`SHRINK`: fewer pairs, epochs, seeds, masks). The network is
never used (``download`` gets a fake downloader; ``demo`` a fake server). Examples that still take
more than a few seconds here are marked slow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_parsers, save_tiny_clip
from PIL import Image

from pairlens.cli import main
from pairlens.data.bundled import digits, example_image_paths

SRC = Path(__file__).resolve().parents[1] / "src"


def help_examples() -> list[tuple[str, str]]:
    """``(command path, example command)`` for every example line of every epilog, in parser
    order, without duplicates; continuation lines are joined, notes and trailing comments
    dropped."""
    found: list[tuple[str, str]] = []
    for path, parser in cli_parsers():
        in_examples, current = False, ""
        for line in (parser.epilog or "").splitlines():
            if re.match(r"^examples?:\s*$", line):
                in_examples = True
                continue
            if in_examples and not line.strip():
                break
            text = line.strip()
            if not in_examples or text.startswith("#"):  # a note on the example above
                continue
            current += (" " if current else "") + text.rstrip("\\").strip()
            if text.endswith("\\"):
                continue
            command = re.sub(r"\s+#.*$", "", current).strip()
            current = ""
            if command not in [c for _, c in found]:
                found.append((" ".join(path) or "pairlens", command))
    return found


EXAMPLES = help_examples()

#: work sized for a GPU, shrunk for the test (pattern, replacement); applied in order
SHRINK = [
    (r"--pairs (20|34|200|2000)\b", "--pairs 2"),
    (r"--device cuda", "--device cpu"),
    (r"--epochs \d+", "--epochs 1"),
    (r"--steps-per-epoch \d+", "--steps-per-epoch 2"),
    (r"--seeds 0-2", "--seeds 0"),
    (r"--param n_masks=500", "--param n_masks=32 --corpus-size 20 --foil-size 30"),
    (r"--methods all --store imagenet.db", "--methods grad-cam --step 2000 --store imagenet.db"),
]
#: file placeholders -> workspace files (created by :func:`workspace`)
FILES = {
    "a.jpg": "cat.jpg", "b.jpg": "cat-view.jpg", "dog.jpg": "cat.jpg", "zebra.jpg": "cat.jpg",
    "bee.jpg": "coffee.jpg", "digit.png": "digit-3a.png",
    "clip-vit-b32": "clip:pairlens-test-tiny-clip",
    "clip:ViT-B-32-quickgelu": "clip:pairlens-test-tiny-clip",
    "open_clip_pytorch_model.bin": "tiny-clip.pt", "ViT-B-32.pt": "tiny-clip.pt",
    "/data/imagenet/val": "imagenet-val", "/data/weights": "weights",
}
#: outputs that other examples read; the first example writing one (--out / --store) makes it
NEEDED = ("digits.db", "photos.db", "corpus.db", "runs/digits", "runs/excon", "runs/study")


def producer(target: str) -> str:
    return next(c for _, c in EXAMPLES
                if re.search(rf"--(out|store) {re.escape(target)}/?( |$)", c))


#: examples taking more than a few seconds here even when shrunk (they run with -m slow)
SLOW = ("--methods all", "conditional-occlusion", "simclr-v2-r50", "pairlens corpus",
        "pairlens evaluate", "pairlens report", "train ", "eval-classifier", "study excon",
        "torchrun")


def shrink(command: str) -> str:
    for pattern, replacement in SHRINK:
        command = re.sub(pattern, replacement, command)
    if command.startswith("pairlens train") and "--steps-per-epoch" not in command:
        command += " --steps-per-epoch 2"
    if command.startswith("pairlens analyze"):  # the analyses at their smallest
        for pattern, replacement in ((r"--pairs \d+", "--pairs 2"), (r"--images \d+", "--images 1"),
                                     (r"n_masks=\d+", "n_masks=50"),
                                     (r"--iterations \d+", "--iterations 3")):
            command = re.sub(pattern, replacement, command)
        kind = command.split()[2]
        extra = {"augmentations": "--pairs 2 --transforms rotation@90 --variants non-guided",
                 "invert": "--images 1 --iterations 3 --layers stem",
                 "texture": "--pairs 2 --methods grad-cam,random",
                 "harmful-augmentations": "--pairs 2 --methods grad-cam",
                 "cocoa-augmentations": "--images 1 --param n_masks=50 --foil-size 20 "
                                        "--augmentations flip"}.get(kind, "")
        for option in re.findall(r"(--[a-z-]+ \S+)", extra):  # only what the example leaves open
            if option.split()[0] not in command:
                command += " " + option
        command += " --threads 1"
    if command.startswith("pairlens corpus-eval") and "--report" not in command:
        if "--classes" not in command:
            command += " --seeds 0 --classes 3 --corpus-size 20 --foil-size 30"
        command += " --param n_masks=32 --param n_steps=4 --param n_samples=4"
    return command


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with every file the examples name."""
    root = tmp_path_factory.mktemp("examples")
    for path in example_image_paths():
        shutil.copy(path, root / path.name)
    photos = [root / n for n in ("cat.jpg", "cat-view.jpg", "coffee.jpg", "motorcycle-left.jpg",
                                 "motorcycle-right.jpg")]
    (root / "pairs.txt").write_text("cat.jpg cat-view.jpg\nmotorcycle-left.jpg "
                                    "motorcycle-right.jpg\n")
    x, y = digits("test")
    for folder, label, count in (("threes", 3, 6), ("my_classes/three", 3, 8),
                                 ("my_classes/eight", 8, 8)):
        (root / folder).mkdir(parents=True)
        for k, i in enumerate(torch.nonzero(y == label).flatten()[:count].tolist()):
            _save_png(x[i].permute(1, 2, 0).numpy(), root / folder / f"{k}.png")
    for folder, files in (("cats", photos[:2]), ("random", photos[2:]), ("my_images", photos),
                          ("imagenet-val/a", photos[:2]), ("imagenet-val/b", photos[2:])):
        (root / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / folder / f.name)
    (root / "weights").mkdir()
    return root


@pytest.fixture(scope="module")
def simclr_r50(workspace):
    """Random weights in the published SimCLRv2 format (dict with ``resnet`` and ``head``)."""
    from pairlens.models.zoo.simclrv2 import ContrastiveHead, SimCLRv2ResNet

    torch.manual_seed(0)
    resnet = SimCLRv2ResNet(50, 1, 0.0)
    head = ContrastiveHead(resnet.out_dim)
    path = workspace / "r50_1x_sk0_ema.pth"
    torch.save({"resnet": resnet.state_dict(), "head": head.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tiny_clip(workspace):
    save_tiny_clip(workspace)


def prepare(command: str, workspace: Path) -> list[str]:
    from pairlens.models.registry import model_info

    words = shlex.split(shrink(command))
    out = []
    for before, w in zip(["", *words], words, strict=False):
        if before == "--model":
            model_info(w)  # the example names a registered model (before any stand-in)
        w = FILES.get(w, w)
        if w.startswith("/") and not Path(w).exists():
            raise AssertionError(f"unmapped absolute path {w} in {command!r}")
        out.append(w)
    return out


def run_example(command: str, workspace: Path, request, monkeypatch, capsys) -> dict | None:
    """Run one example in ``workspace``; returns its JSON report (None for demo/torchrun)."""
    for target in NEEDED:
        full = producer(target)
        if target in command and command != full and not (workspace / target).exists():
            run_example(full, workspace, request, monkeypatch, capsys)
    if "simclr-v2-r50" in command:
        request.getfixturevalue("simclr_r50")
    if "clip" in command:
        request.getfixturevalue("tiny_clip")
    monkeypatch.chdir(workspace)
    words = prepare(command, workspace)
    if words[0] == "torchrun":
        torchrun = Path(sys.executable).with_name("torchrun")
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([str(torchrun), *words[1:], "--quiet"], capture_output=True,
                              text=True, env=env, cwd=workspace, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return None
    assert words[0] == "pairlens", command
    args = words[1:]
    if args[0] == "demo":
        served = {}
        import pairlens.demo.app as app

        monkeypatch.setattr(app, "serve", lambda choices, **kw: served.update(kw, n=len(choices)))
        assert main(args) == 0
        assert served["n"] >= 1
        return None
    if args[0] == "download":
        import pairlens.models.download as download

        def fake(name, cache_dir=None, sha256=None, url=None, progress=None):
            path = Path(cache_dir or workspace / "cache") / name / "weights.pth"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"weights")
            return path

        monkeypatch.setattr(download, "download_model", fake)
        args = [a if a != "SHA256" else "0" * 64 for a in args]
    if args[-1] not in ("--help",):
        args.append("--json")
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, f"{command}\n{captured.err[-3000:]}"
    report = json.loads(captured.out)
    for item in report["written"]:
        assert (workspace / item["path"]).exists(), item
    return report


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, id=c[:70], marks=[pytest.mark.slow] if any(s in c for s in SLOW) else [])
     for _, c in EXAMPLES],
)
def test_help_example_runs(command, workspace, request, monkeypatch, capsys):
    report = run_example(command, workspace, request, monkeypatch, capsys)
    if report is None:
        return
    if report["command"] == "explain":
        assert all(r["similarity"] == r["similarity"] for p in report["pairs"]
                   for r in p["results"])  # not NaN
        assert report["written"], command


def test_examples_are_found_everywhere():
    commands = {path.split()[0] for path, _ in EXAMPLES}
    assert {"explain", "methods", "models", "download", "evaluate", "report", "corpus",
            "corpus-eval", "train", "eval-classifier", "study", "demo", "correspond",
            "analyze"} <= commands
    assert len(EXAMPLES) >= 30
    for _, command in EXAMPLES:  # the shared spellings only, never a deprecated one
        for old in ("--method ", "--db ", "--all-methods", "--clip-checkpoint", "--forward-batch",
                    "--n-masks"):
            assert old not in command + " ", command
