"""``pairlens evaluate`` and ``pairlens report``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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
    store_of,
    usage,
    warn,
)
from pairlens.validation import argtype

EVALUATE_EXAMPLES = """examples:
  pairlens evaluate --model digits --data digits --pairs 20 --methods grad-cam,interaction-cam \\
      --store digits.db
      # 17 s of CPU time (55 s wall on this 2-core machine while shared)
  pairlens evaluate --model digits --data digits --pairs 200 --methods all --store digits.db --yes
      # 9.5 min wall on this idle 2-core machine (two worker processes, 18 min of CPU time)
  pairlens evaluate --model photos --data photos --pairs 34 --methods \\
      "input-x-gradient,input-x-gradient[guided=true],interaction-cam[reduction=max]" \\
      --metrics SI,SD,CI,CD,SAD,CAD,MS --store photos.db --yes
      # 5.5 min of CPU time (16 min wall on this 2-core machine while shared; its own
      # estimate after the first 8 pairs said 12 min)
  pairlens evaluate --data composites --pairs 200 --methods all --store composites.db --yes
      # about 37 min of CPU time (from its first 8 pairs, 90 CPU-s; its own estimate said
      # 21 min wall here)
  pairlens evaluate --model simclr-v2-r50-1x --checkpoint r50_1x_sk0_ema.pth \\
      --data /data/imagenet/val --pairs 2000 --methods all --store imagenet.db --device cuda --yes
      # a GPU job: on this 2-core CPU one pair with one method (grad-cam) took 3 min of CPU time
  pairlens evaluate --model digits --data digits --pairs 20 --methods grad-cam,smoothgrad \\
      --store digits.db --workers 1        # one process (with its --threads) instead of auto
  torchrun --standalone --nproc_per_node 2 -m pairlens evaluate --model digits --data digits \\
      --pairs 20 --methods grad-cam,interaction-cam --store digits.db     # pairs are sharded

Re-running the same command resumes: finished pairs are skipped. The first unit of pairs
(--pairs-per-unit) is evaluated (and kept) with every method to estimate the total time; runs
estimated over 15 min stop there unless --yes is given. On a CPU, runs over 40 s on small
inputs (digits, composites: at most 64 x 64 pixels) then continue in one local worker process per
idle core (--workers auto), which beats one process with several threads there; use torchrun for
several machines or GPUs. Times: user + system CPU time measured
on this project's 2-core CPU (PyTorch uses both cores); "shared" means other jobs ran at the same
time.
"""

REPORT_EXAMPLES = """examples:
  pairlens report --store digits.db --out report/
  pairlens report --store digits.db,photos.db --out report/ --format md,html
  pairlens report --store digits.db --out report/ --downstream digits=0.993
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "evaluate",
        "evaluate explanation methods with the pair metrics (resumable, shardable)",
        "Run explanation methods on N image pairs, score them with the pair metrics of seed 000 "
        "§IV (SI, SD, CI, CD, SAD, CAD, the increase rates SAI/CAI and max sensitivity MS) and "
        "store every result in an SQLite file as it is produced. Re-running the same command "
        "resumes. The work is shared by local worker processes (--workers) or, under torchrun, "
        "by its ranks.",
        EVALUATE_EXAMPLES,
    )
    add_model_options(p, default_help="digits for --data digits, composites for --data "
                      "composites, else photos", execution=True)
    d = p.add_argument_group("pairs")
    d.add_argument("--data", default="digits",
                   help="digits[:split] | photos | composites (pairs with ground truth) | "
                   "image folder | list file (default: digits)")
    d.add_argument("--pairs", type=argtype("int", 1), default=None, metavar="N",
                   help="number of pairs (default: every image once / every listed pair / 200 "
                   "composites pairs)")
    d.add_argument("--pair-mode", default=None,
                   choices=("augmented", "same-class", "list", "shared-object"),
                   help="(default: shared-object for composites, list for a list file of image "
                   "pairs 'a.jpg b.jpg', augmented otherwise)")
    add_method_options(p, default="all")
    m = p.add_argument_group("metrics")
    m.add_argument("--metrics", default=None,
                   help="comma-separated: SI,SD,CI,CD,SAD,CAD,SAI,CAI,MS; region games "
                   "RSI,RSD,RCI,RCD; ROAD SMoRF,SLeRF,CMoRF,CLeRF; region-pair (correspondence) "
                   "PI,PD; with ground truth (composites) PG,EPG,PEPG (default: "
                   "SI,SD,CI,CD,SAD,CAD, plus PG,EPG for composites)")
    m.add_argument("--step", type=argtype("int", 1), default=None, metavar="L",
                   help="pixels per insertion/deletion step (default: round(H*W/224))")
    m.add_argument("--ms-samples", type=argtype("int", 1), default=10, metavar="N",
                   help="max-sensitivity noise samples (default: %(default)s)")
    add_store_option(p)
    add_output_options(p, None, out=False)
    g = add_run_options(p, batch_size=None, yes=True, batch_help="images per forward pass in "
                        "the methods and metrics; changes speed and memory, results only by "
                        "float rounding "
                        "(default: chosen from the device and image size)")
    g.add_argument("--pairs-per-unit", type=argtype("int", 1), default=8, metavar="P",
                   help="pairs explained, scored and stored together (default: %(default)s)")
    g.add_argument("--workers", type=_workers_arg, default="auto", metavar="N|auto",
                   help="local worker processes sharing the pairs, each with --threads / N "
                   "threads; results are identical for any N. auto: on a CPU, for inputs up to "
                   "64 x 64 pixels (there processes beat threads) and work estimated over "
                   "40 s, one per core left idle by other work and fitting in memory; else 1, "
                   "and always 1 on a GPU, under torchrun or with --threads 1 "
                   "(default: %(default)s)")
    add_on_error_option(g, "the pairs using it (recorded in the store)")
    add_deprecated(p, "--forward-batch", "--batch-size", dest="batch_size", type=argtype("int", 1))
    p.set_defaults(func=run_evaluate)

    r = command_parser(
        sub, "report", "tables and figures (md/csv/html) from evaluation results",
        "Write the tables (like Tables I-VI of seed 000) and figures (Fig. 14 heatmap, "
        "insertion/deletion curves, Fig. 15 scatter with --downstream) of one or more results "
        "stores, and the COCOA tables of pairlens corpus-eval. Several stores are merged.",
        REPORT_EXAMPLES,
    )
    r.add_argument("legacy_stores", nargs="*", metavar="STORE", help=argparse.SUPPRESS)
    add_store_option(r, several=True)
    add_output_options(r, "pairlens-report")
    r.add_argument("--format", default="md,csv,html", help="comma-separated: md,csv,html "
                   "(default: %(default)s)")
    r.add_argument("--downstream", default=None, metavar="MODEL=ACC,...",
                   help="downstream accuracy per model for the Fig. 15 scatter")
    r.set_defaults(func=run_report)


