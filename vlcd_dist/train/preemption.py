"""Preemption: a signal asks the run to checkpoint and stop; under SLURM the job is requeued.

SLURM warns a job before its time limit (``--signal``) or before preempting it. The warning
reaches the processes of a job at slightly different moments, or only some of them (a signal
sent by hand to one process), while the ranks must stop at the same step: a checkpoint is a
collective. So the handler only sets a local flag, and the trainer adds that flag to the one
all-reduce (max) it already runs every step (the NaN-skip flags). Every rank thus learns at the
same step boundary that some rank was signalled, saves the checkpoint of that step with the
others, and stops. Rank 0 then calls ``scontrol requeue`` once; the requeued job continues
with ``--resume`` (slurm/vlcd.sh adds it on a restart).

A preempted stage writes no export and no summary.json (it is not finished) and exits with
status 0 once requeued, or when not under SLURM (rerun with ``--resume``). Under SLURM, when
the requeue is refused (an interactive allocation, a job without ``--requeue``), rank 0 exits
with :data:`EXIT_NOT_REQUEUED` so that the job does not look finished.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from types import FrameType
from typing import Any

from vlcd_dist.distributed import signal_number, slurm_requeue_id

logger = logging.getLogger("vlcd_dist.train")

EXIT_NOT_REQUEUED = 3
"""Exit status of rank 0 when it checkpointed for a preemption under SLURM but ``scontrol
requeue`` failed: the job must be resubmitted with ``--resume``."""


class Preemption:
    """The preemption flag of this process and the handler that sets it.

    ``requested``: this process received the signal. ``agreed``: some rank had received it
    at the last step boundary (set by the trainer from the all-reduced flag), identical on
    every rank.
    """

    def __init__(self, signal_name: str | None) -> None:
        self.signum = signal_number(signal_name) if signal_name else None
        self.requested = False
        self.agreed = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the step in progress finishes, and the ranks stop together at its end.
        self.requested = True

    def install(self) -> None:
        """Handle the signal from now on (main thread only; elsewhere this does nothing)."""
        if self.signum is None or self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.debug("preemption: not in the main thread; %s is not handled", self.signum)
            return
        self._previous = signal.signal(self.signum, self._handle)
        # Restart interrupted system calls (collective transports, file reads) instead of
        # failing them with EINTR.
        signal.siginterrupt(self.signum, False)
        self._installed = True

    def uninstall(self) -> None:
        """Give the signal back its previous handler."""
        if not self._installed:
            return
        signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = False

    def requeue(self, is_main: bool) -> int:
        """After the preemption checkpoint: rank 0 requeues the SLURM job (once). Returns the
        exit status of this process (0, or EXIT_NOT_REQUEUED when the requeue failed)."""
        if not is_main:
            return 0
        job = slurm_requeue_id()
        if job is None:
            logger.warning(
                "preempted: checkpoint saved; not a SLURM batch job, so nothing is requeued. "
                "Rerun the same command with --resume to continue"
            )
            return 0
        cmd = ["scontrol", "requeue", job]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            problem = (proc.stderr.strip() or proc.stdout.strip()) if proc.returncode else None
        except (OSError, subprocess.TimeoutExpired) as exn:
            problem = str(exn)
        if problem is not None:
            logger.error(
                "preempted: checkpoint saved, but `%s` failed (%s); resubmit the job with "
                "--resume to continue",
                " ".join(cmd),
                problem,
            )
            return EXIT_NOT_REQUEUED
        logger.warning("preempted: checkpoint saved; SLURM job %s requeued", job)
        return 0
