"""Atomic checkpoints: a kill during a save leaves the previous checkpoint as the one resumed,
``keep_last`` never deletes the last complete checkpoint before the new one is complete, and a
damaged checkpoint is reported and passed over, never silently replaced by a start from step 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import resume_predistill, run_cli
from safetensors.torch import save_file

from vlcd_dist.io import write_text
from vlcd_dist.train.backend import AccelerateBackend
from vlcd_dist.train.checkpoint import (
    MARKER,
    PAUSE_ENV,
    Checkpointer,
    CheckpointError,
    TrainState,
)
from vlcd_dist.train.deepspeed_backend import DeepSpeedBackend
from vlcd_dist.train.optim import create_optimizer, create_scheduler

FIRST, SECOND = "tiny_mobilenetv3", "tiny_resnet"  # the tiny recipe's students, in order


@pytest.fixture(scope="module")
def backend() -> AccelerateBackend:
    return AccelerateBackend(cpu=True)


@contextlib.contextmanager
def warnings_of_checkpoint(caplog):
    """The checkpoint logger's records in caplog ("vlcd_dist" does not propagate to root)."""
    log = logging.getLogger("vlcd_dist.train.checkpoint")
    log.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        log.removeHandler(caplog.handler)


def _trainees(backend, names=("a", "b"), width=8):
    """Two tiny trainees (4 -> width -> 2) that took one step, with their schedulers."""
    trainees, scheds = [], {}
    for i, name in enumerate(names):
        torch.manual_seed(i)
        net = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Linear(width, 2))
        opt = create_optimizer(net, lr=0.1, weight_decay=0.01)
        trainee = backend.prepare(name, net, opt)
        net(torch.randn(5, 4)).pow(2).mean().backward()
        backend.step(trainee)
        trainees.append(trainee)
        scheds[name] = create_scheduler(opt, total=10, warmup=2)
    return trainees, scheds


def _save(ckpt: Checkpointer, step: int, trainees, scheds) -> Path:
    return ckpt.save("distill", TrainState(step=step), trainees, scheds, {"x": 1}, "x: 1\n")


def test_every_file_is_listed_with_its_size_and_sha256(backend, tmp_path) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, backend)
    path = _save(ckpt, 2, trainees, scheds)
    meta_bytes = (path / "meta.json").read_bytes()
    files = json.loads(meta_bytes)["files"]
    on_disk = {
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and p.name not in ("meta.json", MARKER)
    }
    assert set(files) == on_disk
    assert {"a/model.safetensors", "b/optimizer.json", "rng/rank00000.safetensors"} <= on_disk
    for rel, info in files.items():
        data = (path / rel).read_bytes()
        assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    marker = json.loads((path / MARKER).read_text())
    assert marker == {"step": 2, "meta_sha256": hashlib.sha256(meta_bytes).hexdigest()}
    assert ckpt.problems(path) == [] and ckpt.latest() == path
    assert [p.name for p in tmp_path.iterdir()] == ["step_000002"]  # no temporary folder left


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


DAMAGES = {
    "truncated model": (
        lambda p: _truncate(p / "b" / "model.safetensors"),
        "b/model.safetensors is",
    ),
    "missing student folder": (
        lambda p: shutil.rmtree(p / "a"),
        "student folder a/ is missing",
    ),
    "altered optimizer tensor": (
        lambda p: _flip_last_byte(p / "a" / "optimizer.safetensors"),
        "a/optimizer.safetensors differs from what was written (sha256)",
    ),
    "missing rng file": (
        lambda p: (p / "rng" / "rank00000.safetensors").unlink(),
        "rng/rank00000.safetensors is missing",
    ),
    "edited meta.json": (
        lambda p: (p / "meta.json").write_text(
            (p / "meta.json").read_text().replace('"step": 4', '"step": 40')
        ),
        "meta.json differs from what was written",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(
    backend, tmp_path, caplog, damage
) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, backend, keep_last=0)
    previous = _save(ckpt, 2, trainees, scheds)
    newest = _save(ckpt, 4, trainees, scheds)
    spoil, message = DAMAGES[damage]
    spoil(newest)
    with warnings_of_checkpoint(caplog):
        assert ckpt.latest() == previous
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in w and "damaged" in w and message in w for w in warned), warned
    with pytest.raises(CheckpointError, match="damaged") as err:
        ckpt.load(newest, "distill", trainees, scheds)
    assert message in str(err.value)
    assert ckpt.load(previous, "distill", trainees, scheds).step == 2


def test_only_damaged_checkpoints_stop_the_resume(backend, tmp_path) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, backend)
    assert ckpt.latest() is None  # nothing at all: a fresh start is right
    path = _save(ckpt, 2, trainees, scheds)
    safetensors_file = path / "a" / "model.safetensors"
    _truncate(safetensors_file)
    with pytest.raises(CheckpointError) as err:
        ckpt.latest()
    text = str(err.value)
    assert "no intact checkpoint" in text and str(path) in text
    assert "a/model.safetensors" in text and "move the folder(s) away" in text
    # Without the list of files (as in a checkpoint written before it existed), the safetensors
    # header still gives the truncation away.
    meta = json.loads((path / "meta.json").read_text())
    del meta["files"]
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    (path / MARKER).write_text(json.dumps({"step": 2}))
    (problem,) = ckpt.problems(path)
    assert problem.startswith("a/model.safetensors: ") and "truncated" in problem


