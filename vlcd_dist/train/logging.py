"""TensorBoard and console output of the trainers; only rank 0 writes anything (the progress
display is :mod:`vlcd_dist.progress`, shared with shard writing).

Tags: every trained model has its own namespace (``<student>/loss``, ``<student>/lr``, ...);
throughput lives under ``perf/``, skipped-sample counts under ``data/``, evaluation under
``eval/``. The resolved recipe is written as text (``config``) at step 0.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from vlcd_dist.distributed import DistInfo, dist_info

logger = logging.getLogger("vlcd_dist")


def setup_console_logging(is_main: bool) -> None:
    """INFO on rank 0, warnings only on the other ranks (one readable console).

    In a multi-process run every rank also prints one line saying where it runs (see
    :func:`rank_line`), whatever its log level.
    """
    level = logging.INFO if is_main else logging.WARNING
    root = logging.getLogger("vlcd_dist")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        _announce_rank()
    root.setLevel(level)
    root.propagate = False


def rank_line(info: DistInfo) -> str:
    """``vlcd: rank 1/4 (local rank 1, node 0/2) on node1 (host gpu-a17)``: in a cluster job
    log, where every node's output is interleaved, this is what ties each rank to its node."""
    return (
        f"vlcd: rank {info.rank}/{info.world_size} (local rank {info.local_rank}, "
        f"node {info.node_rank}/{info.num_nodes}) on {info.node_name} (host {info.hostname})"
    )


def _announce_rank() -> None:
    # Printed rather than logged: ranks other than 0 log warnings only, and this line is
    # wanted from every rank. Once per process (the first stage that sets up logging).
    info = dist_info()
    if info.world_size > 1:
        print(rank_line(info), file=sys.stderr, flush=True)


class TBLogger:
    """A SummaryWriter on rank 0; every method is a no-op elsewhere or when disabled."""

    def __init__(self, folder: str | Path, enabled: bool) -> None:
        self.folder = Path(folder)
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(self.folder))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One scalar per tag."""
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    def purge_from(self, step: int) -> None:
        """Hide events of earlier writers in this folder at ``step`` and later: TensorBoard
        drops them on reading this marker (a session restart, what SummaryWriter's
        ``purge_step`` writes), so steps redone after a resume appear once."""
        if self.writer is None:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self.writer.flush()
        self.writer.file_writer.add_event(
            Event(step=step, session_log=SessionLog(status=SessionLog.START))
        )
        self.writer.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Markdown text (TensorBoard renders it in the TEXT tab)."""
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def image(self, tag: str, image: np.ndarray, step: int = 0) -> None:
        """An RGB image, uint8 array [H, W, 3]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Meter:
    """Running sums of named values between two logging steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.start = time.perf_counter()

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / max(1, self.counts[k]) for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.start = time.perf_counter()
