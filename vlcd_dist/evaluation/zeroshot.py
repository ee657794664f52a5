"""Zero-shot scores from prompt embeddings: cos(z, positive) - cos(z, negative), no training."""

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


def prompt_tasks(prompts: dict[str, list[str]], tasks: list[str], shards: str) -> list[str]:
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
