"""The built-in data that ``vlcd demo`` and a sweep of the demo recipe run on: synthetic
placenta image-report pairs and natural crops of scikit-image's photographs, written by
``vlcd shards`` (as a subprocess, as a user would) when missing.

Only the built-in demo recipe's own data folders are ever filled: a recipe naming any other
folder that is missing (a typo, a URL) stops at start-up with the recipe key, rather than running
to the end on synthetic photographs and reporting them as the user's data.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vlcd_dist.config import TrainConfig, builtin_recipe, load_config
from vlcd_dist.errors import VlcdError
from vlcd_dist.train.preflight import check_shard_sets, recipe_value

PLACENTA_SYNTHETIC = 2000
NATURAL_COUNT = 5000
WRITERS: dict[str, list[str]] = {
    "data.placenta": ["shards", "placenta", "--synthetic", str(PLACENTA_SYNTHETIC)],
    "data.natural": ["shards", "natural", "--count", str(NATURAL_COUNT)],
}
"""Recipe key -> the ``vlcd`` command that writes its built-in shard set."""


def builtin_folders() -> dict[str, Path]:
    """Recipe key -> the folder the built-in demo recipe names for it (relative paths are
    relative to the current folder, as in every recipe)."""
    demo = load_config(builtin_recipe("demo"))
    return {key: Path(str(recipe_value(demo, key))) for key in WRITERS}


def ensure_builtin_shards(cfg: TrainConfig) -> None:
    """Write each built-in shard set that ``cfg`` names at the built-in recipe's own folder and
    that is missing there; then check every shard set the pipeline reads, so that any other
    missing one stops now (a DataError naming its recipe key)."""
    defaults = builtin_folders()
    for key, argv in WRITERS.items():
        folder = Path(str(recipe_value(cfg, key)))
        if folder.resolve() != defaults[key].resolve() or (folder / "sizes.json").is_file():
            continue
        print(f"==> writing the built-in shards: vlcd {' '.join(argv)} --out {folder}", flush=True)
        cmd = [sys.executable, "-m", "vlcd_dist", *argv, "--out", str(folder)]
        if subprocess.run(cmd).returncode != 0:
            raise VlcdError(f"could not write the built-in shards into {folder}")
    check_shard_sets(cfg, list(WRITERS))
