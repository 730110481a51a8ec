"""``pairlens corpus`` (COCOA explanations of images against a corpus and a foil, or against CLIP
captions) and ``pairlens corpus-eval`` (the §4.1 evaluation, Tables 1-4)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pairlens.io import BadFiles, atomic_write
from pairlens.validation import argtype

CORPUS_EXAMPLES = """examples:
  pairlens corpus digit.png --corpus threes/ --foil-from digits:1060 --out out/
  pairlens corpus dog.jpg --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth \\
      --corpus cats/ --foil random/ --method integrated-gradients --out out/
  pairlens corpus zebra.jpg --text "This is a photo of a zebra" --text-foil cifar100 \\
      --clip-checkpoint open_clip_pytorch_model.bin --clip-arch ViT-B-32-quickgelu --out out/
  pairlens corpus bee.jpg --text "a photo of a bee" --text-foil "a photo of a flower" \\
      --clip-checkpoint clip.pt --out out/
"""

EVAL_EXAMPLES = """examples:
  pairlens corpus-eval --db results/corpus.sqlite          # the digits reproduction
  pairlens corpus-eval --seeds 0 1 --classes 3 8 --n-masks 500 --db /tmp/quick.sqlite
  pairlens corpus-eval --report --db results/corpus.sqlite  # tables of the latest run
