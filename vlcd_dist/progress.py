"""The one progress display of every long loop (training steps, shard writing).

In a terminal it is a tqdm bar. Anywhere else (a SLURM ``slurm-*.out`` file, a pipe, a CI log)
a bar would redraw with carriage returns that ``less`` and ``grep`` see as one endless line, so
it writes one plain line every ``every_s`` seconds instead, and one when it closes::

    12:04:31 distill: 120/1000 step (12%), 2.31 step/s, ETA 06:21 | efficientnet_b0 3.412 ...

Only rank 0 shows anything; every method is a no-op on the other ranks or when disabled.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from vlcd_dist.distributed import dist_info

DEFAULT_EVERY_S = 30.0
"""Seconds between two progress lines when the output is not a terminal."""

Values = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
"""What a progress display shows after the counts: name -> value, or a function returning it."""


def _clock(seconds: float) -> str:
    """``06:21`` or ``1:02:03``, as tqdm writes times."""
    from tqdm import tqdm

    return tqdm.format_interval(max(0.0, seconds))


class Progress:
    """Progress of ``total`` units (None: unknown) on rank 0's stderr.

    ``update(n, values)`` advances by ``n`` and shows ``values`` (name -> short text, e.g. each
    student's loss) after the counts; names are shown whole. ``values`` may be a function
    returning them, called only when they are shown (a loss read off the GPU is a sync).
    ``every_s`` is the interval of the plain lines (0: a line per update); a terminal always gets
    the bar.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "step",
        initial: int = 0,
        enabled: bool = True,
        every_s: float = DEFAULT_EVERY_S,
        stream: TextIO | None = None,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0 seconds, got {every_s}")
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = self.start_n = self.shown_n = initial
        self.values: dict[str, str] = {}
        self.pending: Values | None = None  # values not read yet (plain lines read them lazily)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and dist_info().rank == 0
        self.bar: Any = None
        self.start = self.last_line = time.monotonic()
        if self.enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                dynamic_ncols=True,
                file=self.stream,
            )

    def update(self, n: int = 1, values: Values | None = None) -> None:
        """Advance by ``n`` units; ``values`` replace the ones shown."""
        if not self.enabled:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if values is not None:
                self._take(values)
                self.bar.set_postfix(self.values, refresh=False)
        else:
            self.pending = values if values is not None else self.pending
            if self.n != self.shown_n and time.monotonic() - self.last_line >= self.every_s:
                self._line()

    def advance_to(self, done: int, values: Values | None = None) -> None:
        """Set the count to ``done`` (a running total kept elsewhere, e.g. by worker processes)."""
        self.update(max(0, done - self.n), values)

    def _take(self, values: Values) -> None:
        if callable(values):
            try:
                values = values()
            except Exception:  # noqa: BLE001 - a display never raises in place of the work's error
                return  # (e.g. the closing line after a failed step): keep the last values
        self.values = {str(k): str(v) for k, v in values.items()}

    def line(self) -> str:
        """The plain progress line (without the time stamp)."""
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = 100 * self.n / self.total
            text = f"{self.desc}: {self.n}/{self.total} {self.unit} ({share:.0f}%)"
        else:
            text = f"{self.desc}: {self.n} {self.unit}"
        text += f", {rate:.2f} {self.unit}/s" if rate < 10 else f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {_clock((self.total - self.n) / rate)}"
        else:
            text += f", {_clock(elapsed)} elapsed"
        if self.values:
            text += " | " + " ".join(f"{k} {v}" for k, v in self.values.items())
        return text

    def _line(self) -> None:
        if self.pending is not None:
            self._take(self.pending)
            self.pending = None
        print(f"{time.strftime('%H:%M:%S')} {self.line()}", file=self.stream, flush=True)
        self.last_line = time.monotonic()
        self.shown_n = self.n

    def close(self) -> None:
        """End the bar, or write the last line when it says something new."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n != self.shown_n:
            self._line()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bars_allowed() -> bool:
    """Whether this process may draw progress bars: rank 0 with stderr on a terminal. Libraries
    that draw their own (transformers' "Loading weights") are told to keep quiet otherwise."""
    return dist_info().rank == 0 and is_terminal(sys.stderr)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (False for files, pipes and closed streams)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
