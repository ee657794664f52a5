"""AUC-ROC, ROC curves and bootstrap intervals on plain arrays (no torch)."""

from __future__ import annotations

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


def bootstrap_intervals(
    y: np.ndarray, scores: np.ndarray, resamples: int, confidence: float, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of every task's AUC and of their mean.

    y, scores: [M, T] test labels and probe scores. The same resampled rows serve all tasks.
    Returns {"task_j": [lo, hi] for j, ..., "mean": [lo, hi]} keyed by column index as str.
    """
    rng = np.random.default_rng(seed)
    m, t = y.shape
    per_task = np.full((resamples, t), np.nan)
    for b in range(resamples):
        rows = rng.integers(0, m, m)
        for j in range(t):
            per_task[b, j] = auc_roc(y[rows, j], scores[rows, j])
    alpha = (1 - confidence) / 2
    out = {}
    for j in range(t):
        col = per_task[:, j][~np.isnan(per_task[:, j])]
        out[str(j)] = (
            [float(np.quantile(col, alpha)), float(np.quantile(col, 1 - alpha))]
            if col.size
            else [float("nan")] * 2
        )
    means = np.nanmean(per_task, axis=1)
    means = means[~np.isnan(means)]
    out["mean"] = (
        [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]
        if means.size
        else [float("nan")] * 2
    )
    return out


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
