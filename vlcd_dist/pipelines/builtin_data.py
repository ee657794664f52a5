"""The built-in data that ``vlcd demo`` and a sweep of the demo recipe run on: synthetic
placenta image-report pairs and natural crops of scikit-image's photographs, written by
``vlcd shards`` (as a subprocess, as a user would) when missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vlcd_dist.config import TrainConfig
from vlcd_dist.errors import VlcdError

REPO = Path(__file__).resolve().parents[2]
BUILTIN_SHARDS = REPO / "shards" / "demo"
"""Where the built-in shard sets live: ``placenta/`` and ``natural/``."""
PLACENTA_SYNTHETIC = 2000
NATURAL_COUNT = 5000


def ensure_shards(cfg: TrainConfig) -> None:
    """Write the built-in shard sets named by the recipe when they are missing."""
    placenta, natural = Path(cfg.data.placenta), Path(cfg.data.natural)
    jobs = [
        (placenta, ["shards", "placenta", "--synthetic", str(PLACENTA_SYNTHETIC)]),
        (natural, ["shards", "natural", "--count", str(NATURAL_COUNT)]),
    ]
    for folder, argv in jobs:
        if (folder / "sizes.json").is_file():
            continue
        print(f"==> writing the built-in shards: vlcd {' '.join(argv)} --out {folder}", flush=True)
        cmd = [sys.executable, "-m", "vlcd_dist", *argv, "--out", str(folder)]
        if subprocess.run(cmd).returncode != 0:
            raise VlcdError(f"could not write the demo shards into {folder}")


def ensure_builtin_shards(cfg: TrainConfig) -> None:
    """Write the demo's shard sets when the recipe points at them and they are missing."""
    builtin = {(BUILTIN_SHARDS / n).resolve() for n in ("placenta", "natural")}
    if {Path(cfg.data.placenta).resolve(), Path(cfg.data.natural).resolve()} <= builtin:
        ensure_shards(cfg)
