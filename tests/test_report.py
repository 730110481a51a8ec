"""`pairlens report`: aggregation against hand-computed values, best marks, groups, Pearson."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from pairlens.report import build_studies, parse_downstream, pearson, write_report
from pairlens.study.store import PairResult, ResultStore, read_tables

METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD")


def fill(path, model: str, values: dict[str, list[dict[str, float]]], seconds: float = 0.5):
    """Store hand-made per-pair metric values: ``values[label][pair] = {metric: value}``."""
    with ResultStore(path) as store:
        for label, per_pair in values.items():
            results = [PairResult(i, m, {"SI": np.linspace(0, 1, 5) * (i + 1)}, seconds, 0.1)
                       for i, m in enumerate(per_pair)]
            store.add_batch(model, "set", label.split("[")[0], f'{{"v":"{label}"}}', label,
                            results)


def test_report_tables_hand_computed(tmp_path):
    db = tmp_path / "r.db"
    good = [dict(zip(METRICS, (0.8, 0.2, 0.7, 0.1, 0.1, 0.2), strict=True)),
            dict(zip(METRICS, (0.6, 0.4, 0.5, 0.3, math.nan, 0.4), strict=True))]
    bad = [dict(zip(METRICS, (0.5, 0.6, 0.4, 0.5, 0.5, 0.6), strict=True))] * 2
    fill(db, "alpha", {"grad-cam": good, "random": bad})
    fill(tmp_path / "b.db", "beta", {"grad-cam": bad, "random": good})
    studies = build_studies(read_tables([db, tmp_path / "b.db"]))
    assert [s.model for s in studies] == ["alpha", "beta"]
    alpha = studies[0]
    assert alpha.methods == ["grad-cam", "random"]  # the baseline comes last
    assert alpha.value("grad-cam", "SI") == pytest.approx(0.7)
    cell = alpha.cells[("grad-cam", "SAD")]
    assert cell.mean == pytest.approx(0.1) and cell.n == 1 and cell.skipped == 1
    assert alpha.best("SI") == "grad-cam" and alpha.best("SD") == "grad-cam"
    assert alpha.group("grad-cam", "(SI, CI)") == pytest.approx((0.7 + 0.6) / 2)
    assert alpha.group("grad-cam", "1 - (SD, CD)") == pytest.approx(1 - (0.3 + 0.2) / 2)
    assert alpha.group("random", "1 - (SAD, CAD)") == pytest.approx(1 - 0.55)
    assert np.allclose(alpha.curves[("grad-cam", "SI")], np.linspace(0, 1, 5) * 1.5)

    out = tmp_path / "rep"
    written = write_report([db, tmp_path / "b.db"], out,
                           downstream=parse_downstream("alpha=0.9,beta=0.5"))
    names = {p.name for p in written}
    assert {"report.md", "report.html", "metrics.csv", "timings.csv", "heatmap.csv",
            "heatmap.png", "curves-0.png", "downstream.png", "downstream.csv"} <= names
    md = (out / "report.md").read_text()
    assert "| grad-cam | **0.700** | **0.300** | **0.600** | **0.200** | **0.100** | **0.300** " \
           "| 2 | 1/0 |" in md
    assert "SI ↑" in md and "SD ↓" in md
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    sad = [r for r in rows if r["model"] == "alpha" and r["method"] == "grad-cam"
           and r["metric"] == "SAD"][0]
    assert float(sad["mean"]) == pytest.approx(0.1) and sad["skipped"] == "1"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert "http://" not in html and "https://" not in html  # readable offline
    timings = list(csv.DictReader((out / "timings.csv").open()))
    assert float(timings[0]["explain_seconds"]) == pytest.approx(0.5)


def test_pearson_and_downstream_parsing():
    x, y = [0.1, 0.4, 0.2, 0.9], [0.5, 0.7, 0.55, 0.8]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(pearson([0.1, 0.2], [0.3, 0.4]))  # fewer than three models
    assert math.isnan(pearson([0.1, 0.1, 0.1], [0.3, 0.4, 0.5]))
    assert parse_downstream("a=0.5, b=1") == {"a": 0.5, "b": 1.0}
    with pytest.raises(ValueError, match="MODEL=ACCURACY"):
        parse_downstream("a0.5")


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such results store"):
        write_report([tmp_path / "missing.db"], tmp_path / "out")
    ResultStore(tmp_path / "empty.db").close()
    with pytest.raises(ValueError, match="no finished results"):
        write_report([tmp_path / "empty.db"], tmp_path / "out")
    fill(tmp_path / "r.db", "alpha", {"random": [{"SI": 0.5}]})
    with pytest.raises(ValueError, match="not in the store"):
        write_report([tmp_path / "r.db"], tmp_path / "out", downstream={"gamma": 0.1})
    with pytest.raises(ValueError, match="unknown report format"):
        write_report([tmp_path / "r.db"], tmp_path / "out", formats=["pdf"])


def test_methods_are_compared_only_on_the_pairs_they_all_have(tmp_path):
    """24 pairs of random, 10 of grad-cam: every number compares the same 10 pairs."""
    db = tmp_path / "c.db"
    rng = np.random.default_rng(0)
    rand = [{"SI": float(v), "SD": 0.5} for v in rng.uniform(0.4, 0.6, 24)]
    rand[12:] = [{"SI": 5.0, "SD": 0.5}] * 12  # pairs 12..23 would pull random's mean up
    cam = [{"SI": r["SI"] + 0.1 + 0.01 * i, "SD": 0.3} for i, r in enumerate(rand[:10])]
    fill(db, "m", {"random": rand, "grad-cam": cam})
    study = build_studies(read_tables([db]))[0]
    want_random = float(np.mean([r["SI"] for r in rand[:10]]))
    assert study.value("random", "SI") == pytest.approx(want_random)
    assert study.cells[("random", "SI")].n == 10 and study.left_out[("random", "SI")] == 14
    assert np.allclose(study.curves[("random", "SI")], np.linspace(0, 1, 5) * 5.5)  # ids 0..9

    from scipy import stats

    from pairlens.report.tables import compare_with_baseline

    comp = {c.metric: c for c in compare_with_baseline(study)}
    d = np.array([c["SI"] for c in cam]) - np.array([r["SI"] for r in rand[:10]])
    half = stats.t.ppf(0.975, 9) * d.std(ddof=1) / np.sqrt(10)
    assert comp["SI"].n == 10 and comp["SI"].diff == pytest.approx(d.mean())
    assert comp["SI"].diff_ci == pytest.approx((d.mean() - half, d.mean() + half))
    assert comp["SI"].p_value == pytest.approx(stats.wilcoxon(d).pvalue)
    assert comp["SI"].better is True  # higher SI is better and 10/10 pairs are higher
    assert comp["SD"].better is True and comp["SD"].diff == pytest.approx(-0.2)  # lower is better

    out = tmp_path / "rep"
    write_report([db], out, formats=("md", "csv"))
    md = (out / "report.md").read_text()
    assert "Against random, 95 % intervals and paired Wilcoxon test" in md
    assert "random: 14" in md
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    si = [r for r in rows if r["metric"] == "SI"][0]
    assert si["method"] == "grad-cam" and si["pairs"] == "10" and si["better"] == "True"


def test_a_method_no_better_than_random_is_not_called_better(tmp_path):
    db = tmp_path / "n.db"
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.5, 0.1, 30), rng.normal(0.5, 0.1, 30)
    fill(db, "m", {"random": [{"SI": float(v)} for v in a],
                   "grad-cam": [{"SI": float(v)} for v in b]})
    from pairlens.report.tables import compare_with_baseline

    (comp,) = compare_with_baseline(build_studies(read_tables([db]))[0])
    assert comp.p_value > 0.05 and comp.better is None
    assert comp.diff_ci[0] < 0 < comp.diff_ci[1]


def test_ground_truth_table_lists_every_method_next_to_random(tmp_path):
    from pairlens.report.render import ground_truth_table

    db = tmp_path / "gt.db"
    pg = {"grad-cam": [1.0, 1.0, 0.5, 1.0], "input-x-gradient": [0.0, 0.5, 0.0, 0.0],
          "random": [0.0, 0.0, 0.5, 0.0]}
    epg = {"grad-cam": [0.6, 0.5, 0.4, 0.7], "input-x-gradient": [0.1, 0.2, 0.1, math.nan],
           "random": [0.05, 0.06, 0.04, 0.05]}
    fill(db, "composites", {lab: [{"PG": pg[lab][i], "EPG": epg[lab][i], "SI": 0.5}
                                  for i in range(4)] for lab in pg})
    study = build_studies(read_tables([db]))[0]
    header, rows, bold = ground_truth_table(study)
    assert header[:3] == ["method", "PG ↑ [95 % CI]", "random PG"]
    assert [r[0] for r in rows] == ["grad-cam", "input-x-gradient", "random"]
    from scipy import stats

    values = np.array(pg["grad-cam"])
    half = stats.t.ppf(0.975, 3) * values.std(ddof=1) / 2
    assert rows[0][1] == f"{values.mean():.3f} [{values.mean() - half:.3f}, " \
                         f"{values.mean() + half:.3f}]"
    assert rows[0][2] == "0.125"
    assert not bold[1][1]  # input-x-gradient is not better than random
    assert rows[1][3].startswith("0.133") and rows[1][5] == "4"  # EPG over 3 pairs, NaN skipped
    write_report([db], tmp_path / "rep", formats=["md"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Ground truth (pointing games): composites (set)" in md
    main_table = md.split("## Metrics: composites (set)")[1].split("##")[0]
    assert "PG" not in main_table  # the ground-truth metrics have their own table
