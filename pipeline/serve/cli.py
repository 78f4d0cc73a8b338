"""The `prernn` command line: `prernn predict`, `prernn check-params`.

This file parses the arguments and dispatches; each subcommand's body lives in its own module
(`pipeline.serve.predict.run`, `pipeline.checks.main`).
"""
from __future__ import annotations

import argparse
import sys

from pipeline import checks
from pipeline.serve import predict


def _check_params(args: argparse.Namespace) -> int:
    return checks.main([str(args.params)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prernn", description="PreRNN: trained CNN layers made recurrent for video.")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-params", help="validate a params.yaml and name every problem")
    check.add_argument("params", nargs="?", default="params.yaml")
    check.set_defaults(func=_check_params)

    add_predict_parser(sub)
    return parser


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    """Register `prernn predict` on the `prernn` command's subparsers."""
    p = subparsers.add_parser("predict", help="predict the class of videos (per clip, or frame by frame)",
                              description=predict.__doc__.split("\n\n")[0])
    p.add_argument("model", help="models/final.pt, a folder holding one, or an MLflow URI (runs:/..., models:/...)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of videos, or a camera index")
    p.add_argument("--stream", action="store_true", help="frame by frame through the recurrent layers (step)")
    p.add_argument("--step", type=int, default=None,
                   help="stream every N-th frame (default: the training stride for consecutive sampling, else 1)")
    p.add_argument("--max-frames", type=int, default=None, help="stream mode: stop after this many frames")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per prediction (default 3)")
    p.add_argument("--json", action="store_true", help="JSON lines: video, frame, class, probability, top_k")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow.db)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=predict.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
