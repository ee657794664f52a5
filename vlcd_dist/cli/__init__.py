"""The ``vlcd`` command line: argparse only. Each command's module holds its options and a
``cmd_*`` function that imports the library it needs when it runs (see :mod:`.main`)."""

from vlcd_dist.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
