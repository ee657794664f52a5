"""Checkpoints: no pickle, atomic (a folder without COMPLETE is never read), exact restore."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlcd_dist.train.backend import AccelerateBackend
from vlcd_dist.train.checkpoint import Checkpointer, CheckpointError, TrainState
from vlcd_dist.train.optim import create_optimizer, create_scheduler
from vlcd_dist.train.state_io import flatten_state, unflatten_state


@pytest.fixture(scope="module")
def backend() -> AccelerateBackend:
    return AccelerateBackend(cpu=True)


def _trainee(backend, name="net", seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = create_optimizer(net, lr=0.1, weight_decay=0.01)
    trainee = backend.prepare(name, net, opt)
    sched = create_scheduler(opt, total=10, warmup=2)
    for _ in range(3):
        net(torch.randn(5, 4)).pow(2).mean().backward()
        backend.clip_grad(trainee, 1.0)
        backend.step(trainee)
        sched.step()
    return trainee, sched


def test_nested_state_round_trip_without_pickle(backend) -> None:
    trainee, _ = _trainee(backend)
    state = trainee.optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten_state(state, tensors)
    text = json.dumps(structure)  # JSON-able: nothing left that would need pickle
    back = unflatten_state(json.loads(text), tensors)
    assert back["param_groups"][0]["betas"] == state["param_groups"][0]["betas"]
    assert set(back["state"]) == set(state["state"])  # int keys stay ints
    for key, value in state["state"][0].items():
        torch.testing.assert_close(back["state"][0][key], value)


def test_save_and_restore_everything(backend, tmp_path) -> None:
    trainee, sched = _trainee(backend)
    ckpt = Checkpointer(tmp_path / "checkpoints", backend, keep_last=2)
    state = TrainState(
        step=3, epoch=1, batch_in_epoch=5, samples=96, counters={"net": {"skipped_steps": 1}}
    )
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    path = ckpt.save("distill", state, [trainee], {"net": sched}, {"a": 1}, "a: 1\n")
    expected_rng = (torch.rand(3), random.random(), np.random.rand())
    weights = {k: v.clone() for k, v in trainee.module.state_dict().items()}
    lr = sched.get_last_lr()

    assert path.name == "step_000003" and (path / "COMPLETE").is_file()
    assert sorted(load_file(str(path / "net" / "model.safetensors"))) == sorted(weights)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["state"]["batch_in_epoch"] == 5 and meta["trainees"] == ["net"]

    # Another model, optimizer and schedule: restoring must bring back the saved ones exactly.
    other, other_sched = _trainee(backend, seed=7)
    restored = ckpt.load(ckpt.latest(), "distill", [other], {"net": other_sched})
    assert restored == state
    for k, v in other.module.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)
    assert other_sched.get_last_lr() == lr and other_sched.last_epoch == sched.last_epoch
    a, b = other.optimizer.state_dict(), trainee.optimizer.state_dict()
    for i in b["state"]:
        for key in b["state"][i]:
            torch.testing.assert_close(a["state"][i][key], b["state"][i][key], rtol=0, atol=0)
    assert (torch.rand(3), random.random(), np.random.rand())[1:] == expected_rng[1:]


def test_incomplete_and_old_checkpoints(backend, tmp_path) -> None:
    trainee, sched = _trainee(backend)
    ckpt = Checkpointer(tmp_path, backend, keep_last=2)
    for step in (1, 2, 3):
        ckpt.save("distill", TrainState(step=step), [trainee], {"net": sched}, {}, "")
    assert [s for s, _ in ckpt.complete()] == [2, 3]  # keep_last pruned step 1
    # A crash mid-write leaves a temp folder or a folder without its marker: never chosen.
    (tmp_path / ".tmp_step_000009").mkdir()
    (tmp_path / "step_000008").mkdir()
    assert ckpt.latest() == tmp_path / "step_000003"
    with pytest.raises(CheckpointError, match="no COMPLETE marker"):
        ckpt.load(tmp_path / "step_000008", "distill", [trainee], {"net": sched})
    with pytest.raises(CheckpointError, match="stage 'distill', not 'predistill'"):
        ckpt.load(ckpt.latest(), "predistill", [trainee], {"net": sched})
    with pytest.raises(CheckpointError, match="same students"):
        other, other_sched = _trainee(backend, name="x")
        ckpt.load(ckpt.latest(), "distill", [other], {"x": other_sched})
