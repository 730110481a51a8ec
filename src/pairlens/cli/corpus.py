"""``pairlens corpus`` (COCOA explanations of images against a corpus and a foil, or against
CLIP captions) and ``pairlens corpus-eval`` (the §4.1 evaluation, Tables 1-4)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pairlens.cli.options import (
    REMOVED_IN,
    Output,
    UsageError,
    add_deprecated,
    add_method_options,
    add_model_options,
    add_on_error_option,
    add_output_options,
    add_run_options,
    add_store_option,
    apply_threads,
    bad_files,
    command_parser,
    confirm_long_run,
    load_model,
    method_list,
    model_name,
    seeds_of,
    store_of,
    usage,
    warn,
)
from pairlens.validation import argtype

CORPUS_EXAMPLES = """examples:
  pairlens corpus digit.png --model digits --corpus threes/ --foil-from digits:1060 --out out/
  pairlens corpus dog.jpg --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth \\
      --corpus cats/ --foil random/ --methods integrated-gradients --out out/
  pairlens corpus zebra.jpg --model clip-vit-b32 --checkpoint open_clip_pytorch_model.bin \\
      --text "This is a photo of a zebra" --text-foil cifar100 --out out/
  pairlens corpus bee.jpg --model clip:ViT-B-32-quickgelu \\
      --checkpoint open_clip_pytorch_model.bin \\
      --text "a photo of a bee" --text-foil "a photo of a flower" --out out/
"""

EVAL_EXAMPLES = """examples:
  pairlens corpus-eval --seeds 0 --classes 3,8 --param n_masks=500 --store quick.db --out quick/
  pairlens corpus-eval --store corpus.db --out corpus/ --yes     # the digits reproduction
      # 5 seeds x 10 classes x 2 settings: under 45 min of CPU time (25 s for the setup and
      # the first of its 100 explicands; its own estimate said 3.3 h wall here while shared)
  pairlens corpus-eval --report --store corpus.db --out corpus/  # tables of the latest run

