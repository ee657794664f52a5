"""How the pipelines start a stage: the launch command of N ranks, the environment, and the
check that a stage has finished. One place for the command line, used by the pipelines and by
the tests' multi-rank launches alike.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml

from vlcd_dist.config import dump_yaml, load_config
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.results import EvalReport


def default_nproc() -> int:
    """The GPU count, else 2 ranks when the host has at least 2 CPUs, else 1."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous or a main process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Launcher = Literal["accelerate", "torchrun"]


def multi_rank_command(
    nproc: int,
    program: Sequence[str | os.PathLike[str]],
    launcher: Launcher = "accelerate",
    port: int | None = None,
    nnodes: int = 1,
    node_rank: int = 0,
    max_restarts: int = 0,
) -> list[str]:
    """The command that starts ``nproc`` local ranks of ``program`` (``["-m", "vlcd_dist", ...]``
    or ``[script, *args]``): the one place the pipelines and the tests build a launch line.

    ``launcher="accelerate"``: ``accelerate launch --multi_gpu``, also on CPU: with
    ``Accelerator(cpu=True)`` it gives ``nproc`` gloo ranks, whereas a MULTI_CPU config starts
    one process and expects mpirun (DESIGN.md section 8). Its main process listens on ``port``,
    by default one free now.

    ``launcher="torchrun"``: without ``port``, ``--standalone`` (torchrun picks its own free
    rendezvous port, so nothing can take it between the choice and the start); with ``port``, a
    static rendezvous at 127.0.0.1:``port``, which ``nnodes`` launchers (``node_rank`` 0, 1,
    ...) on this machine share as SLURM nodes would. ``max_restarts``: how often torchrun
    restarts the whole group after a rank fails.
    """
    args = [str(a) for a in program]
    if launcher == "accelerate":
        if nnodes != 1 or max_restarts:
            # Not needed by anything yet; refused rather than silently ignored.
            raise ValueError("accelerate launch is built for one node without restarts here")
        return [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port if port is not None else free_port()),
            *args,
        ]  # fmt: skip
    if launcher != "torchrun":
        raise ValueError(f"unknown launcher {launcher!r}; use 'accelerate' or 'torchrun'")
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if port is None:
        if nnodes != 1:
            raise ValueError("several torchrun nodes must share a rendezvous port: pass port")
        cmd.append("--standalone")
    else:
        cmd += [f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port}"]
    cmd += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc}"]
    if max_restarts:
        cmd.append(f"--max-restarts={max_restarts}")
    return [*cmd, *args]


def launch_prefix(nproc: int) -> list[str]:
    """The command that starts ``nproc`` ranks of ``python -m vlcd_dist`` (the plain module
    for one rank: no launcher process in between)."""
    if nproc <= 1:
        return [sys.executable, "-m", "vlcd_dist"]
    return multi_rank_command(nproc, ["-m", "vlcd_dist"])


def _done_file(stage: str, folder: Path) -> Path:
    """The file a stage writes last, when it has finished (not after a preemption stop)."""
    return folder / ("report.json" if stage == "eval" else "summary.json")


def _finished(stage: str, folder: Path, resolved: str) -> bool:
    """True when ``folder`` holds a finished ``stage`` run of this very recipe.

    ``checkpoint.resume`` is left out of the comparison: ``--resume`` sets it in the recipe a
    stage writes, and whether a run was resumed does not change what it computed."""
    done = _done_file(stage, folder)
    written = folder / "config.yaml"
    if not (done.is_file() and written.is_file()):
        return False

    def recipe(text: str) -> object:
        data = yaml.safe_load(text)
        if isinstance(data, dict) and isinstance(data.get("checkpoint"), dict):
            data["checkpoint"].pop("resume", None)
        return data

    if recipe(written.read_text()) != recipe(resolved):
        return False
    if stage == "eval":
        # A report.json this version cannot read (an older format, a damaged file) is not a
        # finished eval: the stage runs again instead of the pipeline failing on it later.
        try:
            EvalReport.load(done)
        except VlcdError:
            return False
    return True


def stage_env(nproc: int) -> dict[str, str]:
    """The environment of the stage processes: offline hub, threads split between the ranks."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def execute(cmd: list[str], env: dict[str, str]) -> int:
    """Run one stage command and return its exit status (tests swap in an in-process run)."""
    return subprocess.run(cmd, env=env).returncode


def run_stage(
    stage: str,
    folder: Path,
    config: Path,
    sets: list[str],
    nproc: int,
    env: dict[str, str],
    rerun: str = "the demo",
) -> bool:
    """Run ``vlcd <stage>`` into ``folder`` under the launch prefix, unless ``folder`` already
    holds a finished run of the same resolved recipe. Every stage but eval passes ``--resume``,
    so an interrupted one continues from its newest checkpoint. Returns whether it ran; raises
    VlcdError when the stage fails (``rerun`` names what to rerun in the message)."""
    resolved = load_config(config, sets)
    resolved.run.out = str(folder)
    if _finished(stage, folder, dump_yaml(resolved)):
        print(f"==> {stage}: already done in {folder} (delete it to rerun)", flush=True)
        return False
    cmd = [*launch_prefix(nproc), stage, "--config", str(config), "--out", str(folder)]
    for item in sets:
        cmd += ["--set", item]
    if stage != "eval":
        cmd.append("--resume")
    seconds = run_step(
        stage,
        cmd,
        env,
        f"stage {stage} failed with exit status {{rc}}; fix the cause above and rerun {rerun} "
        "(finished stages are kept, this one resumes from its checkpoint)",
    )
    done = _done_file(stage, folder)
    if not done.is_file():
        # Exit status 0 without it: the stage was preempted (run.preempt_signal) and saved a
        # checkpoint to resume from; the next stage must not start without its input.
        raise VlcdError(
            f"stage {stage} stopped before finishing (no {done.name} in {folder}; a preemption "
            f"signal stops a stage after a checkpoint): rerun {rerun} to resume it"
        )
    print(f"==> {stage}: done in {seconds:.0f} s", flush=True)
    return True


def run_step(name: str, cmd: list[str], env: dict[str, str], failure: str) -> float:
    """Print and run one command of a pipeline; its seconds. A non-zero exit status raises
    VlcdError(``failure`` with ``{rc}`` filled in)."""
    print(f"==> {name}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = execute(cmd, env)
    if rc != 0:
        raise VlcdError(failure.format(rc=rc))
    return time.perf_counter() - t0
