"""The pure parts of the chaos soak's driver (bench/chaos.py; the soak itself is a benchmark, not
a test): the seeded kill plan, reading the attempts from a torchrun log, and the comparison of
two runs' weights, which must notice a single flipped bit."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def chaos():
    spec = importlib.util.spec_from_file_location("bench_chaos", REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("seed", range(20))
def test_kill_plan_is_seeded_increasing_and_mixed(chaos, seed) -> None:
    plan = chaos.kill_plan(seed, 5, 40, 4)
    assert plan == chaos.kill_plan(seed, 5, 40, 4)
    steps = [k.step for k in plan]
    assert len(plan) == 5 and steps == sorted(set(steps))
    assert all(2 <= s <= 36 for s in steps) and {k.rank for k in plan} <= {0, 1}
    for k in plan:
        assert k.after_checkpoint == (k.step % 4 == 0), k


def test_kill_plans_differ_by_seed_and_cover_both_kinds(chaos) -> None:
    plans = [chaos.kill_plan(seed, 5, 40, 4) for seed in range(20)]
    assert len({tuple(p) for p in plans}) == 20
    kinds = [k.after_checkpoint for p in plans for k in p]
    ranks = [k.rank for p in plans for k in p]
    # Over 100 kills: both kinds and both ranks, the between-checkpoint ones the majority.
    assert 0 < sum(kinds) < 50 and 0 < sum(ranks) < 100


def test_kill_plan_that_cannot_fit_is_refused(chaos) -> None:
    assert len(chaos.kill_plan(0, 7, 12, 4)) == 7  # steps 2..8, all of them
    with pytest.raises(SystemExit, match="--kills 8 do not fit in 12 steps"):
        chaos.kill_plan(0, 8, 12, 4)


LOG = """\
vlcd: rank 0/2 (local rank 0, node 0/1) on localhost (host h)
02:04:10 INFO distill: --resume given but no complete checkpoint in /r/checkpoints; starting fresh
02:04:11 distill: 1/12 step (8%), 2.1 step/s, ETA 00:05 | tiny_resnet 4.1
02:04:12 distill: 2/12 step (17%), 2.1 step/s, ETA 00:04 | tiny_resnet 4.0
02:04:12 INFO checkpoint /r/checkpoints/step_000002 written
02:04:13 distill: 3/12 step (25%), 2.1 step/s, ETA 00:04 | tiny_resnet 3.9
[W] torch.distributed.elastic: worker group failed; restarting
02:04:30 INFO distill: resumed from /r/checkpoints/step_000002 (step 2)
02:04:31 distill: 3/12 step (25%), 2.1 step/s, ETA 00:04 | tiny_resnet 3.9
02:04:32 distill: 4/12 step (33%), 2.1 step/s, ETA 00:04 | tiny_resnet 3.8
02:04:40 INFO distill: resumed from /r/checkpoints/step_000004 (step 4)
"""


def test_log_gives_the_attempts_and_the_steps_redone(chaos) -> None:
    log = chaos.Log.parse(LOG)
    assert [(a.resumed_from, a.last_step) for a in log.attempts] == [(0, 3), (2, 4), (4, 4)]
    assert log.step == 4 and log.redone() == [1, 0]
    assert chaos.Log.parse("").step == 0 and chaos.Log.parse("").redone() == []


def _run_folder(root: Path, steps: int, weight: torch.Tensor) -> Path:
    final = root / "checkpoints" / f"step_{steps:06d}"
    (final / "s").mkdir(parents=True)
    (root / "export").mkdir()
    save_file(
        {"w": weight, "n": torch.tensor(3)}, str(root / "export" / "s.safetensors"), {"a": "1"}
    )
    save_file({"w": weight}, str(final / "s" / "model.safetensors"))
    (final / "s" / "scheduler.json").write_text('{"last_epoch": 3}')
    (final / "meta.json").write_text(json.dumps({"time": str(root), "state": {"step": steps}}))
    return root


def test_weights_compare_bit_for_bit(chaos, tmp_path) -> None:
    w = torch.tensor([1.0, -0.0, float("nan")])
    a = _run_folder(tmp_path / "a", 3, w)
    assert chaos.compare_weights(a, _run_folder(tmp_path / "b", 3, w.clone()), 3) == []
    # -0.0 == 0.0 for torch.equal, not bit for bit.
    other = _run_folder(tmp_path / "c", 3, torch.tensor([1.0, 0.0, float("nan")]))
    assert chaos.compare_weights(a, other, 3) == [
        "differs: checkpoints/step_000003/s/model.safetensors",
        "differs: export/s.safetensors",
    ]
    (other / "export" / "extra.safetensors").write_bytes(b"")
    assert "only in one run: export/extra.safetensors" in chaos.compare_weights(a, other, 3)
