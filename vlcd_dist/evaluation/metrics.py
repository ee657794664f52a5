"""AUC-ROC, ROC curves and bootstrap intervals (BCa, plain and paired) on plain arrays (no
torch)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np


def auc_roc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when y has one class only."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm: [N, d] -> [N, d]."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def bca_intervals(
    statistic: Callable[[np.ndarray], np.ndarray],
    m: int,
    resamples: int,
    confidence: float,
    seed: int = 0,
) -> np.ndarray:
    """Bias-corrected and accelerated (BCa) bootstrap intervals of a vector statistic of the
    rows of one sample (:func:`scipy.stats.bootstrap` over the row indices 0..m-1).

    statistic: row indices [k] -> values [S]; every component is computed on the same
    resampled rows, so differences between components are paired. The resampled rows depend on
    (m, resamples, seed) only: two calls with the same three draw the same resamples.
    Returns [S, 2] (lo, hi). A component that takes one value on every resample (e.g. a model
    compared with itself) gets the interval [value, value]; one that is undefined (NaN) on some
    resample (a task with one class in it) gets the interval of its finite resamples by
    percentiles; [NaN, NaN] when none is finite.
    """
    from scipy.stats import bootstrap

    rows = np.arange(m)
    observed = np.asarray(statistic(rows), dtype=np.float64)
    with warnings.catch_warnings():
        # Degenerate and undefined components are replaced below; scipy warns about them.
        warnings.simplefilter("ignore")
        result = bootstrap(
            (rows,),
            statistic,
            vectorized=False,
            n_resamples=resamples,
            confidence_level=confidence,
            method="BCa",
            random_state=np.random.default_rng(seed),
        )
    dist = np.asarray(result.bootstrap_distribution, dtype=np.float64).reshape(len(observed), -1)
    out = np.stack(
        [np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)],
        axis=-1,
    ).reshape(len(observed), 2)
    alpha = (1 - confidence) / 2
    for s, values in enumerate(dist):
        finite = values[np.isfinite(values)]
        if finite.size and np.all(finite == finite[0]) and finite.size == values.size:
            out[s] = finite[0]
        elif not np.all(np.isfinite(out[s])) or finite.size < values.size:
            out[s] = (
                [np.quantile(finite, alpha), np.quantile(finite, 1 - alpha)]
                if finite.size
                else [np.nan, np.nan]
            )
    return out


def _task_aucs(y: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """AUC of every column of scores [M, T] against y [M, T] on ``rows``: [T]."""
    return np.array([auc_roc(y[rows, j], scores[rows, j]) for j in range(y.shape[1])])


def _with_mean(values: np.ndarray) -> np.ndarray:
    """values [T] followed by their finite mean: [T + 1]."""
    finite = values[np.isfinite(values)]
    return np.append(values, finite.mean() if finite.size else np.nan)


def _interval_dict(bounds: np.ndarray) -> dict[str, list[float]]:
    """[T + 1, 2] bounds -> {"0": [lo, hi], ..., "mean": [lo, hi]}."""
    out = {str(j): [float(lo), float(hi)] for j, (lo, hi) in enumerate(bounds[:-1])}
    out["mean"] = [float(bounds[-1][0]), float(bounds[-1][1])]
    return out


def bootstrap_intervals(
    y: np.ndarray, scores: np.ndarray, resamples: int, confidence: float, seed: int = 0
) -> dict[str, list[float]]:
    """BCa bootstrap intervals (:func:`bca_intervals`) of every task's AUC and of their mean.

    y, scores: [M, T] test labels and probe scores. The same resampled rows serve all tasks.
    Returns {"task_j": [lo, hi] for j, ..., "mean": [lo, hi]} keyed by column index as str.
    """
    bounds = bca_intervals(
        lambda rows: _with_mean(_task_aucs(y, scores, rows)), len(y), resamples, confidence, seed
    )
    return _interval_dict(bounds)


def paired_intervals(
    y: np.ndarray,
    scores: np.ndarray,
    reference: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """The AUC of ``scores`` minus that of ``reference`` per task and for the mean over tasks,
    with paired BCa bootstrap intervals: both models are scored on the same resampled rows.

    y, scores, reference: [M, T]. Returns (observed differences [T + 1], the last being the
    mean's; {"task_j": [lo, hi], ..., "mean": [lo, hi]}). A model against itself gives
    differences 0 with intervals exactly [0, 0]."""

    def difference(rows: np.ndarray) -> np.ndarray:
        return _with_mean(_task_aucs(y, scores, rows)) - _with_mean(_task_aucs(y, reference, rows))

    observed = difference(np.arange(len(y)))
    return observed, _interval_dict(bca_intervals(difference, len(y), resamples, confidence, seed))


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) of the ROC curve."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), score)
    return fpr, tpr


def aucs_by_task(y: np.ndarray, scores: np.ndarray, tasks: list[str], columns: list[int]) -> dict:
    """{task: AUC} of scores[:, i] against y[:, columns[i]]."""
    return {
        t: auc_roc(y[:, c], scores[:, i])
        for i, (t, c) in enumerate(zip(tasks, columns, strict=True))
    }


def mean_finite(values: dict[str, float]) -> float:
    finite = [v for v in values.values() if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
