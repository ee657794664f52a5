"""Zero-shot scores from prompt embeddings: cos(z, positive) - cos(z, negative), no training.

Each side of a task may have several prompts; their embeddings are combined by
:func:`ensemble_prompts` (CLIP's prompt ensembling), so no single wording, nor a bare "no" that
a small text encoder hardly encodes, decides the score.
"""

from __future__ import annotations

import logging

import numpy as np

from vlcd_dist.errors import ConfigError
from vlcd_dist.evaluation.metrics import l2_normalize

logger = logging.getLogger("vlcd_dist.eval")


def zero_shot_scores(
    image_features: np.ndarray, positive: np.ndarray, negative: np.ndarray
) -> np.ndarray:
    """Zero-shot scores cos(z, positive) - cos(z, negative), no training.

    image_features [N, d] (raw, in the teacher's embedding space); positive, negative [d] (one
    task) or [T, d] (one row per task) prompt embeddings. Returns [N], or [N, T] for [T, d].
    """
    x = l2_normalize(np.asarray(image_features, dtype=np.float64))
    pos = l2_normalize(np.atleast_2d(np.asarray(positive, dtype=np.float64)))
    neg = l2_normalize(np.atleast_2d(np.asarray(negative, dtype=np.float64)))
    scores = x @ pos.T - x @ neg.T
    return scores[:, 0] if np.ndim(positive) == 1 else scores


def ensemble_prompts(embeddings: np.ndarray) -> np.ndarray:
    """One prompt embedding from several: the mean of the unit-length rows, made unit length.

    embeddings [K, d] (K >= 1 prompts of one side of one task) -> [d].
    """
    rows = l2_normalize(np.atleast_2d(np.asarray(embeddings, dtype=np.float64)))
    return l2_normalize(rows.mean(axis=0, keepdims=True))[0]


def prompt_tasks(prompts: dict[str, object], tasks: list[str], shards: str) -> list[str]:
    """The shard tasks that have zero-shot prompts, in shard order; [] (logged) when none.

    A prompt for a task the shards do not have is a ConfigError naming it."""
    unknown = [t for t in prompts if t not in tasks]
    if unknown:
        raise ConfigError(
            f"eval.zero_shot_prompts has prompts for task(s) {unknown} that the shards "
            f"{shards} do not have; their tasks are {tasks}. Key the prompts by those names, "
            "or drop them (--set eval.zero_shot_prompts={} skips zero-shot)"
        )
    chosen = [t for t in tasks if t in prompts]
    if not chosen:
        logger.info(
            "eval: zero-shot skipped: eval.zero_shot_prompts has no prompts for the tasks %s",
            tasks,
        )
    elif len(chosen) < len(tasks):
        logger.info(
            "eval: zero-shot for %s; no prompts for %s",
            chosen,
            [t for t in tasks if t not in prompts],
        )
    return chosen
