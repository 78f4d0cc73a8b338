"""The `prernn` command line: `prernn predict`, `prernn check-params`.

Each subcommand lives in its own module; this file only parses arguments and dispatches.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.serve.predict import add_predict_parser


def _check_params(args: argparse.Namespace) -> int:
    from pipeline.core.params import ParamsError, load_params

    try:
        load_params(args.params)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.params}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prernn", description="PreRNN: trained CNN layers made recurrent for video.")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-params", help="validate a params.yaml and name every problem")
    check.add_argument("params", nargs="?", default="params.yaml")
    check.set_defaults(func=_check_params)

    add_predict_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
