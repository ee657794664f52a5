"""Linear probes on frozen features: logistic regression per task, C chosen by stratified
cross-validation on the train split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlcd_dist.evaluation.metrics import auc_roc, l2_normalize


@dataclass
class LinearProbe:
    """A fitted probe of one task: a logistic regression, or a constant score when the train
    split holds one class only (then ``c`` is NaN)."""

    model: Any | None
    constant: float
    c: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Decision values of features x [M, d] (normalised like the train features): [M]."""
        if self.model is None:
            return np.full(len(x), self.constant)
        return self.model.decision_function(x)


def fit_probe(
    train_x: np.ndarray, train_y: np.ndarray, cs: list[float], folds: int, seed: int = 0
) -> LinearProbe:
    """Logistic-regression probe of one task on train_x [N, d], train_y [N] (0/1).

    C maximises the mean cross-validated AUC on train (stratified folds, seeded)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    train_y = np.asarray(train_y).astype(int)
    minority = int(min(train_y.sum(), train_y.size - train_y.sum()))
    if minority == 0:
        return LinearProbe(None, float(train_y.mean()), float("nan"))
    best_c, best_auc = cs[0], -1.0
    k = min(folds, minority)
    if len(cs) > 1 and k >= 2:
        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(train_x, train_y))
        for c in cs:
            aucs = []
            for fit_idx, val_idx in splits:
                model = LogisticRegression(C=c, max_iter=2000).fit(
                    train_x[fit_idx], train_y[fit_idx]
                )
                aucs.append(auc_roc(train_y[val_idx], model.decision_function(train_x[val_idx])))
            score = float(np.nanmean(aucs))
            if score > best_auc:
                best_c, best_auc = c, score
    model = LogisticRegression(C=best_c, max_iter=2000).fit(train_x, train_y)
    return LinearProbe(model, float("nan"), float(best_c))


def probe_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    cs: list[float],
    folds: int,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Logistic-regression probe of one task.

    train_x [N, d], train_y [N] (0/1), test_x [M, d]: features (normalised by the caller).
    Returns (test scores [M], chosen C). C maximises the mean cross-validated AUC on train.
    """
    probe = fit_probe(train_x, train_y, cs, folds, seed)
    return probe.scores(test_x), probe.c


def apply_probes(probes: list[LinearProbe], scaler: Any, features: np.ndarray) -> np.ndarray:
    """Scores [M, T] of raw features [M, d]: L2-normalised, standardised by ``scaler`` (fitted on
    the clean train split), then each task's probe. Clean and degraded test features take this
    same path, so identical features give identical scores."""
    x = scaler.transform(l2_normalize(features))
    if not probes:
        return np.zeros((len(x), 0))
    return np.stack([p.scores(x) for p in probes], axis=1)
