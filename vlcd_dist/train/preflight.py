"""Start-up checks of a stage's inputs.

Every path a stage reads is looked at before the process group, the teacher or any student is
built, so that a mistyped folder fails within a second and names its recipe key, instead of
minutes later (after the teacher has loaded) with a message about a file inside it.
"""

from __future__ import annotations

from pathlib import Path

from vlcd_dist.anchors import ANCHOR_FILE
from vlcd_dist.config import TrainConfig
from vlcd_dist.data.stream import resolve_shards
from vlcd_dist.errors import ConfigError, DataError

SHARD_KEYS: dict[str, tuple[str, ...]] = {
    "train-teacher": ("data.placenta",),
    "predistill": ("data.natural",),
    "distill": ("data.placenta",),
    "eval": ("data.placenta",),
}
"""The recipe keys of the shard sets each stage reads."""


def recipe_value(cfg: TrainConfig, key: str) -> object:
    """The value of a dotted recipe key such as ``data.placenta`` or ``students.0.init_from``."""
    node: object = cfg
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else getattr(node, part)
    return node


def check_shard_sets(cfg: TrainConfig, keys: tuple[str, ...] | list[str]) -> None:
    """Resolve every shard set named by ``keys``; a DataError names the key and its value."""
    for key in keys:
        spec = str(recipe_value(cfg, key))
        try:
            resolve_shards(spec, storage=cfg.data.storage)
        except DataError as exn:
            raise DataError(f"{key}={spec!r}: {exn}") from None


def _path_keys(cfg: TrainConfig, stage: str) -> list[str]:
    # A foundation-model teacher (teacher.source open_clip / hf_clip) reads no checkpoint of
    # train-teacher, and distill writes its anchors where distill.anchors points when absent.
    foreign = cfg.teacher.source != "vlcd"
    keys = [] if foreign else ["teacher.checkpoint"]
    students = [f"students.{i}.init_from" for i in range(len(cfg.students))]
    if stage == "distill":
        keys += ["distill.init_from", *([] if foreign else ["distill.anchors"]), *students]
    elif stage == "eval":
        keys += ["eval.students_from"] if cfg.eval.students_from else students
    if stage in ("predistill", "distill"):
        keys.append("teacher.cache")
    return keys


def check_stage_inputs(cfg: TrainConfig, stage: str) -> None:
    """Check the shard sets and the files or folders that ``stage`` reads; raise one error that
    names every recipe key whose path is missing."""
    check_shard_sets(cfg, SHARD_KEYS.get(stage, ()))
    missing = [
        f"{key}={value!r}"
        for key in _path_keys(cfg, stage)
        if (value := recipe_value(cfg, key)) is not None and not Path(str(value)).exists()
    ]
    if (
        stage == "distill"
        and cfg.teacher.source == "vlcd"
        and cfg.distill.anchors is None
        and cfg.teacher.checkpoint is not None
    ):
        beside = Path(cfg.teacher.checkpoint).parent / ANCHOR_FILE
        if Path(cfg.teacher.checkpoint).exists() and not beside.exists():
            missing.append(f"distill.anchors unset and no {ANCHOR_FILE} beside teacher.checkpoint")
    if missing:
        raise ConfigError(
            f"{stage}: no such file or folder: {'; '.join(missing)}. Fix the path in the recipe "
            "or with --set KEY=PATH (each is the output of an earlier stage: train-teacher writes "
            "OUT/export/teacher.safetensors, predistill and distill write OUT/export/<student>)"
        )
