"""The scripts behind docs/paper-claims.md and docs/excon.md, run at a tiny size so none rots."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def claims():
    return load_script("paper_claims")


def test_compare_is_a_student_t_interval(claims):
    from scipy import stats

    d = [0.3, -0.1, 0.4, 0.2, 0.25, math.nan]
    c = claims.compare("x", d)
    ref = stats.ttest_1samp(d[:5], 0.0).confidence_interval(0.95)
    assert c.n == 5 and c.mean == pytest.approx(sum(d[:5]) / 5)
    assert (c.low, c.high) == pytest.approx((ref.low, ref.high))
    assert c.outcome == 0  # the interval contains 0
    assert claims.compare("y", [1.0, 1.1, 0.9]).outcome == 1
    assert claims.compare("z", [-1.0, -1.1, -0.9]).outcome == -1
    assert claims.compare("one", [1.0]).outcome == 0  # no interval from one unit


def test_verdicts(claims):
    Cmp = claims.Comparison
    hold, against = Cmp("a", 1, 0.5, 1.5, 9), Cmp("b", -1, -2, -0.5, 9)
    open_ = Cmp("c", 0, -1, 1, 9)
    R = claims.ClaimResult
    assert R([hold, hold, open_], 2).verdict == "reproduced"
    assert R([hold, open_, against], 2).verdict == "undecided"
    assert R([hold, against, against], 2).verdict == "not reproduced"
    assert R([], 1).verdict == "n/a"
    assert claims.overall(["reproduced", "n/a", "reproduced"]) == "reproduced"
    assert claims.overall(["reproduced", "not reproduced"]) == "mixed"
    assert claims.overall(["not reproduced", "not reproduced"]) == "not reproduced"
    assert claims.overall(["undecided", "n/a"]) == "undecided"


def test_deciding_comparison_decides_reproduced(claims):
    """The page's deciding comparison: reproduced exactly when its interval lies above 0."""
    from dataclasses import asdict

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 7, (1,), generator=g))
        need = int(torch.randint(1, n + 1, (1,), generator=g))
        cmps = []
        for k in range(n):
            low = float(torch.randn(1, generator=g))
            low = math.nan if k == 0 and n > 2 else low  # a comparison without an interval
            cmps.append(claims.Comparison(f"c{k}", low + 0.1, low, low + 0.2, 2 if low == low
                                          else 1))
        result = claims.ClaimResult(cmps, need)
        d = claims.deciding([asdict(c) for c in cmps], need)
        assert (d["low"] > 0) == (result.verdict == "reproduced")
    assert claims.deciding([], 1) is None


def test_seed000_claims_on_made_up_values(claims):
    """A store where Conditional Occlusion is better than everything on every metric."""
    values = {}
    for k, name in enumerate(claims.SEED000_VARIANTS):
        for m in claims.METRICS:
            good = 0.9 if name == "Conditional Occlusion" else 0.5 - 0.01 * k
            for pid in range(8):
                v = good + 0.01 * pid
                values.setdefault((name, m), {})[pid] = v if claims.HIGHER[m] else 1 - v
    res = claims.seed000_claims(values, {"m": [0.0, 0.05, 0.1]})
    assert res["000-occlusion"].verdict == "reproduced"
    assert res["000-fig14-sdcd"].verdict == "reproduced"
    assert res["000-fig14-sici"].verdict == "not reproduced"  # AT (G) is not the best here
    assert res["000-random"].verdict == "reproduced"  # random has the lowest scores (k = 17)
    assert res["000-sanity"].verdict == "reproduced"
    assert res["000-ms"].verdict == "n/a"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("claims")


def test_seed000_at_tiny_size(claims, out):
    torch.set_num_threads(1)
    quick = ["--param", "smoothgrad.n_samples=2", "--param", "averaged-transforms.steps=2",
             "--param", "pairwise-occlusion.n_samples=4", "--param",
             "conditional-occlusion.stride=8"]
    assert claims.main(["seed000", "--data", "digits", "--pairs", "2", "--ms-pairs", "2",
                        "--ms-samples", "2", "--sanity-pairs", "1", "--step", "256",
                        *quick, "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "seed000-digits.json").read_text())
    assert s["command"].startswith("python scripts/paper_claims.py seed000 --data digits")
    assert len(s["claims"]["000-random"]["comparisons"]) == 17 * 3
    assert all(c["n"] == 2 for c in s["claims"]["000-occlusion"]["comparisons"])
    assert s["claims"]["000-ms"]["comparisons"][0]["n"] == 2
    assert len(s["sanity_rho"]) == 7


def test_cocoa_at_tiny_size(claims, out):
    torch.set_num_threads(1)
    assert claims.main(["cocoa", "--seeds", "0", "1", "--classes", "0", "1", "--n-masks", "16",
                        "--ig-steps", "2", "--shap-samples", "2", "--ablation-steps", "5",
                        "--out", str(out),
                        "--quiet"]) == 0
    c = json.loads((out / "cocoa.json").read_text())
    assert len(c["claims"]["cocoa-same"]["comparisons"]) == 18
    assert all(cmp["n"] == 2 for cmp in c["claims"]["cocoa-random"]["comparisons"])


def test_excon_study_docs_claims_and_render_at_tiny_size(claims, out, tmp_path, monkeypatch):
    """The ExCon study script on a tiny subset, the docs block, the claims step, the page."""
    torch.set_num_threads(1)
    excon_docs = load_script("excon_docs")
    from pairlens.training import study

    real_load = study._load

    def tiny(config):
        data = real_load(config)
        return {k: (x[:48], y[:48]) for k, (x, y) in data.items()}

    monkeypatch.setattr(study, "_load", tiny)
    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    shutil.copyfile(ROOT / "docs" / "excon.md", docs / "excon.md")
    assert excon_docs.main(["--out", str(tmp_path / "study"), "--seeds", "2", "--epochs", "1",
                            "--batch-size", "16", "--start-epoch", "0", "--docs",
                            str(docs)]) == 0
    page = (docs / "excon.md").read_text()
    block = page.split(excon_docs.BEGIN)[1].split(excon_docs.END)[0]
    assert "python scripts/excon_docs.py --out" in block and "| top-1 accuracy (%) |" in block
    assert (docs / "img" / "excon" / "results.csv").exists()
    assert (docs / "img" / "excon" / "tsne_excon.png").exists()
    assert claims.main(["excon", "--study", str(tmp_path / "study"), "--out", str(out)]) == 0
    e = json.loads((out / "excon.json").read_text())
    assert all(cmp["n"] == 2 for cmp in e["claims"]["excon-top1"]["comparisons"])

    doc = tmp_path / "paper-claims.md"
    assert claims.main(["render", "--out", str(out), "--doc", str(doc)]) == 0
    text = doc.read_text()
    for claim in claims.SEED000_CLAIMS + claims.COCOA_CLAIMS + claims.EXCON_CLAIMS:
        assert f"| {claim.text} |" in text
    for path in out.glob("*.json"):  # every number's command is printed on the page
        assert json.loads(path.read_text())["command"] in text
    assert "not run" in text  # photos and composites were not measured here
