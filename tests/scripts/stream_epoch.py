"""Run by torchrun in tests: stream one epoch on this rank and write what it saw as JSON.

Usage: stream_epoch.py SHARDS OUT_DIR BATCH_SIZE NUM_WORKERS
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vlcd_dist.data.stream import ShardLoader, StreamConfig
from vlcd_dist.distributed import dist_info


def main() -> None:
    shards, out, batch_size, workers = (
        sys.argv[1],
        Path(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    dist.init_process_group("gloo")
    info = dist_info()
    cfg = StreamConfig(
        shards=shards,
        batch_size=batch_size,
        num_workers=workers,
        image_size=(32, 32),
        shuffle=True,
        seed=3,
    )
    loader = ShardLoader(cfg)  # rank and world from dist_info()
    loader.set_epoch(1)
    keys, batches = [], 0
    for batch in loader:
        keys += batch["key"]
        batches += 1
        # A collective per step, as training does: a rank with one batch fewer would hang here.
        step = torch.tensor([batches])
        dist.all_reduce(step, op=dist.ReduceOp.MAX)
        assert int(step) == batches
    counts = torch.tensor([batches])
    gathered = [torch.zeros_like(counts) for _ in range(info.world_size)]
    dist.all_gather(gathered, counts)
    record = {
        "rank": info.rank,
        "world": info.world_size,
        "keys": keys,
        "batches": batches,
        "len": len(loader),
        "all_batches": [int(c) for c in gathered],
    }
    (out / f"rank{info.rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
