"""Numeric faults: a student whose update is skipped (non-finite loss or gradient)
optim.max_consecutive_skips steps in a row stops the run on every rank at the same step, with a
message naming the student and the step; isolated skips are counted and the run goes on."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO, accelerate_launch
from safetensors.torch import load_file

from vlcd_dist.config import ConfigError, TrainConfig, load_config
from vlcd_dist.errors import VlcdError
from vlcd_dist.train.checkpoint import TrainState
from vlcd_dist.train.stages import create_stage
from vlcd_dist.train.trainer import TooManySkipsError, Trainer

WORKER = REPO / "tests" / "workers" / "skip_limit_worker.py"
FAULTY, HEALTHY = "tiny_mobilenetv3", "tiny_resnet"  # the tiny recipe's students


@pytest.mark.multiproc
@pytest.mark.parametrize(
    ("backend", "compiled"),
    [
        ("accelerate", False),
        # Compiling on both ranks of a fresh machine takes 2-3 minutes each (100-170 s here
        # with an empty inductor cache): opt-in, so that `make test` stays under its budget.
        # The compiled NaN skip is always tested in one process (below).
        pytest.param("accelerate", True, marks=pytest.mark.slow),
        pytest.param("deepspeed", True, marks=pytest.mark.slow),
    ],
    ids=["accelerate", "accelerate-compiled", "deepspeed-compiled"],
)
def test_nan_every_step_stops_both_ranks_at_the_same_step(
    tiny_recipe, tmp_path, monkeypatch, backend, compiled
) -> None:
    if backend == "deepspeed":
        pytest.importorskip("deepspeed")
    # Each rank compiles in its own process rather than starting a pool of compile workers
    # (a third less time on 2 cores).
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    out = tmp_path / "run"
    proc = accelerate_launch(
        WORKER, out, FAULTY, "--",
        "predistill", "--config", tiny_recipe, "--out", out, "--backend", backend,
        "--set", "predistill.steps=4", "--set", "optim.max_consecutive_skips=2",
        "--set", f"run.compile={compiled}",
        check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # The NaN was on rank 0 only; the all-reduced flags make both ranks skip and stop together.
    # Both ranks also hold the same weights: the healthy student's gradients were synced.
    assert ranks[0] == ranks[1], ranks
    assert set(ranks[0]["weights"]) == {FAULTY, HEALTHY}
    assert ranks[0]["rc"] == 2 and ranks[0]["step"] == 1  # step 2 raised before completing
    counters = ranks[0]["counters"]
    assert counters[FAULTY] == {"skipped_steps": 2, "consecutive_skips": 2}
    assert counters[HEALTHY] == {"skipped_steps": 0, "consecutive_skips": 0}
    message = next(line for line in output.splitlines() if "vlcd: error:" in line)
    assert f"student '{FAULTY}'" in message and HEALTHY not in message
    assert "2 steps in a row (steps 1-2); stopping at step 2" in message
    assert "optim.max_consecutive_skips" in message
    assert not (out / "export").exists()  # stopped: nothing exported as if finished


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_isolated_skips_are_counted_and_the_run_goes_on(tiny_recipe, tmp_path, compiled) -> None:
    sets = ["predistill.steps=3", "optim.max_consecutive_skips=2", f"run.compile={compiled}"]
    cfg = load_config(tiny_recipe, sets)
    cfg.run.out = str(tmp_path / "run")
    trainer = create_stage(cfg, "predistill")

    def nan_at_steps_1_and_3(name: str, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + float("nan") if name == FAULTY and step in (0, 2) else loss

    trainer.loss_hook = nan_at_steps_1_and_3
    try:
        state = trainer.run()
    finally:
        trainer.backend.close()
    assert state.step == 3
    assert state.counters[FAULTY] == {"skipped_steps": 2, "consecutive_skips": 1}
    assert state.counters[HEALTHY] == {"skipped_steps": 0, "consecutive_skips": 0}
    summary = json.loads((Path(cfg.run.out) / "summary.json").read_text())
    assert summary["counters"][FAULTY]["skipped_steps"] == 2
    for name in (FAULTY, HEALTHY):  # the skipped updates left no NaN behind
        weights = load_file(str(Path(cfg.run.out) / "export" / f"{name}.safetensors"))
        assert all(bool(torch.isfinite(w).all()) for w in weights.values()), name


def _stub(limit: int, consecutive: int) -> SimpleNamespace:
    cfg = TrainConfig()
    cfg.optim.max_consecutive_skips = limit
    counters = {"a": {"skipped_steps": 9, "consecutive_skips": consecutive}}
    return SimpleNamespace(
        cfg=cfg, state=TrainState(step=6, counters=counters), stage="distill", out=Path("o")
    )


def test_the_limit_and_its_setting() -> None:
    Trainer._check_skips(_stub(limit=3, consecutive=2))  # under the limit
    Trainer._check_skips(_stub(limit=0, consecutive=1000))  # 0: never stop
    with pytest.raises(TooManySkipsError, match=r"student 'a' .* 3 steps in a row \(steps 5-7\)"):
        Trainer._check_skips(_stub(limit=3, consecutive=3))
    assert issubclass(TooManySkipsError, VlcdError)  # the CLI prints it and exits with 2
    assert TrainConfig().optim.max_consecutive_skips > 0
    with pytest.raises(ConfigError, match="optim.max_consecutive_skips=-1"):
        load_config(None, ["optim.max_consecutive_skips=-1"])
