"""SLURM on a real (local, 2-node) cluster: a tiny distill over two nodes, one rank per node,
computes what the same recipe computes under torchrun on one node, whether slurm/vlcd.sh starts
it (one accelerate launch per node) or a plain `srun python -m vlcd_dist` (one task per rank,
open_clip's style; both backends join one group).

The cluster is the one scripts/slurm/up.sh starts (node1 and node2, both on this machine, which
is why tmp_path is a folder "both nodes" see). Without a cluster the test is skipped, saying
why; with the environment variable CI set it fails instead, so CI cannot pass without running
it (.ci/run brings the cluster up).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ACTIVE, REPO, STUDENTS, job_state, rank_env, scalars
from safetensors.torch import load_file

from vlcd_dist.distributed import dist_info
from vlcd_dist.pipelines.launch import free_port, multi_rank_command
from vlcd_dist.train.logging import rank_line

STEPS = 3
LOSS_TAGS = ("loss", "loss_contrastive", "loss_dist", "loss_gnd")
JOB_TIMEOUT_S = 600

pytestmark = pytest.mark.slurm


def _stage_args(tiny_pipeline: dict[str, Path], out: Path) -> list[str]:
    """The distill command line after the recipe: both runs get exactly these."""
    sets = [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"distill.init_from={tiny_pipeline['predistill']}",
        f"distill.steps={STEPS}",
        "logging.every_steps=1",  # one TensorBoard point per step
    ]
    return ["--out", str(out), *[a for s in sets for a in ("--set", s)]]


def _wait(job: str, log: Path) -> dict[str, str]:
    """Poll until the job is final; cancel it and fail when it takes too long."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = job_state(job)
        if fields.get("JobState") and fields["JobState"] not in ACTIVE:
            return fields
        time.sleep(2)
    subprocess.run(["scancel", job], timeout=60)
    tail = log.read_text()[-6000:] if log.is_file() else "(no log)"
    pytest.fail(
        f"job {job} not finished after {JOB_TIMEOUT_S} s (cancelled): "
        f"state {fields.get('JobState')}, reason {fields.get('Reason')}\n{tail}"
    )


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, tiny_recipe, tiny_pipeline) -> dict:
    """`sbatch slurm/vlcd.sh` of a tiny distill on 2 nodes; its output folder and job log."""
    root = tmp_path_factory.mktemp("slurm")
    out = root / "distill"
    env = dict(
        rank_env(),  # one thread per process in both runs: the same arithmetic
        VLCD_STAGE="distill",
        VLCD_CONFIG=str(tiny_recipe),
        VLCD_ARGS=" ".join(_stage_args(tiny_pipeline, out)),  # test paths hold no spaces
        VLCD_VENV=sys.prefix,
    )
    cmd = [
        "sbatch",
        "--parsable",
        "--job-name=vlcd-test",
        "--nodes=2",
        "--gpus-per-node=0",  # CPU-only nodes
        "--cpus-per-task=1",
        "--time=15",
        f"--output={root}/job-%j.out",
        str(REPO / "slurm" / "vlcd.sh"),
    ]
    # Submitted from the repository: the script runs in the submit directory.
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    job = proc.stdout.strip().split(";")[0]
    log = root / f"job-{job}.out"
    fields = _wait(job, log)
    text = log.read_text()
    assert (fields.get("JobState"), fields.get("ExitCode")) == ("COMPLETED", "0:0"), (
        f"job {job}: {fields.get('JobState')} exit {fields.get('ExitCode')}\n{text[-8000:]}"
    )
    return {"root": root, "out": out, "log": text, "job": job}


SRUN_JOB = "vlcd-test-srun"


