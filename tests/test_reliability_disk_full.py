"""A full disk during a checkpoint save: the save fails with a clear error (the folder, the bytes
needed, the bytes free) on every rank, the partial folder is removed, the previous checkpoint is
left intact and is the one resumed, and ``keep_last`` (1 here) prunes nothing before a new
checkpoint is complete.

The disk fills up three ways: the writer's fault hook (``VLCD_TEST_SAVE_ENOSPC``, everywhere), a
small tmpfs (a real ENOSPC; skipped where mounting is refused), and a free-space check that
refuses the save before anything is written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from faults import fault_env, start, stop
from helpers import STUDENTS, resume_predistill
from test_reliability_checkpoints import _save, _trainees

from vlcd_dist.io import disk_full_after, is_disk_full, tree_bytes, write_text
from vlcd_dist.pipelines.launch import free_port, multi_rank_command
from vlcd_dist.train import checkpoint as checkpoint_mod
from vlcd_dist.train.backend import AccelerateBackend
from vlcd_dist.train.checkpoint import (
    DISK_FULL,
    ENOSPC_ENV,
    Checkpointer,
    DiskFullError,
    SaveFailedError,
    TrainState,
)

PAGE = 4096  # tmpfs allocates whole pages


@pytest.fixture(scope="module")
def backend() -> AccelerateBackend:
    return AccelerateBackend(cpu=True)


def _files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _assert_previous_kept(
    ckpt: Checkpointer, previous: Path, before: dict[str, bytes], trainees, s
):
    """Only ``previous`` is left, byte for byte as it was, and it is the one resumed."""
    assert sorted(p.name for p in ckpt.folder.iterdir()) == [previous.name]  # no partial folder
    assert _files(previous) == before
    assert ckpt.latest() == previous and ckpt.problems(previous) == []
    assert ckpt.load(ckpt.latest(), "distill", trainees, s).step == int(previous.name[5:])


def test_enospc_part_way_keeps_the_previous_checkpoint(backend, tmp_path, monkeypatch) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, backend, keep_last=1)
    previous = _save(ckpt, 2, trainees, scheds)
    before = _files(previous)
    # The disk fills up while b's weights are written: rng and a's files fit, b's do not.
    fits = sum(len(v) for k, v in before.items() if k.startswith(("rng/", "a/")))
    fits -= len(before["a/scheduler.json"])  # written at the end, with the metadata
    monkeypatch.setenv(ENOSPC_ENV, f"4:{fits + 100}")
    with pytest.raises(DiskFullError) as err:
        _save(ckpt, 4, trainees, scheds)
    text = str(err.value)
    needed = tree_bytes(previous)  # the estimate: the previous checkpoint's size
    free = shutil.disk_usage(tmp_path).free
    assert err.value.folder == tmp_path and err.value.needed == needed
    assert abs(err.value.free - free) < 64 << 20  # measured after the partial folder went
    assert text.startswith(
        f"no space left for checkpoint step_000004 in {tmp_path}: it needs about "
        f"{needed / 2**10:.1f} KiB ({needed} bytes), "
    )
    assert f"({err.value.free} bytes) are free there (rank 0 ran out of space" in text
    assert "The newest complete checkpoint, step_000002, is untouched" in text
    assert "checkpoint.keep_last=1 needs room for 2" in text and "--resume" in text
    # Rank 0's own error names the file the disk filled up on: b's weights, part-way.
    assert f"(rank 0: OSError: [Errno 28] No space left on device: '{tmp_path}" in text
    assert "/.tmp_step_000004/b/.model.safetensors.tmp" in text
    _assert_previous_kept(ckpt, previous, before, trainees, scheds)

    # Space again: the save of step 4 completes, and only then keep_last=1 prunes step 2.
    monkeypatch.delenv(ENOSPC_ENV)
    newest = _save(ckpt, 4, trainees, scheds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000004"]
    assert ckpt.latest() == newest and ckpt.problems(newest) == []


def test_a_failed_save_of_the_same_step_puts_the_old_one_back(
    backend, tmp_path, monkeypatch
) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, backend, keep_last=1)
    previous = _save(ckpt, 2, trainees, scheds)
    before = _files(previous)
    real_replace = os.replace

    def full_at_the_last_rename(src, dst):
        if Path(src).name == ".tmp_step_000002":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst)

    # The old step 2 has been moved aside when the new one cannot take its place.
    monkeypatch.setattr(checkpoint_mod.os, "replace", full_at_the_last_rename)
    with pytest.raises(
        DiskFullError, match="The newest complete checkpoint, step_000002, is untouched"
    ):
        _save(ckpt, 2, trainees, scheds)
    monkeypatch.setattr(checkpoint_mod.os, "replace", real_replace)
    _assert_previous_kept(ckpt, previous, before, trainees, scheds)


def test_other_errors_also_leave_the_previous_checkpoint(backend, tmp_path, monkeypatch) -> None:
    trainees, scheds = _trainees(backend)
    ckpt = Checkpointer(tmp_path, backend, keep_last=1)
    previous = _save(ckpt, 2, trainees, scheds)
    before = _files(previous)

    def broken(trainee, folder):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder))

    monkeypatch.setattr(backend, "save_trainee", broken)
    with pytest.raises(SaveFailedError) as err:
        _save(ckpt, 4, trainees, scheds)
    assert str(err.value).startswith(
        f"checkpoint step_000004 could not be written in {tmp_path} (rank 0 failed; the partial "
        ".tmp_step_000004 was removed). The newest complete checkpoint, step_000002, is untouched"
    )
    assert "(rank 0: PermissionError: [Errno 13] Permission denied:" in str(err.value)
    monkeypatch.undo()
    _assert_previous_kept(ckpt, previous, before, trainees, scheds)


class OtherRank:
    """Rank 1 of 2, with rank 0 reporting (through the all-reduces) that its disk is full."""

    rank, world_size, is_main = 1, 2, False
    device = torch.device("cpu")
    name = AccelerateBackend.name
    save_trainee = AccelerateBackend.save_trainee
    state_dict = AccelerateBackend.state_dict

    def __init__(self, needed: int, free: int) -> None:
        self.rank0 = [[DISK_FULL, 1, needed], [free]]
        self.calls: list[list[int]] = []

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        assert op == "max"
        self.calls.append(tensor.tolist())
        theirs = torch.tensor(self.rank0[len(self.calls) - 1], dtype=tensor.dtype)
        return torch.maximum(tensor, theirs, out=tensor)

    def barrier(self) -> None:
        raise AssertionError("a save agrees by all-reduces, which are its barriers")


def test_the_other_ranks_stop_with_rank_0s_message(backend, tmp_path, monkeypatch) -> None:
    trainees, scheds = _trainees(backend)
    # Reference: rank 0 itself, refused by the free-space check (1000 bytes free).
    ckpt = Checkpointer(tmp_path, backend, keep_last=2)
    previous = _save(ckpt, 2, trainees, scheds)
    needed = tree_bytes(previous)
    monkeypatch.setattr(checkpoint_mod, "_free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFullError) as on_rank0:
        _save(ckpt, 4, trainees, scheds)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002"]  # nothing written
    common, own = str(on_rank0.value).split(" (rank 0: OSError: ")
    assert own.startswith("[Errno 28] 1.0 KiB (1000 bytes) free, the checkpoint needs about")

    other = OtherRank(needed, 1000)
    with pytest.raises(DiskFullError) as on_rank1:
        Checkpointer(tmp_path, other, keep_last=2).save(
            "distill", TrainState(step=4), trainees, scheds, {}, ""
        )
    # The same words, and no rank-1 error of its own; it stopped at the first agreement, before
    # writing its RNG file, and never waited in a barrier.
    assert str(on_rank1.value) == common
    assert (on_rank1.value.needed, on_rank1.value.free) == (needed, 1000)
    assert other.calls == [[0, 0, 0], [0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002"]


def test_the_fault_hook_cuts_the_file_like_a_full_disk(tmp_path) -> None:
    write_text(tmp_path / "a.txt", "old")
    with disk_full_after(10), pytest.raises(OSError) as err:
        write_text(tmp_path / "b.txt", "0123")
        write_text(tmp_path / "a.txt", "0123456789")
    assert err.value.errno == errno.ENOSPC and is_disk_full(err.value)
    assert (tmp_path / "a.txt").read_text() == "old"  # the atomic write left the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    write_text(tmp_path / "c.txt", "x" * 100)  # outside the block: no limit
    # safetensors reports the errno only in its text.
    from safetensors import SafetensorError

    assert is_disk_full(
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    )
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"))


# --- a real small filesystem ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of ``request.param`` KiB (skipped where mounting is refused: not root, no
    CAP_SYS_ADMIN)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={request.param}k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        # Lazily: tensors loaded from it may still map its files until they are collected.
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("small_disk", [512], indirect=True)  # room for one checkpoint
def test_a_real_full_disk_refused_before_writing(backend, small_disk) -> None:
    trainees, scheds = _trainees(backend, width=2000)  # a checkpoint of about 360 KB
    ckpt = Checkpointer(small_disk / "checkpoints", backend, keep_last=1)
    previous = _save(ckpt, 2, trainees, scheds)
    before = _files(previous)
    free = shutil.disk_usage(small_disk).free
    with pytest.raises(DiskFullError) as err:
        _save(ckpt, 4, trainees, scheds)
    assert (err.value.needed, err.value.free) == (tree_bytes(previous), free)
    assert err.value.needed > free
    assert f"{free} bytes) are free there" in str(err.value)
    _assert_previous_kept(ckpt, previous, before, trainees, scheds)


@pytest.mark.parametrize("small_disk", [1024], indirect=True)  # room for two, less ballast
def test_a_real_full_disk_part_way(backend, small_disk) -> None:
    trainees, scheds = _trainees(backend, width=2000)
    ckpt = Checkpointer(small_disk / "checkpoints", backend, keep_last=1)
    previous = _save(ckpt, 2, trainees, scheds)
    before = _files(previous)
    (small_disk / "other").mkdir()
    shutil.move(previous, small_disk / "other" / previous.name)  # room for the ballast
    # Leave a little more than the estimate free: the check passes, but tmpfs rounds every
    # file up to whole pages, so the write runs out of space part-way.
    room = (tree_bytes(small_disk / "other") // PAGE + 2) * PAGE
    shutil.move(small_disk / "other" / previous.name, previous)
    ballast = shutil.disk_usage(small_disk).free - room
    assert ballast > 0
    (small_disk / "ballast").write_bytes(b"\0" * ballast)
    free = shutil.disk_usage(small_disk).free
    assert free >= ckpt._needed_bytes(trainees)
    with pytest.raises(DiskFullError) as err:
        _save(ckpt, 4, trainees, scheds)
    text = str(err.value)
    assert "rank 0 ran out of space" in text and ".tmp_step_000004" in text
    assert err.value.free == free  # the partial folder is gone again
    assert " (rank 0: " in text and "No space left on device" in text
    _assert_previous_kept(ckpt, previous, before, trainees, scheds)


# --- two ranks --------------------------------------------------------------------------------


@pytest.mark.multiproc  # 2 gloo ranks (one torchrun launcher each, as 2 nodes)
def test_two_ranks_stop_with_the_message_and_the_previous_checkpoint_is_resumed(
    tiny_recipe, tmp_path
) -> None:
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    sets = ["predistill.steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=1"]
    # Long enough that a rank left waiting in a collective would show as a hang (the bound
    # below), not as this timeout's RankFailureError.
    sets.append("run.collective_timeout_s=900")
    args = ["-m", "vlcd_dist", "predistill", "--config", str(tiny_recipe), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    port = free_port()
    cmds = [
        multi_rank_command(1, args, launcher="torchrun", port=port, nnodes=2, node_rank=node)
        for node in (0, 1)
    ]
    # The disk fills up in the final save (step 4), after 40 KB: inside the first student.
    env = fault_env(**{ENOSPC_ENV: "4:40000"})
    logs = [tmp_path / "rank0.log", tmp_path / "rank1.log"]
    procs = [start(cmd, env, log) for cmd, log in zip(cmds, logs, strict=True)]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    except subprocess.TimeoutExpired:
        stop(procs)
        raise AssertionError(
            "a rank still runs after the full disk:\n"
            + "\n".join(log.read_text()[-4000:] for log in logs)
        ) from None
    finally:
        stop(procs)
    texts = [log.read_text() for log in logs]
    for code, text in zip(codes, texts, strict=True):
        assert code != 0, text[-4000:]
        assert (
            f"vlcd: error: no space left for checkpoint step_000004 in {ckpts}: it needs about"
            in text
        ), text[-4000:]
        assert "rank 0 ran out of space" in text
        assert "The newest complete checkpoint, step_000002, is untouched" in text
        assert "another rank exited or stopped responding" not in text  # not the timeout
    assert "(rank 0: OSError: [Errno 28] No space left on device" in texts[0]
    assert "(rank 1: " not in texts[1]
    # keep_last=1 pruned nothing: step 2 is still there, whole; the partial step 4 is gone.
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002"]
    reader = Checkpointer(ckpts, AccelerateBackend(cpu=True))
    assert reader.latest() == ckpts / "step_000002" and reader.problems(reader.latest()) == []
    meta = json.loads((ckpts / "step_000002" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["trainees"] == STUDENTS

    # Space again: the resume starts from step 2, trains steps 3 and 4 again and saves step 4.
    state, steps_run = resume_predistill(tiny_recipe, sets, out)
    assert state.step == 4 and steps_run == {2, 3}  # 0-based step being taken
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004"]
    assert reader.problems(ckpts / "step_000004") == []
