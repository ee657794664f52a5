"""Exact resume on 2, 3 and 4 gloo ranks with 3 students: a run that is SIGKILLed, resumed,
stopped cleanly, and resumed again ends bit for bit where an uninterrupted run ends (weights,
optimizer states, RNG, per-step losses in TensorBoard), and every rank trains on exactly the same
samples at every step, even when stopped in the middle of an epoch. The steps of the kill and the
stop are derived from each world size's epoch plan on the test shards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import REPO, accelerate_cmd, scalars
from safetensors import safe_open
from safetensors.torch import load_file

from vlcd_dist.data.stream import ShardLoader, StreamConfig, plan_epoch, resolve_shards

WORKER = REPO / "tests" / "workers" / "resume_worker.py"
STUDENTS = ["tiny_mobilenetv3", "tiny_resnet", "test_efficientnet"]
EVERY = 2  # checkpoint.every_steps
BATCH = {2: 4, 3: 4, 4: 2}
"""Per-rank batch size by world size: the session's 38 placenta train samples (7 shards) give
4 ranks one batch of 4 per epoch, too few to stop inside one, so 4 ranks take batches of 2."""


@dataclass(frozen=True)
class Plan:
    """Where one world size's run is killed and stopped (steps count from 1; checkpoints every
    EVERY steps; the run is two epochs of ``batches`` steps each)."""

    world: int
    batch: int
    batches: int  # steps per epoch

    @property
    def steps(self) -> int:
        return 2 * self.batches

    @property
    def killed_at(self) -> int:
        """The SIGKILL comes when about to train this step: the steps after the newest
        checkpoint (EVERY, inside epoch 0) are trained and logged, then lost."""
        return EVERY + 2

    @property
    def stop_after(self) -> int:
        """The clean stop, right after the first checkpoint inside epoch 1 (not at its end)."""
        return next(s for s in range(self.batches + 1, self.steps) if s % EVERY == 0)


def _plan(placenta_shards: Path, world: int) -> Plan:
    """The epoch plan the trainer makes (the recipe's stream: shuffled, 1 worker, last partial
    batch dropped, equal batches on every rank), and the kill and stop points derived from it."""
    sizes = resolve_shards(str(placenta_shards), "train").sizes
    cfg = StreamConfig(
        batch_size=BATCH[world], num_workers=1, drop_last=True, shuffle=True, seed=0,
        equal_batches=True,
    )  # fmt: skip
    plans = [plan_epoch(sizes, cfg, e, world) for e in range(2)]
    # Both epochs have the same length, else the arithmetic below does not hold.
    assert plans[0].batches == plans[1].batches, [p.batches for p in plans]
    # The equal-batches cap leaves some samples of each epoch out: the skip-ahead of a resume
    # must not get them wrong.
    assert all(sum(map(sum, p.quota)) > p.batches * BATCH[world] * world for p in plans)
    return Plan(world, BATCH[world], plans[0].batches)


ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _worker(
    world: int, recipe: Path, out: Path, tag: str, sets: list[str], *extra: object
) -> list[str]:
    args: list[object] = [WORKER, recipe, out, tag, *extra]
    for s in sets:
        args += ["--set", s]
    return accelerate_cmd(*args, nproc=world)


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT, timeout=400)
    assert proc.returncode == 0, f"{cmd}\n{log.read_text()[-6000:]}"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # not a group leader after all
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _run_and_kill(cmd: list[str], world: int, out: Path, log: Path) -> None:
    """Start the job, wait until every rank is about to train the step of ``--pause-before``,
    then SIGKILL every rank (with its data workers) and the launcher."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 400
            markers = [out / f"paused.rank{r}" for r in range(world)]
            while not all(m.exists() for m in markers):
                assert proc.poll() is None, f"ended before the kill\n{log.read_text()[-6000:]}"
                assert time.monotonic() < deadline, "the job never reached the kill point"
                time.sleep(0.2)
        finally:
            # Each rank leads its own process group (torch's launcher starts it in a session).
            for marker in markers:
                if marker.exists():
                    _kill_group(int(marker.read_text()))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _keys(out: Path, rank: int, tag: str) -> dict[int, list[str]]:
    """step -> the sample keys that rank trained on at that step, in order."""
    steps: dict[int, list[str]] = defaultdict(list)
    path = out / "keys" / f"rank{rank}.{tag}.txt"
    for line in path.read_text().splitlines():
        step, key = line.split(" ", 1)
        steps[int(step)].append(key)
    return dict(steps)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb), a
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), f"{a}: {k}"


