"""The ``vlcd`` command line: the parser and the dispatch.

Building the parser imports only argparse and the option modules of :mod:`vlcd_dist.cli`, never
torch: ``vlcd --help`` and ``vlcd COMMAND --help`` answer at once. A command's work is imported
when that command runs. Errors about the user's input (:class:`~vlcd_dist.errors.VlcdError`)
are printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from vlcd_dist.cli import bench, export, package, pipelines, report, shards, stages
from vlcd_dist.errors import VlcdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlcd",
        description="Vision-Language Contrastive Distillation: data, training and evaluation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (shards, bench, export, package, stages, pipelines, report):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VlcdError as exn:
        print(f"vlcd: error: {exn}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlcd: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
