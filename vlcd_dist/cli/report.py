"""``vlcd report``: the HTML page of a run (:mod:`vlcd_dist.reporting`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``report`` on the ``vlcd`` parser."""
    report = sub.add_parser(
        "report",
        help="one HTML page (and report.md) with the tables and plots of a run",
        description="Gathers the eval table, ROC curves, AUC bars, an accuracy-latency plot "
        "with its Pareto front, the robustness study and zero-shot table (when evaluated), the "
        "deployment section (fp32 vs int8 AUC, size on disk and CPU latency per model, when "
        "packaged: OUT/package or --deployment), the lambda sweep (OUT/sweep or --sweep) and "
        "the stages of a run folder into "
        "OUT/report/report.html, with the figures beside it (PNG, and SVG for papers) and "
        "TensorBoard logs in OUT/report/tb.",
    )
    report.add_argument(
        "run",
        type=Path,
        metavar="OUT",
        help="a demo folder (with eval/), an eval folder or a sweep folder; a package in "
        "OUT/package is added",
    )
    report.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="a vlcd sweep folder to include (default: OUT/sweep)",
    )
    report.add_argument(
        "--deployment",
        type=Path,
        default=None,
        metavar="DIR",
        help="a vlcd package folder whose deployment.json gives the deployment section "
        "(default: OUT/package when it holds one)",
    )
    report.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write the page (default: OUT/report)",
    )
    report.add_argument(
        "--no-tensorboard", action="store_true", help="do not write TensorBoard logs"
    )
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report of a run folder; see :mod:`vlcd_dist.reporting.page`."""
    from vlcd_dist.reporting.page import write_report

    page = write_report(
        args.run,
        out=args.out,
        sweep=args.sweep,
        tensorboard=not args.no_tensorboard,
        deployment=args.deployment,
    )
    print(f"report: {page} (and report.md, the figures as PNG and SVG beside it)")
    return 0