def _workers_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or auto, got {text!r}")
    return value


def run_evaluate(args: argparse.Namespace) -> int:
    from pairlens.cli.workers import bind_to_parent

    bind_to_parent()  # a worker process ends with its parent, however the parent ends
    import torch

    from pairlens.metrics import GROUND_TRUTH_METRICS
    from pairlens.study.loop import (
        MethodSpec,
        Shard,
        claim_identities,
        model_label,
        parse_metrics,
        run_evaluation,
    )
    from pairlens.study.pairs import PairSet, default_pair_mode, is_composites
    from pairlens.study.store import ResultStore

    out = Output(args, "evaluate")
    specs = [MethodSpec(name, given) for name, given in method_list(args)]
    composites = is_composites(args.data)
    default_metrics = "SI,SD,CI,CD,SAD,CAD" + (",PG,EPG" if composites else "")
    metrics = usage(parse_metrics, args.metrics or default_metrics)
    ground_truth = [m for m in metrics if m in GROUND_TRUTH_METRICS]
    if ground_truth and not composites:  # found from --data alone, before loading anything
        raise UsageError(f"metric(s) {', '.join(ground_truth)} need ground-truth masks; --data "
                         f"{args.data} has none (use --data composites)")
    args.pair_mode = args.pair_mode or default_pair_mode(args.data)
    apply_threads(args)
    store_path = store_of(args)
    shard = usage(Shard.from_env)
    dist = _init_distributed(shard)
    device = args.device
    if shard.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    model = load_model(args, data=args.data, device=device)  # with --amp, --channels-last
    model_key = model_label(model_name(args, args.data), args.checkpoint, args.embedding)
    pairs = usage(PairSet, model, args.data, mode=args.pair_mode, n=args.pairs, seed=args.seed)
    bad = bad_files(args, hint="pass --on-error skip to skip the pairs using it")
    if shard.rank == 0:  # create the schema once before the other ranks open the file
        ResultStore(store_path).close()
    _barrier(dist)
    options = dict(step=args.step, pairs_per_batch=args.pairs_per_unit,
                   batch_size=args.batch_size, ms_samples=args.ms_samples, bad_files=bad)
    workers, rss = 1, []
    try:
        with ResultStore(store_path) as store:
            probed, remaining = 0, 0.0
            if shard.world == 1:
                claim_identities(model, model_key, pairs, store)
                if len(pairs) > args.pairs_per_unit:
                    probed, remaining = _estimate(args, model, model_key, pairs, specs, metrics,
                                                  store, options)
                plan = _plan(args, model_key, pairs, specs, metrics, store)
                workers = _workers(args, model, specs, plan, remaining)
            if workers > 1:
                from pairlens.cli.workers import WorkerFailed, run_workers

                try:  # the overall bar counts the (pair, method) evaluations left
                    summary, rss = run_workers(args, workers,
                                               sum(len(ids) for _, _, ids, _ in plan), specs)
                    summary.skipped_files = {**bad.skipped, **summary.skipped_files}
                    bad.skipped.update(summary.skipped_files)  # the workers' in the summary line
                except WorkerFailed as err:  # one line, the worker's exit code
                    print(f"pairlens: error: {err}", file=sys.stderr, flush=True)
                    return err.code
            else:
                progress = not args.quiet and shard.launcher != "workers"
                summary = run_evaluation(model, model_key, pairs, specs, metrics, store,
                                         shard=shard, progress=progress, on_unit=_progress_pipe(),
                                         **options)
            summary.computed_pairs += probed
            summary.skipped_pairs -= probed
        _barrier(dist)
    finally:
        if dist:
            torch.distributed.destroy_process_group()
    who = f"rank {shard.rank}/{shard.world}: " if shard.launcher == "torchrun" else ""
    computed = ", ".join(m for m in metrics if m in summary.missing_metrics) or "nothing new"
    by = f" by {workers} worker processes" if workers > 1 else ""
    lines = [f"{who}{summary.computed_pairs} pair evaluations computed{by} ({computed}), "
             f"{summary.skipped_pairs} already complete in {store_path}; "
             f"{summary.seconds:.1f} s"]
    if summary.skipped_files:
        from pairlens.io import skipped_summary

        # worker processes report their skipped entries by name only: a pair is "A + B"
        pairs = [n for n in summary.skipped_files if n in bad.pairs or " + " in n]
        lines.append(f"{who}{skipped_summary(summary.skipped_files, pairs)} "
                     f"(recorded in {store_path})")
    lines += [f"{who}  {label:40s} explanation {seconds:8.2f} s"
              for label, seconds in summary.per_method.items()]
    if summary.computed_pairs:
        lines.append(f"{who}  stages: " + ", ".join(f"{k} {v:.1f} s"
                                                    for k, v in summary.stages.items())
                     + (" (summed over the workers)" if workers > 1 else ""))
    # every pair skipped and nothing in the store before: say so and fail (a script must notice)
    nothing = (not summary.computed_pairs and not summary.skipped_pairs
               and bool(summary.skipped_files) and shard.launcher != "torchrun")
    if shard.rank == 0 and not nothing:
        lines.append(f"next: pairlens report --store {store_path} --out pairlens-report")
    out.wrote(store_path, f"results store ({summary.computed_pairs} pair evaluations computed)")
    out.add(computed=summary.computed_pairs, already_complete=summary.skipped_pairs,
            metrics_computed=sorted(summary.missing_metrics), skipped_files=summary.skipped_files,
            explain_seconds=summary.per_method, stage_seconds=summary.stages,
            store=str(store_path), rank=shard.rank, world=shard.world, workers=workers,
            wall_seconds=round(summary.seconds, 3))
    if shard.launcher == "workers":  # the parent lists its workers' peaks
        from pairlens.runtime import peak_memory

        out.add(peak_rss_mb=round(peak_memory() / 2**20, 1))
    if rss:
        out.add(worker_peak_rss_mb=rss)
    code = out.finish("\n".join(lines))
    if nothing:
        print("pairlens: error: nothing could be evaluated: every pair was skipped (listed "
              f"above and in {store_path})", file=sys.stderr, flush=True)
        return 1
    return code


