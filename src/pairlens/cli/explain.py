"""``pairlens explain`` (one pair, or many with ``--pairs``) and ``pairlens methods``."""

from __future__ import annotations

import argparse
import csv
import html
import io
import re
import textwrap
from pathlib import Path
from typing import Any

from pairlens.cli.options import (
    Output,
    UsageError,
    add_deprecated,
    add_method_options,
    add_model_options,
    add_on_error_option,
    add_output_options,
    add_run_options,
    apply_threads,
    bad_files,
    command_parser,
    load_model,
    method_list,
    usage,
    warn,
)
from pairlens.validation import argtype

EXPLAIN_EXAMPLES = """examples:
  pairlens explain                                   # bundled example pair, bundled 'photos' model
  pairlens explain a.jpg b.jpg --methods conditional-occlusion --out out/
  pairlens explain a.jpg b.jpg --methods interaction-cam --param reduction=max
  pairlens explain a.jpg b.jpg --methods averaged-transforms --param transform=rotation \\
      --param strength=0,90 --param interpolation=strength --param guided=true
  pairlens explain a.jpg b.jpg --methods all --out out/      # every method and grid.png
  pairlens explain --pairs pairs.txt --methods grad-cam,interaction-cam --out out/
  pairlens explain a.jpg b.jpg --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth
  pairlens explain cat.jpg --text "a photo of a cat" --model clip-vit-b32 \\
      --checkpoint open_clip_pytorch_model.bin --methods grad-cam

--pairs FILE lists one 'image1 image2' per line; --pairs DIR takes each sub-folder holding two
images as a pair (or, in a flat folder, the images sorted by name, two at a time). Each pair gets
its own folder under --out, and index.csv / index.html list them all. --text explains one image
against a caption (image-text models: CLIP, SigLIP); methods that need two images are skipped.
"""

