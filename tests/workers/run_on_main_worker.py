"""Run by torchrun in tests (2 gloo ranks): Backend.run_on_main with work that succeeds, then
with work that fails on rank 0; each rank writes what it saw to OUT/rank{r}.json.

Usage: run_on_main_worker.py OUT
"""

import json
import sys
from pathlib import Path

import torch

from vlcd_dist.models import ModelError
from vlcd_dist.train.backends import create_backend


def main() -> None:
    out = Path(sys.argv[1])
    backend = create_backend("accelerate", cpu=True, collective_timeout_s=60)
    seen: dict[str, object] = {"world_size": backend.world_size}
    done = out / "done.txt"
    backend.run_on_main("writing done.txt", lambda: done.write_text("ok"))
    # Every rank goes on only after rank 0's work is complete.
    seen["after_success"] = done.read_text()

    def fail() -> None:
        raise ModelError("teacher text tower: cannot read /nowhere/model.safetensors")

    try:
        backend.run_on_main("building the text anchors /x/anchors.safetensors", fail)
        seen["failure"] = None
    except Exception as exn:  # noqa: BLE001 - recorded for the test
        seen["failure"] = {"type": type(exn).__name__, "message": str(exn)}
    # The ranks are still in step: one more collective goes through.
    seen["sum"] = float(backend.all_reduce(torch.tensor([float(backend.rank + 1)])))
    (out / f"rank{backend.rank}.json").write_text(json.dumps(seen))
    backend.close()


if __name__ == "__main__":
    main()