def _rng(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    with safe_open(str(path), framework="pt") as f:
        rest = (f.metadata() or {})["rest"]
    return _tensors(path), rest


def _sets(tiny_pipeline: dict[str, Path], plan: Plan) -> list[str]:
    # The session's predistillation has two students; the third starts from its initialisation,
    # so all three do (distill.init_from=null).
    return [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        "distill.init_from=null",
        f"students=[{', '.join(STUDENTS)}]",
        f"data.batch_size={plan.batch}",
        f"distill.steps={plan.steps}",
        f"checkpoint.every_steps={EVERY}",
        "checkpoint.keep_last=2",
        "logging.every_steps=1",
    ]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_epoch_plan_puts_the_stops_mid_epoch(placenta_shards, world: int) -> None:
    """The kill and the stop are inside epochs 0 and 1 (not at their ends), each after a
    checkpoint; the 2-rank points are those the test was written with."""
    plan = _plan(placenta_shards, world)
    ckpt = plan.killed_at - 2  # the newest checkpoint when the SIGKILL comes
    assert ckpt % EVERY == 0 and 0 < ckpt < plan.batches
    assert plan.killed_at - 1 <= plan.steps
    assert plan.batches < plan.stop_after < plan.steps and plan.stop_after % plan.batches
    assert plan.stop_after % EVERY == 0
    if world == 2:
        assert (plan.batches, plan.steps, plan.killed_at, plan.stop_after) == (4, 8, 4, 6)


@pytest.mark.multiproc
@pytest.mark.parametrize("world", [2, 3, 4], ids=lambda w: f"{w}ranks")
def test_killed_and_stopped_runs_resume_bit_for_bit(
    tiny_recipe, tiny_pipeline, placenta_shards, tmp_path, world: int
) -> None:
    plan = _plan(placenta_shards, world)
    steps, per_epoch, kill, stop = plan.steps, plan.batches, plan.killed_at, plan.stop_after
    ckpt = kill - 2
    sets = _sets(tiny_pipeline, plan)
    ref, run = tmp_path / "reference", tmp_path / "interrupted"
    _run(_worker(world, tiny_recipe, ref, "a", sets), tmp_path / "reference.log")
    # SIGKILL (launcher and every rank) before step `kill`: the steps up to it were trained and
    # logged, the newest checkpoint is step `ckpt`, in the middle of epoch 0.
    _run_and_kill(
        _worker(world, tiny_recipe, run, "b1", sets, "--pause-before", kill),
        world,
        run,
        tmp_path / "b1.log",
    )
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [f"step_{ckpt:06d}"]
    # Resume from `ckpt`, redo the lost steps, stop cleanly after the checkpoint of `stop`
    # (inside epoch 1).
    _run(
        _worker(world, tiny_recipe, run, "b2", sets, "--resume", "--stop-after", stop),
        tmp_path / "b2.log",
    )
    assert not (run / "summary.json").exists()
    meta = json.loads((run / "checkpoints" / f"step_{stop:06d}" / "meta.json").read_text())
    assert (meta["state"]["epoch"], meta["state"]["batch_in_epoch"]) == (1, stop - per_epoch)
    # Resume from `stop` to the end.
    _run(_worker(world, tiny_recipe, run, "b3", sets, "--resume"), tmp_path / "b3.log")

    # Same samples at every step on every rank; the redone steps saw what the killed run saw.
    redone = list(range(ckpt + 1, kill))
    assert redone
    for rank in range(world):
        a = _keys(ref, rank, "a")
        b1, b2, b3 = (_keys(run, rank, t) for t in ("b1", "b2", "b3"))
        assert sorted(a) == list(range(1, steps + 1))
        assert sorted(b1) == list(range(1, kill))
        assert sorted(b2) == list(range(ckpt + 1, stop + 1))
        assert sorted(b3) == list(range(stop + 1, steps + 1))
        assert all(b1[s] == b2[s] for s in redone)
        assert {**b1, **b2, **b3} == a, f"rank {rank}"
    # Within an epoch no sample is trained on twice (across ranks and steps) or dropped.
    merged = [
        {**_keys(run, r, "b1"), **_keys(run, r, "b2"), **_keys(run, r, "b3")} for r in range(world)
    ]
    for epoch in range(2):
        epoch_steps = range(1 + per_epoch * epoch, 1 + per_epoch * (epoch + 1))
        seen = [k for r in range(world) for s in epoch_steps for k in merged[r][s]]
        assert len(seen) == per_epoch * plan.batch * world, f"epoch {epoch}"
        assert len(set(seen)) == len(seen), f"epoch {epoch}"

    # TensorBoard: one value per step and tag (the killed run's step 3 is hidden), all equal.
    ta, tb = scalars(ref / "tb"), scalars(run / "tb")
    tags = sorted(t for t in ta if not t.startswith("perf/"))
    assert tags == sorted(t for t in tb if not t.startswith("perf/"))
    for name in STUDENTS:
        assert f"{name}/loss" in tags and f"{name}/loss_contrastive" in tags
    for tag in tags:
        assert [s for s, _ in tb[tag]] == list(range(1, steps + 1)), tag
        assert tb[tag] == ta[tag], tag

    # Final checkpoint: weights, optimizer and scheduler of every student, data position,
    # counters and every rank's RNG, bit for bit.
    fa, fb = ref / "checkpoints" / f"step_{steps:06d}", run / "checkpoints" / f"step_{steps:06d}"
    for name in STUDENTS:
        _assert_same_tensors(fa / name / "model.safetensors", fb / name / "model.safetensors")
        _assert_same_tensors(
            fa / name / "optimizer.safetensors", fb / name / "optimizer.safetensors"
        )
        for f in ("optimizer.json", "scheduler.json"):
            assert (fa / name / f).read_text() == (fb / name / f).read_text(), f"{name}/{f}"
        _assert_same_tensors(
            ref / "export" / f"{name}.safetensors", run / "export" / f"{name}.safetensors"
        )
    state_a = json.loads((fa / "meta.json").read_text())["state"]
    state_b = json.loads((fb / "meta.json").read_text())["state"]
    assert state_a == state_b
    assert state_a["step"] == steps and state_a["teacher_forwards"] == steps
    for rank in range(world):
        ra, rb = (_rng(f / "rng" / f"rank{rank:05d}.safetensors") for f in (fa, fb))
        assert ra[1] == rb[1] and all(torch.equal(ra[0][k], rb[0][k]) for k in ra[0])
    sa = json.loads((ref / "summary.json").read_text())
    sb = json.loads((run / "summary.json").read_text())
    for key in ("steps", "samples", "epoch", "counters", "skipped_samples", "teacher_forwards"):
        assert sa[key] == sb[key], key


def test_in_process_loading_uses_its_own_rng(placenta_shards) -> None:
    """num_workers=0 augments with the RNG stream worker 0 would have: the same batches as one
    worker, and the training process's RNG is left alone (else a resume, which re-reads the
    consumed batches of its epoch, would go on with other random numbers)."""

    def epoch(workers: int) -> list[dict]:
        cfg = StreamConfig(
            shards=str(placenta_shards), split="train", batch_size=4, image_size=(32, 32),
            num_workers=workers, shuffle_buffer=8, drop_last=True, seed=0,
        )  # fmt: skip
        loader = ShardLoader(cfg, 1, 2)
        loader.set_epoch(1)
        return list(loader)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    in_process = epoch(0)
    assert torch.equal(torch.get_rng_state(), before)
    one_worker = epoch(1)
    assert [b["key"] for b in in_process] == [b["key"] for b in one_worker]
    for a, b in zip(in_process, one_worker, strict=True):
        assert torch.equal(a["image"], b["image"])
