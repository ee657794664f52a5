"""Where shard sets live: local folders, S3-compatible object stores, web servers.

A shard set's location is a local path, ``s3://bucket/prefix`` or ``http(s)://host/path``.
Remote ones are read through fsspec (s3fs for S3, aiohttp for HTTP), as streams: a shard is
never copied to disk. Credentials are never part of a recipe (recipes are written next to the
outputs and into checkpoints): s3fs takes them from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), a profile of
``~/.aws/credentials`` or the instance's role; the endpoint of a non-AWS store (MinIO, Ceph,
rclone) comes from :attr:`StorageConfig.endpoint_url` or ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``.

Errors fall in two kinds:

* transient (connection refused or reset, timeout, HTTP 5xx or 429, a stream that ends before
  its length): retried with exponential backoff, each retry reported to a callback (the loader
  counts them as ``data/retries``). A shard read that breaks mid-stream is reopened and
  continued at the byte where it broke, so the samples are exactly those of an unbroken read.
* permanent (no such bucket or object, access denied, a bad address): raised at once as a
  :class:`StorageError` that names the URL and the cause. Start-up reads use only a couple of
  attempts, so a wrong endpoint fails within seconds.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from ..errors import DataError

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "http", "https")
START_UP_ATTEMPTS = 2  # start-up reads: one retry, then the error (a wrong endpoint fails fast)
BACKOFF_CAP_S = 30.0

T = TypeVar("T")
OnRetry = Callable[[str, BaseException, int], None]  # (url, error, attempt number from 1)


class StorageError(DataError):
    """A shard set's file could not be read or written; the message names URL and cause."""


@dataclass
class StorageConfig:
    """How remote shard sets (s3://, http(s)://) are reached; local folders ignore it."""

    endpoint_url: str | None = None
    """S3 endpoint of a non-AWS store (MinIO, Ceph): None takes AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL from the environment, else AWS itself."""
    region: str | None = None
    """S3 region; None: AWS_REGION / AWS_DEFAULT_REGION, else the store's default."""
    profile: str | None = None
    """Profile of ~/.aws/credentials to sign with; None: AWS_PROFILE or the AWS_* keys."""
    anon: bool = False
    """Send unsigned S3 requests (public buckets)."""
    retries: int = 8
    """Retries of one read after a transient error before the run stops with the error."""
    backoff_s: float = 0.5
    """Wait before the first retry; it doubles with each retry, up to 30 s."""
    timeout_s: float = 60.0
    """Seconds to connect, and to wait for data, before a read counts as failed."""

    def validate(self) -> None:
        if self.retries < 0:
            raise DataError(f"data.storage.retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0:
            raise DataError(f"data.storage.backoff_s must be >= 0, got {self.backoff_s}")
        if self.timeout_s <= 0:
            raise DataError(f"data.storage.timeout_s must be > 0, got {self.timeout_s}")
        if self.endpoint_url and urlsplit(self.endpoint_url).scheme not in ("http", "https"):
            raise DataError(
                f"data.storage.endpoint_url must be an http:// or https:// URL, got "
                f"{self.endpoint_url!r}"
            )

    def endpoint(self) -> str | None:
        """The S3 endpoint in use: the recipe's, else the environment's, else None (AWS)."""
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )


# --------------------------------------------------------------------------------------------
# Locations


def scheme(url: str) -> str:
    """ "s3", "http", "https" for remote locations, "" for local paths (and ``pipe:``)."""
    found = urlsplit(url).scheme.lower() if "://" in url else ""
    return found if found in REMOTE_SCHEMES else ""


def is_remote(url: str) -> bool:
    return scheme(url) != ""


def check_location(url: str) -> None:
    """Refuse a URL scheme that is neither local nor one of :data:`REMOTE_SCHEMES`."""
    if "://" in url and not is_remote(url):
        raise StorageError(
            f"{url}: unsupported location; shard sets are local folders, s3://bucket/prefix or "
            "http(s)://host/path"
        )


def join(folder: str, name: str) -> str:
    """``folder``/``name`` for a local path or a URL."""
    if is_remote(folder):
        return folder.rstrip("/") + "/" + name
    return str(Path(folder) / name)


def parent(url: str) -> str:
    """The folder holding ``url`` (a URL keeps its scheme and host)."""
    if is_remote(url):
        return url.rsplit("/", 1)[0]
    return str(Path(url).parent)


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _endpoint_of(url: str, cfg: StorageConfig) -> str:
    if scheme(url) == "s3":
        return cfg.endpoint() or "AWS S3"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# --------------------------------------------------------------------------------------------