class DeepSpeedLayout:
    """A backend writing trainees as the DeepSpeed backend does: model.safetensors beside
    DeepSpeed's own engine/ folder, no optimizer.json; checked as the DeepSpeed backend checks
    its own files."""

    rank, world_size, is_main = 0, 1, True
    device = torch.device("cpu")
    name = DeepSpeedBackend.name
    opaque_dirs = DeepSpeedBackend.opaque_dirs
    trainee_problems = DeepSpeedBackend.trainee_problems

    def barrier(self) -> None:
        pass

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor  # one rank

    def save_trainee(self, trainee, folder: Path) -> None:
        (folder / "engine").mkdir(parents=True)
        state = {k: v.contiguous() for k, v in trainee.module.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "engine" / "mp_rank_00_model_states.pt").write_bytes(b"module" * 10)
        (folder / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"opt" * 9)


def test_deepspeed_layout_is_accepted_and_checked(backend, tmp_path) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, DeepSpeedLayout())
    path = _save(ckpt, 2, trainees, scheds)
    assert not (path / "a" / "optimizer.json").exists()
    assert ckpt.problems(path) == [] and ckpt.latest() == path
    _truncate(path / "b" / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    shutil.rmtree(path / "a" / "engine")
    problems = ckpt.problems(path)
    assert (
        "a/ has no DeepSpeed state (engine/); a checkpoint of another backend? resume with the "
        "backend that wrote it"
    ) in problems
    assert "a/engine/mp_rank_00_model_states.pt is missing" in problems
    assert "b/engine/zero_pp_rank_0_mp_rank_00_optim_states.pt is 13 bytes, 27 were written" in (
        problems
    )


def test_a_checkpoint_of_the_other_backend_is_refused_not_passed_over(backend, tmp_path) -> None:
    # Accelerate's step 2, then DeepSpeed's step 4 in the same folder (a resume with the other
    # --backend): the Accelerate run must not quietly go back to step 2.
    trainees, scheds = _trainees(backend)
    _save(Checkpointer(tmp_path, backend), 2, trainees, scheds)
    newest = _save(Checkpointer(tmp_path, DeepSpeedLayout()), 4, trainees, scheds)
    assert json.loads((newest / "meta.json").read_text())["backend"] == "deepspeed"
    with pytest.raises(CheckpointError) as err:
        Checkpointer(tmp_path, backend).latest()
    assert str(err.value) == (
        f"{newest} was written by the deepspeed backend, this run uses accelerate: resume with "
        "--backend deepspeed (run.backend), or start a new --out"
    )
    assert Checkpointer(tmp_path, DeepSpeedLayout()).latest() == newest


def test_keep_last_and_saving_a_step_again(backend, tmp_path) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, backend, keep_last=2)
    for step in (2, 4, 6):
        _save(ckpt, step, trainees, scheds)
    assert [s for s, _ in ckpt.complete()] == [4, 6]
    # Resumed from 4 (say 6 was damaged): the new step 5 is kept with one older checkpoint, and
    # the later step 6 is left alone until the run writes step 6 again.
    _save(ckpt, 5, trainees, scheds)
    assert [s for s, _ in ckpt.complete()] == [4, 5, 6]
    again = _save(ckpt, 6, trainees, scheds)
    assert [s for s, _ in ckpt.complete()] == [5, 6] and ckpt.problems(again) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000005", "step_000006"]
    # A crash between the two renames of a repeated save leaves the old copy aside: still found.
    os.replace(again, tmp_path / ".old_step_000006")
    (tmp_path / ".tmp_step_000006").mkdir()  # the new copy, unfinished
    assert ckpt.latest() == tmp_path / ".old_step_000006"
    assert ckpt.load(ckpt.latest(), "distill", trainees, scheds).step == 6
    _save(ckpt, 7, trainees, scheds)  # the next save clears what the crash left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old_step_000006", "step_000007"]


@pytest.mark.multiproc  # the stage runs as a process of its own, killed mid-save
def test_kill_during_a_save_resumes_from_the_previous_checkpoint(
    backend, tiny_recipe, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    sets = ["predistill.steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=1"]
    args = [*(x for s in sets for x in ("--set", s))]
    cmd = [sys.executable, "-m", "vlcd_dist", "predistill", "--config", str(tiny_recipe)]
    cmd += ["--out", str(out), *args]
    # The final save (step 4) pauses after the first student's files: killed there.
    env = dict(os.environ, OMP_NUM_THREADS="1", **{PAUSE_ENV: "4:300"})
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while f"{PAUSE_ENV}: pausing" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # keep_last=1 did not delete step 2: the new checkpoint never completed.
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp_step_000004", "step_000002"]
    partial = ckpts / ".tmp_step_000004"
    assert (partial / FIRST / "model.safetensors").is_file()
    assert not (partial / SECOND).exists() and not (partial / MARKER).exists()
    reader = Checkpointer(ckpts, backend)  # checks the layout of the backend that wrote it
    assert reader.latest() == ckpts / "step_000002" and reader.problems(reader.latest()) == []

    # Resume: steps 3 and 4 are trained again from step 2's state, and the final save completes.
    state, steps_run = resume_predistill(tiny_recipe, sets, out)
    assert state.step == 4 and steps_run == {2, 3}  # 0-based step being taken
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004"]
    assert reader.problems(ckpts / "step_000004") == []

    # The one checkpoint left, damaged: the resume stops and says why instead of starting over.
    _truncate(ckpts / "step_000004" / SECOND / "model.safetensors")
    capsys.readouterr()
    assert run_cli("predistill", "--config", tiny_recipe, "--out", out, *args, "--resume") == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and f"{SECOND}/model.safetensors" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004"]


def test_small_files_are_replaced_whole(tmp_path, monkeypatch) -> None:
    # summary.json / report.json mark a finished stage: a failed write must not leave part of one.
    path = tmp_path / "summary.json"
    write_text(path, '{"steps": 4}')
    assert path.read_text() == '{"steps": 4}'

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        write_text(path, '{"steps": 8, "long": "' + "x" * 100_000 + '"}')
    assert path.read_text() == '{"steps": 4}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left