Runs estimated over 15 min need --yes; the estimate is printed after the first explicand. Times:
user + system CPU time on this project's 2-core CPU; "shared": other jobs ran meanwhile.
"""

METHOD_CHOICES = ("rise", "integrated-gradients", "gradient-shap", "relax")
TARGET_CHOICES = ("cocoa", "corpus", "label-free", "contrastive-label-free")
#: corpus-eval's parameters (``--param``) and the evaluation settings they set
EVAL_PARAMS = {("rise", "n_masks"): "n_masks", ("integrated-gradients", "n_steps"): "ig_steps",
               ("gradient-shap", "n_samples"): "shap_samples",
               ("gradient-shap", "stdevs"): "shap_stdevs"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "corpus", "what in an image looks like a corpus rather than a foil (COCOA)",
        "Explain images with contrastive corpus attributions (COCOA, seed 002): which pixels make "
        "an image's representation similar to a corpus of images (or CLIP captions) and "
        "dissimilar to a foil. Writes an overlay figure (PNG), the raw map (.npz) and metadata "
        "(JSON) per image and method.",
        CORPUS_EXAMPLES,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) to explain")
    add_model_options(p)
    c = p.add_argument_group("corpus and foil")
    c.add_argument("--corpus", nargs="+", metavar="DIR|FILE", help="corpus folder or files")
    c.add_argument("--foil", nargs="+", metavar="DIR|FILE", help="foil folder or files")
    c.add_argument("--foil-from", metavar="DATASET[:N]",
                   help="N random images of a bundled dataset as foil (digits or photos); "
                   "without N, the foil size of Proposition C.2 for --delta / --epsilon")
    c.add_argument("--delta", type=argtype("float", 0, 1, True, True), default=0.01,
                   help="Prop. C.2 δ (default: %(default)s)")
    c.add_argument("--epsilon", type=argtype("float", 0, lo_open=True), default=0.05,
                   help="Prop. C.2 ε (default: %(default)s)")
    c.add_argument("--text", action="append", default=[], metavar="CAPTION",
                   help="corpus caption for a CLIP --model (repeatable)")
    c.add_argument("--text-foil", action="append", default=[], metavar="CAPTION|cifar100",
                   help="foil caption (repeatable), or cifar100 for the 100 CIFAR-100 classes "
                   "without the corpus class (§4.3)")
    c.add_argument("--target", choices=TARGET_CHOICES, default=None,
                   help="explanation target (default: cocoa with a foil, corpus without)")
    c.add_argument("--similarity", choices=("cosine", "dot"), default=None,
                   help="how the target compares embeddings (default: the model's, cosine or "
                   "dot)")
    add_method_options(p, default="rise", what=", ".join(METHOD_CHOICES))
    add_output_options(p, "pairlens-corpus")
    g = add_run_options(p)
    add_on_error_option(g, "it (an explicand, corpus or foil image; listed in OUT/skipped.json)")
    add_deprecated(p, "--method", "--methods", dest="methods")
    count = argtype("int", 1)
    add_deprecated(p, "--n-masks", "--param n_masks=N", dest="legacy_n_masks", type=count)
    add_deprecated(p, "--n-steps", "--param n_steps=N", dest="legacy_n_steps", type=count)
    add_deprecated(p, "--n-samples", "--param n_samples=N", dest="legacy_n_samples", type=count)
    add_deprecated(p, "--clip-checkpoint", "--model CLIP --checkpoint PATH",
                   dest="legacy_clip_checkpoint")
    add_deprecated(p, "--clip-arch", "--model clip:ARCH", dest="legacy_clip_arch")
    p.set_defaults(func=run_corpus)

    e = command_parser(
        sub, "corpus-eval", "the COCOA §4.1 evaluation (insertion / deletion, Tables 1-4)",
        "Run the quantitative evaluation of COCOA (seed 002, §4.1) on a model with a linear "
        "probe (default: the bundled digits model): four targets x three attribution methods "
        "and random attributions, same-class and different-class explicands, insertion and "
        "deletion of corpus majority probability and contrastive corpus similarity, means and "
        "95 % CIs over seeds. Results go to the corpus_results table of --store; the tables to "
        "--out/corpus-eval.md.",
        EVAL_EXAMPLES,
    )
    add_model_options(e, default_help="digits", embedding_default="backbone")
    w = e.add_argument_group("protocol")
    w.add_argument("--classes", nargs="+", default=None, metavar="LIST",
                   help="classes, comma-separated or a range A-B (default: all)")
    w.add_argument("--explicands-per-class", type=argtype("int", 1), default=1,
                   help="(default: %(default)s)")
    w.add_argument("--corpus-size", type=argtype("int", 1), default=100,
                   help="(default: %(default)s)")
    w.add_argument("--foil-size", type=argtype("int", 1), default=None,
                   help="(default: Prop. C.2 bound)")
    w.add_argument("--similarity", choices=("cosine", "dot"), default="cosine",
                   help="(default: %(default)s)")
    w.add_argument("--run-id", default=None, help="name of this run (default: a timestamp)")
    w.add_argument("--report", action="store_true",
                   help="only write the tables of the latest run (or --run-id) in --store")
    add_method_options(e, default=",".join(METHOD_CHOICES[:3]), what=", ".join(METHOD_CHOICES[:3]),
                       space_list=True)
    add_store_option(e)
    add_output_options(e, "pairlens-corpus-eval")
    add_run_options(e, seeds="0-4", yes=True)
    add_deprecated(e, "--db", "--store", dest="store")
    add_deprecated(e, "--n-masks", "--param n_masks=N", dest="legacy_n_masks", type=count)
    add_deprecated(e, "--ig-steps", "--param n_steps=N", dest="legacy_n_steps", type=count)
    add_deprecated(e, "--shap-samples", "--param n_samples=N", dest="legacy_n_samples",
                   type=count)
    e.set_defaults(func=run_corpus_eval_cli)


def _legacy_params(args: argparse.Namespace) -> None:
    """Fold the deprecated --n-masks / --n-steps / --n-samples into ``--param``."""
    for dest, key in (("legacy_n_masks", "n_masks"), ("legacy_n_steps", "n_steps"),
                      ("legacy_n_samples", "n_samples")):
        value = getattr(args, dest, None)
        if value is None:
            continue
        from pairlens.attribution import attribution_params

        methods = ",".join(args.methods) if isinstance(args.methods, list) else args.methods
        for name, params in attribution_params().items():
            if key in params and name in methods:
                args.param.append(f"{name}.{key}={value}")


# ----------------------------------------------------------------------------- corpus
def run_corpus(args: argparse.Namespace) -> int:
    import torch

    from pairlens.attribution import attribute
    from pairlens.corpus import targets as T
    from pairlens.progress import overall, progress_bars

    out = Output(args, "corpus")
    bad = bad_files(args)
    _legacy_params(args)
    variants = method_list(args, family="attribution")
    unknown = [m for m, _ in variants if m not in METHOD_CHOICES]
    if unknown:
        raise UsageError(f"corpus methods are {', '.join(METHOD_CHOICES)}; got "
                         f"{', '.join(unknown)}")
    apply_threads(args)
    legacy_clip = getattr(args, "legacy_clip_checkpoint", None) or getattr(
        args, "legacy_clip_arch", None)
    text_mode = bool(args.text or args.text_foil or legacy_clip)
    if text_mode:
        if not args.text:
            raise UsageError("give the corpus caption(s) with --text")
        if args.corpus or args.foil or args.foil_from:
            raise UsageError("--text (CLIP captions) cannot be combined with --corpus / --foil")
        foil: Any = None
        if args.text_foil:
            if [f.strip().lower() for f in args.text_foil] == ["cifar100"]:
                foil = T.cifar100_foil_captions(args.text)
            else:
                foil = args.text_foil
        target = _text_target(args, foil)
        model = target.model
        description = {"corpus_text": args.text, "foil_text": foil or []}
    else:
        model = load_model(args)
        if not args.corpus and args.target not in ("label-free", "contrastive-label-free"):
            raise UsageError("give the corpus with --corpus DIR|FILES (or --text for CLIP)")
        if args.foil and args.foil_from:
            raise UsageError("give either --foil or --foil-from, not both")
        foil = _foil(model, args, bad)
        target = None  # built per image for explicand targets
        description = {"corpus": [str(c) for c in args.corpus or []]}
        corpus = _images(model, args.corpus, bad, "corpus") if args.corpus else None
    kind = "cocoa" if text_mode else (args.target or ("cocoa" if foil is not None else "corpus"))
    if kind in ("cocoa", "contrastive-label-free") and foil is None and not text_mode:
        raise UsageError(f"target {kind} needs a foil: --foil DIR|FILES or --foil-from digits:N")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_target = None
    if not text_mode and kind in ("cocoa", "corpus"):
        corpus_target = (
            T.ContrastiveCorpus(model, corpus, foil, args.similarity)
            if kind == "cocoa"
            else T.Corpus(model, corpus, args.similarity)
        )
    results = []
    with progress_bars(not args.quiet), overall(len(args.images) * len(variants), "corpus",
                                                 unit="map") as bar:
        for path in args.images:
            image = bad.load(path)
            if image is None:
                bar.update(len(variants))
                continue
            x = model.preprocess(image)
            if text_mode:
                t = target
            elif corpus_target is not None:
                t = corpus_target
            elif kind == "label-free":
                t = T.LabelFree(model, x, args.similarity)
            else:
                t = T.ContrastiveLabelFree(model, x, foil, args.similarity)
            with torch.no_grad():
                score = float(t(x)[0])
            for method, params in variants:
                bar.set_postfix_str(f"{Path(path).name} {method}")
                start = time.perf_counter()
                amap = attribute(t, x, method=method, seed=args.seed, **params)[0]
                meta = {
                    "image": str(path), "model": model.describe(), "target": t.describe(),
                    "method": method, "params": params, "seed": args.seed, "score": score,
                    "seconds": round(time.perf_counter() - start, 3), **description,
                }
                if bad.skipped:
                    meta["skipped"] = dict(bad.skipped)
                written = _save(out_dir, Path(path).stem, method, model, x, amap, meta)
                for w, what in zip(written, ("figure", "raw map", "metadata"), strict=True):
                    out.wrote(w, what)
                results.append({k: meta[k] for k in ("image", "method", "score", "seconds")}
                               | {"target": t.name, "figure": str(written[0])})
                out.say(f"{path}: {t.name} score {score:.4f}, {method} {meta['seconds']:.1f} s")
                bar.update(1)
    if bad.skipped:
        from pairlens.io import atomic_write

        text = json.dumps(bad.skipped, indent=2)
        out.wrote(atomic_write(out_dir / "skipped.json", lambda f: f.write(text.encode())),
                  "the unreadable files skipped")
        warn(f"{bad.summary()} (listed in {out_dir / 'skipped.json'})")
    if not results:
        raise ValueError("no image could be explained (every explicand was unreadable)")
    out.add(results=results, skipped_files=dict(bad.skipped))
    return out.finish()


def _images(model: Any, sources: list[str], bad: Any, what: str) -> Any:
    """The images of ``--corpus`` / ``--foil`` (files and folders, read with the shared scanner)
    preprocessed for ``model`` as one (N, 3, H, W) tensor, unreadable files following ``bad``."""
    import torch

    from pairlens.io import scan_images

    files: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            found = scan_images(p, recursive=False)
            if not found:
                raise ValueError(f"--{what} {src}: no image files in this folder")
            files.extend(found)
        else:
            files.append(p)
    tensors = []
    for f in files:
        image = bad.load(f)
        if image is not None:
            tensors.append(model.preprocess(image))
    if not tensors:
        raise ValueError(f"--{what}: none of its {len(files)} images could be read")
    return torch.cat(tensors)


def _text_target(args: argparse.Namespace, foil: Any) -> Any:
    """The CLIP text-corpus target: ``--model`` (a CLIP model of ``pairlens models``) with
    ``--checkpoint``, or the deprecated ``--clip-checkpoint`` / ``--clip-arch``."""
    from pairlens.corpus import targets as T
    from pairlens.models.similarity import resolve_device

    legacy = getattr(args, "legacy_clip_checkpoint", None)
    if legacy or getattr(args, "legacy_clip_arch", None):
        if not legacy:
            raise UsageError("--clip-arch needs --clip-checkpoint (better: --model clip:ARCH "
                             "--checkpoint PATH)")
        return T.TextCorpus.from_open_clip(
            legacy, args.text, foil, arch=getattr(args, "legacy_clip_arch", None) or "ViT-B-32",
            similarity=args.similarity, device=str(resolve_device(args.device)))
    how = ("--text needs an image-text model from local files: --model clip-vit-b32 "
           "--checkpoint PATH, --model clip:ARCH --checkpoint PATH or --model hf:FOLDER "
           "(pairlens models lists them)")
    if not args.model:
        raise UsageError(how)
    model = load_model(args)
    if not model.has_text_tower:
        raise UsageError(f"model {args.model!r} has no text tower; {how}")
    return T.TextCorpus(model, args.text, foil, text_encoder=model.embed_text,
                        similarity=args.similarity)


def _foil(model: Any, args: argparse.Namespace, bad: Any) -> Any:
    from pairlens.corpus import targets as T

    if args.foil:
        return _images(model, args.foil, bad, "foil")
    if not args.foil_from:
        return None
    name, _, count = args.foil_from.partition(":")
    images = _dataset_images(model, name.strip().lower())
    if count:
        try:
            n = int(count)
        except ValueError:
            raise UsageError(
                f"--foil-from expects DATASET:N with an integer N; got {count!r}"
            ) from None
    else:
        with __import__("torch").no_grad():
            nonneg = bool((T.embed_images(model, images[:64]) >= 0).all())
        n = T.foil_size(args.delta, args.epsilon, nonneg)
    return T.random_images(images, n, seed=args.seed)


def _dataset_images(model: Any, name: str) -> Any:
    """Images of a bundled dataset, preprocessed for ``model`` (model-input space)."""
    import numpy as np
    import torch

    from pairlens.data import bundled

    if name == "digits":
        x01, _ = bundled.digits("train")
    elif name == "photos":
        x01, _ = bundled.photos_tensor(size=max(model.input_size))
    else:
        raise UsageError(f"unknown dataset {name!r} for --foil-from; choose digits or photos")
    if tuple(x01.shape[-2:]) == tuple(model.input_size):
        return model.normalize(x01.to(model.device))
    arrays = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in x01]
    return torch.cat([model.preprocess(a) for a in arrays])


def _save(
    out_dir: Path, stem: str, method: str, model: Any, x: Any, amap: Any, meta: dict[str, Any]
) -> list[Path]:
    """Figure (original | overlay with a colour bar, as Fig. 2), raw map (.npz) and metadata,
    written atomically."""
    import numpy as np

    from pairlens.io import atomic_write
    from pairlens.viz import DPI, add_colorbar, display_figure, overlay, to_pil

    image01 = model.denormalize(x)[0].clamp(0, 1).cpu()
    fig = display_figure(6.4, 3.9)
    axes = fig.subplots(1, 2)
    axes[0].imshow(to_pil(image01))
    axes[0].set_title(Path(meta["image"]).name, fontsize=9)
    axes[1].imshow(overlay(image01, amap.cpu()))
    title = meta["target"]["target"]
    if meta.get("corpus_text"):
        foil_text = meta.get("foil_text") or []
        title += f": {' / '.join(meta['corpus_text'])}"
        if foil_text:
            title += f" vs {foil_text[0]}" + (
                f" (+{len(foil_text) - 1})" if len(foil_text) > 1 else ""
            )
    axes[1].set_title(f"{title}\n{method}, score {meta['score']:.3f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    add_colorbar(fig, axes, orientation="horizontal")
    base = out_dir / f"{stem}_{method}"
    png, npz, js = base.with_suffix(".png"), base.with_suffix(".npz"), base.with_suffix(".json")
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=DPI))
    atomic_write(npz, lambda f: np.savez_compressed(f, attribution=amap.cpu().numpy()))
    atomic_write(js, lambda f: f.write(json.dumps(meta, indent=2, default=str).encode()))
    return [png, npz, js]


# ----------------------------------------------------------------------------- corpus-eval
def run_corpus_eval_cli(args: argparse.Namespace) -> int:
    import dataclasses

    from pairlens.corpus import evaluation as CE
    from pairlens.progress import overall, progress_bars

    out = Output(args, "corpus-eval")
    out_dir = _eval_out(args)
    if args.report:
        records = usage(CE.load_results, store_of(args), args.run_id)
        return _finish_tables(out, records, out_dir)
    _legacy_params(args)
    methods = [name for name, _ in method_list(args, family="attribution")]
    settings = _eval_settings(args)
    bad = [m for m in methods if m not in CE.METHOD_NAMES]
    if bad:
        raise UsageError(f"corpus-eval methods are {', '.join(CE.METHOD_NAMES)}; got "
                         f"{', '.join(bad)}")
    seeds = seeds_of(args)
    classes = None
    if args.classes:
        from pairlens.params import parse_int_list

        if len(args.classes) > 1:
            warn(f"space-separated --classes is deprecated and will be removed in pairlens "
                 f"{REMOVED_IN}; use --classes {','.join(args.classes)}")
        classes = tuple(usage(parse_int_list, args.classes, "--classes"))
    apply_threads(args)
    store = store_of(args)
    cfg = CE.CorpusEvalConfig(
        model=model_name(args, data="digits"), checkpoint=args.checkpoint,
        embedding=args.embedding, seeds=tuple(seeds), classes=classes,
        explicands_per_class=args.explicands_per_class, corpus_size=args.corpus_size,
        foil_size=args.foil_size, similarity=args.similarity, methods=tuple(methods),
        **settings,
    )
    model, classifier, data = usage(CE.digits_eval_setup, cfg, device=args.device)
    n_classes = len(classes) if classes else len(set(data.train_labels.tolist()))
    total = len(seeds) * len(cfg.settings) * n_classes * cfg.explicands_per_class
    start = time.perf_counter()
    run_id = args.run_id or time.strftime("corpus-%Y%m%d-%H%M%S", time.gmtime())
    records: list[dict[str, Any]] = []
    with progress_bars(not args.quiet), overall(total, "corpus-eval", unit="explicand") as bar:
        done = [0]

        def step(message: str) -> None:
            done[0] += 1
            bar.update(1)
            bar.set_postfix_str(message.split(":")[0])
            if done[0] == 1:  # the first explicand times the run
                confirm_long_run(args, (time.perf_counter() - start) * total,
                                 f"corpus-eval of {total} explicands")

        for seed in cfg.seeds:  # saved seed by seed, so an interrupted run keeps finished seeds
            part = CE.run_corpus_eval(model, classifier, data,
                                      dataclasses.replace(cfg, seeds=(seed,)), progress=step)
            CE.save_results(store, part, cfg, run_id)
            records.extend(part)
    out.wrote(store, f"results store, run {run_id}: {len(records)} rows")
    out.add(run_id=run_id, rows=len(records), seconds_run=round(time.perf_counter() - start, 1))
    return _finish_tables(out, records, out_dir)


def _eval_out(args: argparse.Namespace) -> Path:
    """``--out`` is a folder; an old-style ``--out tables.md`` still works (deprecated)."""
    out = Path(args.out)
    if out.suffix.lower() == ".md":
        warn(f"--out FILE.md is deprecated and will be removed in pairlens {REMOVED_IN}: --out is "
             f"a folder now; the tables go to {out.parent / out.stem}/corpus-eval.md")
        return out.parent / out.stem
    return out


def _eval_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--param`` of corpus-eval as :class:`CorpusEvalConfig` fields, the values converted and
    checked by the attribution methods' declared types and ranges."""
    from pairlens.attribution import validate_params
    from pairlens.params import parse_assignment

    settings: dict[str, Any] = {}
    for item in args.param:
        method, key, value = usage(parse_assignment, item)
        matches = [(m, field) for (m, k), field in EVAL_PARAMS.items()
                   if k == key and (method is None or m == method)]
        if not matches:
            accepted = ", ".join(f"{m}.{k}" for m, k in EVAL_PARAMS)
            raise UsageError(f"corpus-eval takes --param {accepted}; got {item!r}")
        for m, field in matches:
            settings[field] = usage(validate_params, m, {key: value})[key]
    return settings


def _finish_tables(out: Output, records: list[dict[str, Any]], out_dir: Path) -> int:
    from pairlens.corpus import evaluation as CE
    from pairlens.io import atomic_write

    report = CE.report_markdown(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    out.wrote(atomic_write(out_dir / "corpus-eval.md", lambda f: f.write(report.encode())),
              "tables (Markdown)")
    out.add(tables=report)
    return out.finish(report)
