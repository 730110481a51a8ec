"""``pairlens demo``: the web demo on localhost. Gradio is imported only when the command runs."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from pairlens.validation import argtype

DEMO_EXAMPLES = """examples:
  pairlens demo                                   # bundled models, http://127.0.0.1:7860
  pairlens demo --model photos --port 8080
  pairlens demo --checkpoint simclr-v2-r50-1x=r50_1x_sk0_ema.pth
  pairlens demo --host 0.0.0.0                    # reachable from other machines (no login!)
"""

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="explore pair explanations in the browser (needs pairlens[demo])",
        description="Start the PairLens web demo: upload or paste two images (or make image 2 "
        "an augmentation of image 1), pick a model and a method with its parameters, and see "
        "both heatmaps, the similarity, the faithfulness metrics and a comparison of methods. "
        "Needs Gradio: pip install 'pairlens[demo]'.",
        epilog=DEMO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="registered model to offer, repeatable or comma-separated "
                   "(default: every bundled model)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="offer registered model NAME with the local checkpoint PATH, repeatable")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=argtype("int", 1, 65535), default=7860,
                   help="port (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=1, choices=(1, 2),
                   help="requests computed at once (default: %(default)s)")
    p.add_argument("--queue-size", type=argtype("int", 1), default=16,
                   help="requests allowed to wait (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=argtype("float", 0, lo_open=True), default=10.0,
                   help="largest upload in MB (default: %(default)s)")
    p.add_argument("--no-examples", action="store_true", help="do not offer the example pairs")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pairlens.demo.core import DemoError, model_choices, parse_checkpoint_args

    if importlib.util.find_spec("gradio") is None:  # not imported yet: see app._import_gradio
        raise DemoError("the web demo needs Gradio: pip install 'pairlens[demo]'")
    names = [n.strip() for item in args.model for n in item.split(",") if n.strip()]
    checkpoints = parse_checkpoint_args(args.checkpoint)
    if args.host not in LOOPBACK:
        print(f"pairlens demo: warning: listening on {args.host}; the demo has no login, "
              "anyone who can reach this address can use it", file=sys.stderr)
    choices = model_choices(
        names, checkpoints, device=args.device,
        warn=lambda msg: print(f"pairlens demo: warning: {msg}", file=sys.stderr),
    )
    print(f"pairlens demo: models: {', '.join(c.label for c in choices)}", file=sys.stderr)
    from pairlens.demo.app import serve

    serve(choices, host=args.host, port=args.port, examples=not args.no_examples,
          max_upload_mb=args.max_upload_mb, concurrency=args.concurrency,
          queue_size=args.queue_size)
    return 0
