"""``pairlens report``: tables (Markdown, CSV, HTML) and figures from one or more results stores.

Files written to ``out``:

* ``report.md`` / ``report.html`` (figures inline as base64 PNG, readable offline): per study a
  table like Tables I-IV (methods x SI, SD, CI, CD, SAD, CAD and the increase rates, arrows for the
  direction, the best value per column in bold, skipped pairs counted), Table V (MS), Table VI
  (mean seconds per pair), the Fig. 14 heatmap, mean insertion / deletion curves and, with
  ``downstream``, the Fig. 15 scatter with Pearson coefficients;
* per study, every method next to ``random``: means with 95 % intervals, the paired difference
  and a Wilcoxon signed-rank p-value across pairs
  (:func:`~pairlens.report.tables.compare_with_baseline`);
  every table compares methods only on the pairs they all have;
* for stores with ground truth (``--data composites``) a ground-truth table: every method's
  pointing game (PG) and energy pointing game (EPG) with 95 % intervals next to ``random``'s;
* ``metrics.csv`` (study, method, metric, mean, std, n, skipped), ``comparison.csv``,
  ``timings.csv``, ``heatmap.csv``, ``downstream.csv`` (with ``downstream``);
* ``heatmap.png``, ``curves-<k>.png`` (one per study), ``downstream.png``.

Every file is written to a temporary name and renamed. Numbers in ``report.md`` have three decimals;
the CSV files keep full precision.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pairlens.io import atomic_write
from pairlens.metrics import GROUND_TRUTH_METRICS, HIGHER_IS_BETTER
from pairlens.report.tables import (
    CURVE_METRICS,
    GROUPS,
    Study,
    baseline_label,
    build_studies,
    compare_with_baseline,
    mean_interval,
    pearson,
)
from pairlens.study.store import read_tables

FORMATS = ("md", "csv", "html")


def _arrow(metric: str) -> str:
    return "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _atomic_write(path: Path, data: bytes | str) -> Path:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write(path, lambda f: f.write(payload))


# ------------------------------------------------------------------------------ tables
def metric_table(study: Study) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, rows and bold flags of the Tables I-IV table of a study (MS excluded)."""
    metrics = [m for m in study.metrics() if m != "MS" and m not in GROUND_TRUTH_METRICS]
    if not metrics:  # e.g. a store of PG / EPG only: they have their own table
        return [], [], []
    header = ["method"] + [f"{m} {_arrow(m)}" for m in metrics] + ["pairs", "skipped (SAD/CAD)"]
    best = {m: study.best(m) for m in metrics}
    rows, bold = [], []
    for label in study.methods:
        cells = [study.cells.get((label, m)) for m in metrics]
        n = max((c.n + c.skipped for c in cells if c), default=0)
        skipped = [study.cells[(label, m)].skipped for m in ("SAD", "CAD")
                   if (label, m) in study.cells]
        rows.append([label] + [_fmt(study.value(label, m)) for m in metrics]
                    + [str(n), "/".join(map(str, skipped)) or "–"])
        bold.append([False] + [best[m] == label for m in metrics] + [False, False])
    return header, rows, bold