def _srun(program: list[str], out_dir: Path) -> subprocess.CompletedProcess[str]:
    """``srun --nodes 2 --ntasks-per-node 1 python PROGRAM``, blocking; cancelled and failed
    when it takes too long."""
    cmd = [
        "srun", f"--job-name={SRUN_JOB}", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
        "--time=15", "--kill-on-bad-exit=1", sys.executable, *program,
    ]  # fmt: skip
    try:
        return subprocess.run(
            cmd, cwd=out_dir, env=rank_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exn:
        subprocess.run(["scancel", f"--name={SRUN_JOB}"], timeout=60)
        pytest.fail(f"{cmd} not finished after {JOB_TIMEOUT_S} s (cancelled): {exn.stderr!r}")


@pytest.fixture(scope="module")
def srun_run(slurm_cluster, tmp_path_factory, tiny_recipe, tiny_pipeline) -> dict:
    """The same distill under a plain ``srun --nodes 2 --ntasks-per-node 1 python -m vlcd_dist
    distill ...``: no launcher, each SLURM task is one rank."""
    root = tmp_path_factory.mktemp("srun")
    out = root / "distill"
    program = ["-m", "vlcd_dist", "distill", "--config", str(tiny_recipe)]
    proc = _srun([*program, *_stage_args(tiny_pipeline, out)], root)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return {"root": root, "out": out, "log": proc.stderr}


@pytest.fixture(scope="module")
def torchrun_run(slurm_cluster, tmp_path_factory, tiny_recipe, tiny_pipeline) -> Path:
    """The same recipe under torchrun: 2 processes on one node."""
    out = tmp_path_factory.mktemp("torchrun") / "distill"
    program = ["-m", "vlcd_dist", "distill", "--config", str(tiny_recipe)]
    program += _stage_args(tiny_pipeline, out)
    cmd = multi_rank_command(2, program, launcher="torchrun", port=free_port())
    proc = subprocess.run(cmd, env=rank_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return out


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_rank_line_names_the_slurm_node() -> None:
    # What a rank of `srun accelerate launch` sees on the second node.
    env = {
        "RANK": "1",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURMD_NODENAME": "node2",
    }
    info = dist_info(env)
    assert info.node_name == "node2"
    assert rank_line(info).startswith("vlcd: rank 1/2 (local rank 0, node 1/2) on node2 (host ")
    # Outside SLURM the node is the host.
    assert dist_info({}).node_name == dist_info({}).hostname


@pytest.mark.multiproc
@pytest.mark.timeout(1200)
def test_one_rank_per_node(slurm_run) -> None:
    log = slurm_run["log"]
    # Printed by each launcher (the script) and by each training process (its real rank).
    for node, rank in (("node1", 0), ("node2", 1)):
        assert re.search(
            rf"^\[vlcd\] node {node} \(.*\): machine rank {rank}, ranks {rank}-{rank}$", log, re.M
        ), log[-6000:]
        lines = re.findall(
            rf"^vlcd: rank {rank}/2 \(local rank 0, node {rank}/2\) on (\S+) ", log, re.M
        )
        assert lines == [node], f"rank {rank}: {lines}\n{log[-6000:]}"
    assert "[vlcd] stage distill finished with status 0" in log


def _assert_written_once(root: Path, out: Path, reference: Path) -> None:
    """One main process wrote ``out`` (under ``root``), as a one-node 2-rank run writes
    ``reference``."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert summary["trainees"] == STUDENTS
    # One TensorBoard writer in the whole job (two would mean a second "main" process).
    events = sorted(root.rglob("events.out.tfevents.*"))
    assert [p.parent for p in events] == [out / "tb"], events
    # One set of checkpoints, the same files a one-node run writes: step folders (every 2 steps,
    # and the last), each complete, with one RNG file per rank.
    ckpts = out / "checkpoints"
    steps = sorted(p.name for p in ckpts.iterdir())
    assert steps == ["step_000002", f"step_{STEPS:06d}"], steps
    for step in steps:
        assert (ckpts / step / "COMPLETE").is_file()
        meta = json.loads((ckpts / step / "meta.json").read_text())
        assert meta["world_size"] == 2 and meta["trainees"] == STUDENTS
        assert sorted(p.name for p in (ckpts / step / "rng").iterdir()) == [
            "rank00000.safetensors",
            "rank00001.safetensors",
        ]
    assert _tree(ckpts) == _tree(reference / "checkpoints")


def _assert_same_run(out: Path, reference: Path, label: str) -> None:
    """``out`` logged the per-step losses of ``reference`` and exported the same students."""
    got = scalars(out / "tb")
    want = scalars(reference / "tb")
    for name in STUDENTS:
        for part in LOSS_TAGS:
            tag = f"{name}/{part}"
            assert [s for s, _ in got[tag]] == list(range(1, STEPS + 1)), tag
            assert [s for s, _ in want[tag]] == list(range(1, STEPS + 1)), tag
            for (step, a), (_, b) in zip(got[tag], want[tag], strict=True):
                assert abs(a - b) <= 1e-5, f"{tag} step {step}: {label} {a} vs torchrun {b}"
    # Same losses, same updates: the exported students agree too.
    for name in STUDENTS:
        a = load_file(str(out / "export" / f"{name}.safetensors"))
        b = load_file(str(reference / "export" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")


@pytest.mark.multiproc
@pytest.mark.timeout(1200)
def test_outputs_written_once_by_rank_0(slurm_run, torchrun_run) -> None:
    _assert_written_once(slurm_run["root"], slurm_run["out"], torchrun_run)


@pytest.mark.multiproc
@pytest.mark.timeout(1200)
def test_losses_match_torchrun(slurm_run, torchrun_run) -> None:
    _assert_same_run(slurm_run["out"], torchrun_run, "slurm")


@pytest.mark.multiproc
@pytest.mark.timeout(1200)
def test_plain_srun_is_one_job(srun_run, torchrun_run) -> None:
    # Each task is one rank of one group (not two jobs of one rank writing into one folder).
    log = srun_run["log"]
    for node, rank in (("node1", 0), ("node2", 1)):
        lines = re.findall(
            rf"^vlcd: rank {rank}/2 \(local rank 0, node {rank}/2\) on (\S+) ", log, re.M
        )
        assert lines == [node], f"rank {rank}: {lines}\n{log[-6000:]}"
    _assert_written_once(srun_run["root"], srun_run["out"], torchrun_run)


@pytest.mark.multiproc
@pytest.mark.timeout(1200)
def test_plain_srun_losses_match_torchrun(srun_run, torchrun_run) -> None:
    _assert_same_run(srun_run["out"], torchrun_run, "srun")


@pytest.mark.multiproc
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["accelerate", "deepspeed"])
def test_plain_srun_tasks_join_one_group(slurm_cluster, tmp_path, backend) -> None:
    worker = REPO / "tests" / "workers" / "backend_group_worker.py"
    proc = _srun([str(worker), backend], tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    lines = [
        json.loads(x[len("group ") :]) for x in proc.stdout.splitlines() if x.startswith("group ")
    ]
    # Both ranks of one group: the all-reduce of (rank + 1) is 1 + 2 on each.
    assert sorted((x["rank"], x["world_size"], x["sum"]) for x in lines) == [
        (0, 2, 3.0),
        (1, 2, 3.0),
    ], proc.stdout
    assert {x["backend"] for x in lines} == {backend}
