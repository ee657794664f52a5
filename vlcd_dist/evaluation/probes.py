"""Linear probes on frozen features: logistic regression per task, C chosen by stratified
(study-grouped) cross-validation on the rows the probe is fitted on. The out-of-fold scores of
those folds at the chosen C are kept: :mod:`.heads` chooses each task's operating point on
them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlcd_dist.evaluation.metrics import l2_normalize

CONSTANT_CLIP = 1e-6
"""A one-class task's train rate p is clipped to [CONSTANT_CLIP, 1 - CONSTANT_CLIP]."""


@dataclass
class LinearProbe:
    """A fitted probe of one task: a logistic regression, or a constant score when the train
    split holds one class only (then ``c`` is NaN and the constant is the logit of the clipped
    train rate, so that the score is a logit either way)."""

    model: Any | None
    constant: float
    c: float
    train_scores: np.ndarray | None = None
    """Decision values [N] of the train split at C: out-of-fold (each sample scored by the
    model of the folds that left it out) when ``train_folds`` >= 2, in-sample when the minority
    class has one sample (``train_folds`` 0); None for a one-class task."""
    train_folds: int = 0

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Decision values (logits) of features x [M, d] (normalised like the train features):
        [M]."""
        if self.model is None:
            return np.full(len(x), self.constant)
        return self.model.decision_function(x)

    def linear(self, d: int) -> tuple[np.ndarray, float]:
        """(weight [d], bias) with scores(x) = x @ weight + bias (weight 0 for a constant)."""
        if self.model is None:
            return np.zeros(d), float(self.constant)
        return np.asarray(self.model.coef_[0], dtype=np.float64), float(self.model.intercept_[0])


def stratified_folds(
    train_y: np.ndarray, folds: int, seed: int = 0, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit, validation) index pairs of the C search and the out-of-fold scores over
    train_y [N] (0/1): StratifiedKFold(k, shuffle=True, random_state=seed), or, with ``groups``
    [N] (a study id per row), StratifiedGroupKFold, so that a study's rows share a fold.
    k = min(folds, the count of the minority class: rows, or with groups the studies that hold
    it); [] when k < 2."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    train_y = np.asarray(train_y).astype(int)
    if groups is None:
        pos, neg = int(train_y.sum()), int(train_y.size - train_y.sum())
    else:
        groups = np.asarray(groups)
        pos = len(np.unique(groups[train_y == 1]))
        neg = len(np.unique(groups[train_y == 0]))
    k = min(folds, pos, neg)
    if k < 2:
        return []
    x = np.zeros((len(train_y), 1))  # the splitters look at the labels (and groups) only
    if groups is None:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, train_y))
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    return list(splitter.split(x, train_y, groups))


def out_of_fold_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    c: float,
    splits: list[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Decision values [N] of train_x [N, d]: each validation fold of ``splits`` scored by a
    logistic regression (C = c) fitted on the rest."""
    from sklearn.linear_model import LogisticRegression

    out = np.full(len(train_y), np.nan)
    for fit_idx, val_idx in splits:
        model = LogisticRegression(C=c, max_iter=2000).fit(train_x[fit_idx], train_y[fit_idx])
        out[val_idx] = model.decision_function(train_x[val_idx])
    return out


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    cs: list[float],
    folds: int,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> LinearProbe:
    """Logistic-regression probe of one task on train_x [N, d], train_y [N] (0/1).

    C maximises the mean cross-validated AUC on these rows only (scikit-learn's
    LogisticRegressionCV over :func:`stratified_folds`, seeded, grouped by study when
    ``groups`` [N] is given), and the probe is refitted on all of them at that C; it keeps the
    out-of-fold decision values at that C (``train_scores``). Nothing outside train_x/train_y
    is read, so held-out and test labels cannot move C."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    train_y = np.asarray(train_y).astype(int)
    if train_y.sum() in (0, train_y.size):
        p = min(max(float(train_y.mean()), CONSTANT_CLIP), 1 - CONSTANT_CLIP)
        return LinearProbe(None, math.log(p / (1 - p)), float("nan"))
    splits = stratified_folds(train_y, folds, seed, groups)
    if not splits:  # the minority class has one sample (or study): no folds, in-sample scores
        model = LogisticRegression(C=cs[0], max_iter=2000).fit(train_x, train_y)
        return LinearProbe(model, float("nan"), float(cs[0]), model.decision_function(train_x))
    model = LogisticRegressionCV(
        Cs=list(cs),
        cv=splits,
        scoring="roc_auc",
        l1_ratios=(0.0,),  # plain L2
        max_iter=2000,
        use_legacy_attributes=False,
    ).fit(train_x, train_y)
    c = float(np.ravel(model.C_)[0])
    oof = out_of_fold_scores(train_x, train_y, c, splits)
    return LinearProbe(model, float("nan"), c, oof, len(splits))


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
