"""Two real gloo processes stream one epoch: every key once, equal batch counts."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import REPO

from vlcd_dist.pipelines.launch import multi_rank_command

# torchrun with 2 ranks: not in `make test-fast`.
pytestmark = pytest.mark.multiproc

SCRIPT = REPO / "tests" / "scripts" / "stream_epoch.py"


def _shard_keys(folder: Path) -> list[str]:
    keys = []
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def test_two_ranks_two_workers_cover_the_epoch_once(natural_shards, tmp_path):
    assert len(list(natural_shards.glob("*.tar"))) == 8
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        multi_rank_command(2, [SCRIPT, natural_shards, tmp_path, "3", "2"], launcher="torchrun"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    union = ranks[0]["keys"] + ranks[1]["keys"]
    expected = _shard_keys(natural_shards)
    assert len(expected) == 64
    assert len(union) == len(set(union)), "a sample was seen twice"
    assert sorted(union) == sorted(expected)
    # Same number of batches on both ranks, and it is what len(loader) promised.
    assert ranks[0]["batches"] == ranks[1]["batches"] == ranks[0]["len"] == ranks[1]["len"]
    assert ranks[0]["all_batches"] == [ranks[0]["batches"]] * 2
    # 8 samples a shard, 2 shards a worker, batches of 3: ceil(16/3) = 6 a worker, 12 a rank.
    assert ranks[0]["batches"] == 12
