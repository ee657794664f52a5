"""Worker for tests/test_train_distributed.py, started by ``accelerate launch`` with 2 ranks.

Runs the same distill as the test's clean run, except that on rank 0 only, at one step, one
student's loss is made NaN (a NaN constant added: its gradient stays finite, so only the all-
reduced skip flag can make rank 1 skip too). Each rank then writes rank{r}.json: a hash of every
student's parameters and the skip counters, so the test can check that the ranks agree.

    accelerate launch ... tests/workers/distill_fault_worker.py RECIPE OUT STUDENT STEP --set ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vlcd_dist.config import load_config
from vlcd_dist.models.weights import state_dict_hash
from vlcd_dist.train.stages import create_stage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("out")
    ap.add_argument("student")
    ap.add_argument("step", type=int)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.recipe, args.set)
    cfg.run.out = args.out
    trainer = create_stage(cfg, "distill")

    def nan_on_rank0(name: str, step: int, loss: torch.Tensor) -> torch.Tensor:
        if name == args.student and step == args.step and trainer.backend.rank == 0:
            return loss + torch.tensor(float("nan"))
        return loss

    trainer.loss_hook = nan_on_rank0
    try:
        state = trainer.run()
        result = {
            # Parameters only: batch-norm statistics are per rank by design (DDP broadcasts
            # rank 0's at the start of every forward), parameters must agree exactly.
            "hashes": {
                t.name: state_dict_hash(dict(t.module.named_parameters())) for t in trainer.trainees
            },
            "counters": state.counters,
        }
        out = Path(args.out) / f"rank{trainer.backend.rank}.json"
        out.write_text(json.dumps(result))
    finally:
        trainer.backend.close()


if __name__ == "__main__":
    main()
