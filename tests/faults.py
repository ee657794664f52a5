"""Helpers of the reliability tests: launch a real run with a fault injected
(tests/workers/faulthook), wait for the fault, and compare the outcome with a clean run."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import torch
from helpers import REPO, STUDENTS
from safetensors.torch import load_file

FAULTHOOK = REPO / "tests" / "workers" / "faulthook"


def fault_env(**extra: str) -> dict[str, str]:
    """The environment of a faulty run: the fault hook on PYTHONPATH, one thread per rank,
    offline, and no SLURM_* variables (a test run inside a SLURM job must never requeue it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    path = [str(FAULTHOOK), env.get("PYTHONPATH", "")]
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in path if p),
    )
    env.update(extra)
    return env


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session, stdout and stderr to ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_file(path: Path, procs: list[subprocess.Popen], log: Path, timeout: float) -> None:
    """Wait until ``path`` exists (the fault happened). Fails, with the log, when a process
    ends first or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    stop(procs)
    raise AssertionError(f"the fault never happened ({path} missing)\n{log.read_text()[-6000:]}")


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill what is left of these process groups (launchers and the workers they started in
    sessions of their own are found through /proc)."""
    pids = {p.pid for p in procs if p.poll() is None}
    for pid in sorted(pids | set(descendants(pids))):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def descendants(roots: set[int]) -> list[int]:
    """Every process below ``roots`` (children, grandchildren, ...), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = set(roots)
    while frontier:
        children = {pid for pid, pp in parent.items() if pp in frontier}
        found += sorted(children)
        frontier = children
    return found


def assert_same_exports(got: Path, want: Path, exact: bool = True) -> None:
    """Every student's exported weights in run ``got`` equal those of run ``want``."""
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 1e-4, "atol": 1e-5}
    for name in STUDENTS:
        a = load_file(str(got / "export" / f"{name}.safetensors"))
        b = load_file(str(want / "export" / f"{name}.safetensors"))
        assert a.keys() == b.keys(), name
        for key in a:
            torch.testing.assert_close(a[key], b[key], **tol, msg=f"{name} {key}")


def complete_checkpoints(out: Path) -> list[str]:
    """Names of the complete checkpoints of run ``out``."""
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if (p / "COMPLETE").is_file())
