"""Worker for tests/test_reliability_resume.py, started by ``accelerate launch`` (2-4 ranks).

Runs ``vlcd distill`` as the CLI does (recipe, ``--set`` overrides, ``--resume``), and also:

- appends ``STEP KEY`` for every sample of every batch this rank trains on to
  ``OUT/keys/rank{r}.{TAG}.txt`` (batches read only to skip ahead on a resume are not trained on,
  so they are not written);
- ``--pause-before STEP``: when about to train step STEP, writes its pid to ``OUT/paused.rank{r}``
  and sleeps, so that the test can SIGKILL the whole job at a known point (the steps after the last
  checkpoint are then already in TensorBoard);
- ``--stop-after STEP``: right after the checkpoint of step STEP is written, stops cleanly
  (TensorBoard closed, data workers shut down, process group released; no export, no summary)
  and exits 0, as a preempted job that saved its state would.
- ``--outage-before STEP``: when about to train step STEP, rank 0 writes ``OUT/outage.request``
  and waits for ``OUT/outage.down`` (the test has stopped the shard server), then goes on; the
  other ranks wait for it in the step's collectives.

    accelerate launch ... tests/workers/resume_worker.py RECIPE OUT TAG [--resume] \
        [--pause-before N | --stop-after N] [--outage-before N] --set ...
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import vlcd_dist
from vlcd_dist.config import load_config
from vlcd_dist.train.stages import create_stage


class CleanStop(Exception):
    """Raised after the checkpoint of --stop-after."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("out")
    ap.add_argument("tag")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--pause-before", type=int, default=0)
    ap.add_argument("--stop-after", type=int, default=0)
    ap.add_argument("--outage-before", type=int, default=0)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.recipe, args.set)
    cfg.run.out = args.out
    cfg.checkpoint.resume = args.resume
    trainer = create_stage(cfg, "distill")
    rank = trainer.backend.rank
    if rank == 0:  # which tree the ranks import (PYTHONPATH, editable install)
        print(f"resume_worker: vlcd_dist from {Path(vlcd_dist.__file__).parent}", flush=True)
    keys_file = Path(args.out) / "keys" / f"rank{rank}.{args.tag}.txt"
    keys_file.parent.mkdir(parents=True, exist_ok=True)

    train_step = trainer.train_step

    def recording_train_step(group):
        step = trainer.state.step + 1
        if step == args.pause_before:
            # The pid: the launcher starts each rank in a session of its own, so the test kills
            # the rank's process group (the rank and its data workers) besides the launcher's.
            marker = Path(args.out) / f"paused.rank{rank}"
            tmp = marker.parent / f"{marker.name}.tmp"
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, marker)
            time.sleep(600)  # until the test kills the job
            os._exit(1)
        if step == args.outage_before and rank == 0:
            (Path(args.out) / "outage.request").touch()
            deadline = time.monotonic() + 120
            while not (Path(args.out) / "outage.down").exists():
                assert time.monotonic() < deadline, "the test never stopped the server"
                time.sleep(0.05)
        with open(keys_file, "a") as f:
            f.writelines(f"{step} {key}\n" for batch in group for key in batch["key"])
        return train_step(group)

    save_checkpoint = trainer.save_checkpoint

    def stopping_save_checkpoint():
        path = save_checkpoint()
        if trainer.state.step == args.stop_after:
            raise CleanStop
        return path

    trainer.train_step = recording_train_step
    trainer.save_checkpoint = stopping_save_checkpoint
    try:
        trainer.run()
    except CleanStop:
        pass
    finally:
        trainer.backend.close()


if __name__ == "__main__":
    main()