def _interval(mean: float, ci: tuple[float, float]) -> str:
    if math.isnan(ci[0]):
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def comparison_table(study: Study) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Each method next to ``random``, metric by metric: mean [95 % CI] of both, the paired
    difference [95 % CI], the Wilcoxon signed-rank p-value and the verdict at 0.05."""
    header = ["method", "metric", "method mean [95 % CI]", "random mean [95 % CI]",
              "difference [95 % CI]", "Wilcoxon p", "vs random", "pairs"]
    rows, bold = [], []
    for c in compare_with_baseline(study):
        verdict = "–" if c.better is None else ("better" if c.better else "worse")
        p = "–" if math.isnan(c.p_value) else f"{c.p_value:.2g}"
        rows.append([c.label, f"{c.metric} {_arrow(c.metric)}", _interval(c.mean, c.ci),
                     _interval(c.baseline_mean, c.baseline_ci), _interval(c.diff, c.diff_ci), p,
                     verdict, str(c.n)])
        bold.append([False] * 6 + [c.better is True, False])
    return header, rows, bold


def left_out_note(study: Study) -> str:
    """A sentence naming the method variants with pairs left out of the comparison, or ''."""
    per_label: dict[str, int] = {}
    for (label, _metric), k in study.left_out.items():
        per_label[label] = max(per_label.get(label, 0), k)
    parts = [f"{lab}: {k}" for lab, k in per_label.items() if k]
    if not parts:
        return ""
    return ("Methods are compared only on the pairs stored for all of them; pairs left out "
            "(computed for some methods only): " + ", ".join(parts) + ".")


def ground_truth_table(study: Study) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Every method's stored PG, EPG and PEPG (mean [95 % t-interval] over the pairs all methods
    have) next to ``random``'s mean, the baseline last; empty when the study has no ground-truth
    metric. Bold: significantly better than random
    (:func:`~pairlens.report.tables.compare_with_baseline`)."""
    import numpy as np

    metrics = [m for m in GROUND_TRUTH_METRICS if any(mm == m for _, mm in study.cells)]
    if not metrics:
        return [], [], []
    base = baseline_label(study)
    better = {(c.label, c.metric): c.better for c in compare_with_baseline(study)
              if c.metric in metrics}
    header = ["method"]
    for m in metrics:
        header += [f"{m} ↑ [95 % CI]", f"random {m}"]
    header.append("pairs")
    rows, bold = [], []
    for label in [lab for lab in study.methods if lab != base] + ([base] if base else []):
        row, flags, n = [label], [False], 0
        for m in metrics:
            vals = np.array([v for v in study.values.get((label, m), {}).values()
                             if not math.isnan(v)])
            n = max(n, len(study.values.get((label, m), {})))
            row += [_interval(*mean_interval(vals)),
                    "–" if label == base or base is None else _fmt(study.value(base, m))]
            flags += [better.get((label, m)) is True, False]
        rows.append(row + [str(n)])
        bold.append(flags + [False])
    return header, rows, bold


def sensitivity_table(studies: Sequence[Study]) -> tuple[list[str], list[list[str]], list]:
    """Table V: methods x studies, MS (lower is better)."""
    with_ms = [s for s in studies if any(m == "MS" for _, m in s.cells)]
    if not with_ms:
        return [], [], []
    labels: list[str] = []
    for s in with_ms:
        labels += [lab for lab in s.methods if (lab, "MS") in s.cells and lab not in labels]
    header = ["method"] + [f"{s.title} MS ↓" for s in with_ms]
    best = [s.best("MS") for s in with_ms]
    rows = [[lab] + [_fmt(s.value(lab, "MS")) for s in with_ms] for lab in labels]
    bold = [[False] + [b == lab for b in best] for lab in labels]
    return header, rows, bold


def timing_table(study: Study) -> tuple[list[str], list[list[str]]]:
    header = ["method", "explanation s/pair", "metrics s/pair", "pairs"]
    rows = [[lab, f"{t[0]:.4f}", f"{t[1]:.4f}", str(t[2])]
            for lab in study.methods if (t := study.seconds.get(lab))]
    return header, rows


