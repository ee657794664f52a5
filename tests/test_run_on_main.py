"""Backend.run_on_main: work that only rank 0 does (a foreign teacher's text anchors in
distill, the teacher export) while the others wait; a failure on rank 0 stops every rank with
rank 0's message instead of leaving the others to a collective timeout."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, torchrun_worker

from vlcd_dist.errors import VlcdError
from vlcd_dist.models import ModelError
from vlcd_dist.train.backend import Backend

WORKER = REPO / "tests" / "workers" / "run_on_main_worker.py"


class _OneRank(Backend):
    """A single-process backend: run_on_main needs no collective there."""

    name = "one"
    device = torch.device("cpu")
    rank = local_rank = 0
    world_size = 1
    mixed_precision = "no"

    def prepare(self, *args, **kwargs):
        raise NotImplementedError

    def sync_gradients(self, *args, **kwargs):
        raise NotImplementedError

    def all_reduce(self, tensor, op="sum"):
        raise AssertionError("one rank: no collective")

    def barrier(self):
        raise AssertionError("one rank: no collective")


def test_one_rank_runs_the_work_and_raises_its_own_error():
    backend = _OneRank()
    calls = []
    backend.run_on_main("counting", lambda: calls.append(1))
    assert calls == [1]

    def fail():
        raise ModelError("no such file /x")

    with pytest.raises(ModelError, match="no such file /x"):
        backend.run_on_main("failing", fail)


@pytest.mark.multiproc
def test_a_failure_on_rank_0_stops_every_rank_with_its_message(tmp_path):
    torchrun_worker(2, WORKER, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Success: both ranks go on after rank 0's work is done, and stay in step.
    assert [r["after_success"] for r in ranks] == ["ok", "ok"]
    assert [r["sum"] for r in ranks] == [3.0, 3.0]
    # Rank 0 raises its own error; rank 1 a VlcdError carrying rank 0's message.
    assert ranks[0]["failure"] == {
        "type": "ModelError",
        "message": "teacher text tower: cannot read /nowhere/model.safetensors",
    }
    assert ranks[1]["failure"]["type"] == VlcdError.__name__
    assert ranks[1]["failure"]["message"] == (
        "building the text anchors /x/anchors.safetensors failed on rank 0, so rank 1 stops "
        "too: ModelError: teacher text tower: cannot read /nowhere/model.safetensors (rank 0's "
        "log has the traceback)"
    )