# File systems


def filesystem(url: str, cfg: StorageConfig):
    """The fsspec file system of a remote ``url``. Built per process from ``cfg`` (fsspec keeps
    one instance per process and arguments; DataLoader workers build their own). Its own
    retries are off: :func:`with_retries` retries, so that every retry is counted."""
    import fsspec

    kind = scheme(url)
    if kind == "s3":
        client: dict[str, Any] = {}
        if cfg.endpoint():
            client["endpoint_url"] = cfg.endpoint()
        region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client["region_name"] = region
        # The keys are passed on (not left to botocore) so that fsspec's per-process cache of
        # file systems, keyed by these arguments, follows a change of the environment.
        keys = {
            name: os.environ.get(var)
            for name, var in (
                ("key", "AWS_ACCESS_KEY_ID"),
                ("secret", "AWS_SECRET_ACCESS_KEY"),
                ("token", "AWS_SESSION_TOKEN"),
            )
            if os.environ.get(var) and not cfg.profile and not cfg.anon
        }
        fs = fsspec.filesystem(
            "s3",
            anon=cfg.anon,
            profile=cfg.profile,
            **keys,
            client_kwargs=client,
            config_kwargs={
                "connect_timeout": cfg.timeout_s,
                "read_timeout": cfg.timeout_s,
                "retries": {"total_max_attempts": 1},
            },
        )
        fs.retries = 1  # s3fs's own retries of transient errors (a class attribute): one try
        return _held(fs)
    if kind in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(sock_connect=cfg.timeout_s, sock_read=cfg.timeout_s)
        return _held(fsspec.filesystem(kind, client_kwargs={"timeout": timeout}))
    raise StorageError(f"{url}: not a remote location")


_HELD: dict[int, Any] = {}


def _held(fs: Any) -> Any:
    """Keep a reference to every file system this process made.

    A forked process (a DataLoader worker) inherits them, with sessions bound to this
    process's event loop; fsspec drops them from its cache in the child, and were they then
    garbage-collected there, closing those sessions on a loop that does not run in the child
    would print "attached to a different loop" tracebacks. Held here, they stay alive in the
    child until it ends through os._exit, which runs no finalizer; this process closes them
    itself at exit."""
    _HELD.setdefault(id(fs), fs)
    return fs


def _path(url: str) -> str:
    """What the file system is given: S3 takes ``bucket/key``, HTTP the whole URL."""
    return url.split("://", 1)[1] if scheme(url) == "s3" else url


# --------------------------------------------------------------------------------------------
# Errors


class _ShortRead(OSError):
    """A stream ended before the object's length: the connection broke without an error."""


