"""A table of bad or unusual inputs and the outcome each must have (issue 12).

Every row is either an **error**: the given exception type, a one-line message matching a pattern
that names the cause (the file, the parameter and its valid range, what differs), or a
**conversion**: a check of the exact value that results. Images, folders, checkpoints, method
parameters, CLI options, tensors and maps, and results stores are covered. The whole table runs in
the default suite in a few seconds.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import bomb_png, pair_batch, square_model
from PIL import Image

import pairlens
from pairlens.io import BadFiles, ImageError, load_image, scan_images
from pairlens.methods.registry import get_method
from pairlens.models import bundled
from pairlens.models.checkpoint import CheckpointError
from pairlens.models.similarity import NonFiniteError


@dataclass
class Case:
    """``run(files)`` must raise ``error`` with a one-line message matching ``pattern``, or (with
    ``error=None``) return a value for which ``check(value)`` is true."""

    name: str
    run: Callable[[Path], Any]
    error: type[BaseException] | tuple[type[BaseException], ...] | None = None
    pattern: str = ""
    check: Callable[[Any], bool] | None = None


CASES: list[Case] = []


def error(name, pattern, exc=ValueError):
    def deco(fn):
        CASES.append(Case(name, fn, exc, pattern))
        return fn

    return deco


def converts(name, check):
    def deco(fn):
        CASES.append(Case(name, fn, None, "", check))
        return fn

    return deco


# ---------------------------------------------------------------------- the files used below
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "good.png")
    (d / "truncated.png").write_bytes((d / "good.png").read_bytes()[:60])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("not an image\n")
    bomb_png(d / "bomb.png")  # 28000 x 28000 1-bit, ~100 KB
    bomb_png(d / "wide.png", 12_000, 10_000)  # 120 MP: over the 100 MP limit, under PIL's
    exif = Image.fromarray(rgb)
    tags = exif.getexif()
    tags[0x0112] = 6  # "rotate 90° clockwise to display"
    exif.save(d / "phone.jpg", exif=tags.tobytes(), quality=95)
    (d / "folder.png").mkdir()
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / "sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    # folders
    mixed = d / "mixed"
    (mixed / "x.png").mkdir(parents=True)  # a directory with an image name
    (mixed / ".ipynb_checkpoints").mkdir()
    for name in ("a.png", "b.JPG", "c.gif", "d.tiff", "e.webp", ".hidden.png",
                 ".ipynb_checkpoints/a-checkpoint.png"):
        Image.fromarray(rgb).convert("RGB").save(mixed / name)
    (mixed / "readme.txt").write_text("hi")
    (d / "empty-folder").mkdir()
    # checkpoints
    torch.save({"w": torch.zeros(2)}, d / "plain.pt")
    (d / "text.pt").write_text("hello")
    good = bundled.weights_path("digits").read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save(_Evil(d / "PWNED"), d / "evil.pt")
    state = torch.load(bundled.weights_path("digits"), weights_only=True)
    torch.save({**state, "arch": "no-such-net"}, d / "unknown-arch.pt")
    prep = dict(state["preprocessing"], input_size=[64, 64])
    torch.save({**state, "preprocessing": prep}, d / "other-preprocessing.pt")
    torch.save({k: v for k, v in state.items() if k != "projector"}, d / "no-projector.pt")
    return d


class _Evil:
    """Unpickling this would create the file ``marker`` (code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _digits_weights(_: Path) -> Path:
    return bundled.weights_path("digits")


# ---------------------------------------------------------------------- images
error("image: missing file", r"nope\.png: no such file", ImageError)(
    lambda d: load_image(d / "nope.png"))
error("image: empty file", r"empty\.jpg: file is empty", ImageError)(
    lambda d: load_image(d / "empty.jpg"))
error("image: text with an image suffix", r"notes\.jpg: not an image file", ImageError)(
    lambda d: load_image(d / "notes.jpg"))
error("image: truncated", r"truncated\.png: unreadable or truncated", ImageError)(
    lambda d: load_image(d / "truncated.png"))
error("image: a directory named .png", r"folder\.png: is a directory", ImageError)(
    lambda d: load_image(d / "folder.png"))
error("image: 784 MP PNG of 100 KB (PIL's own limit)", r"bomb\.png: image is 784\.0 "
      r"megapixels; the limit is 100\.0 megapixels", ImageError)(
    lambda d: load_image(d / "bomb.png"))
error("image: 120 MP, under PIL's limit, over ours", r"wide\.png: image is 12000x10000 pixels "
      r"\(120\.0 megapixels\); the limit is 100\.0 megapixels", ImageError)(
    lambda d: load_image(d / "wide.png"))
error("image: stricter limit given by the caller", r"good\.png: image is 30x40 pixels "
      r"\(1200 pixels\); the limit is 1000 pixels", ImageError)(
    lambda d: load_image(d / "good.png", max_pixels=1000))
error("image: huge in-memory array", r"array: image is 20001x5000 pixels", ImageError)(
    lambda d: load_image(np.zeros((5000, 20001), np.uint8)))
error("image: array with NaN", r"array: image contains NaN", ImageError)(
    lambda d: load_image(np.full((4, 4, 3), np.nan)))
error("image: array with two channels", r"expected an HxW or HxWxC image array", ImageError)(
    lambda d: load_image(np.zeros((5, 6, 2))))
error("image: not an image object", r"cannot use an object of type dict", ImageError)(
    lambda d: load_image({"path": "x.png"}))
converts("image: EXIF orientation 6 is applied", lambda im: im.size == (40, 30))(
    lambda d: load_image(d / "phone.jpg"))
converts("image: 16-bit keeps its levels", lambda im: im.mode == "RGB")(
    lambda d: load_image(d / "sixteen.png"))
converts("image: CMYK to RGB", lambda im: im.mode == "RGB" and im.size == (30, 40))(
    lambda d: load_image(d / "cmyk.jpg"))
converts("image: PIL image with EXIF orientation", lambda im: im.size == (40, 30))(
    lambda d: load_image(Image.open(d / "phone.jpg")))


def _env_limit(d: Path) -> Any:
    import os

    os.environ["PAIRLENS_MAX_PIXELS"] = "1_000"
    try:
        return load_image(d / "good.png")
    finally:
        del os.environ["PAIRLENS_MAX_PIXELS"]


error("image: limit from PAIRLENS_MAX_PIXELS", r"the limit is 1000 pixels", ImageError)(
    _env_limit)


# ---------------------------------------------------------------------- folders
converts("folder: one scanner, same suffixes, no directories or hidden files",
         lambda names: names == ["a.png", "b.JPG", "c.gif", "d.tiff", "e.webp"])(
    lambda d: [p.name for p in scan_images(d / "mixed")])
error("folder: not a folder", r"good\.png: not a folder", ImageError)(
    lambda d: scan_images(d / "good.png"))
converts("folder: empty folder gives no files", lambda files: files == [])(
    lambda d: scan_images(d / "empty-folder"))


def _stop_names_file_and_skip(d: Path) -> Any:
    return BadFiles("stop", hint="pass --on-error skip").load(d / "truncated.png")


error("folder: stop names the file and the skip option",
      r"truncated\.png: unreadable.*; pass --on-error skip", ImageError)(_stop_names_file_and_skip)


def _skip_logs_once(d: Path) -> Any:
    lines: list[str] = []
    bad = BadFiles("skip", log=lines.append)
    for _ in range(3):
        bad.load(d / "truncated.png")
    return lines, bad.skipped


converts("folder: skip logs each bad file once and remembers it",
         lambda r: len(r[0]) == 1 and "truncated.png" in r[0][0] and len(r[1]) == 1)(
    _skip_logs_once)
error("folder: unknown --on-error policy", r"on_error must be one of stop, skip")(
    lambda d: BadFiles("ignore"))


def _pairs(data: str, mode: str = "augmented") -> Any:
    from pairlens.study import PairSet

    return PairSet(square_model(), data, mode, n=None if mode == "list" else 2)


error("evaluate --data: an image file", r"good\.png: is an image file; --data takes a folder")(
    lambda d: _pairs(str(d / "good.png")))
error("evaluate --data: a binary file", r"truncated\.pt: not a text list file")(
    lambda d: _pairs(str(d / "truncated.pt")))
error("evaluate --data: an empty folder", r"empty-folder: no image files found")(
    lambda d: _pairs(str(d / "empty-folder")))


def _list_with_missing_image(d: Path) -> Any:
    (d / "pairs.txt").write_text("good.png missing.png\n")
    return _pairs(str(d / "pairs.txt"), "list").batch([0])


error("evaluate --data: list naming a missing image", r"missing\.png: no such file", ImageError)(
    _list_with_missing_image)


# ---------------------------------------------------------------------- checkpoints
def _load_digits(path: Path) -> Any:
    return pairlens.load_model("digits", checkpoint=path)


error("checkpoint: missing", r"absent\.pt: no such checkpoint file", CheckpointError)(
    lambda d: _load_digits(d / "absent.pt"))
error("checkpoint: empty", r"empty\.jpg: file is empty", CheckpointError)(
    lambda d: _load_digits(d / "empty.jpg"))
error("checkpoint: a directory", r"folder\.png: is a directory", CheckpointError)(
    lambda d: _load_digits(d / "folder.png"))
error("checkpoint: text file", r"text\.pt: .*(not a|corrupt)", CheckpointError)(
    lambda d: _load_digits(d / "text.pt"))
error("checkpoint: truncated", r"truncated\.pt: truncated or corrupt", CheckpointError)(
    lambda d: _load_digits(d / "truncated.pt"))
error("checkpoint: plain state dict under a bundled name",
      r"plain\.pt: not a PairLens weights file", CheckpointError)(
    lambda d: _load_digits(d / "plain.pt"))
error("checkpoint: photos weights under --model digits",
      r"photos\.pt: holds a 'resnet-mini' network, not the 'digits-cnn' network of model "
      r"'digits'; load it with --model photos", CheckpointError)(
    lambda d: _load_digits(bundled.weights_path("photos")))
error("checkpoint: unknown architecture", r"unknown-arch\.pt: unknown architecture",
      CheckpointError)(lambda d: _load_digits(d / "unknown-arch.pt"))
error("checkpoint: preprocessing differs from the architecture's",
      r"other-preprocessing\.pt: its preprocessing differs .*input_size", CheckpointError)(
    lambda d: _load_digits(d / "other-preprocessing.pt"))
error("checkpoint: projector missing", r"no-projector\.pt: has no projector", CheckpointError)(
    lambda d: _load_digits(d / "no-projector.pt"))


def _evil(d: Path, loader: Callable[[Path], Any]) -> Any:
    try:
        return loader(d / "evil.pt")
    except CheckpointError as err:
        assert not (d / "PWNED").exists(), "the pickle ran"
        assert "weights_only" not in str(err)  # never the advice weights_only=False
        raise


def _load_trained(path: Path) -> Any:
    from pairlens.training.simclr import load_trained

    return load_trained(path)


def _resume(path: Path) -> Any:
    from pairlens.training.simclr import ContrastiveTrainer, TrainConfig

    out = path.parent / "resume-evil"
    out.mkdir(exist_ok=True)
    (out / "checkpoint.pt").write_bytes(path.read_bytes())
    net = bundled.get_architecture("digits-cnn").build()
    config = TrainConfig(epochs=1, batch_size=2, out=str(out), resume=True, device="cpu",
                         progress=False)
    trainer = ContrastiveTrainer(net, torch.rand(4, 3, 32, 32), None, config,
                                 lambda *a: (torch.zeros(()), {}))
    return trainer.fit()


error("checkpoint: malicious pickle, zoo loader", r"evil\.pt: holds pickled Python objects",
      CheckpointError)(lambda d: _evil(d, lambda p: pairlens.load_model("dino-r50",
                                                                         checkpoint=p)))
error("checkpoint: malicious pickle, --model digits", r"evil\.pt: holds pickled Python objects",
      CheckpointError)(lambda d: _evil(d, _load_digits))
error("checkpoint: malicious pickle, trained model", r"evil\.pt: holds pickled Python objects",
      CheckpointError)(lambda d: _evil(d, _load_trained))
error("checkpoint: malicious pickle, train --resume",
      r"resume-evil/checkpoint\.pt: holds pickled Python objects",
      CheckpointError)(lambda d: _evil(d, _resume))
converts("checkpoint: bundled weights carry architecture and preprocessing",
         lambda s: s["arch"] == "digits-cnn" and s["preprocessing"]["input_size"] == [32, 32])(
    lambda d: torch.load(_digits_weights(d), weights_only=True))

# ---------------------------------------------------------------------- method parameters
X1, X2 = pair_batch(1)


def _params(method: str, **params: Any) -> dict[str, Any]:
    return get_method(method).validate(params)


def _explain(method: str, **params: Any) -> dict[str, Any]:
    return pairlens.explain(square_model(), X1, X2, method=method, **params).params


converts("param: guided='no' turns guided backprop off and is recorded as False",
         lambda p: p["guided"] is False)(lambda d: _explain("input-x-gradient", guided="no"))
converts("param: guided='YES' is True", lambda p: p["guided"] is True)(
    lambda d: _params("input-x-gradient", guided="YES"))
converts("param: guided=0 is False", lambda p: p["guided"] is False)(
    lambda d: _params("smoothgrad", guided=0))
error("param: guided='maybe'", r"input-x-gradient: parameter guided must be true or false")(
    lambda d: _explain("input-x-gradient", guided="maybe"))
error("param: guided=2", r"parameter guided must be true or false .*got 2")(
    lambda d: _params("input-x-gradient", guided=2))
error("param: window=0 (used to fall back to the default)",
      r"conditional-occlusion: parameter window must be an integer >= 1 \(or none\); got 0")(
    lambda d: _explain("conditional-occlusion", window=0))
error("param: stride=0", r"parameter stride must be an integer >= 1")(
    lambda d: _params("conditional-occlusion", stride=0))
error("param: window=-8 (used to give a meaningless map)", r"parameter window must be an "
      r"integer >= 1 \(or none\); got -8")(lambda d: _explain("conditional-occlusion", window=-8))
error("param: window=2.5", r"window must be an integer")(
    lambda d: _params("conditional-occlusion", window=2.5))
converts("param: window='8' (text) is 8", lambda p: p["window"] == 8)(
    lambda d: _params("conditional-occlusion", window="8"))
converts("param: window='none' is the scaled default", lambda p: p["window"] is None)(
    lambda d: _params("conditional-occlusion", window="none"))
error("param: n_samples=0 (used to give an all-zero map)",
      r"smoothgrad: parameter n_samples must be an integer >= 1; got 0")(
    lambda d: _explain("smoothgrad", n_samples=0))
error("param: n_samples=True", r"n_samples must be an integer")(
    lambda d: _params("pairwise-occlusion", n_samples=True))
error("param: batch_size=0 (used to fail in range())",
      r"pairwise-occlusion: parameter batch_size must be an integer >= 1 \(or none\); got 0")(
    lambda d: _explain("pairwise-occlusion", batch_size=0))
error("param: area reversed", r"parameter area must be two numbers .*lo <= hi")(
    lambda d: _params("pairwise-occlusion", area=(0.5, 0.1)))
error("param: area starting at 0", r"area must be two numbers 'lo,hi' with each in \(0, 1\]")(
    lambda d: _params("pairwise-occlusion", area="0,0.3"))
converts("param: area '0.1; 0.3' is (0.1, 0.3)", lambda p: p["area"] == (0.1, 0.3))(
    lambda d: _params("pairwise-occlusion", area="0.1; 0.3"))
error("param: ratio negative", r"ratio must be two numbers 'lo,hi' with each > 0")(
    lambda d: _params("pairwise-occlusion", ratio=(-1, 1)))
error("param: noise_level negative", r"noise_level must be a number >= 0")(
    lambda d: _params("smoothgrad", noise_level=-0.1))
error("param: noise_level NaN", r"noise_level must be a number >= 0; got nan")(
    lambda d: _params("smoothgrad", noise_level=float("nan")))
error("param: fill infinite", r"parameter fill must be a number; got inf")(
    lambda d: _params("conditional-occlusion", fill=float("inf")))
error("param: unknown reduction", r"reduction must be one of mean, max, attention")(
    lambda d: _params("interaction-cam", reduction="median"))
converts("param: reduction 'MAX' is 'max'", lambda p: p["reduction"] == "max")(
    lambda d: _params("interaction-cam", reduction="MAX"))
error("param: unknown transform", r"transform must be one of color-jitter")(
    lambda d: _params("averaged-transforms", transform="blur"))
error("param: steps=0", r"steps must be an integer >= 1")(
    lambda d: _params("averaged-transforms", steps=0))
error("param: strength reversed", r"strength must be two numbers 'lo,hi' with lo <= hi")(
    lambda d: _params("averaged-transforms", strength="90,0"))
error("param: negative seed", r"seed must be an integer >= 0")(
    lambda d: _params("random", seed=-1))
error("param: unknown name", r"method grad-cam has no parameter window")(
    lambda d: _explain("grad-cam", window=8))
converts("param: every parameter recorded after defaults",
         lambda p: list(p) == ["window", "stride", "fill", "batch_size"] and p["stride"] == 2)(
    lambda d: _explain("conditional-occlusion", stride="2"))


def _evaluate_methods(text: str, *params: str) -> Any:
    from pairlens.study import parse_methods

    return parse_methods(text, list(params))


error("evaluate --methods: bad value inside brackets", r"window must be an integer >= 1")(
    lambda d: _evaluate_methods("conditional-occlusion[window=0]"))
converts("evaluate --param: guided=no stored as false",
         lambda specs: specs[0].params["guided"] is False and specs[0].label == "smoothgrad")(
    lambda d: _evaluate_methods("smoothgrad", "smoothgrad.guided=no"))
error("attribute: n_masks=0", r"rise: parameter n_masks must be an integer >= 1")(
    lambda d: pairlens.attribute(lambda x: x.mean((1, 2, 3)), X1, "rise", n_masks=0))


# ---------------------------------------------------------------------- CLI numeric options
def _cli(*args: str) -> Any:
    from pairlens.cli import main

    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(buf):
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
    last = buf.getvalue().strip().splitlines()[-1] if buf.getvalue().strip() else ""
    if code != 0:
        raise ValueError(f"exit {code}: {last}")
    return code


for _args, _pattern in [
    (("train", "simclr", "--data", "digits", "--out", "x", "--epochs", "0"),
     r"exit 2: .*--epochs: must be an integer >= 1; got '0'"),
    (("train", "simclr", "--data", "digits", "--out", "x", "--batch-size", "-4"),
     r"--batch-size: must be an integer >= 1"),
    (("train", "simclr", "--data", "digits", "--out", "x", "--lr", "0"),
     r"--lr: must be a number > 0"),
    (("train", "simclr", "--data", "digits", "--out", "x", "--image-size", "4"),
     r"--image-size: must be an integer >= 8"),
    (("train", "excon", "--data", "digits", "--out", "x", "--threshold", "1.5"),
     r"--threshold: must be a number in \[0, 1\]"),
    (("evaluate", "--pairs", "0"), r"--pairs: must be an integer >= 1"),
    (("evaluate", "--step", "0"), r"--step: must be an integer >= 1"),
    (("evaluate", "--ms-samples", "0"), r"--ms-samples: must be an integer >= 1"),
    (("evaluate", "--batch-size", "0"), r"--batch-size: must be an integer >= 1"),
    (("corpus", "a.png", "--n-masks", "0"), r"--n-masks: must be an integer >= 1"),
    (("corpus", "a.png", "--delta", "1"), r"--delta: must be a number in \(0, 1\)"),
    (("demo", "--port", "0"), r"--port: must be an integer in \[1, 65535\]"),
    (("explain", "--smooth", "-1"), r"--smooth: must be a number >= 0"),
]:
    error(f"cli: {' '.join(_args[:1] + _args[-2:])}", _pattern)(
        lambda d, a=_args: _cli(*a))


# ---------------------------------------------------------------------- tensors and maps
def _uint8_explained(d: Path) -> Any:
    model = square_model()
    pixels = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    as_float = model.normalize(pixels.float() / 255)
    a = pairlens.explain(model, pixels, pixels.flip(-1), method="grad-cam")
    b = pairlens.explain(model, as_float, as_float.flip(-1), method="grad-cam")
    return a, b


converts("tensor: uint8 pixels are converted (x / 255, then normalised)",
         lambda ab: torch.allclose(ab[0].maps[0], ab[1].maps[0]) and
         torch.allclose(ab[0].score, ab[1].score))(_uint8_explained)
error("tensor: int64 refused", r"image 1 has dtype torch.int64; give float images", TypeError)(
    lambda d: pairlens.explain(square_model(), torch.zeros(1, 3, 32, 32, dtype=torch.long), X2))
error("tensor: bool refused", r"image 2 has dtype torch.bool", TypeError)(
    lambda d: pairlens.explain(square_model(), X1, torch.ones(1, 3, 32, 32, dtype=torch.bool)))
error("tensor: NaN input", r"image 1 contains NaN or infinite values", NonFiniteError)(
    lambda d: pairlens.explain(square_model(), X1 * float("nan"), X2))


def _map(value: float, where: int = 0) -> Any:
    maps = [torch.rand(1, 32, 32), torch.rand(1, 32, 32)]
    maps[where][0, 3, 4] = value
    return pairlens.evaluate(square_model(), X1, X2, tuple(maps), metrics=("SAD",))


error("map: NaN refused by evaluate", r"map 1 contains NaN or infinite values", NonFiniteError)(
    lambda d: _map(float("nan")))
error("map: inf refused by evaluate", r"map 2 contains NaN or infinite values", NonFiniteError)(
    lambda d: _map(float("inf"), 1))
error("map: wrong shape", r"map 1 has shape \(1, 16, 16\); expected \(1, 32, 32\)")(
    lambda d: pairlens.evaluate(square_model(), X1, X2, (torch.rand(1, 16, 16),
                                                         torch.rand(1, 32, 32))))
error("map: complex", r"map 1 has dtype torch.complex64", TypeError)(
    lambda d: pairlens.evaluate(square_model(), X1, X2, (torch.zeros(1, 32, 32,
                                                                     dtype=torch.complex64),
                                                         torch.rand(1, 32, 32))))


# ---------------------------------------------------------------------- stores
def _store(path: Path) -> Any:
    from pairlens.study import ResultStore

    return ResultStore(path).close()


def _old_store(d: Path) -> Any:
    path = d / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS results (model TEXT)")
    conn.close()
    return _store(path)


def _schema_9(d: Path) -> Any:
    path = d / "future.db"
    _store(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='9' WHERE key='schema'")
    conn.close()
    return _store(path)


def _claim(d: Path, kind: str, first: dict, second: dict) -> Any:
    from pairlens.study.identity import explain_data_difference, explain_model_difference
    from pairlens.study.store import ResultStore

    explain = explain_model_difference if kind == "model" else explain_data_difference
    path = d / f"claim-{kind}.db"
    path.unlink(missing_ok=True)
    with ResultStore(path) as store:
        store.claim(kind, "label", json.dumps(first), first, explain)
        store.claim(kind, "label", json.dumps(first), first, explain)  # same: fine
        store.claim(kind, "label", json.dumps(second), second, explain)


error("store: written by an older PairLens", r"old\.db: written by an older PairLens")(
    _old_store)
error("store: another schema version", r"future\.db: results store schema 9")(_schema_9)


def _foreign_database(d: Path, table: str) -> Any:
    """Somebody else's SQLite file: refused, and left exactly as it was (a tester's store was
    silently extended with PairLens's tables)."""
    path = d / f"foreign-{table.split('(')[0]}.db"
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table}")
    conn.close()
    try:
        return _store(path)
    finally:
        conn = sqlite3.connect(path)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        assert tables == {table.split("(")[0]} and mode == "delete", (tables, mode)


error("store: somebody else's database", r"foreign-foo\.db: an SQLite database that is not a "
      r"PairLens results store \(its table\(s\) foo\)")(lambda d: _foreign_database(d, "foo(x)"))
error("store: a foreign table named results",
      r"foreign-results\.db: an SQLite database that is not a PairLens results store")(
    lambda d: _foreign_database(d, "results(a, b)"))
error("store: not a database", r"notes\.jpg: not a PairLens results store")(
    lambda d: _store(d / "notes.jpg"))
error("store: model label with other preprocessing",
      r"holds results of another model under the label 'label' \(input_size")(
    lambda d: _claim(d, "model", {"input_size": [32, 32]}, {"input_size": [64, 64]}))
def _claim_weights(d: Path) -> Any:
    from pairlens.study.identity import explain_model_difference
    from pairlens.study.store import ResultStore

    path = d / "claim-weights.db"
    path.unlink(missing_ok=True)
    with ResultStore(path) as store:
        store.claim("model", "m", "fingerprint-a", {"name": "m"}, explain_model_difference)
        store.claim("model", "m", "fingerprint-b", {"name": "m"}, explain_model_difference)


error("store: model label with other weights", r"another model .*\(other weights\)")(
    _claim_weights)


error("store: data with a file added and one modified",
      r"since then 1 added \(c\.png\); 1 modified \(a\.png\)")(
    lambda d: _claim(d, "data", {"a.png": [1, 2], "b.png": [3, 4]},
                     {"a.png": [1, 5], "b.png": [3, 4], "c.png": [6, 7]}))


# ---------------------------------------------------------------------- the table
def test_the_table_is_large_enough():
    assert len(CASES) >= 60, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, files: Path):
    if case.error is None:
        value = case.run(files)
        assert case.check is not None and case.check(value), value
        return
    with pytest.raises(case.error) as info:
        case.run(files)
    message = str(info.value)
    assert "\n" not in message, message
    import re

    assert re.search(case.pattern, message), f"{message!r} !~ {case.pattern!r}"



def test_every_method_parameter_declares_its_valid_values():
    """Issue 12: types, ranges and choices are declared in the signatures, so the one validation
    layer can check them; a new parameter without a declaration fails here."""
    from pairlens.methods.registry import method_infos

    for info in method_infos():
        for name, spec in info.specs.items():
            where = f"{info.name}.{name}"
            assert spec.kind not in ("any", "str"), f"{where}: declare its choices"
            if spec.kind in ("int", "float"):
                assert spec.range is not None, f"{where}: declare Annotated[..., Range(...)]"
            if spec.kind == "pair":
                assert spec.range is not None or spec.ordered, f"{where}: declare its range"
            assert spec.coerce(spec.default) == spec.default, where  # defaults are valid