def _md_table(header: list[str], rows: list[list[str]], bold: list | None = None) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for i, row in enumerate(rows):
        cells = [f"**{c}**" if bold and bold[i][j] else c for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], bold: list | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
           + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cells = "".join(
            f"<td><b>{html.escape(c)}</b></td>" if bold and bold[i][j] else
            f"<td>{html.escape(c)}</td>" for j, c in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# ------------------------------------------------------------------------------ figures
def heatmap_figure(studies: Sequence[Study]):
    """Fig. 14: methods x (study, group) scores, higher is better everywhere."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels: list[str] = []
    for s in studies:
        labels += [lab for lab in s.methods if lab not in labels]
    cols = [(s, g) for g in GROUPS for s in studies]
    data = np.array([[s.group(lab, g) for s, g in cols] for lab in labels], dtype=float)
    # colours are scaled per column (differences between methods of one model and group are what
    # the figure is for); the numbers are the scores themselves
    lo, hi = np.nanmin(data, axis=0, initial=np.inf), np.nanmax(data, axis=0, initial=-np.inf)
    span = np.where(hi > lo, hi - lo, 1.0)
    shade = (data - lo) / span
    fig, ax = plt.subplots(figsize=(1.3 + 1.1 * len(cols), 1.0 + 0.38 * len(labels)))
    ax.imshow(np.ma.masked_invalid(shade), cmap="viridis", aspect="auto", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(cols)):
            if not math.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if shade[i, j] < 0.5 else "black")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(len(cols)), [f"{s.model}\n{g}" for s, g in cols], fontsize=7)
    ax.set_title("higher is better (colour per column)", fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(study: Study):
    """Mean insertion / deletion curves per method (SI, SD, CI, CD)."""
    import matplotlib.pyplot as plt
    import numpy as np

    shown = [m for m in CURVE_METRICS if any((lab, m) in study.curves for lab in study.methods)]
    shown = shown or ["SI", "SD", "CI", "CD"]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, shown, strict=False):
        for label in study.methods:
            curve = study.curves.get((label, metric))
            if curve is None:
                continue
            x = np.linspace(0, 1, len(curve))
            style = "--" if label.startswith("random") else "-"
            ax.plot(x, curve, style, lw=1.2,
                    label=f"{label} ({study.value(label, metric):.3f})")
        ax.set_title(f"{metric} {_arrow(metric)}", fontsize=9)
        unit = "regions" if metric.startswith("R") else "pixels"
        ax.set_xlabel("fraction of region pairs removed" if metric in ("PI", "PD") else
                      f"fraction of {unit} " + ("inserted" if metric.endswith("I") else
                                                "deleted"), fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=5.5)
    axes[0, 0].set_ylabel("cosine similarity", fontsize=8)
    fig.suptitle(study.title, fontsize=9)
    fig.tight_layout()
    return fig


def downstream_figure(studies: Sequence[Study], accuracy: Mapping[str, float]):
    """Fig. 15: group score of each method against the downstream accuracy of each model, with
    the Pearson coefficient per method (NaN with fewer than three models)."""
    import matplotlib.pyplot as plt

    chosen = [s for s in studies if s.model in accuracy]
    labels: list[str] = []
    for s in chosen:
        labels += [lab for lab in s.methods if lab not in labels]
    groups = ("(SI, CI)", "1 - (SAD, CAD)")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    rows = []
    for ax, g in zip(axes[0], groups, strict=True):
        for label in labels:
            xs = [s.group(label, g) for s in chosen]
            ys = [float(accuracy[s.model]) for s in chosen]
            r = pearson(xs, ys)
            rows.append([g, label, r])
            ax.plot(xs, ys, "o", label=f"{label} (r={_fmt(r)})")
            for x, y, s in zip(xs, ys, chosen, strict=True):
                if math.isfinite(x):
                    ax.annotate(s.model, (x, y), fontsize=6)
        ax.set_xlabel(f"explanation score {g}", fontsize=8)
        ax.set_ylabel("downstream accuracy", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig, rows


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------ report
def parse_downstream(text: str | None) -> dict[str, float]:
    """``model=acc,model=acc`` to a dict."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"--downstream expects MODEL=ACCURACY items, got {item!r}")
        name, value = item.rsplit("=", 1)
        try:
            out[name.strip()] = float(value)
        except ValueError as err:
            raise ValueError(f"--downstream: {value!r} is not a number") from err
    return out


def write_report(
    stores: Iterable[str | Path],
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    downstream: Mapping[str, float] | None = None,
) -> list[Path]:
    """Read the stores and write the report files; returns the paths written."""
    formats = [f.strip().lower() for f in formats if f.strip()]
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ValueError(f"unknown report format {', '.join(bad)}; choose from md, csv, html")
    stores = list(stores)
    from pairlens.corpus import evaluation as corpus_eval

    pair_stores = [
        db for db in stores if not corpus_eval.has_corpus_results(db) or _has_results(db)
    ]
    studies = build_studies(read_tables(pair_stores)) if pair_stores else []
    corpus = _corpus_markdown(stores)
    if not studies and not corpus:
        raise ValueError("the results store holds no finished results")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures: dict[str, bytes] = {"heatmap.png": _png(heatmap_figure(studies))} if studies else {}
    for k, study in enumerate(studies):
        if study.curves:
            figures[f"curves-{k}.png"] = _png(curves_figure(study))
    downstream_rows: list[list] = []
    if downstream:
        missing = sorted(set(downstream) - {s.model for s in studies})
        if missing:
            raise ValueError(f"--downstream names model(s) not in the store: {', '.join(missing)}")
        fig, downstream_rows = downstream_figure(studies, downstream)
        figures["downstream.png"] = _png(fig)
    for name, data in figures.items():
        written.append(_atomic_write(out / name, data))

    if "csv" in formats:
        written += _write_csvs(out, studies, downstream_rows)
    sections = _sections(studies, downstream_rows) if studies else []
    if corpus:
        title = "Corpus explanations (COCOA, seed 002 Tables 1-4)"
        sections.append((title, "markdown", corpus, None))
    if "md" in formats:
        md = ["# PairLens evaluation report", ""]
        for title, kind, payload, fig in sections:
            md += [f"## {title}", ""]
            if kind == "table":
                md += [_md_table(*payload), ""]
            elif kind == "text":
                md += [payload, ""]
            elif kind == "markdown":
                md += [payload.replace("\n## ", "\n### ").replace("## ", "### ", 1), ""]
            if fig:
                md += [f"![{title}]({fig})", ""]
        written.append(_atomic_write(out / "report.md", "\n".join(md)))
    if "html" in formats:
        body = ["<h1>PairLens evaluation report</h1>"]
        for title, kind, payload, fig in sections:
            body.append(f"<h2>{html.escape(title)}</h2>")
            if kind == "table":
                body.append(_html_table(*payload))
            elif kind == "text":
                body.append(f"<p>{html.escape(payload)}</p>")
            elif kind == "markdown":
                body.append(_markdown_to_html(payload))
            if fig:
                data = base64.b64encode(figures[fig]).decode()
                body.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')
        page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>PairLens report</title>"
                "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
                "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
                "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>"
                "</head><body>" + "\n".join(body) + "</body></html>")
        written.append(_atomic_write(out / "report.html", page))
    return written


