"""Typed training recipes: one dataclass per component, read from YAML with ``--set`` overrides.

A recipe is a YAML mapping whose top-level keys are the sections of :class:`TrainConfig`. The
built-in ones ship inside the package (``vlcd_dist/configs/demo.yaml`` and ``paper.yaml``) and are
named by ``--config demo`` / ``--config paper`` from any folder. Every stage command reads the
same recipe and uses the sections it needs. Overrides address any field by its dotted path, list
items by index::

    vlcd distill --config demo --set optim.lr=3e-4 --set students.0.init_from=null

Values are parsed as YAML (``null``, ``true``, ``[96, 128]``) and then converted to the field's
type, so ``3e-4`` is a float even though YAML 1.1 would read it as a string; only ``true`` and
``false`` are booleans (YAML 1.2), so ``--set run.mixed_precision=no`` is the string. Unknown
keys are rejected with the closest valid name; a value of the wrong type names the field and what
it expects. The resolved recipe (:func:`to_dict`) is written beside every output and into every
checkpoint, so a run can always be rebuilt from what it wrote.
"""

from vlcd_dist.config.loading import (
    apply_override,
    dump_yaml,
    field_docs,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from vlcd_dist.config.recipes import builtin_recipe, builtin_recipes, resolve_recipe
from vlcd_dist.config.schema import (
    AUTOCAST_DTYPES,
    BACKENDS,
    MIXED_PRECISION,
    TEXT_FEATURES,
    CheckpointConfig,
    DataConfig,
    DegradeConfig,
    DistillConfig,
    EvalConfig,
    LoggingConfig,
    OptimConfig,
    PredistillConfig,
    RunConfig,
    StageConfig,
    StudentSpec,
    TeacherSection,
    TeacherStageConfig,
    TrainConfig,
    ZeroShotPrompt,
)
from vlcd_dist.errors import ConfigError

__all__ = [
    "AUTOCAST_DTYPES",
    "BACKENDS",
    "MIXED_PRECISION",
    "TEXT_FEATURES",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DegradeConfig",
    "DistillConfig",
    "EvalConfig",
    "LoggingConfig",
    "OptimConfig",
    "PredistillConfig",
    "RunConfig",
    "StageConfig",
    "StudentSpec",
    "TeacherSection",
    "TeacherStageConfig",
    "TrainConfig",
    "ZeroShotPrompt",
    "apply_override",
    "builtin_recipe",
    "builtin_recipes",
    "dump_yaml",
    "field_docs",
    "from_dict",
    "load_config",
    "parse_override",
    "resolve_recipe",
    "to_dict",
]
