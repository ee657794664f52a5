"""Shared fixtures: small shard sets written once per session, and an offline environment."""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

import pytest

# Tests never touch the network: no model hub, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: object) -> int:
    """Run ``vlcd`` in-process. A single string is split like a shell line (no quoting needed:
    test paths hold no spaces); several arguments are passed as they are."""
    from vlcd_dist.cli import main

    if len(args) == 1 and isinstance(args[0], str):
        return main(shlex.split(args[0]))
    return main([str(a) for a in args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(nproc: int, script: Path, *args: str) -> list[str]:
    """A torchrun command line for ``nproc`` local processes on a free port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(script),
        *args,
    ]


@pytest.fixture(scope="session")
def placenta_shards(tmp_path_factory) -> Path:
    """48 synthetic placenta samples at 128x96, 6 per shard (train and test files)."""
    out = tmp_path_factory.mktemp("shards") / "placenta"
    assert (
        run_cli(
            f"shards placenta --synthetic 48 --image-size 128x96 --shard-size 6 --out {out} --workers 2 --quiet"
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def natural_shards(tmp_path_factory) -> Path:
    """64 procedural natural images at 48 px in 8 shards of 8."""
    out = tmp_path_factory.mktemp("shards") / "natural"
    assert (
        run_cli(
            f"shards natural --source synthetic --count 64 --image-size 48 --shard-size 8 --out {out} --workers 2 --quiet"
        )
        == 0
    )
    return out


# --- training stages (tests/test_train_*.py) --------------------------------------------------

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


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory, placenta_shards, natural_shards) -> Path:
    """A recipe for seconds-long runs: tiny teacher and students at 32 px on the test shards."""
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(placenta=placenta_shards, natural=natural_shards))
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, tiny_recipe) -> dict[str, Path]:
    """train-teacher then predistill (in-process, one rank) on the tiny recipe; their folders."""
    root = tmp_path_factory.mktemp("pipeline")
    teacher = root / "teacher" / "export" / "teacher.safetensors"
    assert run_cli(f"train-teacher --config {tiny_recipe} --out {root / 'teacher'}") == 0
    assert (
        run_cli(
            f"predistill --config {tiny_recipe} --out {root / 'predistill'} "
            f"--set teacher.checkpoint={teacher}"
        )
        == 0
    )
    return {"root": root, "teacher": teacher, "predistill": root / "predistill"}


DISTILL_STEPS = 3
"""Optimizer steps of the 2-rank distill runs shared by the distributed tests."""


def accelerate_cmd(*args: object) -> list[str]:
    """The ``accelerate launch`` command line of 2 CPU ranks (gloo) on a free port."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        *[str(a) for a in args],
    ]  # fmt: skip


def accelerate_launch(*args: object, timeout: int = 300, check: bool = True):
    """Run ``accelerate launch`` with 2 CPU ranks (gloo) on a free port. With ``check``, fail
    the test with the output unless it exits 0; returns the CompletedProcess."""
    import subprocess

    cmd = accelerate_cmd(*args)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="session")
def distill_sets(tiny_pipeline) -> list[str]:
    """--set overrides of a tiny distill from the session's teacher and predistilled students."""
    return [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"distill.init_from={tiny_pipeline['predistill']}",
        f"distill.steps={DISTILL_STEPS}",
    ]


def distill_args(recipe: Path, out: Path, sets: list[str], *extra: object) -> list[object]:
    """``-m vlcd_dist distill`` arguments for accelerate_launch."""
    args: list[object] = ["-m", "vlcd_dist", "distill", "--config", recipe, "--out", out]
    for s in sets:
        args += ["--set", s]
    return [*args, *extra]


@pytest.fixture(scope="session")
def accelerate_distill(tmp_path_factory, tiny_recipe, distill_sets) -> Path:
    """The tiny distill on 2 gloo ranks with the Accelerate backend (the reference run)."""
    out = tmp_path_factory.mktemp("dist") / "distill"
    accelerate_launch(*distill_args(tiny_recipe, out, distill_sets))
    return out
