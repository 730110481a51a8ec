"""``pairlens study excon``: SupCon, SupConOri, ExCon and ExConB compared over seeds
(:mod:`pairlens.training.study`)."""

from __future__ import annotations

import argparse

from pairlens.cli.options import (
    Output,
    UsageError,
    add_device_option,
    add_output_options,
    add_run_options,
    command_parser,
    seeds_of,
)
from pairlens.cli.train import SUPERVISED_MODES, TRAIN_BATCH_HELP, settings_arg, train_arg
from pairlens.validation import argtype

STUDY_EXAMPLES = """examples:
  pairlens study excon --data cluttered-digits --seeds 0-2 --epochs 6 --batch-size 32 \\
      --lr 1e-3 --start-epoch 2 --threads 1 --out runs/study
      # 12 training runs: 50 min wall with one thread on this 2-core machine while shared
      # (docs/excon.md)
  pairlens study excon --out runs/study --report-only
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    study = command_parser(
        sub, "study", "comparison studies (excon: SupCon / SupConOri / ExCon / ExConB)",
        "Reproducible comparison studies.", STUDY_EXAMPLES,
    )
    studies = study.add_subparsers(dest="study", metavar="STUDY")
    study.set_defaults(func=lambda args: (study.print_help(), 0)[1])
    s = command_parser(
        studies, "excon",
        "train supcon, supcon-ori, excon, exconb over several seeds; tables and curves",
        "Train the four supervised contrastive variants with the same budget for each seed, "
        "evaluate each run's best-validation model on the test split, and write results.csv, "
        "table.md (mean ± std over seeds, like ExCon's Tables 1-4), the validation curves with "
        "their spread (Fig. 3) and t-SNE figures. Interrupted studies continue where they "
        "stopped.",
        STUDY_EXAMPLES,
    )
    s.add_argument("--data", default="cluttered-digits",
                   help="digits | cluttered-digits | DIR (default: %(default)s)")
    s.add_argument("--modes", default="supcon,supcon-ori,excon,exconb",
                   help="comma-separated (default: %(default)s)")
    s.add_argument("--arch", default=None, help="(default: digits-cnn for the digits data sets)")
    s.add_argument("--epochs", type=train_arg("epochs"), default=6, help="(default: %(default)s)")
    s.add_argument("--lr", type=train_arg("lr"), default=1e-3, help="(default: %(default)s)")
    s.add_argument("--classifier-lr", type=settings_arg("classifier_lr"), default=5e-2,
                   help="(default: %(default)s)")
    s.add_argument("--temperature", type=train_arg("temperature"), default=0.1,
                   help="(default: %(default)s)")
    s.add_argument("--start-epoch", type=settings_arg("start_epoch"), default=2,
                   help="(default: %(default)s)")
    s.add_argument("--threshold", type=settings_arg("threshold"), default=0.5,
                   help="(default: %(default)s)")
    s.add_argument("--data-seed", type=argtype("int", 0), default=0,
                   help="(default: %(default)s)")
    s.add_argument("--report-only", action="store_true",
                   help="only aggregate the runs already finished in --out")
    add_device_option(s)
    add_output_options(s, None, required=True, out_help="study folder")
    g = add_run_options(s, seeds="0-2", batch_size=32, batch_help=TRAIN_BATCH_HELP)
    for action in g._group_actions:
        if action.dest == "threads":
            action.default, action.help = 1, "torch CPU threads (default: %(default)s)"
    s.set_defaults(func=run_study)


def run_study(args: argparse.Namespace) -> int:
    from pairlens.data.loading import default_arch
    from pairlens.progress import progress_bars
    from pairlens.training.study import StudyConfig, run_excon_study

    out = Output(args, "study excon")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in SUPERVISED_MODES]
    if unknown or not modes:
        raise UsageError(f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(SUPERVISED_MODES)}")
    config = StudyConfig(
        data=args.data, seeds=tuple(seeds_of(args, count_ok=True)), modes=modes,
        arch=args.arch or default_arch(args.data), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, classifier_lr=args.classifier_lr,
        temperature=args.temperature, start_epoch=args.start_epoch, threshold=args.threshold,
        data_seed=args.data_seed, out=args.out, device=args.device, threads=args.threads,
        progress=not args.quiet,
    )
    with progress_bars(not args.quiet):
        table = run_excon_study(config, report_only=args.report_only)
    out.wrote_new(args.out)
    out.add(table=table)
    return out.finish(table)