METHODS_EXAMPLES = """examples:
  pairlens methods
  pairlens methods --json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "explain", "explain why a model finds two images similar",
        "Explain the similarity of two images (or of many pairs, --pairs) with pair explanation "
        "methods and write, per method, a figure (PNG), the raw maps (.npz) and metadata (JSON). "
        "With no images, the bundled example pair is explained with the bundled default model.",
        EXPLAIN_EXAMPLES,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="two image files (or none; one with --text)")
    p.add_argument("--pairs", metavar="FILE|DIR",
                   help="explain many pairs: a file of 'image1 image2' lines, or a folder")
    p.add_argument("--text", default=None, metavar="CAPTION",
                   help="explain one image against this caption (image-text models: "
                   "clip-vit-b32, clip:ARCH, hf:PATH of a CLIP or SigLIP folder)")
    add_model_options(p, execution=True)
    add_method_options(p)
    add_deprecated(p, "--method", "--methods", dest="methods")
    add_deprecated(p, "--all-methods", "--methods all", dest="methods", nargs=0,
                   convert=lambda _: "all")
    add_output_options(p, "pairlens-out")
    d = p.add_argument_group("display (figures only; the saved maps are never altered)")
    d.add_argument("--smooth", type=argtype("float", 0), default=0.0, metavar="SIGMA",
                   help="Gaussian blur of the shown maps, sigma in pixels (default: 0)")
    d.add_argument("--clip", type=argtype("float", 0, 100, lo_open=True), default=99.0,
                   metavar="PERCENTILE",
                   help="clip each shown map above this percentile before min-max "
                   "normalisation, so a few extreme pixels do not hide the rest "
                   "(default: %(default)s; 100 = no clip)")
    g = add_run_options(
        p, batch_size=None,
        batch_help="images per forward pass; changes speed and memory, results only by float "
        "rounding (default: "
        "chosen from the device and image size)",
    )
    g.add_argument("--pairs-per-unit", type=argtype("int", 1), default=None, metavar="P",
                   help="with --pairs: pairs loaded, explained and written together (default: 8)")
    add_on_error_option(g, "the pairs using it (--pairs)")
    p.set_defaults(func=run_explain)

    m = command_parser(
        sub, "methods", "list the explanation methods with their parameters",
        "List the registered pair explanation methods: name, what it does, its source (paper "
        "section) and its parameters with defaults ('auto' = chosen from the input size).",
        METHODS_EXAMPLES,
    )
    add_output_options(m, None, out=False)
    m.set_defaults(func=run_methods)


# ----------------------------------------------------------------------------- methods
def run_methods(args: argparse.Namespace) -> int:
    import pairlens.methods  # noqa: F401  (registers every method)
    from pairlens.methods.registry import method_infos
    from pairlens.params import format_value

    infos = method_infos()
    out = Output(args, "methods")
    out.add(methods=[{"name": i.name, "family": i.family, "source": i.section,
                      "summary": i.summary, "deterministic": i.deterministic,
                      "pairs_only": i.pairs_only,
                      "params": {k: _jsonable(v) for k, v in i.params.items()}} for i in infos])
    if out.json:
        return out.finish()
    lines = []
    for info in infos:
        where = info.family if info.section == info.family else f"{info.family}, {info.section}"
        lines.append(f"{info.name}  ({where}{'; needs two images' if info.pairs_only else ''})")
        lines.append(f"    {info.summary}")
        if info.params:
            params = "  ".join(f"{k}={format_value(v)}" for k, v in info.params.items())
            lines += textwrap.wrap(params, 96, initial_indent="    parameters: ",
                                   subsequent_indent=" " * 16, break_on_hyphens=False)
    lines.append("")
    lines.append("Set parameters with --param KEY=VALUE (pairlens explain, evaluate); 'auto' is "
                 "chosen from the input size (docs/methods.md).")
    return out.finish("\n".join(lines))


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


# ----------------------------------------------------------------------------- explain
def run_explain(args: argparse.Namespace) -> int:
    from pairlens.io import load_image
    from pairlens.progress import overall, progress_bars

    out = Output(args, "explain")
    text = args.text.strip() if args.text is not None else None
    if args.pairs and (args.images or text is not None):
        raise UsageError("give two images, one image and --text, or --pairs; not several")
    if text is not None and (len(args.images) != 1 or not text):
        raise UsageError("--text explains one image against a caption: give one image and a "
                         "non-empty --text")
    if args.pairs_per_unit is not None and not args.pairs:
        raise UsageError("--pairs-per-unit goes with --pairs (many pairs); one pair is one unit")
    if text is None and len(args.images) not in (0, 2):
        raise UsageError(f"explain takes two images or none; got {len(args.images)}")
    variants = method_list(args)
    if text is not None:
        variants = _without_pairs_only(variants, every=_all_selected(args))
    apply_threads(args)
    if args.pairs:
        from pairlens.study.pairs import read_pairs

        pairs: list[tuple[str, str]] | None = usage(read_pairs, args.pairs)
    else:
        pairs = None
        for path in args.images:
            load_image(path)  # fail early on a bad file, before loading the model
    model = load_model(args)  # with --amp / --channels-last
    if text is not None and not model.has_text_tower:
        raise UsageError(f"--text needs an image-text model (clip-vit-b32, clip:ARCH, hf:PATH of "
                         f"a CLIP or SigLIP folder); {model.name!r} has no text tower")
    variants = [(name, _with_run_params(name, given, args)) for name, given in variants]
    root = Path(args.out)
    with progress_bars(not args.quiet):
        if pairs is None:
            if text is not None:
                x1, x2 = model.preprocess(load_image(args.images[0])), None
                sources = (args.images[0], text)
            else:
                x1, x2, sources = _single_pair(model, args.images)
            with overall(len(variants), "explain", unit="method") as bar:
                results = _explain_batch(model, x1, x2, [sources], variants, [root], args, bar,
                                         out, target=text)
            out.add(pairs=results)
            return out.finish()
        return _explain_pairs(model, pairs, variants, root, args, out)


def _all_selected(args: argparse.Namespace) -> bool:
    """Whether ``--methods`` asked for every method (``all``)."""
    methods = args.methods if isinstance(args.methods, str) else ",".join(args.methods)
    return any(m.strip().lower() == "all" for m in methods.split(","))


def _without_pairs_only(variants: list[tuple[str, dict]], every: bool) -> list[tuple[str, dict]]:
    """The variants that can explain one image against a fixed target: with ``--methods all``
    the others are left out, a method named explicitly is a usage error."""
    from pairlens.methods.registry import get_method

    pairs_only = [name for name, _ in variants if get_method(name).pairs_only]
    if pairs_only and not every:
        raise UsageError(f"{', '.join(dict.fromkeys(pairs_only))} needs two images; with --text "
                         "use another method (a saliency, CAM or conditional-occlusion method)")
    return [(name, given) for name, given in variants if name not in pairs_only]


def _explain_pairs(model, pairs, variants, root: Path, args, out: Output) -> int:
    """``--pairs``: batches of pairs through every method, one folder per pair, an index. An
    unreadable image, or a pair the model refuses (two identical images:
    :func:`~pairlens.models.similarity.is_pair_error`; its batch is explained again one pair at a
    time so that the other pairs are written), follows ``--on-error``: stop (the index of what
    was done is still written) or skip the pair (listed in the index with the reason)."""
    import torch

    from pairlens.io import pair_name
    from pairlens.models.similarity import is_pair_error
    from pairlens.progress import overall

    bad = bad_files(args, hint="pass --on-error skip to skip the pairs using it")
    pairs_per_batch = args.pairs_per_unit or 8
    folders = [root / _pair_folder(i, a, b) for i, (a, b) in enumerate(pairs)]
    rows: list[dict[str, Any]] = []
    try:
        with overall(len(pairs) * len(variants), "explain", unit="explanation") as bar:
            for start in range(0, len(pairs), pairs_per_batch):
                good, x1s, x2s = [], [], []
                for i in range(start, min(start + pairs_per_batch, len(pairs))):
                    images = [bad.load(p) for p in pairs[i]]
                    if any(im is None for im in images):
                        reasons = [bad.skipped[str(p)] for p, im in zip(pairs[i], images,
                                                                         strict=True)
                                   if im is None]
                        rows.append({"pair": i + 1, "image1": pairs[i][0], "image2": pairs[i][1],
                                     "error": "; ".join(reasons)})
                        bar.update(len(variants))
                        continue
                    x1s.append(model.preprocess(images[0]))
                    x2s.append(model.preprocess(images[1]))
                    good.append(i)
                if good:
                    try:
                        rows += _explain_batch(model, torch.cat(x1s), torch.cat(x2s),
                                               [pairs[i] for i in good], variants,
                                               [folders[i] for i in good], args, bar, out,
                                               numbers=[i + 1 for i in good])
                    except Exception as err:
                        if not is_pair_error(err):
                            raise
                        # a pair the model refuses (two identical images): one pair at a time,
                        # the others are written, the offending ones stop or are skipped
                        for i, x1, x2 in zip(good, x1s, x2s, strict=True):
                            try:
                                rows += _explain_batch(model, x1, x2, [pairs[i]], variants,
                                                       [folders[i]], args, bar, out,
                                                       numbers=[i + 1])
                            except Exception as one:
                                if not is_pair_error(one):
                                    raise
                                a, b = (str(p) for p in pairs[i])
                                bad.pair_failed(a, b, one)
                                rows.append({"pair": i + 1, "image1": a, "image2": b,
                                             "error": bad.skipped[pair_name(a, b)]})
    finally:  # stopped or not, the index lists what was done
        rows.sort(key=lambda r: r["pair"])
        if rows:
            for path, what in _write_index(root, rows):
                out.wrote(path, what)
    failed = sum("error" in r for r in rows)
    out.add(pairs=rows, failed=failed)
    if failed:
        warn(f"{bad.summary()}; {failed} of {len(pairs)} pairs skipped (listed in "
             f"{root / 'index.csv'})")
    return out.finish()


def _with_run_params(name: str, given: dict[str, Any], args: argparse.Namespace) -> dict:
    """``--seed`` and ``--batch-size`` for the methods that take them (``--param`` wins)."""
    from pairlens.methods.registry import get_method

    params = dict(given)
    accepted = get_method(name).params
    if "seed" in accepted and "seed" not in params:
        params["seed"] = args.seed
    if "batch_size" in accepted and "batch_size" not in params and args.batch_size:
        params["batch_size"] = args.batch_size
    return params


def _single_pair(model: Any, images: list[str]):
    """Two model-input tensors and their source names; the bundled example pair when none."""
    if images:
        return model.preprocess(images[0]), model.preprocess(images[1]), (images[0], images[1])
    from pairlens.data.bundled import example_pairs

    name1, img1, name2, img2 = example_pairs("digits" if model.name == "digits" else "photos")[0]
    return model.preprocess(img1), model.preprocess(img2), (name1, name2)


def _explain_batch(model, x1, x2, sources, variants, folders, args, bar, out, numbers=None,
                   target=None):
    """Explain a batch of pairs (or, with ``target`` and ``x2=None``, of images against a
    caption) with every variant; write each pair's files into its folder. A method that cannot
    explain this model (:class:`~pairlens.methods.registry.NotApplicableError`) is skipped with a
    warning when ``--methods all`` chose it, else it stops the command. Returns one record per
    pair."""
    import pairlens
    from pairlens.methods.registry import NotApplicableError
    from pairlens.viz import DPI, grid_figure

    records = [{"pair": (numbers or [1])[k], "image1": str(sources[k][0]),
                "image2": str(sources[k][1]), "folder": str(folders[k]), "results": []}
               for k in range(len(folders))]
    per_pair: list[list[Any]] = [[] for _ in folders]
    stems = _stems(variants)
    every = _all_selected(args)
    for (name, params), stem in zip(variants, stems, strict=True):
        bar.set_postfix_str(name)
        try:
            exp = pairlens.explain(model, x1, x2, method=name, target=target, **params)
        except NotApplicableError as err:
            if not every:
                raise
            warn(f"{stem} skipped: {' '.join(str(err).split())}")
            for record in records:
                record.setdefault("skipped", {})[name] = " ".join(str(err).split())
            bar.update(len(folders))
            continue
        for k, folder in enumerate(folders):
            one = exp.select(k)
            one = _with_sources(one, sources[k])
            files = one.save(folder, stem=stem, smooth=args.smooth, clip=args.clip)
            for path in files:
                if numbers is None:  # one pair (not --pairs): list every file
                    out.wrote(path, _what(path))
            per_pair[k].append(one)
            records[k]["results"].append({
                "method": name, "params": {k2: _plain(v) for k2, v in one.params.items()},
                "similarity": float(one.score[0]), "seconds": exp.seconds / len(folders),
                "figure": str(folder / f"{stem}.png"), "maps": str(folder / f"{stem}.npz"),
                "metadata": str(folder / f"{stem}.json"),
            })
            if numbers is None:
                out.say(f"{stem:28s} similarity {float(one.score[0]):.4f}  {exp.seconds:7.2f} s")
        bar.update(len(folders))
    if len(per_pair[0]) > 1:
        from pairlens.io import atomic_write

        for k, folder in enumerate(folders):
            fig = grid_figure(per_pair[k], smooth=args.smooth, clip=args.clip)
            path = atomic_write(folder / "grid.png",
                                lambda f, fig=fig: fig.savefig(f, format="png", dpi=DPI))
            records[k]["grid"] = str(path)
            if numbers is None:
                out.wrote(path, "all the methods side by side")
    return records


def _with_sources(exp: Any, sources: tuple[str, str]) -> Any:
    import dataclasses

    return dataclasses.replace(exp, sources=(str(sources[0]), str(sources[1])))


def _stems(variants: list[tuple[str, dict]]) -> list[str]:
    """File stems: the method name, plus the explicit parameters when a method appears twice."""
    from pairlens.methods.registry import get_method

    names = [n for n, _ in variants]
    stems = []
    for name, params in variants:
        if names.count(name) == 1:
            stems.append(name)
            continue
        defaults = get_method(name).params
        diff = [f"{k}-{v}" for k, v in sorted(params.items())
                if k not in ("seed", "batch_size") and defaults.get(k, object()) != v]
        stems.append(re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join([name, *diff])))
    return stems


def _what(path: Path) -> str:
    return {".png": "figure", ".npz": "raw maps (map1, map2, score)",
            ".json": "metadata"}.get(path.suffix, "")


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v if isinstance(v, (str, int, float, bool, list)) or v is None else repr(v)


def _pair_folder(i: int, a: str, b: str) -> str:
    def clean(p: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(p).stem)[:40]

    return f"{i + 1:04d}_{clean(a)}_{clean(b)}"


def _write_index(root: Path, rows: list[dict[str, Any]]) -> list[tuple[Path, str]]:
    """``index.csv`` (one row per pair and method) and ``index.html`` (the figures)."""
    from pairlens.io import atomic_write

    root.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["pair", "image1", "image2", "method", "similarity", "seconds", "figure", "maps",
                "error"])
    for row in rows:
        for r in row.get("results") or [{}]:
            w.writerow([row["pair"], row["image1"], row["image2"], r.get("method", ""),
                        f"{r['similarity']:.6f}" if "similarity" in r else "",
                        f"{r['seconds']:.3f}" if "seconds" in r else "",
                        _rel(r.get("figure"), root), _rel(r.get("maps"), root),
                        row.get("error", "")])
    csv_path = atomic_write(root / "index.csv", lambda f: f.write(buf.getvalue().encode()))
    parts = ["<!doctype html><meta charset='utf-8'><title>pairlens explain</title>",
             "<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px}</style>",
             f"<h1>pairlens explain: {len(rows)} pairs</h1><table>"]
    for row in rows:
        e = html.escape
        head = f"<b>{row['pair']}</b> {e(row['image1'])} / {e(row['image2'])}"
        if "error" in row:
            parts.append(f"<tr><td>{head}<br><i>{e(row['error'])}</i></td></tr>")
            continue
        figure = row.get("grid") or row["results"][0]["figure"]
        scores = ", ".join(f"{e(r['method'])} {r['similarity']:.3f}" for r in row["results"][:1])
        parts.append(f"<tr><td>{head}<br>similarity: {scores}</td><td><a href='"
                     f"{e(_rel(figure, root))}'><img src='{e(_rel(figure, root))}' width=480>"
                     "</a></td></tr>")
    parts.append("</table>")
    html_path = atomic_write(root / "index.html",
                             lambda f: f.write("\n".join(parts).encode()))
    folders = [r for r in rows if "folder" in r]
    return [(csv_path, "index of the pairs: similarity and files per method"),
            (html_path, "index with the figures"),
            (root, f"{len(folders)} pair folders (figure, maps, metadata per method"
                   f"{', grid.png' if any('grid' in r for r in folders) else ''})")]


def _rel(path: str | None, root: Path) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
