"""Preemption: the preemption signal (run.preempt_signal, SIGUSR1) makes every rank checkpoint
the same step and exit cleanly; under SLURM rank 0 requeues the job once, and the resumed run
ends with the weights of an uninterrupted one.

The faults are injected by tests/workers/faulthook (see its docstring) into the real command
lines; the uninterrupted reference is the fixture ``accelerate_distill`` (same recipe, 3 steps).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import (
    assert_same_exports,
    complete_checkpoints,
    fault_env,
    start,
    stop,
    wait_for_file,
)
from helpers import (
    ACTIVE,
    DISTILL_STEPS,
    REPO,
    accelerate_cmd,
    accelerate_launch,
    distill_args,
    job_state,
)

from vlcd_dist.config import ConfigError, load_config
from vlcd_dist.distributed import slurm_requeue_id
from vlcd_dist.train import preemption as preemption_module
from vlcd_dist.train.preemption import EXIT_NOT_REQUEUED, Preemption, signal_number

# The signal reaches rank 1 after 1 step: the ranks agree at the end of step 2 and stop there.
FAULT = "wait-signal:1:1"
STOP_STEP = 2
STOP_LINE = f"distill: preemption signal; checkpointing step {STOP_STEP} and stopping"
# Tests assert no speed, but a preempted run must be gone well inside SLURM's grace period
# (slurm/vlcd.sh: 300 s); the checkpoint itself takes a second here.
GRACE_S = 300


# -- the pieces ------------------------------------------------------------------------------


def test_signal_names() -> None:
    assert signal_number("SIGUSR1") == signal.SIGUSR1
    assert signal_number("usr2") == signal.SIGUSR2
    assert signal_number(" SIGTERM ") == signal.SIGTERM
    for bad in ("SIGNOPE", "SIGKILL", "SIG_IGN", ""):
        with pytest.raises(ValueError):
            signal_number(bad)
    with pytest.raises(ConfigError, match=r"run.preempt_signal='SIGBOGUS': unknown signal"):
        load_config(None, ["run.preempt_signal=SIGBOGUS"])
    cfg = load_config(None, ["run.preempt_signal=null"])
    assert cfg.run.preempt_signal is None and Preemption(None).signum is None


def test_handler_sets_only_a_flag_and_is_removed_after() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    watch = Preemption("SIGUSR1")
    watch.install()
    try:
        signal.raise_signal(signal.SIGUSR1)  # would end the process without the handler
        assert watch.requested and not watch.agreed
    finally:
        watch.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_requeue_id_of_jobs_and_array_tasks() -> None:
    assert slurm_requeue_id({}) is None
    assert slurm_requeue_id({"SLURM_JOB_ID": "123"}) == "123"
    array = {"SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "120", "SLURM_ARRAY_TASK_ID": "7"}
    assert slurm_requeue_id(array) == "120_7"


def test_only_rank_0_requeues_and_a_refusal_is_an_error(monkeypatch) -> None:
    calls: list[list[str]] = []
    result = {"rc": 0, "err": ""}

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, result["rc"], "", result["err"])

    monkeypatch.setattr(preemption_module.subprocess, "run", fake_run)
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    watch = Preemption("SIGUSR1")
    assert watch.requeue(is_main=True) == 0 and calls == []  # not under SLURM: nothing to do
    monkeypatch.setenv("SLURM_JOB_ID", "130")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "120")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert watch.requeue(is_main=False) == 0 and calls == []
    assert watch.requeue(is_main=True) == 0
    assert calls == [["scontrol", "requeue", "120_7"]]
    result.update(rc=1, err="Requested operation is presently disabled")
    assert watch.requeue(is_main=True) == EXIT_NOT_REQUEUED


# -- two ranks under accelerate launch -------------------------------------------------------


@pytest.mark.multiproc
@pytest.mark.timeout(900)
def test_signal_checkpoints_one_step_on_every_rank_and_resumes_exactly(
    accelerate_distill, tiny_recipe, distill_sets, tmp_path
) -> None:
    out = tmp_path / "distill"
    ready, log = tmp_path / "ready", tmp_path / "run.log"
    env = fault_env(VLCD_TEST_FAULT=FAULT, VLCD_TEST_FAULT_READY=str(ready))
    # As slurm/vlcd.sh starts it: the launcher ignores the signal, the training processes
    # handle it.
    launch = accelerate_cmd(*distill_args(tiny_recipe, out, distill_sets))
    proc = start(["bash", "-c", 'trap "" USR1; exec "$@"', "bash", *launch], env, log)
    try:
        wait_for_file(ready, [proc], log, timeout=600)
        # Only rank 1 (and the launcher) get the signal: rank 0 learns it from the all-reduce.
        proc.send_signal(signal.SIGUSR1)
        os.kill(int(ready.read_text()), signal.SIGUSR1)
        try:
            code = proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {GRACE_S} s after the signal\n{log.read_text()[-6000:]}"
            ) from None
    finally:
        stop([proc])
    text = log.read_text()
    assert code == 0, text[-6000:]
    # Both ranks stopped at the same step, and that step's checkpoint holds both ranks' RNG.
    assert text.count(STOP_LINE) == 2, text[-6000:]
    assert "not a SLURM batch job, so nothing is requeued" in text
    assert complete_checkpoints(out) == [f"step_{STOP_STEP:06d}"]
    last = out / "checkpoints" / f"step_{STOP_STEP:06d}"
    assert json.loads((last / "meta.json").read_text())["step"] == STOP_STEP
    assert sorted(p.name for p in (last / "rng").iterdir()) == [
        "rank00000.safetensors",
        "rank00001.safetensors",
    ]
    # Not finished: no export, no summary.json (what vlcd demo/sweep take for "done").
    assert not (out / "summary.json").exists()
    assert not list(out.glob("export/*.safetensors"))

    resumed = accelerate_launch(*distill_args(tiny_recipe, out, distill_sets, "--resume"))
    assert f"(step {STOP_STEP})" in resumed.stderr, resumed.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == DISTILL_STEPS
    assert_same_exports(out, accelerate_distill)


# -- SLURM: slurm/vlcd.sh on the local 2-node cluster ----------------------------------------


def _restarts(job: str) -> int:
    proc = subprocess.run(
        ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"\bRestarts=(\d+)", proc.stdout)
    return int(match.group(1)) if match else -1


@pytest.mark.slurm
@pytest.mark.multiproc
@pytest.mark.timeout(1500)
def test_slurm_signal_requeues_once_and_resumes_exactly(
    slurm_cluster,
    accelerate_distill,
    tiny_recipe,
    distill_sets,
    tmp_path_factory,
) -> None:
    root = tmp_path_factory.mktemp("slurm-preempt")
    out, ready = root / "distill", root / "ready"
    sets = [a for s in distill_sets for a in ("--set", s)]
    env = fault_env(
        VLCD_STAGE="distill",
        VLCD_CONFIG=str(tiny_recipe),
        VLCD_ARGS=" ".join(["--out", str(out), *sets]),  # test paths hold no spaces
        VLCD_VENV=sys.prefix,
        VLCD_TEST_FAULT=FAULT,
        VLCD_TEST_FAULT_READY=str(ready),
    )
    cmd = [
        "sbatch", "--parsable", "--job-name=vlcd-preempt", "--nodes=2", "--gpus-per-node=0",
        "--cpus-per-task=1", "--time=20", f"--output={root}/job-%j.out",
        str(REPO / "slurm" / "vlcd.sh"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    job = proc.stdout.strip().split(";")[0]
    log = root / f"job-{job}.out"
    try:
        deadline = time.monotonic() + 600
        while not ready.exists():
            state = job_state(job).get("JobState")
            assert state is None or state in ACTIVE, (state, _tail(log))
            assert time.monotonic() < deadline, f"no fault after 600 s\n{_tail(log)}"
            time.sleep(1)
        # What SLURM does at --signal=B:USR1@300: signal the batch shell only.
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=60)
        fields: dict[str, str] = {}
        while time.monotonic() < deadline + 600:
            fields = job_state(job)
            state = fields.get("JobState", "")
            if state == "PENDING" and fields.get("Reason") == "BeginTime" and _restarts(job) > 0:
                # SLURM holds a requeued job back for 2 minutes (cred_expire); not needed here.
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=60)
            if state and state not in ACTIVE:
                break
            time.sleep(1)
    finally:
        if job_state(job).get("JobState") in ACTIVE:
            subprocess.run(["scancel", job], timeout=60)
    text = log.read_text()
    assert (fields.get("JobState"), fields.get("ExitCode")) == ("COMPLETED", "0:0"), _tail(log)
    assert _restarts(job) == 1, _tail(log)
    assert f"[vlcd] job {job} (restart 0)" in text and f"[vlcd] job {job} (restart 1)" in text
    assert text.count("asking the training processes to checkpoint and requeue") == 1
    # Both ranks (one per node) stopped at the same step; one requeue, by rank 0.
    assert text.count(STOP_LINE) == 2, _tail(log)
    assert text.count(f"SLURM job {job} requeued") == 1, _tail(log)
    assert "resumed from" in text and f"(step {STOP_STEP})" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == DISTILL_STEPS and summary["world_size"] == 2
    assert complete_checkpoints(out) == [f"step_{STOP_STEP:06d}", f"step_{DISTILL_STEPS:06d}"]
    assert_same_exports(out, accelerate_distill)


def _tail(log: Path) -> str:
    return log.read_text()[-8000:] if log.is_file() else "(no log yet)"
