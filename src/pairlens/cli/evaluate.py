"""``pairlens evaluate`` and ``pairlens report``."""

from __future__ import annotations

import argparse
import os
import sys

from pairlens.validation import argtype

EVALUATE_EXAMPLES = """examples:
  pairlens evaluate --model digits --data digits --pairs 200 --methods all --store digits.db
  pairlens evaluate --model photos --data photos --pairs 34 --methods \\
      "input-x-gradient,input-x-gradient[guided=true],interaction-cam[reduction=max]" \\
      --metrics SI,SD,CI,CD,SAD,CAD,MS --store photos.db
  pairlens evaluate --data composites --pairs 200 --methods all --store composites.db
  pairlens evaluate --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth \\
      --data /data/imagenet/val --pairs 2000 --methods all --store imagenet.db --device cuda
  torchrun --standalone --nproc_per_node 4 $(which pairlens) evaluate ...  (pairs are sharded)

Re-running the same command resumes: finished pairs are skipped.
"""

REPORT_EXAMPLES = """examples:
  pairlens report digits.db --out report/
  pairlens report digits.db photos.db --out report/ --format md,html
  pairlens report all.db --out report/ --downstream simclr=0.717,simsiam=0.683,barlow=0.730
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pairlens.cli.explain import add_execution_options

    p = sub.add_parser(
        "evaluate",
        help="evaluate explanation methods with the pair metrics (resumable, shardable)",
        description="Run explanation methods on N image pairs, score them with the pair metrics "
        "of seed 000 §IV (SI, SD, CI, CD, SAD, CAD, the increase rates SAI/CAI and max "
        "sensitivity MS) and store every result in an SQLite file as it is produced. Re-running "
        "the same command resumes; under torchrun the pairs are sharded across processes.",
        epilog=EVALUATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None,
                   help="registered model name (default: composites for --data composites, "
                   "digits otherwise)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for --model")
    p.add_argument("--embedding", default=None, help="which embedding of the model to explain")
    p.add_argument("--data", default="digits",
                   help="digits[:split] | photos | composites (pairs with ground truth) | "
                   "image folder | list file (default: digits)")
    p.add_argument("--pairs", type=argtype("int", 1), default=None, metavar="N",
                   help="number of pairs (default: every image once / every listed pair / 200 "
                   "composites pairs)")
    p.add_argument("--pair-mode", default=None,
                   choices=("augmented", "same-class", "list", "shared-object"),
                   help="default: shared-object for composites, augmented otherwise")
    p.add_argument("--methods", default="all",
                   help="all | comma-separated names, variants as name[key=value;key=value]")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method parameter, repeatable (e.g. interaction-cam.reduction=max)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated: SI,SD,CI,CD,SAD,CAD,SAI,CAI,MS; region games "
                   "RSI,RSD,RCI,RCD; ROAD SMoRF,SLeRF,CMoRF,CLeRF; region-pair (correspondence) "
                   "PI,PD; with ground truth (composites) PG,EPG (default: SI,SD,CI,CD,SAD,CAD, "
                   "plus PG,EPG for composites)")
    p.add_argument("--step", type=argtype("int", 1), default=None, metavar="L",
                   help="pixels per insertion/deletion step (default: round(H*W/224))")
    p.add_argument("--ms-samples", type=argtype("int", 1), default=10,
                   help="max-sensitivity noise samples")
    p.add_argument("--seed", type=argtype("int", 0), default=0,
                   help="selects images and augmentations")
    p.add_argument("--store", default="results.db",
                   help="SQLite results file (default: %(default)s)")
    p.add_argument("--batch-size", type=argtype("int", 1), default=None, metavar="B",
                   help="images per forward pass in the methods and metrics; changes speed and "
                   "memory, never results (default: chosen from the device and image size)")
    p.add_argument("--pairs-per-unit", type=argtype("int", 1), default=8, metavar="P",
                   help="pairs explained, scored and stored together (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    add_execution_options(p)
    p.add_argument("--threads", type=argtype("int", 1), default=None,
                   help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="an unreadable image: stop (default), or skip its pairs, report each "
                   "bad file once and list them at the end and in the store")
    p.set_defaults(func=run_evaluate)

    r = sub.add_parser(
        "report",
        help="tables and figures (md/csv/html) from evaluation results",
        description="Write the tables (like Tables I-VI of seed 000) and figures (Fig. 14 "
        "heatmap, insertion/deletion curves, Fig. 15 scatter with --downstream) of one or more "
        "results stores. Several stores are merged.",
        epilog=REPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("stores", nargs="+", metavar="STORE",
                   help="results file(s) of pairlens evaluate")
    r.add_argument("--out", default="pairlens-report", help="output directory")
    r.add_argument("--format", default="md,csv,html", help="comma-separated: md,csv,html")
    r.add_argument("--downstream", default=None, metavar="MODEL=ACC,...",
                   help="downstream accuracy per model for the Fig. 15 scatter")
    r.set_defaults(func=run_report)


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from pairlens.cli.explain import load_cli_model
    from pairlens.io import BadFiles
    from pairlens.study.loop import (
        Shard,
        model_label,
        parse_methods,
        parse_metrics,
        run_evaluation,
    )
    from pairlens.study.pairs import PairSet, default_pair_mode, is_composites
    from pairlens.study.store import ResultStore

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = parse_methods(args.methods, args.param)
    composites = is_composites(args.data)
    default_metrics = "SI,SD,CI,CD,SAD,CAD" + (",PG,EPG" if composites else "")
    metrics = parse_metrics(args.metrics or default_metrics)
    model_name = args.model or ("composites" if composites else "digits")
    shard = Shard.from_env()
    dist = _init_distributed(shard)
    device = args.device
    if shard.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    model = load_cli_model(model_name, args.checkpoint, args.embedding, device)
    model.set_execution(amp=args.amp, channels_last=args.channels_last)
    model_key = model_label(model_name, args.checkpoint, args.embedding)
    pairs = PairSet(model, args.data, mode=args.pair_mode or default_pair_mode(args.data),
                    n=args.pairs, seed=args.seed)
    bad = BadFiles(args.on_error, log=lambda line: print(f"pairlens: {line}", file=sys.stderr),
                   hint="pass --on-error skip to skip the pairs using it")
    if shard.rank == 0:  # create the schema once before the other ranks open the file
        ResultStore(args.store).close()
    _barrier(dist)
    try:
        with ResultStore(args.store) as store:
            summary = run_evaluation(
                model, model_key, pairs, specs, metrics, store, step=args.step,
                pairs_per_batch=args.pairs_per_unit, batch_size=args.batch_size, shard=shard,
                progress=not args.quiet, ms_samples=args.ms_samples, bad_files=bad,
            )
        _barrier(dist)
    finally:
        if dist:
            torch.distributed.destroy_process_group()
    who = f"rank {shard.rank}/{shard.world}: " if shard.world > 1 else ""
    computed = ", ".join(m for m in metrics if m in summary.missing_metrics) or "nothing"
    print(f"{who}{summary.computed_pairs} pair evaluations computed ({computed}), "
          f"{summary.skipped_pairs} already complete in {args.store}; {summary.seconds:.1f} s")
    if summary.skipped_files:
        print(f"{who}{bad.summary()} (recorded in {args.store})")
    for label, seconds in summary.per_method.items():
        print(f"{who}  {label:40s} explanation {seconds:8.2f} s")
    if summary.computed_pairs:
        print(f"{who}  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary.stages.items()))
    if shard.rank == 0:
        print(f"report: pairlens report {args.store} --out pairlens-report")
    return 0


def _init_distributed(shard) -> bool:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA) when there are several ranks."""
    if shard.world <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return True


def _barrier(active: bool) -> None:
    if active:
        import torch.distributed as dist

        dist.barrier()


def run_report(args: argparse.Namespace) -> int:
    from pairlens.report import parse_downstream, write_report

    written = write_report(args.stores, args.out, formats=args.format.split(","),
                           downstream=parse_downstream(args.downstream))
    main = [p for p in written if p.suffix in (".md", ".html")]
    print(f"wrote {len(written)} files to {args.out}: "
          + ", ".join(p.name for p in main or written[:3]))
    return 0