def _chain(exn: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exn
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(exn: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp's status, botocore's HTTPStatusCode)."""
    status = getattr(exn, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exn, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def _is_connection_error(exn: BaseException) -> bool:
    """Could not reach, or lost, the server (any library's kind of saying so)."""
    if isinstance(exn, ConnectionError | TimeoutError | _ShortRead):
        return True
    name = type(exn).__name__
    module = type(exn).__module__
    if module.startswith("aiohttp") and ("Connect" in name or "Disconnect" in name):
        return True
    if module.startswith("aiohttp") and name in ("ClientPayloadError", "ServerTimeoutError"):
        return True
    if module.startswith("botocore") and any(
        base.__name__ in ("HTTPClientError", "ConnectionError", "IncompleteReadError")
        for base in type(exn).__mro__
    ):
        return True
    return name == "FSTimeoutError"


def _is_unreachable(exn: BaseException) -> bool:
    """No connection could be made at all (refused, no route, unknown host, connect timeout)."""
    if isinstance(exn, ConnectionRefusedError | socket.gaierror):
        return True
    return type(exn).__name__ in (
        "ClientConnectorError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionTimeoutError",
    )


def is_transient(exn: BaseException) -> bool:
    """True for errors worth retrying: a lost connection, a timeout, HTTP 5xx or 429. A
    missing object, a refused permission or a bad request are not: retrying cannot help."""
    for err in _chain(exn):
        status = _status(err)
        if status is not None:
            return status >= 500 or status == 429
        if _is_connection_error(err):
            return True
        if isinstance(err, OSError) and err.errno in (errno.EIO, getattr(errno, "EREMOTEIO", -1)):
            return True
    return False


def is_missing(exn: StorageError) -> bool:
    """True when ``exn`` says the file is not there (no such object, bucket or HTTP 404), not
    that the server could not be reached (fsspec's HTTP layer reports both as not found)."""
    cause = exn.__cause__
    return isinstance(cause, FileNotFoundError) and not is_transient(cause)


def describe(exn: BaseException, url: str, cfg: StorageConfig) -> str:
    """One line saying what went wrong with ``url`` and what to check."""
    endpoint = _endpoint_of(url, cfg)
    status = next((s for e in _chain(exn) if (s := _status(e)) is not None), None)
    root = [e for e in _chain(exn)][-1]
    cause = f"{type(root).__name__}: {root}".strip()
    if is_transient(exn):
        if any(_is_unreachable(e) for e in _chain(exn)):
            hint = (
                "check data.storage.endpoint_url / AWS_ENDPOINT_URL"
                if scheme(url) == "s3"
                else "check the host and port"
            )
            return f"{url}: cannot reach {endpoint} ({cause}); {hint}"
        if status is None:
            return f"{url}: lost the connection to {endpoint} ({cause})"
        return f"{url}: the server failed (HTTP {status}; {cause})"
    if isinstance(exn, PermissionError) or status in (401, 403):
        creds = (
            "the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or "
            "data.storage.profile) are wrong or may not read it"
            if scheme(url) == "s3"
            else "the server refuses it"
        )
        return f"{url}: access denied ({cause}); {creds}"
    if isinstance(exn, FileNotFoundError) or status == 404:
        what = "no such bucket or object" if scheme(url) == "s3" else "no such file (HTTP 404)"
        return f"{url}: {what} at {endpoint} ({cause})"
    return f"{url}: {cause}"


def backoff(cfg: StorageConfig, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
    return min(BACKOFF_CAP_S, cfg.backoff_s * 2 ** (attempt - 1))


def with_retries(
    call: Callable[[], T],
    url: str,
    cfg: StorageConfig,
    *,
    attempts: int | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """``call()``, retried after transient errors (``attempts`` in all, default
    ``cfg.retries + 1``); raises :class:`StorageError` naming ``url`` and the cause."""
    attempts = cfg.retries + 1 if attempts is None else attempts
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except StorageError:
            raise
        except Exception as exn:
            if not is_transient(exn) or attempt == attempts:
                raise StorageError(describe(exn, url, cfg)) from exn
            _retrying(url, exn, attempt, cfg, on_retry)
    raise AssertionError("unreachable")


def _retrying(
    url: str, exn: BaseException, attempt: int, cfg: StorageConfig, on_retry: OnRetry | None
) -> None:
    wait = backoff(cfg, attempt)
    logger.warning(
        "%s: %s; retry %d of %d in %.1f s",
        url,
        describe(exn, url, cfg).split(": ", 1)[-1],
        attempt,
        cfg.retries,
        wait,
    )
    if on_retry is not None:
        on_retry(url, exn, attempt)
    time.sleep(wait)


# --------------------------------------------------------------------------------------------
# Reading


def read_bytes(url: str, cfg: StorageConfig, *, attempts: int = START_UP_ATTEMPTS) -> bytes:
    """The whole content of a small file (sizes.json, info.json) at a local path or URL."""
    if not is_remote(url):
        try:
            with open(url, "rb") as handle:
                return handle.read()
        except OSError as exn:
            raise StorageError(f"cannot read {url}: {exn}") from exn
    return with_retries(
        lambda: filesystem(url, cfg).cat_file(_path(url)), url, cfg, attempts=attempts
    )


def exists(url: str, cfg: StorageConfig, *, attempts: int = START_UP_ATTEMPTS) -> bool:
    """Whether a file exists; a server that cannot be reached is an error, not False."""
    if not is_remote(url):
        return os.path.exists(url)
    try:
        read_size(url, cfg, attempts=attempts)
    except StorageError as exn:
        if is_missing(exn):
            return False
        raise
    return True


def read_size(url: str, cfg: StorageConfig, *, attempts: int = START_UP_ATTEMPTS) -> int | None:
    """The length of a remote file in bytes (None when the server does not say)."""
    fs = filesystem(url, cfg)
    info = with_retries(lambda: fs.info(_path(url)), url, cfg, attempts=attempts)
    size = info.get("size")
    return int(size) if size is not None else None


def missing(urls: list[str], cfg: StorageConfig) -> list[str]:
    """The ``urls`` that do not exist. S3: one listing per prefix; HTTP: a HEAD request each."""
    if not urls:
        return []
    if not is_remote(urls[0]):
        return [u for u in urls if not u.startswith("pipe:") and not os.path.exists(u)]
    if scheme(urls[0]) == "s3":
        found: set[str] = set()
        for folder in sorted({parent(u) for u in urls}):
            fs = filesystem(folder, cfg)
            listing = with_retries(
                lambda fs=fs, folder=folder: fs.ls(_path(folder), detail=False, refresh=True),
                folder,
                cfg,
                attempts=START_UP_ATTEMPTS,
            )
            found.update(f"s3://{p}" for p in listing)
        return [u for u in urls if u not in found]
    return [u for u in urls if not exists(u, cfg)]


class RetryingReader(io.RawIOBase):
    """A remote file read front to back; a read that fails transiently is retried (the file
    reopened and continued at the same byte), so a reader never sees the break."""

    def __init__(self, url: str, cfg: StorageConfig, on_retry: OnRetry | None = None):
        super().__init__()
        self.url, self.cfg, self.on_retry = url, cfg, on_retry
        self._fs = filesystem(url, cfg)
        self._pos = 0
        self._file: Any = None
        self._size: int | None = None
        self._attempt(self._ensure_open)

    def readable(self) -> bool:
        return True

    def _ensure_open(self) -> None:
        if self._file is not None:
            return
        if scheme(self.url) == "s3":
            handle = self._fs.open(
                _path(self.url), "rb", block_size=4 << 20, cache_type="readahead"
            )
            self._size = handle.size
            if self._pos:
                handle.seek(self._pos)
        else:
            # block_size=0: one streaming GET; servers without range requests work too.
            handle = self._fs.open(self.url, "rb", block_size=0)
            if self._size is None:
                length = getattr(getattr(handle, "r", None), "content_length", None)
                self._size = int(length) if length is not None else None
            left = self._pos
            while left:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    raise _ShortRead(f"stream ended at byte {self._pos - left} while resuming")
                left -= len(chunk)
        self._file = handle

    def _attempt(self, call: Callable[[], T]) -> T:
        attempts = self.cfg.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except Exception as exn:
                self._drop()
                if not is_transient(exn) or attempt == attempts:
                    raise StorageError(describe(exn, self.url, self.cfg)) from exn
                _retrying(self.url, exn, attempt, self.cfg, self.on_retry)
        raise AssertionError("unreachable")

    def _read_some(self, n: int) -> bytes:
        self._ensure_open()
        data = self._file.read(n)
        if not data and self._size is not None and self._pos < self._size:
            raise _ShortRead(f"stream ended at byte {self._pos} of {self._size}")
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._attempt(lambda: self._read_some(len(view)))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _drop(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                pass
            self._file = None

    def close(self) -> None:
        self._drop()
        super().close()


@contextmanager
def open_read(url: str, cfg: StorageConfig, on_retry: OnRetry | None = None) -> Iterator[BinaryIO]:
    """A binary stream of ``url``: a local file or ``pipe:`` command as before, a remote one
    through :class:`RetryingReader` (buffered in 1 MiB reads)."""
    if not is_remote(url):
        from webdataset.gopen import gopen

        with gopen(url, "rb") as stream:
            yield stream
        return
    with io.BufferedReader(RetryingReader(url, cfg, on_retry), buffer_size=1 << 20) as stream:
        yield stream  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Writing (object stores only: a web server is read-only here)


def check_writable(url: str) -> None:
    if scheme(url) in ("http", "https"):
        raise StorageError(
            f"{url}: shard sets cannot be written to a web server; write them to a folder or "
            "to s3://bucket/prefix (an S3-compatible store) and serve that"
        )


def upload(local: str, url: str, cfg: StorageConfig) -> None:
    """Put a local file at ``url``. An S3 object appears whole or not at all, so a killed
    upload leaves nothing to mistake for a complete shard."""
    fs = filesystem(url, cfg)
    with_retries(lambda: fs.put_file(local, _path(url)), url, cfg)


def write_bytes(url: str, data: bytes, cfg: StorageConfig) -> None:
    fs = filesystem(url, cfg)
    with_retries(lambda: fs.pipe_file(_path(url), data), url, cfg)


def remove(url: str, cfg: StorageConfig) -> None:
    fs = filesystem(url, cfg)
    try:
        with_retries(lambda: fs.rm_file(_path(url)), url, cfg)
    except StorageError as exn:
        if not isinstance(exn.__cause__, FileNotFoundError):
            raise


def listdir(folder: str, cfg: StorageConfig) -> list[str]:
    """Names (not URLs) of the objects directly under an S3 prefix; [] if there are none."""
    fs = filesystem(folder, cfg)
    try:
        found = with_retries(lambda: fs.ls(_path(folder), detail=False, refresh=True), folder, cfg)
    except StorageError as exn:
        if is_missing(exn):
            return []
        raise
    return [basename(p) for p in found]
