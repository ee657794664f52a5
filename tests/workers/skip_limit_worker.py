"""Worker for tests/test_reliability_faults.py, started by ``accelerate launch`` with 2 ranks.

Runs ``vlcd <stage> ARGS...`` through the real CLI, with one student's loss made NaN at every
step on rank 0 only (rank 1 skips only because the skip flags are all-reduced). Each rank then
writes rank{r}.json (the CLI's exit status, the step reached, the counters), waits for the other
rank's file, and exits with the CLI's status. The file also holds a hash of each student's
parameters, so that the test can check both ranks hold the same ones (synced gradients).

    accelerate launch ... tests/workers/skip_limit_worker.py OUT STUDENT -- STAGE ARGS...
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import vlcd_dist.train.stages as stages
from vlcd_dist.cli import main as cli_main
from vlcd_dist.models.weights import state_dict_hash


def main() -> int:
    out, student, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: OUT STUDENT -- STAGE ARGS..."
    made = []
    create_stage = stages.create_stage

    def with_fault(cfg, name):
        trainer = create_stage(cfg, name)

        def nan_on_rank0(trainee: str, step: int, loss: torch.Tensor) -> torch.Tensor:
            if trainee == student and trainer.backend.rank == 0:
                return loss + torch.tensor(float("nan"))
            return loss

        trainer.loss_hook = nan_on_rank0
        made.append(trainer)
        return trainer

    stages.create_stage = with_fault  # the CLI looks it up when it runs the stage
    rc = cli_main(argv)
    if not made:
        return rc  # the CLI stopped before building the stage (its message says why)
    trainer = made[0]
    rank, world = trainer.backend.rank, trainer.backend.world_size
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = {"rc": rc, "step": trainer.state.step, "counters": trainer.state.counters}
    # The ranks saw different batches: equal parameters on both mean the gradients were synced
    # (not buffers: batch-norm statistics follow each rank's own batches).
    result["weights"] = {
        t.name: state_dict_hash(dict(t.module.named_parameters())) for t in trainer.trainees
    }
    (folder / f"rank{rank}.json").write_text(json.dumps(result))
    # The process group is gone (the CLI closed it): wait for the other rank's file, so that
    # neither exits (and has the launcher stop the other) before both have written.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all((folder / f"rank{r}.json").exists() for r in range(world)):
            break
        time.sleep(0.1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
