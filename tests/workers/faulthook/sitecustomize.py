"""Fault injection for the reliability tests, in processes the tests do not start themselves.

The tests run the real command lines (``accelerate launch -m vlcd_dist distill``, ``torchrun``,
``sbatch slurm/vlcd.sh``) with this folder on PYTHONPATH, so Python imports this module at
start-up in every process. It does nothing unless ``VLCD_TEST_FAULT`` is set, and acts only in
training processes (``RANK`` set: not in the launchers) on a first attempt (neither a requeued
SLURM job nor a restart by torchrun), so a restarted run goes through cleanly.

``VLCD_TEST_FAULT=KIND:RANK:STEP``: on rank RANK, when STEP optimizer steps are done (before
the next one):

- ``wait-signal``: wait (up to ``VLCD_TEST_FAULT_WAIT_S``, default 300 s) until this process
  receives the preemption signal. The test sends it once the ready file exists (below), so the
  signal lands at a known step.
- ``exit``: end the process at once with status 17, as a crash or an OOM kill would.
- ``hang``: stop making progress (sleep) without exiting, as a stuck process would.

First the process writes its pid to the file named by ``VLCD_TEST_FAULT_READY`` (if set): the
test knows from it when the fault happened and which process to signal.
"""

from __future__ import annotations

import os
import sys
import time


def _first_attempt() -> bool:
    return all(
        os.environ.get(name, "0").strip() in ("", "0")
        for name in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
    )


def _fire(kind: str, trainer: object) -> None:
    # The test learns the moment of the fault (and this pid) from this file.
    ready = os.environ.get("VLCD_TEST_FAULT_READY")
    if ready:
        with open(f"{ready}.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(f"{ready}.tmp", ready)
    if kind == "exit":
        print(f"[faulthook] rank {os.environ['RANK']}: exiting (status 17)", file=sys.stderr)
        sys.stderr.flush()
        os._exit(17)
    if kind == "hang":
        print(f"[faulthook] rank {os.environ['RANK']}: hanging", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
    if kind == "wait-signal":
        deadline = time.monotonic() + float(os.environ.get("VLCD_TEST_FAULT_WAIT_S", "300"))
        preemption = trainer.preemption  # type: ignore[attr-defined]
        while not preemption.requested and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    raise ValueError(f"VLCD_TEST_FAULT: unknown kind {kind!r}")


def _install() -> None:
    spec = os.environ.get("VLCD_TEST_FAULT", "").strip()
    if not spec or "RANK" not in os.environ or not _first_attempt():
        return
    kind, rank, step = spec.split(":")
    rank_n, step_n = int(rank), int(step)
    from vlcd_dist.train import trainer as trainer_module

    original = trainer_module.Trainer.train_step

    def train_step(self, group):  # type: ignore[no-untyped-def]
        if self.state.step == step_n and self.backend.rank == rank_n:
            _fire(kind, self)
        return original(self, group)

    trainer_module.Trainer.train_step = train_step  # type: ignore[method-assign]


_install()
