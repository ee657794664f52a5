"""What several test modules share that is not a fixture: the repository root, the in-process
CLI, the tiny recipe and its students, the 2-rank distill launch, TensorBoard scalars and the
SLURM job helpers. Fixtures live in conftest.py; test modules import plain helpers from here
(or faults.py); conftest.py and the test_*.py modules are never imported by a test module."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from vlcd_dist.pipelines.launch import multi_rank_command

REPO = Path(__file__).resolve().parents[1]

STUDENTS = ["tiny_mobilenetv3", "tiny_resnet"]
"""The students of TINY_RECIPE, in its order."""

DISTILL_STEPS = 3
"""Optimizer steps of the 2-rank distill runs shared by the distributed tests."""

TINY_RECIPE = """\
run: {{seed: 0}}
data:
  placenta: {placenta}
  natural: {natural}
  image_size: [32, 32]
  batch_size: 4
  eval_batch_size: 8
  num_workers: 1
  shuffle_buffer: 8
teacher: {{preset: tiny_resnet18_minilm, autocast_dtype: float32}}
students: [tiny_mobilenetv3, tiny_resnet]
optim: {{lr: 1.0e-3, warmup_steps: 1}}
train_teacher: {{steps: 2, lock_text: true}}
predistill: {{steps: 2}}
distill: {{steps: 3}}
checkpoint: {{every_steps: 2, keep_last: 2}}
logging: {{every_steps: 1, progress: false}}
eval: {{cv_folds: 2, bootstrap: 20, latency_iters: 2, probe_cs: [0.1, 1.0]}}
"""
"""A recipe for seconds-long runs (format with placenta= and natural= shard folders)."""


def run_cli(*args: object) -> int:
    """Run ``vlcd`` in-process. A single string is split like a shell line (no quoting needed:
    test paths hold no spaces); several arguments are passed as they are."""
    from vlcd_dist.cli import main

    if len(args) == 1 and isinstance(args[0], str):
        return main(shlex.split(args[0]))
    return main([str(a) for a in args])


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


# --- 2-rank launches ---------------------------------------------------------------------------


def rank_env(**extra: str) -> dict[str, str]:
    """The environment of launched ranks: one thread each (2 ranks share 2 cores, and runs
    compared with each other do the same arithmetic), offline hub."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra)
    return env


def accelerate_cmd(*args: object, nproc: int = 2) -> list[str]:
    """The ``accelerate launch`` command line of ``nproc`` CPU ranks (gloo) running ``args``."""
    return multi_rank_command(nproc, [str(a) for a in args])


def torchrun_worker(world: int, *args: object) -> subprocess.CompletedProcess[str]:
    """Run a worker script under ``torchrun --standalone`` with ``world`` gloo ranks (one
    thread each, offline hub, this checkout importable); fail the test unless it exits 0."""
    env = rank_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # No port: --standalone picks a free rendezvous port itself, so parallel runs do not collide.
    cmd = multi_rank_command(world, [str(a) for a in args], launcher="torchrun")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def accelerate_launch(
    *args: object, timeout: int = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``accelerate launch`` with 2 CPU ranks (gloo) on a free port. With ``check``, fail
    the test with the output unless it exits 0; returns the CompletedProcess."""
    cmd = accelerate_cmd(*args)
    proc = subprocess.run(cmd, env=rank_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def distill_args(recipe: Path, out: Path, sets: list[str], *extra: object) -> list[object]:
    """``-m vlcd_dist distill`` arguments for accelerate_launch."""
    args: list[object] = ["-m", "vlcd_dist", "distill", "--config", recipe, "--out", out]
    for s in sets:
        args += ["--set", s]
    return [*args, *extra]


# --- SLURM (the local 2-node cluster of scripts/slurm/up.sh) ---------------------------------

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
"""Job states in which the job may still change; anything else is final."""


def cluster_problem() -> str | None:
    """Why a 2-node job cannot run here, or None when it can."""
    missing = [c for c in ("sbatch", "sinfo", "scontrol") if shutil.which(c) is None]
    if missing:
        return (
            f"no SLURM client ({', '.join(missing)} not found); "
            "start a local cluster with scripts/slurm/up.sh (as root)"
        )
    proc = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        return f"no SLURM controller answers sinfo ({proc.stderr.strip()}); run scripts/slurm/up.sh"
    usable = set()
    for line in proc.stdout.splitlines():
        if len(line.split()) == 2:
            node, state = line.split()
            # sinfo appends flags to the state (idle*, mixed~, ...).
            if state.rstrip("*~#!%$@^-+") in ("idle", "mixed"):
                usable.add(node)
    if len(usable) < 2:
        return f"a 2-node job needs 2 idle nodes; sinfo -N shows: {proc.stdout.strip()!r}"
    return None


def job_state(job: str) -> dict[str, str]:
    """The job's fields (JobState, ExitCode, Reason, ...) from scontrol, else from sacct (a
    finished job leaves scontrol after MinJobAge)."""
    proc = subprocess.run(
        ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 0 and "JobState=" in proc.stdout:
        return dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)
    proc = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job, "-o", "State,ExitCode"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode == 0 and proc.stdout.strip():
        state, code = proc.stdout.strip().splitlines()[0].split("|")
        return {"JobState": state.split()[0], "ExitCode": code}
    return {}


def resume_predistill(recipe: Path, sets: list[str], out: Path) -> tuple[object, set[int]]:
    """``predistill --resume`` into ``out`` in-process, one rank: (its final train state, the
    0-based steps it trained)."""
    from vlcd_dist.config import load_config
    from vlcd_dist.train.stages import create_stage

    cfg = load_config(recipe, sets)
    cfg.run.out = str(out)
    cfg.checkpoint.resume = True
    trainer = create_stage(cfg, "predistill")
    steps_run: set[int] = set()
    trainer.loss_hook = lambda name, step, loss: steps_run.add(step) or loss
    try:
        state = trainer.run()
    finally:
        trainer.backend.close()
    return state, steps_run
