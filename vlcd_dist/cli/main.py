"""The ``vlcd`` command line: the parser and the dispatch.

Building the parser imports only argparse and the option modules of :mod:`vlcd_dist.cli`, never
torch: ``vlcd --help`` and ``vlcd COMMAND --help`` answer at once. A command's work is imported
when that command runs. Errors about the user's input (:class:`~vlcd_dist.errors.VlcdError`)
are printed without a traceback and exit with status 2; so is a missing optional dependency,
with the ``pip install 'vlcd-dist[EXTRA]'`` that brings it (the base install is torch-free, for
``vlcd predict``; training, evaluation and reports need the ``train`` extra).
"""

from __future__ import annotations

import argparse
import sys

from vlcd_dist.cli import (
    bench,
    export,
    package,
    pipelines,
    predict,
    report,
    shards,
    stages,
    teacher_cache,
)
from vlcd_dist.errors import VlcdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlcd",
        description="Vision-Language Contrastive Distillation: data, training and evaluation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        shards,
        bench,
        export,
        package,
        predict,
        stages,
        teacher_cache,
        pipelines,
        report,
    ):
        module.add_parser(sub)
    return parser


# The extra that installs a module a command may miss; any other module comes with ``train``.
EXTRA_OF_MODULE = {"onnxruntime": "infer", "onnx": "export", "deepspeed": "deepspeed"}


def missing_module_message(command: str, module: str) -> str:
    """What to tell a user whose ``vlcd COMMAND`` needs ``module`` (a top-level name)."""
    extra = EXTRA_OF_MODULE.get(module, "train")
    if command == "export" and module == "onnxruntime":
        extra = "export"
    return (
        f"vlcd {command} needs the Python module {module!r}, which is not installed here: "
        f"pip install 'vlcd-dist[{extra}]'"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VlcdError as exn:
        print(f"vlcd: error: {exn}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exn:
        module = (exn.name or "").split(".")[0]
        if not module or module == "vlcd_dist":
            raise  # a bug of ours, not a missing install
        print(f"vlcd: error: {missing_module_message(args.command, module)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlcd: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