def _has_results(db: str | Path) -> bool:
    import sqlite3

    with sqlite3.connect(f"file:{Path(db)}?mode=ro", uri=True) as con:
        row = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'results'").fetchone()
    return row is not None


def _corpus_markdown(stores: Sequence[str | Path]) -> str:
    """The COCOA tables of every store that holds corpus results (seed 002, §4.1)."""
    from pairlens.corpus import evaluation as corpus_eval

    parts = [
        corpus_eval.report_markdown(corpus_eval.load_results(db))
        for db in stores
        if corpus_eval.has_corpus_results(db)
    ]
    return "\n".join(parts)


def _markdown_to_html(text: str) -> str:
    """The small markdown subset of the corpus tables: headings, pipe tables, bullets, text."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            rows = [r for r in table if not set("".join(r)) <= set("-: ")]
            out.append(_html_table(rows[0], rows[1:]))
            table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            table.append([c.strip() for c in stripped.strip("|").split("|")])
            continue
        flush()
        if stripped.startswith("#"):
            out.append(f"<h3>{html.escape(stripped.lstrip('#').strip())}</h3>")
        elif stripped.startswith("- "):
            out.append(f"<li>{html.escape(stripped[2:])}</li>")
        elif stripped:
            out.append(f"<p>{html.escape(stripped)}</p>")
    flush()
    return "\n".join(out)


def _sections(studies: Sequence[Study], downstream_rows: list[list]) -> list[tuple]:
    """(title, kind, payload, figure file) in report order."""
    out: list[tuple] = []
    for k, study in enumerate(studies):
        header, rows, bold = metric_table(study)
        if rows:
            out.append((f"Metrics: {study.title}", "table", (header, rows, bold),
                        f"curves-{k}.png" if study.curves else None))
        note = left_out_note(study)
        if note:
            out.append((f"Pairs compared: {study.title}", "text", note, None))
        header, rows, bold = comparison_table(study)
        if rows:
            out.append((f"Against random, 95 % intervals and paired Wilcoxon test: {study.title}",
                        "table", (header, rows, bold), None))
        header, rows, bold = ground_truth_table(study)
        if rows:
            out.append((f"Ground truth (pointing games): {study.title}",
                        "table", (header, rows, bold), None))
    header, rows, bold = sensitivity_table(studies)
    if rows:
        out.append(("Maximum sensitivity (Table V)", "table", (header, rows, bold), None))
    labels: list[str] = []
    for s in studies:
        labels += [lab for lab in s.methods if lab not in labels]
    group_header = ["method"] + [f"{s.model} {g}" for g in GROUPS for s in studies]
    group_rows = [[lab] + [_fmt(s.group(lab, g)) for g in GROUPS for s in studies]
                  for lab in labels]
    if any(c != "–" for row in group_rows for c in row[1:]):  # only with the six metrics
        out.append(("Metric groups (Fig. 14)", "table", (group_header, group_rows, None),
                    "heatmap.png"))
    if downstream_rows:
        rows = [[g, lab, _fmt(r)] for g, lab, r in downstream_rows]
        out.append(("Relationship to downstream accuracy (Fig. 15)", "table",
                    (["group", "method", "Pearson r"], rows, None), "downstream.png"))
    for study in studies:
        out.append((f"Time per method (Table VI): {study.title}", "table",
                    (*timing_table(study), None), None))
    return out


def _write_csvs(out: Path, studies: Sequence[Study], downstream_rows: list[list]) -> list[Path]:
    def write(name: str, header: list[str], rows: list[list]) -> Path:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return _atomic_write(out / name, buf.getvalue())

    metric_rows, timing_rows, group_rows, comparison_rows = [], [], [], []
    for s in studies:
        for c in compare_with_baseline(s):
            comparison_rows.append([s.model, s.setting, c.label, c.metric, c.n, repr(c.mean),
                                    repr(c.ci[0]), repr(c.ci[1]), repr(c.baseline_mean),
                                    repr(c.baseline_ci[0]), repr(c.baseline_ci[1]),
                                    repr(c.diff), repr(c.diff_ci[0]), repr(c.diff_ci[1]),
                                    repr(c.p_value), "" if c.better is None else c.better])
        for lab in s.methods:
            for m in s.metrics():
                c = s.cells.get((lab, m))
                if c:
                    metric_rows.append([s.model, s.setting, lab, m, repr(c.mean), repr(c.std),
                                        c.n, c.skipped])
            if lab in s.seconds:
                t = s.seconds[lab]
                timing_rows.append([s.model, s.setting, lab, repr(t[0]), repr(t[1]), t[2]])
            group_rows.append([s.model, s.setting, lab] + [repr(s.group(lab, g)) for g in GROUPS])
    paths = [
        write("metrics.csv", ["model", "setting", "method", "metric", "mean", "std", "n",
                              "skipped"], metric_rows),
        write("timings.csv", ["model", "setting", "method", "explain_seconds", "metric_seconds",
                              "pairs"], timing_rows),
        write("heatmap.csv", ["model", "setting", "method", *GROUPS], group_rows),
    ]
    if comparison_rows:
        paths.append(write("comparison.csv", [
            "model", "setting", "method", "metric", "pairs", "mean", "ci_low", "ci_high",
            "random_mean", "random_ci_low", "random_ci_high", "difference", "difference_ci_low",
            "difference_ci_high", "wilcoxon_p", "better"], comparison_rows))
    if downstream_rows:
        paths.append(write("downstream.csv", ["group", "method", "pearson_r"],
                           [[g, lab, repr(r)] for g, lab, r in downstream_rows]))
    return paths