"""

METHOD_CHOICES = ("rise", "integrated-gradients", "gradient-shap", "relax")
TARGET_CHOICES = ("cocoa", "corpus", "label-free", "contrastive-label-free")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corpus",
        help="what in an image looks like a corpus rather than a foil (COCOA)",
        description="Explain images with contrastive corpus attributions (COCOA): which pixels "
        "make an image's representation similar to a corpus of images (or CLIP captions) and "
        "dissimilar to a foil. Writes an overlay figure (PNG), the raw maps (.npz) and metadata "
        "(JSON) per image.",
        epilog=CORPUS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) to explain")
    p.add_argument("--model", default="digits", help="registered model (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for --model")
    p.add_argument("--embedding", default=None, help="which embedding of the model to explain")
    p.add_argument("--corpus", nargs="+", metavar="DIR|FILE", help="corpus folder or files")
    p.add_argument("--foil", nargs="+", metavar="DIR|FILE", help="foil folder or files")
    p.add_argument(
        "--foil-from",
        metavar="DATASET[:N]",
        help="N random images of a bundled dataset as foil (digits or photos); without N, the "
        "foil size of Proposition C.2 for --delta / --epsilon",
    )
    p.add_argument("--delta", type=argtype("float", 0, 1, True, True), default=0.01,
                   help="Prop. C.2 delta (default 0.01)")
    p.add_argument("--epsilon", type=argtype("float", 0, lo_open=True), default=0.05,
                   help="Prop. C.2 epsilon (default 0.05)")
    p.add_argument(
        "--target",
        choices=TARGET_CHOICES,
        default=None,
        help="explanation target (default: cocoa with a foil, corpus without)",
    )
    p.add_argument(
        "--method",
        choices=METHOD_CHOICES,
        default="rise",
        help="attribution method (default: %(default)s)",
    )
    p.add_argument(
        "--similarity",
        choices=("cosine", "dot"),
        default=None,
        help="how the target compares embeddings (default: the model's, cosine or dot)",
    )
    p.add_argument("--n-masks", type=argtype("int", 1), default=None,
                   help="RISE / RELAX masks (5000 / 3000)")
    p.add_argument("--n-steps", type=argtype("int", 1), default=None,
                   help="integrated-gradients steps (50)")
    p.add_argument("--n-samples", type=argtype("int", 1), default=None,
                   help="gradient-shap samples (50)")
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="CAPTION",
        help="corpus caption for a CLIP model (repeatable)",
    )
    p.add_argument(
        "--text-foil",
        action="append",
        default=[],
        metavar="CAPTION|cifar100",
        help="foil caption (repeatable), or cifar100 for the 100 CIFAR-100 classes "
        "without the corpus class (§4.3)",
    )
    p.add_argument("--clip-checkpoint", default=None, help="local open_clip / OpenAI CLIP weights")
    p.add_argument(
        "--clip-arch",
        default="ViT-B-32",
        help="open_clip architecture or model-config .json (default: %(default)s)",
    )
    p.add_argument("--seed", type=argtype("int", 0), default=0,
                   help="seed for masks, noise and foil sampling")
    p.add_argument("--out", default="pairlens-corpus", help="output directory")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="an unreadable image (explicand, corpus or foil): stop (default), or "
                   "skip it, report each bad file once and list them at the end and in "
                   "OUT/skipped.json")
    p.set_defaults(func=run_corpus)

    e = sub.add_parser(
        "corpus-eval",
        help="the COCOA §4.1 evaluation (insertion / deletion, Tables 1-4)",
        description="Run the quantitative evaluation of COCOA (seed 002, §4.1) on a model with a "
        "linear probe (default: the bundled digits model): four targets x three attribution "
        "methods and random attributions, same-class and different-class explicands, insertion "
        "and deletion of corpus majority probability and contrastive corpus similarity, means "
        "and 95%% CIs over seeds. Results go to the corpus_results table of --db.",
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--model", default="digits", help="registered model with .classifier")
    e.add_argument("--checkpoint", default=None)
    e.add_argument(
        "--embedding",
        default="backbone",
        help="embedding to explain (default: %(default)s, the probe's input)",
    )
    e.add_argument("--seeds", type=argtype("int", 0), nargs="+", default=[0, 1, 2, 3, 4])
    e.add_argument("--classes", type=argtype("int", 0), nargs="+", default=None,
                   help="default: all")
    e.add_argument("--explicands-per-class", type=argtype("int", 1), default=1)
    e.add_argument("--corpus-size", type=argtype("int", 1), default=100)
    e.add_argument("--foil-size", type=argtype("int", 1), default=None,
                   help="default: Prop. C.2 bound")
    e.add_argument("--n-masks", type=argtype("int", 1), default=5000,
                   help="RISE masks (default 5000)")
    e.add_argument("--ig-steps", type=argtype("int", 1), default=50)
    e.add_argument("--shap-samples", type=argtype("int", 1), default=50)
    e.add_argument("--methods", nargs="+", default=None, choices=METHOD_CHOICES[:3])
    e.add_argument("--similarity", choices=("cosine", "dot"), default="cosine")
    e.add_argument("--threads", type=argtype("int", 1), default=None, help="torch CPU threads")
    e.add_argument("--db", default="pairlens-results.sqlite", help="results database (SQLite)")
    e.add_argument("--run-id", default=None, help="name of this run (default: a timestamp)")
    e.add_argument("--report", action="store_true", help="only print the tables of --db")
    e.add_argument("--out", default=None, help="also write the tables to this markdown file")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=run_corpus_eval_cli)


# ----------------------------------------------------------------------------- corpus
def run_corpus(args: argparse.Namespace) -> int:
    import torch

    from pairlens.attribution import attribute
    from pairlens.corpus import targets as T
    from pairlens.models.similarity import resolve_device

    device = str(resolve_device(args.device))
    bad = BadFiles(args.on_error, log=lambda line: print(f"pairlens: {line}", file=sys.stderr),
                   hint="pass --on-error skip to go on without it")
    text_mode = bool(args.text or args.text_foil or args.clip_checkpoint)
    if text_mode:
        if not args.clip_checkpoint:
            raise ValueError("--text needs --clip-checkpoint (a local CLIP weights file)")
        if not args.text:
            raise ValueError("give the corpus caption(s) with --text")
        if args.corpus or args.foil or args.foil_from:
            raise ValueError("--text (CLIP captions) cannot be combined with --corpus / --foil")
        foil: Any = None
        if args.text_foil:
            if [f.strip().lower() for f in args.text_foil] == ["cifar100"]:
                foil = T.cifar100_foil_captions(args.text)
            else:
                foil = args.text_foil
        target = T.TextCorpus.from_open_clip(
            args.clip_checkpoint,
            args.text,
            foil,
            arch=args.clip_arch,
            similarity=args.similarity,
            device=device,
        )
        model = target.model
        description = {"corpus_text": args.text, "foil_text": foil or []}
    else:
        from pairlens.models import load_model

        model = load_model(
            args.model, checkpoint=args.checkpoint, embedding=args.embedding, device=device
        )
        if not args.corpus and args.target not in ("label-free", "contrastive-label-free"):
            raise ValueError("give the corpus with --corpus DIR|FILES (or --text for CLIP)")
        if args.foil and args.foil_from:
            raise ValueError("give either --foil or --foil-from, not both")
        foil = _foil(model, args, bad)
        target = None  # built per image for explicand targets
        description = {"corpus": [str(c) for c in args.corpus or []]}
        corpus = _images(model, args.corpus, bad, "corpus") if args.corpus else None
    kind = "cocoa" if text_mode else (args.target or ("cocoa" if foil is not None else "corpus"))
    if kind in ("cocoa", "contrastive-label-free") and foil is None and not text_mode:
        raise ValueError(f"target {kind} needs a foil: --foil DIR|FILES or --foil-from digits:N")
    params: dict[str, Any] = {}
    if args.n_masks and args.method in ("rise", "relax"):
        params["n_masks"] = args.n_masks
    if args.n_steps and args.method == "integrated-gradients":
        params["n_steps"] = args.n_steps
    if args.n_samples and args.method == "gradient-shap":
        params["n_samples"] = args.n_samples
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_target = None
    if not text_mode and kind in ("cocoa", "corpus"):
        corpus_target = (
            T.ContrastiveCorpus(model, corpus, foil, args.similarity)
            if kind == "cocoa"
            else T.Corpus(model, corpus, args.similarity)
        )
    done = 0
    for path in args.images:
        image = bad.load(path)
        if image is None:
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
        start = time.perf_counter()
        amap = attribute(t, x, method=args.method, seed=args.seed, **params)[0]
        with torch.no_grad():
            score = float(t(x)[0])
        meta = {
            "image": str(path),
            "model": model.describe(),
            "target": t.describe(),
            "method": args.method,
            "params": params,
            "seed": args.seed,
            "score": score,
            "seconds": round(time.perf_counter() - start, 3),
            **description,
        }
        if bad.skipped:
            meta["skipped"] = dict(bad.skipped)
        written = _save(out_dir, Path(path).stem, args.method, model, x, amap, meta)
        done += 1
        print(f"{path}: {t.name} score {score:.4f}; wrote {', '.join(str(w) for w in written)}")
    if bad.skipped:
        text = json.dumps(bad.skipped, indent=2)
        atomic_write(out_dir / "skipped.json", lambda f: f.write(text.encode()))
        print(f"pairlens: {bad.summary()} (listed in {out_dir / 'skipped.json'})",
              file=sys.stderr)
    if not done:
        raise ValueError("no image could be explained (every explicand was unreadable)")
    return 0


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
            raise ValueError(
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
        raise ValueError(f"unknown dataset {name!r} for --foil-from; choose digits or photos")
    if tuple(x01.shape[-2:]) == tuple(model.input_size):
        return model.normalize(x01.to(model.device))
    arrays = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in x01]
    return torch.cat([model.preprocess(a) for a in arrays])


def _save(
    out_dir: Path, stem: str, method: str, model: Any, x: Any, amap: Any, meta: dict[str, Any]
) -> list[Path]:
    """Figure (original | overlay, as Fig. 2), raw map (.npz) and metadata, written atomically."""
    import matplotlib.pyplot as plt
    import numpy as np

    from pairlens.viz import overlay

    image01 = model.denormalize(x)[0].clamp(0, 1).cpu()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5))
    axes[0].imshow(image01.permute(1, 2, 0).numpy())
    axes[0].set_title(Path(meta["image"]).name, fontsize=9)
    axes[1].imshow(overlay(image01, amap.cpu(), alpha=0.5, cmap="jet"))
    target = meta["target"]
    title = target["target"]
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
    fig.tight_layout()
    base = out_dir / f"{stem}_{method}"
    png, npz, js = base.with_suffix(".png"), base.with_suffix(".npz"), base.with_suffix(".json")
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    atomic_write(npz, lambda f: np.savez_compressed(f, attribution=amap.cpu().numpy()))
    atomic_write(js, lambda f: f.write(json.dumps(meta, indent=2, default=str).encode()))
    return [png, npz, js]


# ----------------------------------------------------------------------------- corpus-eval
def run_corpus_eval_cli(args: argparse.Namespace) -> int:
    from pairlens.corpus import evaluation as CE

    if args.report:
        records = CE.load_results(args.db, args.run_id)
        _print_tables(records, args.out)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CE.CorpusEvalConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        embedding=args.embedding,
        seeds=tuple(args.seeds),
        classes=tuple(args.classes) if args.classes else None,
        explicands_per_class=args.explicands_per_class,
        corpus_size=args.corpus_size,
        foil_size=args.foil_size,
        n_masks=args.n_masks,
        ig_steps=args.ig_steps,
        shap_samples=args.shap_samples,
        similarity=args.similarity,
        methods=tuple(args.methods) if args.methods else CE.METHOD_NAMES,
    )
    import dataclasses

    model, classifier, data = CE.digits_eval_setup(cfg, device=args.device)
    start = time.perf_counter()
    run_id = args.run_id or time.strftime("corpus-%Y%m%d-%H%M%S", time.gmtime())
    records: list[dict[str, Any]] = []
    for seed in cfg.seeds:  # saved seed by seed, so an interrupted run keeps finished seeds
        part = CE.run_corpus_eval(
            model,
            classifier,
            data,
            dataclasses.replace(cfg, seeds=(seed,)),
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
        CE.save_results(args.db, part, cfg, run_id)
        records.extend(part)
    print(f"run {run_id}: {len(records)} rows in {args.db} ({time.perf_counter() - start:.0f}s)")
    _print_tables(records, args.out)
    return 0


def _print_tables(records: list[dict[str, Any]], out: str | None) -> None:
    from pairlens.corpus import evaluation as CE

    report = CE.report_markdown(records)
    print(report)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(report.encode()))
