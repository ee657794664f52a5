"""Wall time and peak memory of ``vlcd --help`` and ``vlcd distill --help`` (whole processes,
``python -m vlcd_dist ...``), beside ``python -c "import torch"`` for reference and a bare
interpreter start. The parser imports no torch (tests/test_layers.py checks that), so the help
should cost about an interpreter start, a small fraction of the torch import.

Runs are interleaved (one of each command per round) so that a change in the machine's load
spreads over all commands alike; one warm-up round fills the file cache first. Peak RSS is the
child's own ru_maxrss from wait4 (what resource.getrusage(RUSAGE_CHILDREN) reports, per process
instead of the maximum over all children so far).

Usage: python bench/cli_help.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "vlcd --help": [sys.executable, "-m", "vlcd_dist", "--help"],
    "vlcd distill --help": [sys.executable, "-m", "vlcd_dist", "distill", "--help"],
}
REFERENCE = 'python -c "import torch"'


def run_once(cmd: list[str]) -> tuple[float, float]:
    """One run of ``cmd``: (wall seconds, peak RSS in MiB). Fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 instead of proc.wait(): it also gives this child's own resource usage.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err}")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command")
    args = parser.parse_args()

    for cmd in COMMANDS.values():  # warm-up: file cache, .pyc files
        run_once(cmd)
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    peaks: dict[str, float] = dict.fromkeys(COMMANDS, 0.0)
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            wall, peak = run_once(cmd)
            walls[name].append(wall)
            peaks[name] = max(peaks[name], peak)

    reference = statistics.median(walls[REFERENCE])
    print(f"{args.runs} runs each, {os.cpu_count()} CPUs, {sys.executable}")
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'/ torch':>8} {'peak RSS MiB':>13}")
    for name in COMMANDS:
        median = statistics.median(walls[name])
        print(
            f"{name:<28} {median:>9.3f} {min(walls[name]):>7.3f} "
            f"{median / reference:>8.2f} {peaks[name]:>13.0f}"
        )


if __name__ == "__main__":
    main()
