"""Run by srun in tests: create a training backend by name on CPU, all-reduce (rank + 1) over
its group, and print one JSON line of what this process is.

Usage: backend_group_worker.py BACKEND
"""

import json
import sys

import torch

from vlcd_dist.train.backends import create_backend


def main() -> None:
    backend = create_backend(sys.argv[1], cpu=True)
    total = backend.all_reduce(torch.tensor([float(backend.rank + 1)]))
    line = {
        "backend": backend.name,
        "rank": backend.rank,
        "local_rank": backend.local_rank,
        "world_size": backend.world_size,
        "sum": float(total),
    }
    print("group " + json.dumps(line), flush=True)
    backend.close()


if __name__ == "__main__":
    main()