def _estimate(args, model, model_key, pairs, specs, metrics, store,
              options) -> tuple[int, float]:
    """Time each method on its first unit of pairs with missing results (``--pairs-per-unit``
    pairs, exactly a unit of the full run, so results never depend on it; stored, so never
    wasted), scale to its missing pairs after that batch and announce the estimated total; stop
    unless --yes when it is long (:func:`confirm_long_run`). Returns the number of pair
    evaluations done."""
    import time

    from pairlens.study.loop import run_evaluation, setting_key
    from pairlens.study.pairs import PairSet
    from pairlens.study.store import canonical_params

    batch, n = args.pairs_per_unit, len(pairs)
    setting = setting_key(pairs, args.step, args.ms_samples)
    total, computed = 0.0, 0
    for spec in specs:
        present = store.present(model_key, setting, spec.name, canonical_params(spec.params))
        missing = [i for i in range(n) if not set(metrics) <= present.get(i, set())]
        if not missing:
            continue
        end = (missing[0] // batch + 1) * batch  # the end of the first unit with missing pairs
        if end >= n:
            continue  # only the last unit is missing: no need to estimate
        window = usage(PairSet, model, args.data, mode=args.pair_mode, n=end, seed=args.seed)
        start = time.perf_counter()
        done = run_evaluation(model, model_key, window, [spec], metrics, store, progress=False,
                              **options)
        if done.computed_pairs:
            computed += done.computed_pairs
            per_pair = (time.perf_counter() - start) / done.computed_pairs
            total += per_pair * sum(1 for i in missing if i >= end)
    if computed:
        confirm_long_run(args, total, f"evaluating {n} pairs x {len(specs)} methods")
    return computed, total


def _workers(args, model, specs, plan, seconds=0.0) -> int:
    """``--workers`` resolved (:func:`pairlens.runtime.auto_workers` for ``auto``, given the
    estimated ``seconds`` of the work left), at most the number of pending units of work in
    ``plan`` (:func:`_plan`)."""
    from pairlens.runtime import (
        auto_workers,
        available_memory,
        idle_cores,
        peak_memory,
        thread_budget,
    )
    from pairlens.study.loop import under_torchrun

    units = len({(spec.label, ids[0] // args.pairs_per_unit) for spec, _, ids, _ in plan})
    foreign = _registered_here(args, specs)
    if foreign:  # a fresh `python -m pairlens` would not know it
        if args.workers != "auto" and int(args.workers) > 1 and units > 1:
            raise UsageError(f"--workers {args.workers}: {foreign} was registered in this Python "
                             "process, which worker processes cannot see; use --workers 1")
        return 1
    threads = thread_budget(args.threads)
    if args.workers == "auto":
        n = auto_workers(model.device.type, model.input_size, units, threads,
                         distributed=under_torchrun(), worker_bytes=peak_memory(),
                         available=available_memory(), seconds=seconds)
        if n > 1:  # only then is the load worth sampling (half a second)
            n = auto_workers(model.device.type, model.input_size, units, threads,
                             distributed=under_torchrun(), idle=idle_cores(),
                             worker_bytes=peak_memory(), available=available_memory(),
                             seconds=seconds)
        return n
    return max(1, min(int(args.workers), units))


def _registered_here(args, specs) -> str | None:
    """``"model NAME"`` / ``"method NAME"`` if the model or a method was registered by code
    outside pairlens (in this process only), else None."""
    from pairlens.methods.registry import get_method
    from pairlens.models.registry import model_info

    if args.model is not None:
        builder = usage(model_info, args.model).builder
        if not getattr(builder, "__module__", "").startswith("pairlens."):
            return f"model {args.model}"
    for spec in specs:
        if not getattr(get_method(spec.name).fn, "__module__", "").startswith("pairlens."):
            return f"method {spec.name}"
    return None


def _plan(args, model_key, pairs, specs, metrics, store):
    """The whole run's units of work left in ``store`` (:func:`pairlens.study.loop.plan_units`,
    one process)."""
    from pairlens.study.loop import plan_units, setting_key

    setting = setting_key(pairs, args.step, args.ms_samples)
    return plan_units(store, model_key, setting, len(pairs), specs, metrics, args.pairs_per_unit)


def _progress_pipe():
    """In a local worker, a callback writing the number of pairs of each finished unit to the
    parent's progress pipe (``PAIRLENS_PROGRESS_FD``); else None."""
    fd = os.environ.get("PAIRLENS_PROGRESS_FD")
    if not fd:
        return None

    def on_unit(label: str, kept: list[int]) -> None:
        try:
            os.write(int(fd), f"{len(kept)}\n".encode())
        except OSError:
            pass  # the parent is gone or stopped listening: the work itself goes on

    return on_unit


def _init_distributed(shard) -> bool:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA) when there are several ranks."""
    if shard.launcher != "torchrun":
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
    from pairlens.report import FORMATS, parse_downstream, write_report

    out = Output(args, "report")
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = sorted(set(formats) - set(FORMATS)) or ([] if formats else ["(none)"])
    if bad:
        raise UsageError(f"unknown report format {', '.join(bad)}; choose from "
                         f"{', '.join(FORMATS)}")
    stores = [s.strip() for item in args.store for s in item.split(",") if s.strip()]
    if args.legacy_stores:
        warn(f"positional STORE is deprecated and will be removed in pairlens {REMOVED_IN}; use "
             f"--store {','.join(args.legacy_stores)}")
        stores += args.legacy_stores
    if not stores:
        raise UsageError("give the results file(s) with --store FILE")
    for store in stores:
        if not Path(store).is_file():
            raise FileNotFoundError(f"{store}: no such results file")
    written = write_report(stores, args.out, formats=formats,
                           downstream=usage(parse_downstream, args.downstream))
    for path in written:
        out.wrote(path, _REPORT_FILES.get(path.suffix, ""))
    return out.finish()


_REPORT_FILES = {".md": "report (Markdown)", ".html": "report (HTML)", ".csv": "table",
                 ".png": "figure"}
