"""``pairlens corpus`` / ``corpus-eval``, CLIP text corpora offline, and the §4.1 evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pairlens import targets
from pairlens.cli import main
from pairlens.corpus import evaluation as CE
from pairlens.data import bundled


def save_digits(folder, label: int, n: int, split: str = "train"):
    folder.mkdir(parents=True, exist_ok=True)
    x, y = bundled.digits(split)
    idx = torch.nonzero(y == label).flatten()[:n]
    paths = []
    for k, i in enumerate(idx.tolist()):
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = folder / f"{label}-{k}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return {
        "corpus": save_digits(root / "threes", 3, 6),
        "foil": save_digits(root / "eights", 8, 6),
        "explicand": save_digits(root / "test", 3, 1, split="test")[0],
        "root": root,
    }


def test_corpus_cli_rise_with_random_digits_foil(digit_files, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "corpus",
            str(digit_files["explicand"]),
            "--corpus",
            str(digit_files["root"] / "threes"),
            "--foil-from",
            "digits:40",
            "--method",
            "rise",
            "--n-masks",
            "300",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    stem = digit_files["explicand"].stem
    meta = json.loads((out / f"{stem}_rise.json").read_text())
    assert meta["target"] == {"target": "cocoa", "similarity": "cosine", "corpus": 6, "foil": 40}
    amap = np.load(out / f"{stem}_rise.npz")["attribution"]
    assert amap.shape == (32, 32) and np.isfinite(amap).all() and amap.std() > 0
    assert Image.open(out / f"{stem}_rise.png").size[0] > 100
    # the saved score is the COCOA target of the explicand, recomputed here from the definition
    from pairlens import load_model

    model = load_model("digits")
    corpus = model.preprocess(digit_files["corpus"])
    foil = targets.random_images(bundled_foil(model), 40, seed=0)
    t = targets.ContrastiveCorpus(model, corpus, foil)
    with torch.no_grad():
        expected = float(t(model.preprocess(digit_files["explicand"]))[0])
    assert meta["score"] == pytest.approx(expected, abs=1e-5)


def bundled_foil(model):
    x, _ = bundled.digits("train")
    return model.normalize(x)


def test_corpus_cli_gradient_methods_and_targets(digit_files, tmp_path):
    out = tmp_path / "out"
    for method, extra in (
        ("integrated-gradients", ["--n-steps", "8"]),
        ("gradient-shap", ["--n-samples", "8"]),
    ):
        code = main(
            [
                "corpus",
                str(digit_files["explicand"]),
                "--corpus",
                *map(str, digit_files["corpus"]),
                "--foil",
                str(digit_files["root"] / "eights"),
                "--method",
                method,
                *extra,
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        assert code == 0
        meta = json.loads((out / f"{digit_files['explicand'].stem}_{method}.json").read_text())
        assert meta["target"]["foil"] == 6 and meta["params"]
    code = main(
        [
            "corpus",
            str(digit_files["explicand"]),
            "--target",
            "label-free",
            "--method",
            "rise",
            "--n-masks",
            "100",
            "--out",
            str(out / "lf"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    meta = json.loads((out / "lf" / f"{digit_files['explicand'].stem}_rise.json").read_text())
    assert meta["target"]["target"] == "label-free" and meta["score"] == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "rise"], "give the corpus"),
        (["--corpus", "X", "--target", "cocoa"], "needs a foil"),
        (["--corpus", "X", "--foil-from", "mnist:5"], "unknown dataset"),
        (["--text", "a photo of a cat"], "--clip-checkpoint"),
    ],
)
def test_corpus_cli_errors_are_one_line(digit_files, tmp_path, capsys, args, message):
    args = [str(digit_files["root"] / "threes") if a == "X" else a for a in args]
    code = main(["corpus", str(digit_files["explicand"]), *args, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- CLIP (offline)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    root = tmp_path_factory.mktemp("clip")
    config = root / "pairlens-test-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    clip = open_clip.create_model("pairlens-test-tiny-clip", pretrained=None).eval()
    checkpoint = root / "tiny-clip.pt"
    torch.save(clip.state_dict(), checkpoint)
    tokenizer = open_clip.get_tokenizer("pairlens-test-tiny-clip")
    return clip, tokenizer, config, checkpoint


def test_text_corpus_from_saved_open_clip_equals_eq6(tiny_clip):
    clip, tokenizer, config, checkpoint = tiny_clip
    corpus = ["This is a photo of a zebra"]
    t = targets.TextCorpus.from_open_clip(checkpoint, corpus, "cifar100", arch=str(config))
    assert t.info == {"corpus": 1, "foil": 100}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        zi = clip.encode_image(x)
        zc = clip.encode_text(tokenizer(corpus))
        zf = clip.encode_text(tokenizer(targets.cifar100_foil_captions(corpus)))
        cos = lambda a, b: torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=-1)  # noqa: E731
        expected = cos(zi, zc).mean(1) - cos(zi, zf).mean(1)  # eq. (6)
        torch.testing.assert_close(t(x), expected, rtol=1e-4, atol=1e-5)
    from pairlens.models.zoo.clip import load_clip

    with pytest.raises(ValueError, match="no such checkpoint file"):
        load_clip(checkpoint.parent / "missing.pt", arch=str(config))
    bad = checkpoint.parent / "bad.pt"
    torch.save({"nothing": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not match"):
        load_clip(bad, arch=str(config))


def test_corpus_cli_text_mode(tiny_clip, tmp_path, capsys):
    _, _, config, checkpoint = tiny_clip
    image = bundled.example_image_paths("photos")[0]
    for foil in (["--text-foil", "cifar100"], ["--text-foil", "This is a photo of a horse"]):
        code = main(
            [
                "corpus",
                str(image),
                "--text",
                "This is a photo of a zebra",
                *foil,
                "--clip-checkpoint",
                str(checkpoint),
                "--clip-arch",
                str(config),
                "--n-masks",
                "200",
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        assert code == 0, capsys.readouterr().err
        meta = json.loads((tmp_path / f"{image.stem}_rise.json").read_text())
        assert meta["target"]["target"] == "text-cocoa"
        assert meta["target"]["foil"] == (100 if foil[1] == "cifar100" else 1)
        assert np.load(tmp_path / f"{image.stem}_rise.npz")["attribution"].shape == (32, 32)


# ----------------------------------------------------------------------------- evaluation
def test_ablation_images_and_auc_match_a_loop():
    g = torch.Generator().manual_seed(0)
    x, base = torch.rand(3, 6, 5, generator=g), torch.rand(3, 6, 5, generator=g)
    maps = torch.randn(2, 6, 5, generator=g)
    maps[1] = 0.0  # all ties: flat index order
    counts = CE.ablation_counts(30, 7)
    assert counts.tolist() == [0, 5, 10, 14, 18, 22, 26, 30]  # 30 // 7 = 4, first 2 steps get 5
    for kind in ("insertion", "deletion"):
        images = CE.ablation_images(x, base, maps, kind, n_steps=7)
        assert images.shape == (2, 8, 3, 6, 5)
        for m in range(2):
            order = sorted(range(30), key=lambda p: (-float(maps[m].flatten()[p]), p))
            for s, k in enumerate(counts.tolist()):
                top = torch.zeros(30, dtype=torch.bool)
                top[order[:k]] = True
                top = top.view(6, 5)
                expected = (
                    torch.where(top, x, base) if kind == "insertion" else torch.where(top, base, x)
                )
                torch.testing.assert_close(images[m, s], expected)
    frac = counts.float() / 30
    assert float(CE.auc(frac, 30, 7)) == pytest.approx(0.5)  # a straight line
    assert float(CE.auc(torch.ones(8), 30, 7)) == pytest.approx(1.0)


def test_summary_statistics_and_storage_roundtrip(tmp_path):
    records = []
    for seed, value in enumerate([0.1, 0.2, 0.3, 0.4, 0.5]):
        for target in ("label-free", "contrastive-label-free", "cocoa"):
            records.append(
                {
                    "seed": seed,
                    "setting": "same-class",
                    "method": "rise",
                    "target": target,
                    "measure": "corpus-majority-prob",
                    "n_explicands": 2,
                    "insertion": value + (0.5 if target == "cocoa" else 0.0),
                    "deletion": 0.1,
                }
            )
        records.append(
            {
                "seed": seed,
                "setting": "same-class",
                "method": "random",
                "target": "random",
                "measure": "corpus-majority-prob",
                "n_explicands": 2,
                "insertion": 0.2,
                "deletion": 0.2,
            }
        )
    stats = CE.summarize(records)
    mean, ci, n = stats[("same-class", "rise", "cocoa", "corpus-majority-prob")]["insertion"]
    std = math.sqrt(sum((v - 0.3) ** 2 for v in [0.1, 0.2, 0.3, 0.4, 0.5]) / 5)
    assert (mean, n) == (pytest.approx(0.8), 5) and ci == pytest.approx(1.96 * std / math.sqrt(5))
    cfg = CE.CorpusEvalConfig(seeds=(0, 1, 2, 3, 4))
    db = tmp_path / "results.sqlite"
    CE.save_results(db, records, cfg, "run-a")
    CE.save_results(db, records, cfg, "run-a")  # idempotent
    loaded = CE.load_results(db, "run-a")
    assert len(loaded) == len(records)
    table = CE.corpus_tables(loaded)
    assert "| COCOA | 0.800 (" in table and "| Random | 0.200 (0.000) |" in table
    assert any("COCOA insertion beats" in line for line in CE.verdicts(loaded))
    with pytest.raises(ValueError, match="no corpus results"):
        CE.load_results(db, "run-b")


def test_run_corpus_eval_on_a_tiny_budget():
    """The whole protocol end to end on the bundled digits model with a tiny budget."""
    from pairlens import load_model

    cfg = CE.CorpusEvalConfig(
        seeds=(0,),
        classes=(3,),
        n_masks=64,
        ig_steps=4,
        shap_samples=4,
        corpus_size=20,
        foil_size=30,
        ablation_steps=10,
    )
    model = load_model("digits", embedding="backbone")
    (x_train, y_train), (x_test, y_test) = bundled.digits("train"), bundled.digits("test")
    data = CE.EvalData(  # a subset keeps the test fast
        model.normalize(x_train[:200]), y_train[:200], model.normalize(x_test[:20]), y_test[:20]
    )
    assert int((data.train_labels == 3).sum()) >= 12 and int((data.test_labels == 3).sum()) >= 1
    records = CE.run_corpus_eval(model, model.classifier, data, cfg)
    keys = {(r["setting"], r["method"], r["target"], r["measure"]) for r in records}
    assert len(keys) == 2 * (3 * 4 + 1) * 2  # settings x (methods x targets + random) x measures
    for r in records:
        assert r["n_explicands"] == 1
        assert math.isfinite(r["insertion"]) and math.isfinite(r["deletion"])
        if r["measure"] == "corpus-majority-prob":
            assert 0.0 <= r["insertion"] <= 1.0 and 0.0 <= r["deletion"] <= 1.0


def test_pairlens_report_shows_the_corpus_tables(tmp_path):
    """Corpus results stored in a results database appear in ``pairlens report`` (md and html)."""
    from pairlens.cli import main

    records = [
        {"seed": seed, "setting": "same-class", "method": "rise", "target": target,
         "measure": measure, "insertion": ins + 0.01 * seed, "deletion": 1 - ins,
         "n_explicands": 10}
        for seed in range(5)
        for target, ins in (("label-free", 0.5), ("contrastive-label-free", 0.6),
                            ("corpus", 0.55), ("cocoa", 0.8))
        for measure in ("contrastive-corpus-similarity", "corpus-majority-prob")
    ]
    db = tmp_path / "results.db"
    CE.save_results(db, records, CE.CorpusEvalConfig(seeds=tuple(range(5))), "r")
    assert main(["report", str(db), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "COCOA" in md and "| COCOA | 0.820" in md  # mean over seeds 0..4 of 0.8 + 0.01 s
    assert "<table>" in (tmp_path / "rep" / "report.html").read_text()
